//! Egress through the real gateway: a workflow calls a third-party API (a real local HTTP
//! server) through an integration; the gateway checks client, method and path, adds the
//! credential from the vault, refuses internal destinations, and never lets the credential
//! reach the workflow, even when the third party echoes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    assert_problem, client, json_response, put_secret, serve_fn, server_section, upstream, Gw, BIN,
};
use std::process::Command;

const SENTINEL: &str = "SENTINEL-thirdparty-token-8c1e";

/// `GET url` as the workflow holding `key`.
async fn get_as(c: &reqwest::Client, url: String, key: &str) -> reqwest::Response {
    c.get(url).bearer_auth(key).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_inject_credentials_allow_only_what_is_declared_and_guard_destinations() {
    let up = upstream::start(None).await;
    let port = up.addr.port();
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\n[[clients]]\nid = \"other\"\n\n\
         [[integrations]]\nid = \"github\"\nbase_url = \"http://127.0.0.1:{port}/api\"\n\
         allow = [{{ methods = [\"GET\", \"POST\"], path = \"/repos/{{owner}}/{{repo}}/issues\" }}]\n\
         clients = [\"billing\"]\ncredential = {{ type = \"bearer\", secret = \"{{secret:gh-token}}\" }}\n\
         dangerous_allow_cidrs = [\"127.0.0.1/32\"]\n\n\
         [[integrations]]\nid = \"search\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         allow = [{{ methods = [\"GET\"], path = \"/search\" }}]\nclients = [\"billing\"]\n\
         credential = {{ type = \"query\", param = \"token\", secret = \"{{secret:search-token}}\" }}\n\
         dangerous_allow_cidrs = [\"127.0.0.1/32\"]\n\n\
         [[integrations]]\nid = \"internal\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         allow = [{{ methods = [\"GET\"], path = \"/search\" }}]\nclients = [\"billing\"]\n",
        server_section("")
    );
    let gw = common::start_with_secrets(
        &cfg,
        &[
            ("gh-token", "integration:github", SENTINEL),
            ("search-token", "integration:search", SENTINEL),
        ],
    );
    let key = gw.issue_key("billing").await;
    let other = gw.issue_key("other").await;
    let c = client();

    // Allowed: the credential goes upstream (the echo shows where it was), the workflow's own
    // key does not, and the echoed credential never comes back.
    let res = c
        .get(gw.url("/egress/github/repos/acme/app/issues?state=open"))
        .bearer_auth(&key)
        .header("cookie", "workflow=1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("set-cookie").is_none());
    let text = res.text().await.unwrap();
    assert!(!text.contains(SENTINEL), "{text}");
    assert!(
        !text.contains(&key),
        "the workflow's key went to the third party"
    );
    let echo: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["path"], "/api/repos/acme/app/issues");
    assert_eq!(echo["query"], "state=open");
    assert_eq!(echo["headers"]["authorization"], "Bearer [REDACTED]");
    assert!(echo["headers"].get("cookie").is_none());

    let res = get_as(&c, gw.url("/egress/search/search?q=x"), &key).await;
    let echo: serde_json::Value = res.json().await.unwrap();
    assert_eq!(echo["query"], "q=x&token=[REDACTED]");

    // Refused: undeclared method or path, another client, no credential; an internal
    // destination without the dangerous exception.
    let refused = [
        c.delete(gw.url("/egress/github/repos/acme/app/issues"))
            .bearer_auth(&key),
        c.get(gw.url("/egress/github/repos/acme/app/pulls"))
            .bearer_auth(&key),
        c.get(gw.url("/egress/github/repos/acme/app/issues"))
            .bearer_auth(&other),
    ];
    for r in refused {
        assert_problem(r.send().await.unwrap(), 403, "forbidden").await;
    }
    // An internal destination is refused as such, without saying why.
    let res = get_as(&c, gw.url("/egress/internal/search"), &key).await;
    let p = assert_problem(res, 403, "destination-refused").await;
    assert!(!p.to_string().contains("127.0.0.1"), "{p}");
    let anonymous = c
        .get(gw.url("/egress/github/repos/acme/app/issues"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Lines reach stdout through the log writer thread: wait for them before reading all.
    assert!(gw
        .stdout
        .wait_for(
            &["egress request refused"],
            std::time::Duration::from_secs(10)
        )
        .is_some());
    // One line per call, with the path template rather than the concrete path.
    let line = gw.stdout.wait_for(
        &[
            "\"egress call\"",
            "\"integration\":\"github\"",
            "\"path\":\"/repos/{owner}/{repo}/issues\"",
            "\"client\":\"billing\"",
            "\"attempts\":1",
        ],
        std::time::Duration::from_secs(10),
    );
    assert!(line.is_some(), "{}", gw.stdout.all());
    let logs = format!("{}{}", gw.stdout.all(), gw.stderr.all());
    assert!(!logs.contains(SENTINEL), "credential in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_only_when_safe_and_open_the_breaker() {
    let up = upstream::start(None).await;
    let port = up.addr.port();
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\n\n\
         [[integrations]]\nid = \"flaky\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         allow = [{{ methods = [\"GET\", \"POST\"], path = \"/status/{{code}}\" }}]\n\
         clients = [\"billing\"]\ndangerous_allow_cidrs = [\"127.0.0.1/32\"]\n\
         retry = {{ attempts = 3, base = \"10ms\", max = \"50ms\" }}\n\
         circuit_breaker = {{ failure_ratio = 0.5, min_requests = 8, open_for = \"1h\" }}\n",
        server_section("")
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    let c = client();
    let mut arrivals = up.arrivals.lock().await;
    let count = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    };

    // An idempotent call to a failing third party: three attempts, then its answer.
    let res = get_as(&c, gw.url("/egress/flaky/status/503"), &key).await;
    assert_eq!(res.status(), 503);
    assert_eq!(count(&mut arrivals), 3);
    // A POST is never repeated without an Idempotency-Key; with one it is.
    let res = c
        .post(gw.url("/egress/flaky/status/503"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(count(&mut arrivals), 1);
    let res = c
        .post(gw.url("/egress/flaky/status/503"))
        .bearer_auth(&key)
        .header("idempotency-key", "order-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(count(&mut arrivals), 3);
    // Seven failures so far, out of seven; one more reaches min_requests and opens the
    // breaker, after which calls are refused without reaching the third party.
    let _ = c
        .post(gw.url("/egress/flaky/status/500"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(count(&mut arrivals), 1);
    let res = get_as(&c, gw.url("/egress/flaky/status/200"), &key).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503, "unavailable").await;
    assert_eq!(count(&mut arrivals), 0, "an open breaker sends nothing");
    let states: serde_json::Value = c
        .get(gw.admin_url("/admin/integrations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(states[0]["id"], "flaky");
    assert_eq!(states[0]["circuit_breaker"], "open");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("portcullis_egress_retries_total{integration=\"flaky\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_that_break_the_declared_shape_are_refused_with_502() {
    let up = upstream::start(None).await;
    let port = up.addr.port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wants-items.json"),
        r#"{"type":"object","required":["items"]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("echo.json"),
        r#"{"type":"object","required":["path","method"],"properties":{"method":{"const":"GET"}}}"#,
    )
    .unwrap();
    let integration = |id: &str, extra: &str| {
        format!(
            "[[integrations]]\nid = \"{id}\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
             allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"billing\"]\n\
             dangerous_allow_cidrs = [\"127.0.0.1/32\"]\n{extra}\n"
        )
    };
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\n\n{}{}{}",
        server_section(""),
        integration("strict", "response_schema = \"wants-items.json\""),
        integration(
            "fits",
            "response_schema = \"echo.json\"\nresponse_content_types = [\"application/json\"]"
        ),
        integration("html-only", "response_content_types = [\"text/html\"]"),
    ) + &integration(
        "minimal",
        "response_fields = { allow = [\"path\", \"query\", \"headers\"], deny = [\"headers.host\"], mask = [\"query\"] }",
    );
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let gw = Gw::start_in(dir);
    let key = gw.issue_key("billing").await;
    let c = client();
    let ok = get_as(&c, gw.url("/egress/fits/x"), &key).await;
    assert_eq!(ok.status(), 200);
    // Data minimization: only allowed fields, denied paths gone, masked values.
    let v: serde_json::Value = c
        .get(gw.url("/egress/minimal/x?q=1234567890"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/x");
    assert!(
        v.get("method").is_none() && v.get("body_len").is_none(),
        "{v}"
    );
    assert!(v["headers"].get("host").is_none(), "{v}");
    assert_eq!(v["query"], "****7890");
    for id in ["strict", "html-only"] {
        let res = get_as(&c, gw.url(&format!("/egress/{id}/x")), &key).await;
        let p = assert_problem(res, 502, "upstream-unavailable").await;
        assert!(
            !p.to_string().contains("body_len"),
            "the third party's body leaked: {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_rate_limit_keeps_workflows_inside_the_third_partys_quota() {
    let up = upstream::start(None).await;
    let port = up.addr.port();
    let cfg = format!(
        "{}[[clients]]\nid = \"a\"\n[[clients]]\nid = \"b\"\n\n\
         [[integrations]]\nid = \"quota\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"a\", \"b\"]\n\
         dangerous_allow_cidrs = [\"127.0.0.1/32\"]\nrate_limit = {{ limit = 3, period = \"1h\" }}\n",
        server_section("")
    );
    let gw = Gw::start(&cfg);
    let (ka, kb) = (gw.issue_key("a").await, gw.issue_key("b").await);
    let c = client();
    let mut statuses = Vec::new();
    for key in [&ka, &kb, &ka, &kb, &ka] {
        let res = c
            .get(gw.url("/egress/quota/x"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry > 0);
        }
        statuses.push(res.status().as_u16());
    }
    // One allowance for the integration, whichever workflow calls.
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
}

/// The token endpoint of the OAuth tests: client "crm-client" with secret
/// "CLIENT-SECRET-SENTINEL", tokens `tok-<n>-ACCESS-SENTINEL`.
async fn token_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    common::token_server(
        "crm-client",
        "CLIENT-SECRET-SENTINEL",
        "ACCESS-SENTINEL",
        std::time::Duration::ZERO,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oauth_tokens_are_fetched_once_for_concurrent_callers_and_refetched_once_on_401() {
    use std::sync::atomic::Ordering;
    let up = upstream::start(None).await;
    let port = up.addr.port();
    let (token_url, fetched) = token_server().await;
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\n\n\
         [[integrations]]\nid = \"crm\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         allow = [{{ methods = [\"GET\"], path = \"/x\" }}, {{ methods = [\"GET\"], path = \"/status/{{code}}\" }}]\n\
         clients = [\"billing\"]\ndangerous_allow_cidrs = [\"127.0.0.1/32\"]\n\
         retry = {{ attempts = 1 }}\n\
         credential = {{ type = \"oauth2_client_credentials\", token_url = \"{token_url}\", secret = \"{{secret:crm-client}}\", scopes = [\"api\"] }}\n",
        server_section("")
    );
    let gw = common::start_with_secrets(
        &cfg,
        &[(
            "crm-client",
            "integration:crm",
            "{\"client_id\":\"crm-client\",\"client_secret\":\"CLIENT-SECRET-SENTINEL\"}",
        )],
    );
    let key = gw.issue_key("billing").await;
    let c = client();

    // 50 concurrent calls: one token request.
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (c, url, key) = (c.clone(), gw.url("/egress/crm/x"), key.clone());
            tokio::spawn(async move { c.get(url).bearer_auth(key).send().await.unwrap() })
        })
        .collect();
    for call in calls {
        let res = call.await.unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        assert!(
            !text.contains("ACCESS-SENTINEL") && !text.contains("CLIENT-SECRET"),
            "{text}"
        );
        assert!(text.contains("Bearer [REDACTED]"), "{text}");
    }
    assert_eq!(fetched.load(Ordering::SeqCst), 1);

    // The third party refuses the token: one new token, one more try, then its answer.
    let res = get_as(&c, gw.url("/egress/crm/status/401"), &key).await;
    assert_eq!(res.status(), 401);
    assert_eq!(fetched.load(Ordering::SeqCst), 2);

    let logs = format!("{}{}", gw.stdout.all(), gw.stderr.all());
    assert!(!logs.contains("SENTINEL"), "a secret or token in the logs");
}

#[test]
fn check_verifies_that_integration_and_webhook_secrets_are_bound_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[[clients]]\nid = \"wf\"\n[[integrations]]\nid = \"gh\"\nbase_url = \"https://api.github.com\"\n\
             allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\n\
             credential = {{ type = \"bearer\", secret = \"{{secret:gh-token}}\" }}\n",
            server_section("")
        ),
    )
    .unwrap();
    // Bound to another consumer: check fails and says so.
    put_secret(&cfg, "gh-token", "integration:other", "token-value-123");
    let out = Command::new(BIN).arg("check").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("integration:gh references secret \"gh-token\", which is not bound to it"),
        "{err}"
    );
}

/// A third party whose every answer is a redirect to `to`.
async fn redirector(to: String) -> u16 {
    serve_fn(move |_, _| {
        let mut res = http::Response::new(String::new());
        *res.status_mut() = http::StatusCode::FOUND;
        res.headers_mut().insert("location", to.parse().unwrap());
        res
    })
    .await
    .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_handed_back_or_followed_without_taking_the_credential_along() {
    let up = upstream::start(None).await;
    let landed = format!("http://127.0.0.1:{}/landed", up.addr.port());
    let port = redirector(landed.clone()).await;
    let integration = |id: &str, cred: &str, follow: u32| {
        format!(
            "[[integrations]]\nid = \"{id}\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
             allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\n\
             dangerous_allow_cidrs = [\"127.0.0.1/32\"]\nfollow_redirects = {follow}\n\
             credential = {{ {cred}, secret = \"{{secret:tok-{id}}}\" }}\n"
        )
    };
    let cfg = format!(
        "{}[[clients]]\nid = \"wf\"\n{}{}{}",
        server_section(""),
        integration("stay", "type = \"bearer\"", 0),
        integration("bearer", "type = \"bearer\"", 2),
        integration("header", "type = \"header\", header = \"x-key\"", 2),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, &cfg).unwrap();
    for id in ["stay", "bearer", "header"] {
        put_secret(
            &path,
            &format!("tok-{id}"),
            &format!("integration:{id}"),
            SENTINEL,
        );
    }
    let gw = Gw::start_in(dir);
    let key = gw.issue_key("wf").await;
    let c = client();
    let mut arrivals = up.arrivals.lock().await;

    // Not followed by default: the 3xx comes back.
    let res = get_as(&c, gw.url("/egress/stay/x"), &key).await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], landed.as_str());
    assert!(arrivals.try_recv().is_err());

    // Followed to another origin: the Authorization header stays behind.
    let res = get_as(&c, gw.url("/egress/bearer/x"), &key).await;
    assert_eq!(res.status(), 200);
    let echo: serde_json::Value = res.json().await.unwrap();
    assert_eq!(echo["path"], "/landed");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    assert_eq!(arrivals.try_recv().unwrap(), "/landed");

    // A credential in a custom header: a hop to another origin is refused, not followed.
    let res = get_as(&c, gw.url("/egress/header/x"), &key).await;
    assert!(
        res.status() == 502 || res.status() == 403,
        "{}",
        res.status()
    );
    assert!(
        arrivals.try_recv().is_err(),
        "the credential's request reached another origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_fails_its_health_check_gives_way_to_the_fallback() {
    let up = upstream::start(None).await;
    // The primary: a port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "{}[[clients]]\nid = \"wf\"\n[[integrations]]\nid = \"ha\"\nbase_url = \"http://127.0.0.1:{dead}\"\n\
         fallback_base_url = \"http://127.0.0.1:{}/backup\"\n\
         health_check = {{ path = \"/health\", interval = \"100ms\", unhealthy_after = 1 }}\n\
         allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\n\
         dangerous_allow_cidrs = [\"127.0.0.1/32\"]\nretry = {{ attempts = 1 }}\n",
        server_section(""),
        up.addr.port()
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("wf").await;
    let c = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let echo: serde_json::Value = loop {
        let res = get_as(&c, gw.url("/egress/ha/x"), &key).await;
        if res.status() == 200 {
            break res.json().await.unwrap();
        }
        // Before the health check notices: the primary is unreachable (502), or the breaker
        // has opened on it (503).
        assert!(
            matches!(res.status().as_u16(), 502 | 503),
            "{}",
            res.status()
        );
        assert!(std::time::Instant::now() < deadline, "never failed over");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(echo["path"], "/backup/x");
    let states: serde_json::Value = c
        .get(gw.admin_url("/admin/integrations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(states[0]["primary_healthy"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_destinations_in_integration_config_are_refused_at_call_time() {
    // Base URLs an operator might write (or paste) that point inside: every call is refused
    // with 403, without the dangerous exception. (The full corpus, with names resolving to
    // internal addresses, runs against crates/egress.)
    let bases = [
        "http://127.0.0.1:9",
        "http://0x7f.0.0.1:9",
        "http://2130706433:9",
        "http://0177.0.0.1:9",
        "http://127.1:9",
        "http://[::1]:9",
        "http://[::ffff:127.0.0.1]:9",
        "http://169.254.169.254",
        "http://[fd00:ec2::254]",
        "http://10.0.0.1",
        "http://192.168.1.1",
        "http://100.64.0.1",
        "http://[64:ff9b::7f00:1]",
        "http://[2002:7f00:1::]",
        "http://0.0.0.0:9",
        "http://localhost:9",
    ];
    let mut cfg = format!("{}[[clients]]\nid = \"wf\"\n", server_section(""));
    for (n, base) in bases.iter().enumerate() {
        cfg.push_str(&format!(
            "[[integrations]]\nid = \"i{n}\"\nbase_url = \"{base}\"\nallow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\nretry = {{ attempts = 1 }}\n"
        ));
    }
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("wf").await;
    let c = client();
    for (n, base) in bases.iter().enumerate() {
        let res = get_as(&c, gw.url(&format!("/egress/i{n}/x")), &key).await;
        let p = assert_problem(res, 403, "destination-refused").await;
        assert_eq!(p["title"], "Destination refused", "{base}");
    }
}

/// A token endpoint for the refresh-token grant that rotates the refresh token on every use
/// and refuses a retired one.
async fn rotating_token_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let issued = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let addr = serve_fn(move |_, body| {
        let body = String::from_utf8_lossy(&body).to_string();
        let n = counter.load(Ordering::SeqCst);
        if body.contains("grant_type=refresh_token") && body.contains(&format!("refresh_token=rt-{n}")) {
            counter.fetch_add(1, Ordering::SeqCst);
            json_response(200, format!("{{\"access_token\":\"acc-{}-ACCESS-SENTINEL\",\"token_type\":\"bearer\",\"expires_in\":3600,\"refresh_token\":\"rt-{}\"}}", n + 1, n + 1))
        } else {
            json_response(400, "{\"error\":\"invalid_grant\"}")
        }
    })
    .await;
    (format!("http://{addr}/token"), issued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_kept_in_the_vault_for_the_next_refresh() {
    use std::sync::atomic::Ordering;
    let up = upstream::start(None).await;
    let port = up.addr.port();
    let (token_url, issued) = rotating_token_server().await;
    let cfg = format!(
        "{}[[clients]]\nid = \"wf\"\n[[integrations]]\nid = \"crm\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         allow = [{{ methods = [\"GET\"], path = \"/x\" }}, {{ methods = [\"GET\"], path = \"/status/{{code}}\" }}]\n\
         clients = [\"wf\"]\ndangerous_allow_cidrs = [\"127.0.0.1/32\"]\nretry = {{ attempts = 1 }}\n\
         credential = {{ type = \"oauth2_refresh_token\", token_url = \"{token_url}\", secret = \"{{secret:crm-refresh}}\" }}\n",
        server_section("")
    );
    let secret = "{\"client_id\":\"crm\",\"client_secret\":\"CLIENT-SECRET-SENTINEL\",\"refresh_token\":\"rt-0\"}";
    let gw = common::start_with_secrets(&cfg, &[("crm-refresh", "integration:crm", secret)]);
    let key = gw.issue_key("wf").await;
    let c = client();
    let res = get_as(&c, gw.url("/egress/crm/x"), &key).await;
    assert_eq!(res.status(), 200);
    assert_eq!(issued.load(Ordering::SeqCst), 1);
    // The third party refuses the token; the refetch presents the rotated refresh token
    // (rt-1, read back from the vault). Had it presented rt-0 the issuer would refuse it and
    // the workflow would get 503 instead of the third party's own 401.
    let res = get_as(&c, gw.url("/egress/crm/status/401"), &key).await;
    assert_eq!(res.status(), 401);
    assert_eq!(issued.load(Ordering::SeqCst), 2);
    let logs = format!("{}{}", gw.stdout.all(), gw.stderr.all());
    assert!(
        !logs.contains("SENTINEL") && !logs.contains("rt-1"),
        "a secret in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_integration_accepts_only_the_pinned_certificate() {
    use base64::Engine;
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    use sha2::Digest;
    let pki = upstream::TestPki::new();
    let up = upstream::start(Some(pki.server_config())).await;
    let port = up.addr.port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let leaf = CertificateDer::from_pem_slice(pki.leaf_pem.as_bytes()).unwrap();
    let right =
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(leaf.as_ref()));
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let integration = |id: &str, pin: &str| {
        format!(
            "[[integrations]]\nid = \"{id}\"\nbase_url = \"https://127.0.0.1:{port}\"\nca = \"ca.pem\"\n\
             pin_sha256 = [\"{pin}\"]\nallow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\n\
             dangerous_allow_cidrs = [\"127.0.0.1/32\"]\nretry = {{ attempts = 1 }}\n"
        )
    };
    let cfg = format!(
        "{}[[clients]]\nid = \"wf\"\n{}{}",
        server_section(""),
        integration("pinned", &right),
        integration("mispinned", &wrong)
    );
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let gw = Gw::start_in(dir);
    let key = gw.issue_key("wf").await;
    let c = client();
    let ok = get_as(&c, gw.url("/egress/pinned/x"), &key).await;
    assert_eq!(ok.status(), 200);
    // The same valid chain, a different pin: the handshake is refused.
    let bad = get_as(&c, gw.url("/egress/mispinned/x"), &key).await;
    assert_problem(bad, 502, "upstream-unavailable").await;
}

/// A loopback listener that counts every TCP connection it accepts (a request that got
/// through would be answered 200, so a broken guard also shows in the status).
struct Tripwire {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Tripwire {
    async fn bind(addr: std::net::SocketAddr) -> std::io::Result<Tripwire> {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::AsyncReadExt;
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        Ok(Tripwire { addr, connections })
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Every address the machine's own resolver (getaddrinfo, through `getent ahosts`) gives
/// `name`; empty when it does not resolve.
fn system_addresses(name: &str) -> Vec<std::net::IpAddr> {
    let Ok(out) = Command::new("getent").args(["ahosts", name]).output() else {
        return Vec::new();
    };
    let mut addrs: Vec<std::net::IpAddr> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// Binds tripwires on every address at one common port (the URL names one port).
async fn tripwires_on(addrs: &[std::net::IpAddr]) -> Option<(u16, Vec<Tripwire>)> {
    for _ in 0..20 {
        let Ok(first) = Tripwire::bind((addrs[0], 0).into()).await else {
            return None;
        };
        let port = first.addr.port();
        let mut all = vec![first];
        for ip in &addrs[1..] {
            match Tripwire::bind((*ip, port).into()).await {
                Ok(t) => all.push(t),
                Err(_) => break,
            }
        }
        if all.len() == addrs.len() {
            return Some((port, all));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_machine_resolves_to_internal_addresses_are_refused_through_the_gateway() {
    // Real names, resolved by the machine's own resolver with no test hook: Debian's
    // /etc/hosts names for ::1, this machine's hostname, and every other name /etc/hosts
    // gives a loopback address; each also in upper case and with a trailing dot.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut names: Vec<String> = vec!["ip6-localhost".into(), "ip6-loopback".into(), hostname];
    for line in std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .lines()
    {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        if let Some(Ok(ip)) = fields.next().map(str::parse::<std::net::IpAddr>) {
            if ip.is_loopback() {
                names.extend(fields.map(str::to_string));
            }
        }
    }
    let variants: Vec<String> = names
        .iter()
        .filter(|n| !n.is_empty())
        .flat_map(|n| [n.clone(), n.to_ascii_uppercase(), format!("{n}.")])
        .collect();
    // Only names the machine resolves, and only to loopback addresses: a test that must
    // never send traffic elsewhere, even if the guard were broken. `localhost` itself is
    // refused by name before resolution; it is in the other corpus.
    let mut cases = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in variants {
        if name.trim_end_matches('.').eq_ignore_ascii_case("localhost")
            || !seen.insert(name.clone())
        {
            continue;
        }
        let addrs = system_addresses(&name);
        if addrs.is_empty() || !addrs.iter().all(|a| a.is_loopback()) {
            eprintln!("skipped {name:?}: resolves to {addrs:?}");
            continue;
        }
        let Some((port, wires)) = tripwires_on(&addrs).await else {
            eprintln!("skipped {name:?}: cannot listen on {addrs:?}");
            continue;
        };
        cases.push((name, addrs, port, wires));
    }
    assert!(
        !cases.is_empty(),
        "no name on this machine resolves to a loopback address; the test checked nothing"
    );
    let mut cfg = format!("{}[[clients]]\nid = \"wf\"\n", server_section(""));
    for (n, (name, _, port, _)) in cases.iter().enumerate() {
        cfg.push_str(&format!(
            "[[integrations]]\nid = \"n{n}\"\nbase_url = \"http://{name}:{port}\"\n\
             allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\nretry = {{ attempts = 1 }}\n"
        ));
    }
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("wf").await;
    let c = client();
    for (n, (name, addrs, _, wires)) in cases.iter().enumerate() {
        let res = get_as(&c, gw.url(&format!("/egress/n{n}/x")), &key).await;
        let p = assert_problem(res, 403, "destination-refused").await;
        // Generic: no detail, no address.
        assert!(p.get("detail").is_none(), "{p}");
        assert!(
            !addrs.iter().any(|a| p.to_string().contains(&a.to_string())),
            "{p}"
        );
        for w in wires {
            assert_eq!(w.connections(), 0, "{name} reached {}", w.addr);
        }
        eprintln!("checked {name:?} -> {addrs:?}");
    }
    // Resolution refused them (not a failure to resolve): the log says so.
    assert!(
        gw.stdout
            .wait_for(
                &["egress request refused", "resolved_address"],
                std::time::Duration::from_secs(10)
            )
            .is_some(),
        "{}",
        gw.stdout.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_an_internal_address_is_refused_when_following() {
    // The third party (on 127.0.0.1, re-admitted for it alone) redirects to other loopback
    // addresses the guard refuses, each with a listener that must see nothing.
    let v4 = Tripwire::bind("127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    let v4b = Tripwire::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let v6 = Tripwire::bind("[::1]:0".parse().unwrap()).await.ok();
    let mut targets = vec![
        format!("http://127.0.0.2:{}/x", v4.addr.port()),
        format!("http://0x7f.0.0.2:{}/x", v4.addr.port()),
        // A localhost name for the re-admitted 127.0.0.1 itself: refused by name. (A numeric
        // form such as 2130706433 is not a case here: the URL parser turns it into 127.0.0.1,
        // which this integration re-admits.)
        format!("http://localhost:{}/x", v4b.addr.port()),
    ];
    if let Some(v6) = &v6 {
        targets.push(format!("http://[::1]:{}/x", v6.addr.port()));
        targets.push(format!("http://[::ffff:127.0.0.2]:{}/x", v4.addr.port()));
    }
    let mut cfg = format!("{}[[clients]]\nid = \"wf\"\n", server_section(""));
    for (n, to) in targets.iter().enumerate() {
        let port = redirector(to.clone()).await;
        cfg.push_str(&format!(
            "[[integrations]]\nid = \"r{n}\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
             allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\n\
             dangerous_allow_cidrs = [\"127.0.0.1/32\"]\nfollow_redirects = 3\nretry = {{ attempts = 1 }}\n"
        ));
    }
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("wf").await;
    let c = client();
    for (n, to) in targets.iter().enumerate() {
        let res = get_as(&c, gw.url(&format!("/egress/r{n}/x")), &key).await;
        assert_problem(res, 403, "destination-refused").await;
        let wires = [Some(&v4), Some(&v4b), v6.as_ref()];
        for w in wires.into_iter().flatten() {
            assert_eq!(
                w.connections(),
                0,
                "the redirect to {to} reached {}",
                w.addr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configured_breaker_window_and_probe_count_are_honoured_through_the_gateway() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[[clients]]\nid = \"wf\"\n[[integrations]]\nid = \"w\"\nbase_url = \"http://127.0.0.1:{}\"\n\
         allow = [{{ methods = [\"GET\"], path = \"/status/{{code}}\" }}, {{ methods = [\"GET\"], path = \"/hold/{{n}}\" }}]\n\
         clients = [\"wf\"]\ndangerous_allow_cidrs = [\"127.0.0.1/32\"]\nretry = {{ attempts = 1 }}\n\
         circuit_breaker = {{ failure_ratio = 1.0, min_requests = 2, open_for = \"1s\", window = \"1s\", half_open_probes = 2 }}\n",
        server_section(""),
        up.addr.port()
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("wf").await;
    let c = client();
    let get = |path: &str| c.get(gw.url(path)).bearer_auth(&key).send();
    let from_third_party = |res: &reqwest::Response| {
        res.headers()["content-type"] == "application/json" && res.status() == 503
    };

    // One failure, then another after the 1 s window has moved past it: the window holds one
    // outcome (< min_requests), so the breaker stays closed and a third call goes out. With
    // the default 30 s window the second failure would have opened it.
    assert!(from_third_party(
        &get("/egress/w/status/503").await.unwrap()
    ));
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert!(from_third_party(
        &get("/egress/w/status/503").await.unwrap()
    ));
    let third = get("/egress/w/status/503").await.unwrap();
    assert!(
        from_third_party(&third),
        "the breaker opened on a forgotten failure"
    );
    // Two failures inside the window: open.
    assert_problem(
        get("/egress/w/status/200").await.unwrap(),
        503,
        "unavailable",
    )
    .await;

    // Half-open after open_for: exactly two probes go out at a time.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    {
        let mut arrivals = up.arrivals.lock().await;
        while arrivals.try_recv().is_ok() {}
    }
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let (c, url, key) = (
                c.clone(),
                gw.url(&format!("/egress/w/hold/{i}")),
                key.clone(),
            );
            tokio::spawn(async move { c.get(url).bearer_auth(key).send().await.unwrap() })
        })
        .collect();
    up.wait_arrivals(2).await;
    // The two beyond the probe count are refused without reaching the third party.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        up.arrivals.lock().await.try_recv().is_err(),
        "a third probe went out"
    );
    up.release(2);
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503]);
    let states: serde_json::Value = c
        .get(gw.admin_url("/admin/integrations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        states[0]["circuit_breaker"], "closed",
        "a probe success closes it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_calls_token_fetches_and_breaker_changes_are_audited() {
    let up = upstream::start(None).await;
    let port = up.addr.port();
    let (token_url, _) = token_server().await;
    let integration = |id: &str, allow: &str, extra: &str| {
        format!(
            "[[integrations]]\nid = \"{id}\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
             allow = [{{ methods = [\"GET\"], path = \"{allow}\" }}]\nclients = [\"wf\"]\n\
             dangerous_allow_cidrs = [\"127.0.0.1/32\"]\nretry = {{ attempts = 1 }}\n{extra}\n"
        )
    };
    let oauth = |secret: &str| {
        format!("credential = {{ type = \"oauth2_client_credentials\", token_url = \"{token_url}\", secret = \"{{secret:{secret}}}\" }}")
    };
    let cfg = format!(
        "{}[[clients]]\nid = \"wf\"\n{}{}{}",
        server_section(""),
        integration("crm", "/items/{id}", &oauth("crm-client")),
        integration("nocred", "/items/{id}", &oauth("wrong-client")),
        integration(
            "flaky",
            "/status/{code}",
            "circuit_breaker = { failure_ratio = 1.0, min_requests = 1, open_for = \"1h\" }"
        ),
    );
    let gw = common::start_with_secrets(
        &cfg,
        &[
            (
                "crm-client",
                "integration:crm",
                "{\"client_id\":\"crm-client\",\"client_secret\":\"CLIENT-SECRET-SENTINEL\"}",
            ),
            (
                "wrong-client",
                "integration:nocred",
                "{\"client_id\":\"crm-client\",\"client_secret\":\"WRONG-SECRET-SENTINEL\"}",
            ),
        ],
    );
    let key = gw.issue_key("wf").await;
    let c = client();
    let get = |path: &str| c.get(gw.url(path)).bearer_auth(&key).send();

    let res = get("/egress/crm/items/SEGMENT-VALUE-77?q=QUERY-VALUE-77")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_problem(get("/egress/crm/other").await.unwrap(), 403, "forbidden").await;
    assert_problem(
        get("/egress/nocred/items/1").await.unwrap(),
        503,
        "credential-unavailable",
    )
    .await;
    assert_eq!(get("/egress/flaky/status/503").await.unwrap().status(), 503);
    assert_problem(
        get("/egress/flaky/status/200").await.unwrap(),
        503,
        "unavailable",
    )
    .await;

    let audit = |fields: &[&str]| {
        let mut needles = vec!["\"target\":\"portcullis::audit\""];
        needles.extend_from_slice(fields);
        let line = gw
            .stdout
            .wait_for(&needles, std::time::Duration::from_secs(10));
        assert!(
            line.is_some(),
            "no audit line with {fields:?}:\n{}",
            gw.stdout.all()
        );
    };
    // Calls: forwarded with the third party's status, refused (nothing sent), failed.
    audit(&[
        "\"action\":\"egress_call\"",
        "\"integration\":\"crm\"",
        "\"client\":\"wf\"",
        "\"method\":\"GET\"",
        "\"path\":\"/items/{id}\"",
        "\"status\":200",
        "\"attempts\":1",
        "\"outcome\":\"forwarded\"",
    ]);
    audit(&[
        "\"action\":\"egress_call\"",
        "\"integration\":\"crm\"",
        "\"path\":\"-\"",
        "\"status\":403",
        "\"attempts\":0",
        "\"outcome\":\"refused\"",
        "\"problem\":\"forbidden\"",
    ]);
    audit(&[
        "\"action\":\"egress_call\"",
        "\"integration\":\"nocred\"",
        "\"status\":503",
        "\"outcome\":\"failed\"",
        "\"problem\":\"credential-unavailable\"",
    ]);
    audit(&[
        "\"action\":\"egress_call\"",
        "\"integration\":\"flaky\"",
        "\"path\":\"/status/{code}\"",
        "\"status\":503",
        "\"attempts\":1",
        "\"outcome\":\"forwarded\"",
    ]);
    audit(&[
        "\"action\":\"egress_call\"",
        "\"integration\":\"flaky\"",
        "\"status\":503",
        "\"attempts\":0",
        "\"outcome\":\"refused\"",
        "\"problem\":\"unavailable\"",
    ]);
    // Token fetches, successful and failed.
    audit(&[
        "\"action\":\"egress_token_fetch\"",
        "\"integration\":\"crm\"",
        "\"grant\":\"client_credentials\"",
        "\"trigger\":\"first\"",
        "\"outcome\":\"success\"",
    ]);
    audit(&[
        "\"action\":\"egress_token_fetch\"",
        "\"integration\":\"nocred\"",
        "\"outcome\":\"failure\"",
    ]);
    // The breaker's state change.
    audit(&[
        "\"action\":\"egress_breaker_state\"",
        "\"integration\":\"flaky\"",
        "\"from\":\"closed\"",
        "\"to\":\"open\"",
    ]);

    // Never a credential, a token, a concrete path value or a query value in an audit line;
    // never a credential or token anywhere in the logs.
    let all = gw.stdout.all();
    let audit_lines: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("\"target\":\"portcullis::audit\""))
        .collect();
    for l in &audit_lines {
        for never in ["SEGMENT-VALUE-77", "QUERY-VALUE-77", "SENTINEL"] {
            assert!(!l.contains(never), "{never} in {l}");
        }
    }
    let logs = format!("{all}{}", gw.stderr.all());
    assert!(!logs.contains("SENTINEL"), "a secret or token in the logs");
    assert!(
        !logs.contains("QUERY-VALUE-77"),
        "a query value in the logs"
    );
}
