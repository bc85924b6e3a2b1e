//! Webhook triggers through the real gateway: Standard Webhooks signatures verified over the
//! exact bytes, replays and duplicates acknowledged without a second forward (also across two
//! instances sharing Redis), forwarded bytes unchanged and re-signed with the gateway's own
//! secret, failures answered with one generic 401.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use common::{assert_problem, client, put_secret, server_section, Gw};
use hmac::Mac;
use std::{
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::sync::mpsc;

const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const GATEWAY_SECRET: &str = "whsec_c2lnbmluZy1zZWNyZXQtZm9yLXRoZS1iYWNrZW5kISE=";

/// What the workflow backend received.
struct Delivery {
    headers: http::HeaderMap,
    body: Bytes,
}

/// A workflow backend that records every delivery and answers with `status`.
async fn backend(status: Arc<AtomicU16>) -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = common::serve_fn(move |head, body| {
        let _ = tx.send(Delivery {
            headers: head.headers,
            body,
        });
        common::json_response(status.load(Ordering::SeqCst), "{}")
    })
    .await;
    (format!("http://{addr}/workflows/orders"), rx)
}

fn sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let key = B64.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn config(forward: &str, extra: &str) -> String {
    format!(
        "{}{extra}\n[webhook_signing]\nsecret = \"{{secret:pcl-signing}}\"\n\n[[webhooks]]\nid = \"orders\"\npath = \"/hooks/orders\"\nprovider = \"standard\"\nsecrets = [\"{{secret:orders-hook}}\"]\nforward = \"{forward}\"\n",
        server_section("")
    )
}

/// A gateway on `config`, with the webhook and signing secrets in its vault.
fn start(config: &str) -> Gw {
    common::start_with_secrets(
        config,
        &[
            ("orders-hook", "webhook:orders", HOOK_SECRET),
            ("pcl-signing", "gateway:webhook-signing", GATEWAY_SECRET),
        ],
    )
}

async fn post(gw: &Gw, id: &str, ts: i64, body: &[u8], signature: &str) -> reqwest::Response {
    client()
        .post(gw.url("/hooks/orders"))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// The `webhook-timestamp` the gateway signed a forward with.
fn forwarded_at(d: &Delivery) -> i64 {
    d.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no delivery reached the backend")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_are_verified_deduplicated_and_forwarded_re_signed() {
    let status = Arc::new(AtomicU16::new(200));
    let (forward, mut rx) = backend(status.clone()).await;
    let gw = start(&config(&forward, ""));
    // Whitespace-sensitive JSON with a byte that is not UTF-8: forwarded exactly.
    let body: &[u8] = b"{ \"type\" : \"order.created\",\n  \"id\":1 }\t\xff";
    let ts = now();
    let sig = sign(HOOK_SECRET, "msg_1", ts, body);

    let res = post(&gw, "msg_1", ts, body, &sig).await;
    assert_eq!(res.status(), 200);
    let d = next(&mut rx).await;
    assert_eq!(&d.body[..], body);
    assert_eq!(d.headers["webhook-id"], "msg_1");
    assert_eq!(d.headers["x-portcullis-provider"], "standard");
    let fwd_ts = forwarded_at(&d);
    assert_eq!(
        d.headers["webhook-signature"].to_str().unwrap(),
        sign(GATEWAY_SECRET, "msg_1", fwd_ts, body),
        "the backend can verify the gateway's signature with the gateway's secret"
    );

    // The same message again (a replay or a sender retry): acknowledged, not forwarded.
    let res = post(&gw, "msg_1", ts, body, &sig).await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("duplicate"));

    // Failures: one generic 401, nothing forwarded.
    let tampered = post(
        &gw,
        "msg_2",
        ts,
        b"{\"type\":\"order.created\",\"id\":2}",
        &sig,
    )
    .await;
    let p = assert_problem(tampered, 401, "webhook-unverified").await;
    assert!(!p.to_string().contains("v1,"), "{p}");
    let old = now() - 3600;
    let stale = post(
        &gw,
        "msg_3",
        old,
        body,
        &sign(HOOK_SECRET, "msg_3", old, body),
    )
    .await;
    assert_problem(stale, 401, "webhook-unverified").await;
    let wrong = post(
        &gw,
        "msg_4",
        ts,
        body,
        &sign("whsec_d3JvbmctbWFjLWtleS0xMjM0NTY3OA==", "msg_4", ts, body),
    )
    .await;
    assert_problem(wrong, 401, "webhook-unverified").await;
    let missing = client()
        .post(gw.url("/hooks/orders"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_problem(missing, 401, "webhook-unverified").await;

    // A backend failure goes back to the sender, and its retry is delivered, not deduplicated.
    status.store(503, Ordering::SeqCst);
    let sig5 = sign(HOOK_SECRET, "msg_5", ts, body);
    assert_eq!(post(&gw, "msg_5", ts, body, &sig5).await.status(), 503);
    assert_eq!(next(&mut rx).await.headers["webhook-id"], "msg_5");
    status.store(200, Ordering::SeqCst);
    assert_eq!(post(&gw, "msg_5", ts, body, &sig5).await.status(), 200);
    // The next delivery is msg_5's retry: neither msg_1's duplicate nor a failed message
    // reached the backend in between.
    assert_eq!(next(&mut rx).await.headers["webhook-id"], "msg_5");

    // A new secret version in the vault is picked up without a restart (the verifier is
    // rebuilt when the set of valid versions changes).
    const NEXT_SECRET: &str = "whsec_bmV4dC1zZWNyZXQtdmVyc2lvbi0xMjM0NTY3ODkw";
    put_secret(
        &gw.config_path(),
        "orders-hook",
        "webhook:orders",
        NEXT_SECRET,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("msg_rot_{n}");
        let res = post(&gw, &id, ts, body, &sign(NEXT_SECRET, &id, ts, body)).await;
        if res.status() == 200 {
            assert_eq!(next(&mut rx).await.headers["webhook-id"], id.as_str());
            break;
        }
        assert_eq!(res.status(), 401);
        assert!(
            std::time::Instant::now() < deadline,
            "new secret version never accepted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The gateway's own signing key rotated in the vault: forwards are signed with the new
    // one without a restart (until the change is seen, with the old one; never anything else).
    const NEXT_GATEWAY_SECRET: &str = "whsec_bmV4dC1nYXRld2F5LXNpZ25pbmcta2V5LTEyMzQ1Ng==";
    put_secret(
        &gw.config_path(),
        "pcl-signing",
        "gateway:webhook-signing",
        NEXT_GATEWAY_SECRET,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let id = format!("msg_resign_{n}");
        let res = post(&gw, &id, ts, body, &sign(NEXT_SECRET, &id, ts, body)).await;
        assert_eq!(res.status(), 200);
        let d = next(&mut rx).await;
        let fwd_ts = forwarded_at(&d);
        let got = d.headers["webhook-signature"].to_str().unwrap().to_string();
        if got == sign(NEXT_GATEWAY_SECRET, &id, fwd_ts, body) {
            break;
        }
        assert_eq!(got, sign(GATEWAY_SECRET, &id, fwd_ts, body));
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated signing key was never used"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    assert!(gw
        .stdout
        .wait_for(&["webhook verification failed"], Duration::from_secs(10))
        .is_some());
    // Counted per endpoint and source, for operators and alerts (admin token required).
    let failures: Vec<serde_json::Value> = client()
        .get(gw.admin_url("/admin/webhooks/failures"))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(failures[0]["webhook"], "orders");
    assert_eq!(failures[0]["source"], "127.0.0.1");
    assert!(failures[0]["count"].as_u64().unwrap() >= 4, "{failures:?}");
    let anonymous = client()
        .get(gw.admin_url("/admin/webhooks/failures"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Deliveries are counted by status and timed, per endpoint.
    let m = gw.metrics().await;
    for series in [
        "portcullis_webhook_forwarded_total{webhook=\"orders\",status=\"200\"}",
        "portcullis_webhook_delivery_seconds_count{webhook=\"orders\"}",
    ] {
        assert!(m.contains(series), "{series} missing:\n{m}");
    }

    let logs = format!("{}{}", gw.stdout.all(), gw.stderr.all());
    for secret in [
        HOOK_SECRET,
        GATEWAY_SECRET,
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ] {
        assert!(!logs.contains(secret), "secret in logs");
    }
    assert!(!logs.contains(&sig), "signature in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_to_two_instances_sharing_redis_is_forwarded_once() {
    let (forward, mut rx) = backend(Arc::new(AtomicU16::new(200))).await;
    let prefix = format!("pcl-wh-{}-{}", std::process::id(), now());
    let shared =
        format!("[shared_state]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n");
    let a = start(&config(&forward, &shared));
    let b = start(&config(&forward, &shared));
    let body = b"{\"type\":\"order.created\"}";
    let ts = now();
    let sig = sign(HOOK_SECRET, "msg_shared", ts, body);
    let (ra, rb) = tokio::join!(
        post(&a, "msg_shared", ts, body, &sig),
        post(&b, "msg_shared", ts, body, &sig)
    );
    assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
    assert_eq!(next(&mut rx).await.headers["webhook-id"], "msg_shared");
    // Send a new message and check it is the very next delivery: the duplicate never came.
    let sig2 = sign(HOOK_SECRET, "msg_after", ts, body);
    assert_eq!(post(&b, "msg_after", ts, body, &sig2).await.status(), 200);
    assert_eq!(next(&mut rx).await.headers["webhook-id"], "msg_after");
}

fn dlq(gw: &Gw, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["webhooks", "dlq"];
    all.extend_from_slice(args);
    all.push("--config");
    let cfg = gw.config_path();
    all.push(cfg.to_str().unwrap());
    common::run_cli(&all, gw.dir.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_survive_a_kill_and_dead_letters_can_be_replayed() {
    let status = Arc::new(AtomicU16::new(503));
    let (forward, mut rx) = backend(status.clone()).await;
    let cfg = config(&forward, "").replace(
        "provider = \"standard\"\n",
        "provider = \"standard\"\ndelivery = \"queued\"\nmax_age = \"3s\"\n",
    );
    let gw = start(&cfg);
    let body = b"{\"type\":\"order.created\",\"n\":1}";
    let ts = now();

    // Accepted (202) once it is in the store, while the backend is failing.
    let res = post(
        &gw,
        "msg_q1",
        ts,
        body,
        &sign(HOOK_SECRET, "msg_q1", ts, body),
    )
    .await;
    assert_eq!(res.status(), 202);
    assert!(res.text().await.unwrap().contains("queued"));
    assert_eq!(next(&mut rx).await.headers["webhook-id"], "msg_q1");

    // kill -9, the backend recovers, the gateway starts again: the event is delivered.
    let gw = gw.crash_and_restart();
    // Whatever the killed process sent is already here; what arrives next is the new one's.
    while let Ok(d) = rx.try_recv() {
        assert_eq!(d.headers["webhook-id"], "msg_q1");
    }
    status.store(200, Ordering::SeqCst);
    let d = next(&mut rx).await;
    assert_eq!(d.headers["webhook-id"], "msg_q1");
    assert_eq!(&d.body[..], body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = gw.metrics().await;
        if m.contains("portcullis_webhook_outbox_delivered_total{webhook=\"orders\"} 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery not recorded:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A backend that keeps failing: past max_age the event goes to the dead-letter list.
    status.store(500, Ordering::SeqCst);
    let res = post(
        &gw,
        "msg_q2",
        ts,
        body,
        &sign(HOOK_SECRET, "msg_q2", ts, body),
    )
    .await;
    assert_eq!(res.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let dead: Vec<serde_json::Value> = loop {
        let (code, out, err) = dlq(&gw, &["list", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
        if !v.is_empty() {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(dead[0]["message_id"], "msg_q2");
    // The admin API shows the same list, with the admin token only.
    let admin = client()
        .get(gw.admin_url("/admin/webhooks/dlq"))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    let listed: Vec<serde_json::Value> = admin.json().await.unwrap();
    assert_eq!(listed[0]["message_id"], "msg_q2");
    assert_eq!(listed[0]["body_bytes"], body.len());
    let anonymous = client()
        .get(gw.admin_url("/admin/webhooks/dlq"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(dead[0]["last_error"], "status 500");
    assert!(dead[0].get("body").is_none(), "bodies are not listed");
    while let Ok(d) = rx.try_recv() {
        assert_eq!(d.headers["webhook-id"], "msg_q2");
    }

    // Replayed once the backend works again: delivered, and the list is empty.
    status.store(200, Ordering::SeqCst);
    let id = dead[0]["id"].as_i64().unwrap().to_string();
    let (code, _, err) = dlq(&gw, &["replay", &id]);
    assert_eq!(code, 0, "{err}");
    let d = next(&mut rx).await;
    assert_eq!(d.headers["webhook-id"], "msg_q2");
    let (_, out, _) = dlq(&gw, &["list", "--json"]);
    assert_eq!(out.trim(), "[]");
    let (code, _, _) = dlq(&gw, &["drop", &id]);
    assert_eq!(code, 1, "nothing left to drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_delivery_passes_retry_after_back_and_times_out_with_504() {
    // A backend that is overloaded and says when to come back.
    let addr = common::serve_fn(|_, _| {
        http::Response::builder()
            .status(503)
            .header("retry-after", "7")
            .body("{\"busy\":true}".to_string())
            .unwrap()
    })
    .await;
    let gw = start(&config(&format!("http://{addr}/workflows/orders"), ""));
    let body: &[u8] = b"{\"type\":\"order.created\"}";
    let ts = now();
    let res = post(
        &gw,
        "msg_ra",
        ts,
        body,
        &sign(HOOK_SECRET, "msg_ra", ts, body),
    )
    .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "7");
    let text = res.text().await.unwrap();
    assert!(
        text.contains("backend-error") && !text.contains("busy"),
        "{text}"
    );

    // A backend that accepts the connection and never answers: the webhook's timeout ends it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let cfg = config(&format!("http://{silent_addr}/workflows/orders"), "")
        .replace("forward = ", "timeout = \"1s\"\nforward = ");
    let gw = start(&cfg);
    let res = post(
        &gw,
        "msg_to",
        ts,
        body,
        &sign(HOOK_SECRET, "msg_to", ts, body),
    )
    .await;
    assert_problem(res, 504, "upstream-timeout").await;

    // A backend that answers 200 at once and then never finishes its body: the sender hears
    // the 200 (the delivery happened); the body is not waited for within the deadline.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut held = Vec::new();
        while let Ok((mut s, _)) = slow.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":")
                .await;
            held.push(s);
        }
    });
    let cfg = config(&format!("http://{slow_addr}/workflows/orders"), "")
        .replace("forward = ", "timeout = \"1s\"\nforward = ");
    let gw = start(&cfg);
    let res = post(
        &gw,
        "msg_sb",
        ts,
        body,
        &sign(HOOK_SECRET, "msg_sb", ts, body),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("delivered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_types_and_the_payload_schema_are_checked_after_the_signature() {
    let (forward, mut rx) = backend(Arc::new(AtomicU16::new(200))).await;
    let schemas = tempfile::tempdir().unwrap();
    let schema = schemas.path().join("event.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["type", "data"],
            "properties": {"type": {"type": "string"},
                           "data": {"type": "object", "required": ["id"],
                                    "properties": {"id": {"type": "integer", "minimum": 1}}}}}"#,
    )
    .unwrap();
    let gw = start(&format!(
        "{}event_types = [\"order.created\"]\nschema = {:?}\n",
        config(&forward, ""),
        schema.display().to_string()
    ));
    let ts = now();
    let send = |id: &'static str, body: &'static [u8]| {
        let gw = &gw;
        async move { post(gw, id, ts, body, &sign(HOOK_SECRET, id, ts, body)).await }
    };

    let good: &[u8] = br#"{"type":"order.created","data":{"id":7}}"#;
    assert_eq!(send("msg_good", good).await.status(), 200);
    let d = next(&mut rx).await;
    assert_eq!(d.headers["webhook-id"], "msg_good");
    assert_eq!(&d.body[..], good);

    // Not on the allowlist: acknowledged so the sender stops, not forwarded.
    let res = send("msg_other", br#"{"type":"order.deleted","data":{"id":7}}"#).await;
    assert_eq!(res.status(), 202);
    assert!(res.text().await.unwrap().contains("ignored"));

    // Fails the schema: 422 naming the pointer and the rule, never the value.
    let res = send(
        "msg_bad",
        br#"{"type":"order.created","data":{"id":-424242}}"#,
    )
    .await;
    let p = assert_problem(res, 422, "invalid-body").await;
    assert_eq!(p["errors"][0]["pointer"], "/data/id");
    assert_eq!(p["errors"][0]["rule"], "minimum");
    assert!(!p.to_string().contains("424242"), "{p}");
    // Not JSON: no event type, so not on the allowlist either.
    let res = send("msg_nojson", b"type=order.created").await;
    assert_eq!(res.status(), 202);

    // The signature comes first: a forged body that would fail the schema is a 401.
    let forged = post(
        &gw,
        "msg_forged",
        ts,
        br#"{"type":"order.created"}"#,
        &sign(HOOK_SECRET, "msg_forged", ts, good),
    )
    .await;
    assert_problem(forged, 401, "webhook-unverified").await;

    // None of the refused ones reached the backend: the next delivery is the next good one.
    assert_eq!(send("msg_good_2", good).await.status(), 200);
    assert_eq!(next(&mut rx).await.headers["webhook-id"], "msg_good_2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_added_by_a_reload_is_signed_and_delivered_without_a_restart() {
    let (forward, mut rx) = backend(Arc::new(AtomicU16::new(200))).await;
    // Started without webhooks (the secrets are already in the vault).
    let gw = start(&server_section(""));
    gw.rewrite_config(&config(&forward, ""));
    assert!(gw
        .stdout
        .wait_for(&["configuration reloaded"], Duration::from_secs(10))
        .is_some());
    let body: &[u8] = b"{\"type\":\"order.created\"}";
    let ts = now();
    let res = post(
        &gw,
        "msg_r1",
        ts,
        body,
        &sign(HOOK_SECRET, "msg_r1", ts, body),
    )
    .await;
    assert_eq!(res.status(), 200);
    let d = next(&mut rx).await;
    let fwd_ts = forwarded_at(&d);
    assert_eq!(
        d.headers["webhook-signature"].to_str().unwrap(),
        sign(GATEWAY_SECRET, "msg_r1", fwd_ts, body)
    );
}
