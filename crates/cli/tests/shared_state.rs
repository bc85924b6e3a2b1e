//! Rate limits shared through Redis by several gateway processes, and what each route does
//! when Redis goes away: the machine's Redis on 127.0.0.1:6379 for sharing (under a key prefix
//! of the test's own), a private redis-server for the outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_problem, client, redis::PrivateRedis, route, server_section, upstream, Gw};
use std::time::{Duration, Instant};

fn shared(url: &str, extra: &str) -> String {
    let prefix = format!(
        "pcl-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    format!("[shared_state]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_admit_exactly_the_limit() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}{}",
        server_section(""),
        shared("redis://127.0.0.1:6379", "instances = 2"),
        route(
            "orders",
            "[\"GET\"]",
            "/orders",
            &up.url(),
            "rate_limits = [{ per = \"route\", limit = 100, period = \"1m\" }]"
        ),
    );
    let a = Gw::start(&cfg);
    let b = Gw::start(&cfg);
    let c = client();
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url("/orders")
            } else {
                b.url("/orders")
            };
            let c = c.clone();
            tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(by_status.get(&200), Some(&100), "{by_status:?}");
    assert_eq!(by_status.get(&429), Some(&50), "{by_status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_follows_each_routes_choice_and_recovers() {
    let up = upstream::start(None).await;
    let redis = PrivateRedis::start();
    let port = redis.port;
    let cfg = format!(
        "{}{}{}{}",
        server_section(""),
        shared(&redis.url(), "instances = 2\ntimeout = \"200ms\""),
        route("closed", "[\"GET\"]", "/closed", &up.url(), "rate_limits = [{ per = \"ip\", limit = 1000, period = \"1m\" }]\nshared_state_failure = \"fail_closed\""),
        route("local", "[\"GET\"]", "/local", &up.url(), "rate_limits = [{ per = \"ip\", limit = 4, period = \"1h\" }]"),
    );
    let gw = Gw::start(&cfg);
    let c = client();
    assert_eq!(c.get(gw.url("/closed")).send().await.unwrap().status(), 200);

    drop(redis);
    // fail_closed: 503 problem with Retry-After, never an unlimited pass.
    let res = c.get(gw.url("/closed")).send().await.unwrap();
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503, "unavailable").await;
    assert!(gw
        .stdout
        .wait_for(&["shared state unreachable"], Duration::from_secs(5))
        .is_some());

    // fall_back_local: a local limit of 4 / 2 instances = 2 per hour on this instance.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            c.get(gw.url("/local"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 429, 429, 429]);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "portcullis_rate_limit_degraded_total{route=\"local\",mode=\"fall_back_local\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_shared_state_errors_total"),
        "{metrics}"
    );

    // Redis comes back on the same port: the gateway reconnects by itself.
    let _redis = PrivateRedis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if c.get(gw.url("/closed")).send().await.unwrap().status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gw
        .stdout
        .wait_for(&["shared state reachable again"], Duration::from_secs(5))
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_never_reaches_logs_metrics_or_check_output() {
    const SENTINEL: &str = "SENTINELredisPW9f3a";
    let up = upstream::start(None).await;
    let port = PrivateRedis::start().port;
    // The previous server is gone; this one requires the sentinel password.
    let _redis = PrivateRedis::start_with(port, &["--requirepass", SENTINEL]);
    let good = format!("redis://:{SENTINEL}@127.0.0.1:{port}");
    let limited = route("r", "[\"GET\"]", "/r", &up.url(), "rate_limits = [{ per = \"ip\", limit = 100, period = \"1m\" }]\nshared_state_failure = \"fail_closed\"");
    let gw = Gw::start(&format!(
        "{}{}{limited}",
        server_section(""),
        shared(&good, "")
    ));
    let c = client();
    assert_eq!(c.get(gw.url("/r")).send().await.unwrap().status(), 200);

    // A wrong password: refused by Redis, so the route fails closed, and the error is logged.
    let bad = format!("redis://:{SENTINEL}-wrong@127.0.0.1:{port}");
    let gw_bad = Gw::start(&format!(
        "{}{}{limited}",
        server_section(""),
        shared(&bad, "")
    ));
    let res = c.get(gw_bad.url("/r")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let body = res.text().await.unwrap();
    assert!(gw_bad
        .stdout
        .wait_for(&["shared state unreachable"], Duration::from_secs(5))
        .is_some());

    let (code, out, err) = common::run_cli(
        &["check", gw_bad.config_path().to_str().unwrap()],
        gw_bad.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("holds a Redis password") || err.contains("holds a Redis password"));
    for g in [&gw, &gw_bad] {
        let metrics = g.metrics().await;
        let all = format!(
            "{}{}{}{out}{err}{body}",
            g.stdout.all(),
            g.stderr.all(),
            metrics
        );
        assert!(!all.contains(SENTINEL), "password leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_spread_over_two_gateways_lock_the_source_out_of_both() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}[auth]\nbrute_force = {{ max_failures = 3, window = \"1m\", cooldown = \"1m\" }}\n\n[[clients]]\nid = \"billing\"\n\n{}",
        server_section(""),
        shared("redis://127.0.0.1:6379", "instances = 2"),
        route("orders", "[\"GET\"]", "/orders", &up.url(), "auth = [\"api_key\"]"),
    );
    let a = Gw::start(&cfg);
    let b = Gw::start(&cfg);
    let bad = format!("pcl_0123456789abcdef_{}", "C".repeat(43));
    // Four failures, two on each: neither instance has seen more than its three allowed.
    for gw in [&a, &b, &a, &b] {
        assert_eq!(gw.get_with_key("/orders", &bad).await.status(), 401);
    }
    // A request without a credential counts nothing; it shows the lock-out (429) or not (401).
    let locked = |gw: &Gw| {
        let url = gw.url("/orders");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    let mut seen = 0;
    for _ in 0..50 {
        seen = locked(&b).await;
        if seen == 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 429, "the shared count locked the source out of b");
    // a has not failed since the shared count passed the threshold: its next failure is told.
    assert_eq!(locked(&a).await, 401);
    assert_eq!(a.get_with_key("/orders", &bad).await.status(), 401);
    for _ in 0..50 {
        seen = locked(&a).await;
        if seen == 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 429, "and out of a at its next failure");
}
