//! OAuth access tokens shared by two gateway processes through the real Redis on
//! 127.0.0.1:6379 (each test under a key prefix of its own): one token fetch for concurrent
//! callers on both, one refetch in all when the third party refuses it, never a token in
//! plaintext in Redis or the logs; and the per-process fallback when Redis is gone (a
//! private redis-server the test stops, and reconnects when it is back).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, redis::PrivateRedis, serve_fn, server_section, token_server, Gw};
use std::{
    collections::HashSet,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

const CLIENT_SECRET: &str = "CLIENT-SECRET-SENTINEL-5d1f";

/// A name unique to this run, for key prefixes and token sentinels.
fn unique(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A third party that answers 200 to any bearer token except the revoked ones (401).
async fn third_party() -> (u16, Arc<Mutex<HashSet<String>>>) {
    let revoked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let r = revoked.clone();
    let addr = serve_fn(move |head, _| {
        let token = head
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        let refused = token.is_empty() || r.lock().unwrap().contains(&token);
        common::json_response(if refused { 401 } else { 200 }, "{\"ok\":true}")
    })
    .await;
    (addr.port(), revoked)
}

/// The configuration of one gateway of a pair: shared state in Redis at `redis_url` under
/// `prefix`, one integration `crm` to the third party on `port`, with `credential` (a TOML
/// inline table) taken from the vault secret `secret`.
fn pair_config(redis_url: &str, prefix: &str, port: u16, credential: &str) -> String {
    format!(
        "{}[shared_state]\nurl = \"{redis_url}\"\nkey_prefix = \"{prefix}\"\ntimeout = \"200ms\"\n\
         [[clients]]\nid = \"wf\"\n[[integrations]]\nid = \"crm\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\n\
         dangerous_allow_cidrs = [\"127.0.0.1/32\"]\nretry = {{ attempts = 1 }}\n\
         credential = {credential}\n",
        server_section("")
    )
}

/// One gateway of the pair: its own directory and vault, the same client secret in it.
fn gateway(redis_url: &str, prefix: &str, port: u16, token_url: &str) -> Gw {
    let credential = format!(
        "{{ type = \"oauth2_client_credentials\", token_url = \"{token_url}\", secret = \"{{secret:crm-client}}\" }}"
    );
    common::start_with_secrets(
        &pair_config(redis_url, prefix, port, &credential),
        &[(
            "crm-client",
            "integration:crm",
            &format!("{{\"client_id\":\"crm-client\",\"client_secret\":\"{CLIENT_SECRET}\"}}"),
        )],
    )
}

/// `n` concurrent calls spread over the gateways; every status.
async fn calls(gws: &[(&Gw, &str)], n: usize) -> Vec<u16> {
    let c = client();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (gw, key) = gws[i % gws.len()];
            let (c, url, key) = (c.clone(), gw.url("/egress/crm/x"), key.to_string());
            tokio::spawn(async move {
                c.get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Every key under `prefix` with its value (all are plain strings) and remaining TTL.
async fn keys_under(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Vec<(String, Vec<u8>, i64)> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for k in keys {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query_async(conn).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query_async(conn).await.unwrap();
        out.push((k, v.unwrap_or_default(), ttl));
    }
    out
}

/// Removes the keys a test left under its prefix.
async fn delete_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    entries: &[(String, Vec<u8>, i64)],
) {
    for (k, _, _) in entries {
        let _: i64 = redis::cmd("DEL").arg(k).query_async(conn).await.unwrap();
    }
}

/// Neither gateway's output holds any of `secrets`.
fn assert_logs_hold_none(gws: [&Gw; 2], secrets: &[&str]) {
    for gw in gws {
        let logs = format!("{}{}", gw.stdout.all(), gw.stderr.all());
        for s in secrets {
            assert!(!logs.contains(s), "a secret in the logs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_token_and_replace_a_refused_one_once() {
    let sentinel = unique("ACCESS-SENTINEL");
    let prefix = unique("pcl-test-tokens");
    // A token endpoint slow enough that callers on both instances overlap with a fetch.
    let (token_url, fetched) = token_server(
        "crm-client",
        CLIENT_SECRET,
        &sentinel,
        Duration::from_millis(300),
    )
    .await;
    let (port, revoked) = third_party().await;
    let redis_url = "redis://127.0.0.1:6379";
    let a = gateway(redis_url, &prefix, port, &token_url);
    let b = gateway(redis_url, &prefix, port, &token_url);
    let (ka, kb) = (a.issue_key("wf").await, b.issue_key("wf").await);
    let pair = [(&a, ka.as_str()), (&b, kb.as_str())];

    // 40 concurrent callers, half on each instance: one token for all of them.
    let statuses = calls(&pair, 40).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        1,
        "one fetch across both instances"
    );

    // The third party stops accepting it: every instance's callers get a 401 once, and one
    // new token is fetched in all, by one instance, and used by both.
    revoked.lock().unwrap().insert(format!("tok-1-{sentinel}"));
    let statuses = calls(&pair, 40).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        2,
        "one refetch across both instances"
    );
    // And both instances keep using it.
    let statuses = calls(&pair, 10).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fetched.load(Ordering::SeqCst), 2);

    // What the test put in Redis: the shared token entry exists, sealed, with a TTL of the
    // token's usable life (an hour less the one-minute margin) ...
    let redis = redis::Client::open(redis_url).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let entries = keys_under(&mut conn, &prefix).await;
    let tokens: Vec<_> = entries
        .iter()
        .filter(|(k, _, _)| k.starts_with(&format!("{prefix}:egress-token:crm:")))
        .collect();
    assert_eq!(tokens.len(), 1, "{entries:?}");
    let (_, value, ttl) = tokens[0];
    assert!(value.len() > sentinel.len(), "{value:?}");
    assert!(*ttl > 3_400_000 && *ttl <= 3_540_000, "ttl {ttl} ms");
    // ... and no value anywhere under the prefix holds a token, plain or base64, or the
    // client secret.
    use base64::Engine;
    for (k, v, _) in &entries {
        let text = String::from_utf8_lossy(v);
        for never in [
            sentinel.clone(),
            format!("tok-2-{sentinel}"),
            base64::engine::general_purpose::STANDARD.encode(format!("tok-2-{sentinel}")),
            CLIENT_SECRET.to_string(),
        ] {
            assert!(!text.contains(&never), "{never} in plaintext under {k}");
        }
        assert!(!k.contains(&sentinel), "{k}");
    }
    // The gateways' logs do not hold it either.
    assert_logs_hold_none([&a, &b], &[&sentinel, CLIENT_SECRET]);
    delete_keys(&mut conn, &entries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_tokens_fetched_and_cached_per_instance() {
    let sentinel = unique("ACCESS-SENTINEL");
    let (token_url, fetched) =
        token_server("crm-client", CLIENT_SECRET, &sentinel, Duration::ZERO).await;
    let (port, revoked) = third_party().await;
    let redis = PrivateRedis::start();
    let gw = gateway(&redis.url(), "pcl", port, &token_url);
    let key = gw.issue_key("wf").await;
    let pair = [(&gw, key.as_str())];
    assert_eq!(calls(&pair, 5).await, vec![200; 5]);
    assert_eq!(fetched.load(Ordering::SeqCst), 1);
    // The token went to the private Redis, so the shared path was in use.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(keys_under(&mut conn, "pcl:egress-token").await.len(), 1);
    drop(conn);

    // Redis goes away. Each refused token is replaced by a fetch of this instance's own, and
    // the calls succeed.
    let port_of_redis = redis.port;
    drop(redis);
    for n in 1..=3 {
        revoked
            .lock()
            .unwrap()
            .insert(format!("tok-{n}-{sentinel}"));
        assert_eq!(
            calls(&pair, 3).await,
            vec![200; 3],
            "after revoking tok-{n}"
        );
        assert_eq!(fetched.load(Ordering::SeqCst), n + 1);
    }
    // Logged once for the outage, counted every time.
    let line = "shared token cache unreachable";
    assert!(
        gw.stdout
            .wait_for(&[line], Duration::from_secs(10))
            .is_some(),
        "{}",
        gw.stdout.all()
    );
    let logged = gw.stdout.all().lines().filter(|l| l.contains(line)).count();
    assert_eq!(logged, 1, "{}", gw.stdout.all());
    let metrics = gw.metrics().await;
    let fallbacks: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("portcullis_egress_token_cache_fallbacks_total{integration=\"crm\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(fallbacks >= 3.0, "{metrics}");

    // Redis comes back on the same port: the gateway reconnects by itself, says so once, and
    // the next token it fetches is shared again.
    let redis = PrivateRedis::start_on(port_of_redis);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 3;
    while keys_under(&mut conn, "pcl:egress-token").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no token reached the returned Redis"
        );
        n += 1;
        revoked
            .lock()
            .unwrap()
            .insert(format!("tok-{n}-{sentinel}"));
        assert_eq!(calls(&pair, 1).await, vec![200]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        gw.stdout
            .wait_for(
                &["shared token cache reachable again"],
                Duration::from_secs(10)
            )
            .is_some(),
        "{}",
        gw.stdout.all()
    );
    let logs = format!("{}{}", gw.stdout.all(), gw.stderr.all());
    assert!(!logs.contains(&sentinel), "a token in the logs");
}

/// A token endpoint for the refresh-token grant that rotates the refresh token on every use,
/// as issuers with reuse detection do: only the newest refresh token (`current`) is accepted,
/// and any other is refused with `invalid_grant` and counted in `refused`. Access tokens live
/// `life_s` seconds. A test re-authorises by setting `current` to a new chain's first token.
struct RotatingIssuer {
    url: String,
    current: Arc<Mutex<String>>,
    issued: Arc<std::sync::atomic::AtomicUsize>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

async fn rotating_token_server(life_s: u64, first: &str, sentinel: &str) -> RotatingIssuer {
    use std::sync::atomic::AtomicUsize;
    let current = Arc::new(Mutex::new(first.to_string()));
    let (issued, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, i, r, sentinel) = (
        current.clone(),
        issued.clone(),
        refused.clone(),
        sentinel.to_string(),
    );
    let addr = serve_fn(move |_, body| {
        let body = String::from_utf8_lossy(&body).to_string();
        let mut cur = c.lock().unwrap();
        if body.contains("grant_type=refresh_token") && body.contains(&format!("refresh_token={cur}&"))
            || body.ends_with(&format!("refresh_token={cur}"))
        {
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            *cur = format!("rt-{n}-{sentinel}");
            common::json_response(200, format!(
                "{{\"access_token\":\"acc-{n}-{sentinel}\",\"token_type\":\"bearer\",\"expires_in\":{life_s},\"refresh_token\":\"{cur}\"}}"
            ))
        } else {
            r.fetch_add(1, Ordering::SeqCst);
            common::json_response(400, "{\"error\":\"invalid_grant\"}")
        }
    })
    .await;
    RotatingIssuer {
        url: format!("http://{addr}/token"),
        current,
        issued,
        refused,
    }
}

/// The integration's vault secret with `refresh_token`.
fn refresh_secret(refresh_token: &str) -> String {
    format!(
        "{{\"client_id\":\"crm\",\"client_secret\":\"{CLIENT_SECRET}\",\"refresh_token\":\"{refresh_token}\"}}"
    )
}

/// One gateway of a pair on the refresh-token grant: its own vault, holding the refresh token
/// the operator put there (the same `rt-0` in both).
fn refresh_gateway(prefix: &str, port: u16, token_url: &str, first: &str) -> Gw {
    let credential = format!(
        "{{ type = \"oauth2_refresh_token\", token_url = \"{token_url}\", secret = \"{{secret:crm-refresh}}\" }}"
    );
    common::start_with_secrets(
        &pair_config("redis://127.0.0.1:6379", prefix, port, &credential),
        &[("crm-refresh", "integration:crm", &refresh_secret(first))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_a_rotating_refresh_token_always_present_the_newest() {
    let sentinel = unique("REFRESH-SENTINEL");
    let prefix = unique("pcl-test-refresh");
    // Access tokens of 1 s: each instance in turn finds the shared one expired and refreshes.
    let first = format!("rt-0-{sentinel}");
    let issuer = rotating_token_server(1, &first, &sentinel).await;
    let (port, _revoked) = third_party().await;
    let a = refresh_gateway(&prefix, port, &issuer.url, &first);
    let b = refresh_gateway(&prefix, port, &issuer.url, &first);
    let (ka, kb) = (a.issue_key("wf").await, b.issue_key("wf").await);

    // Both at once: one refresh (rt-0 → rt-1) for all.
    let statuses = calls(&[(&a, ka.as_str()), (&b, kb.as_str())], 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(issuer.issued.load(Ordering::SeqCst), 1);
    // Then one instance at a time after each expiry. One vault still holds rt-0 and the other
    // rt-1 when the other instance has moved on: each must present the newest, shared, one.
    let expire = || tokio::time::sleep(Duration::from_millis(1100));
    for (round, (gw, key)) in [(&b, &kb), (&a, &ka), (&b, &kb)].into_iter().enumerate() {
        expire().await;
        let statuses = calls(&[(gw, key.as_str())], 5).await;
        assert!(
            statuses.iter().all(|s| *s == 200),
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            issuer.issued.load(Ordering::SeqCst),
            round + 2,
            "round {round}"
        );
    }
    assert_eq!(
        issuer.refused.load(Ordering::SeqCst),
        0,
        "a retired refresh token was presented"
    );

    // The operator re-authorises: the issuer starts a new chain, and the new refresh token is
    // put in both vaults. The shared token is now refused once as a grant, and the vault's
    // is presented instead; from then on the new chain is shared as before.
    let reauthorised = format!("op-0-{sentinel}");
    *issuer.current.lock().unwrap() = reauthorised.clone();
    for gw in [&a, &b] {
        let res = client()
            .put(gw.admin_url("/admin/secrets/crm-refresh"))
            .bearer_auth(gw.admin_token())
            .json(&serde_json::json!({ "value": refresh_secret(&reauthorised) }))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }
    for (round, (gw, key)) in [(&a, &ka), (&b, &kb)].into_iter().enumerate() {
        expire().await;
        let statuses = calls(&[(gw, key.as_str())], 5).await;
        assert!(
            statuses.iter().all(|s| *s == 200),
            "after re-authorisation, round {round}: {statuses:?}"
        );
    }
    assert_eq!(issuer.issued.load(Ordering::SeqCst), 6);
    assert_eq!(
        issuer.refused.load(Ordering::SeqCst),
        1,
        "only the retired shared token, once"
    );

    // The shared copy is sealed: no refresh or access token in plaintext under the prefix.
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let entries = keys_under(&mut conn, &prefix).await;
    assert!(
        entries.iter().any(|(k, _, _)| k.ends_with(":refresh")),
        "{entries:?}"
    );
    for (k, v, _) in &entries {
        let text = String::from_utf8_lossy(v);
        assert!(
            !text.contains(&sentinel) && !k.contains(&sentinel),
            "a token in plaintext under {k}"
        );
        assert!(!text.contains(CLIENT_SECRET));
    }
    assert_logs_hold_none([&a, &b], &[&sentinel]);
    delete_keys(&mut conn, &entries).await;
}
