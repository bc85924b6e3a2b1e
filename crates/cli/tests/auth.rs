//! Inbound authentication and authorization, end to end: API keys issued with the CLI,
//! verified by the running gateway, scopes, disabled clients, source networks, revocation,
//! lockout, and keys never stored or logged in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_problem, client, route, server_section, upstream, Gw};
use std::time::Duration;

const CLIENTS: &str = r#"
[[clients]]
id = "billing"
scopes = ["orders:read"]
roles = ["workflow"]
attributes = { tenant = "acme" }

[[clients]]
id = "reader-without-scope"
scopes = []

[[clients]]
id = "switched-off"
scopes = ["orders:read"]
enabled = false

[[clients]]
id = "office-only"
scopes = ["orders:read"]
allow_ips = ["10.0.0.0/8"]

[[clients]]
id = "not-from-here"
scopes = ["orders:read"]
deny_ips = ["::ffff:127.0.0.1"]
"#;

fn config(up: &str, extra_server: &str) -> String {
    format!(
        "{}{CLIENTS}{}{}",
        server_section(extra_server),
        route(
            "orders",
            "[\"GET\"]",
            "/orders/{id}",
            up,
            "auth = [\"api_key\"]\nscopes = [\"orders:read\"]"
        ),
        route("public", "[\"GET\"]", "/public", up, ""),
    )
}

fn issue(gw: &Gw, client_id: &str) -> String {
    let key = gw
        .cli(&["client", "key", "issue", client_id])
        .trim()
        .to_string();
    assert!(key.starts_with("pcl_"), "{key}");
    key
}

/// Waits until the gateway has loaded keys issued by another process (its one-second watch).
async fn wait_until_accepted(gw: &Gw, key: &str) {
    for _ in 0..50 {
        let res = client()
            .get(gw.url("/orders/1"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        if res.status() != 401 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("key never accepted");
}

#[tokio::test]
async fn api_keys_authenticate_and_scopes_authorize() {
    let up = upstream::start(None).await;
    // Polling for the CLI-issued key fails until the gateway reloads; keep those failures from
    // locking the test out (lockout has its own test).
    let gw = Gw::start(&format!(
        "{}[auth]\nbrute_force = {{ max_failures = 1000 }}\n",
        config(&up.url(), "")
    ));
    let key = issue(&gw, "billing");
    wait_until_accepted(&gw, &key).await;
    let c = client();

    // As a bearer token: forwarded with the verified identity, without the key, and with any
    // identity header the client tried to set replaced.
    let res = c
        .get(gw.url("/orders/7"))
        .bearer_auth(&key)
        .header("x-portcullis-client", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["headers"]["x-portcullis-client"], "billing");
    assert_eq!(v["headers"]["x-portcullis-scopes"], "orders:read");
    assert!(
        v["headers"].get("authorization").is_none(),
        "the gateway key reached the upstream"
    );
    // In X-Api-Key too.
    let res = c
        .get(gw.url("/orders/7"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Public routes still strip spoofed identity headers.
    let v: serde_json::Value = c
        .get(gw.url("/public"))
        .header("x-portcullis-client", "admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["headers"].get("x-portcullis-client").is_none());

    // No credential: 401 with a challenge.
    let res = c.get(gw.url("/orders/7")).send().await.unwrap();
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );
    assert_problem(res, 401, "unauthenticated").await;

    // Unknown key and wrong secret: the same answer, so keys cannot be enumerated.
    let (id, _) = key.trim_start_matches("pcl_").split_once('_').unwrap();
    let wrong_secret = format!("pcl_{id}_{}", "B".repeat(43));
    let unknown = format!("pcl_0123456789abcdef_{}", "B".repeat(43));
    let mut bodies = Vec::new();
    for k in [&wrong_secret, &unknown, &"not-a-key".to_string()] {
        let res = c
            .get(gw.url("/orders/7"))
            .bearer_auth(k)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer realm=\"portcullis\", error=\"invalid_token\""
        );
        let mut v = assert_problem(res, 401, "unauthenticated").await;
        v["request_id"] = serde_json::Value::Null;
        bodies.push(v);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");

    // Known callers without permission: 403.
    let no_scope = gw.issue_key("reader-without-scope").await;
    let office = gw.issue_key("office-only").await;
    let banned = gw.issue_key("not-from-here").await;
    let off = gw.issue_key("switched-off").await;
    assert_problem(
        gw.get_with_key("/orders/7", &no_scope).await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        gw.get_with_key("/orders/7", &office).await,
        403,
        "forbidden",
    )
    .await;
    // A client's deny list, here in the IPv4-mapped form of this test's 127.0.0.1.
    assert_problem(
        gw.get_with_key("/orders/7", &banned).await,
        403,
        "forbidden",
    )
    .await;
    // A disabled client is refused like an invalid key.
    assert_problem(
        gw.get_with_key("/orders/7", &off).await,
        401,
        "unauthenticated",
    )
    .await;

    // Revocation through the admin API applies to the very next request.
    let res = c
        .post(gw.admin_url(&format!("/admin/keys/{id}/revoke")))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_problem(
        gw.get_with_key("/orders/7", &key).await,
        401,
        "unauthenticated",
    )
    .await;

    // Keys are nowhere in plaintext: not in the log, not in the database files.
    let secret_part = key.rsplit_once('_').map(|(_, s)| s.to_string()).unwrap();
    let secret_part = if secret_part.len() >= 20 {
        secret_part
    } else {
        key.clone()
    };
    let logs = format!("{}\n{}", gw.stdout.all(), gw.stderr.all());
    assert!(
        !logs.contains(&key) && !logs.contains(&secret_part),
        "key in the log:\n{logs}"
    );
    for e in std::fs::read_dir(gw.dir.path().join("state")).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !bytes
                .windows(secret_part.len())
                .any(|w| w == secret_part.as_bytes()),
            "key in {}",
            p.display()
        );
    }
    // The key id (public) is listed; the key is not.
    let listed = gw.cli(&["client", "key", "list", "billing"]);
    assert!(
        listed.contains(id) && listed.contains("revoked") && !listed.contains(&secret_part),
        "{listed}"
    );
}

#[tokio::test]
async fn a_locked_key_id_refuses_guesses_but_not_the_keys_owner() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[auth]\nbrute_force = {{ max_failures = 3, window = \"1m\", cooldown = \"1m\" }}\n",
        config(&up.url(), "")
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    // The id is the public part: pcl_<id>_<secret>.
    let id = key.split('_').nth(1).unwrap().to_string();
    let guess = format!("pcl_{id}_{}", "C".repeat(43));
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let get = |c: reqwest::Client, k: String| {
        let url = gw.url("/orders/1");
        async move {
            c.get(url)
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Guesses from four addresses: no address reaches its own limit, the key id passes its.
    for last in 2..=5 {
        assert_eq!(get(from(last), guess.clone()).await, 401);
    }
    // The next guess, from yet another address, is refused as locked out...
    assert_eq!(get(from(6), guess.clone()).await, 429);
    // ...but the key's owner, who holds the secret, is not shut out by whoever saw the id.
    assert_eq!(get(from(7), key.clone()).await, 200);
    // Guesses at the locked id still count against the guessing address: its fourth locks it
    // out, for the real key as well, and every guess is logged.
    for _ in 0..3 {
        assert_eq!(get(from(6), guess.clone()).await, 429);
    }
    assert_eq!(get(from(6), key.clone()).await, 429);
    assert_eq!(get(from(7), key).await, 200);
    // (The log is written in batches: wait for the lines, at most 5 s.)
    let logged = || {
        gw.stdout
            .all()
            .lines()
            .filter(|l| l.contains("auth_failure") && l.contains("\"client_ip\":\"127.0.0.6\""))
            .count()
    };
    for _ in 0..50 {
        if logged() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logged(), 4, "{}", gw.stdout.all());
}

#[tokio::test]
async fn repeated_failures_lock_the_source_out() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[auth]\nbrute_force = {{ max_failures = 3, window = \"1m\", cooldown = \"1m\" }}\n",
        config(&up.url(), "")
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    let c = client();
    let bad = format!("pcl_0123456789abcdef_{}", "C".repeat(43));
    for _ in 0..4 {
        assert_eq!(gw.get_with_key("/orders/1", &bad).await.status(), 401);
    }
    let res = c
        .get(gw.url("/orders/1"))
        .bearer_auth(&bad)
        .send()
        .await
        .unwrap();
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 60);
    assert_problem(res, 429, "too-many-requests").await;
    // The source is locked out, even with a valid key, until the cool-down passes.
    assert_eq!(gw.get_with_key("/orders/1", &key).await.status(), 429);
    assert!(
        gw.stdout
            .wait_for(&["auth_failure", "\"locked\":true"], Duration::from_secs(5))
            .is_some(),
        "{}",
        gw.stdout.all()
    );
}

#[tokio::test]
async fn object_and_property_rules_protect_other_tenants_data() {
    let up = upstream::start(None).await;
    let u = up.url();
    let extra_clients = "[[clients]]\nid = \"auditor\"\nroles = [\"auditor\"]\nscopes = [\"orders:read\"]\nattributes = { tenant = \"acme\" }\n";
    let rules = "auth = [\"api_key\"]\nmatch = { \"path.tenant\" = \"client.tenant\" }\nresponse_fields = { default = { deny = [\"headers\", \"query\"] }, auditor = { allow = [\"path\"] } }";
    let cfg = format!(
        "{}{CLIENTS}{extra_clients}{}{}{}",
        server_section(""),
        route("tenant-orders", "[\"GET\"]", "/tenants/{tenant}/orders/{id}", &u, rules),
        route("by-query", "[\"GET\"]", "/search", &u, "auth = [\"api_key\"]\nmatch = { \"query.tenant\" = \"client.tenant\" }"),
        route("create", "[\"POST\"]", "/orders", &u, "auth = [\"api_key\"]\nmatch = { \"body.customer.tenant\" = \"client.tenant\" }\nrequest_deny_fields = [\"role\", \"account.is_admin\"]"),
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    let auditor = gw.issue_key("auditor").await;
    let c = client();

    // Own tenant: allowed, and the response is filtered for the caller's role.
    let res = c
        .get(gw.url("/tenants/acme/orders/1?x=1"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["path"], "/tenants/acme/orders/1");
    assert!(
        v.get("headers").is_none() && v.get("query").is_none(),
        "{v}"
    );
    assert!(v.get("method").is_some());
    let v: serde_json::Value = c
        .get(gw.url("/tenants/acme/orders/1"))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!({ "path": "/tenants/acme/orders/1" }));

    // Another tenant's objects, by path, query or body: refused before the upstream sees them.
    assert_problem(
        gw.get_with_key("/tenants/globex/orders/1", &key).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        gw.get_with_key("/search?tenant=acme", &key).await.status(),
        200
    );
    assert_problem(
        gw.get_with_key("/search?tenant=globex", &key).await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(gw.get_with_key("/search", &key).await, 403, "forbidden").await;
    // A repeated name: the rule must not judge one copy while the upstream reads another.
    for q in [
        "tenant=acme&tenant=globex",
        "tenant=globex&tenant=acme",
        "tenant=acme&tenant[]=globex",
        "tenant=acme&tenant%5B1%5D=globex",
        "tenant=acme&TENANT=globex",
    ] {
        let res = gw.get_with_key(&format!("/search?{q}"), &key).await;
        assert_problem(res, 403, "forbidden").await;
    }
    let own = serde_json::json!({ "customer": { "tenant": "acme" }, "sku": "A1" });
    let res = c
        .post(gw.url("/orders"))
        .bearer_auth(&key)
        .json(&own)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let echoed: serde_json::Value = res.json().await.unwrap();
    assert_eq!(echoed["body_len"], own.to_string().len());
    // A second copy as a binder reads it (another case, a dotted name): which one would the
    // upstream use? Refused.
    for two in [
        serde_json::json!({ "customer": { "tenant": "acme" }, "Customer": { "tenant": "globex" } }),
        serde_json::json!({ "customer": { "tenant": "acme" }, "customer.tenant": "globex" }),
    ] {
        let res = c
            .post(gw.url("/orders"))
            .bearer_auth(&key)
            .json(&two)
            .send()
            .await
            .unwrap();
        assert_problem(res, 403, "forbidden").await;
    }
    let other = serde_json::json!({ "customer": { "tenant": "globex" } });
    assert_problem(
        c.post(gw.url("/orders"))
            .bearer_auth(&key)
            .json(&other)
            .send()
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;

    // The rules read the body as JSON, so it must be labelled JSON, in UTF-8: a JSON-and-form
    // polyglot labelled as a form, or UTF-7 (`+AHI-ole` is `role` to a decoder), was passed
    // while the upstream read another document.
    for (ct, body) in [
        (
            "application/x-www-form-urlencoded",
            r#"{"customer":{"tenant":"acme"},"x":"&role=admin&y="}"#,
        ),
        (
            "application/json; charset=utf-7",
            r#"{"customer":{"tenant":"acme"},"+AHI-ole":"admin"}"#,
        ),
    ] {
        let res = c
            .post(gw.url("/orders"))
            .bearer_auth(&key)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(res, 415, "unsupported-media-type").await;
    }
    // With a declared length it is refused before it is read: not a 413 after buffering the
    // route's limit of a body that was never going to be accepted.
    // (A raw socket: the head promises 2 MiB and no byte of the body is sent.)
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(gw.data).await.unwrap();
        let head = format!(
            "POST /orders HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: text/plain\r\nContent-Length: 2097152\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("answered without the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    }

    // Mass assignment: fields the caller may not set, at any depth.
    for body in [
        serde_json::json!({ "customer": { "tenant": "acme" }, "role": "admin" }),
        serde_json::json!({ "customer": { "tenant": "acme" }, "account": { "is_admin": true } }),
        // As binders read them: in another case (ASP.NET Core), or as a dotted name
        // (MongoDB's `$set`).
        serde_json::json!({ "customer": { "tenant": "acme" }, "Role": "admin" }),
        serde_json::json!({ "customer": { "tenant": "acme" }, "account.is_admin": true }),
    ] {
        assert_problem(
            c.post(gw.url("/orders"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap(),
            403,
            "forbidden",
        )
        .await;
    }
    // A deeply nested body is refused cleanly, without a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let res = c
        .post(gw.url("/orders"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    // Refused by the JSON structure limits (default depth 32) before the object rules parse it.
    let v = assert_problem(res, 400, "json-limit-exceeded").await;
    assert_eq!(v["errors"][0]["rule"], "max_depth");
    assert_eq!(
        gw.get_with_key("/search?tenant=acme", &key).await.status(),
        200
    );
}

#[tokio::test]
async fn disabling_a_client_by_reload_applies_to_the_next_request() {
    let up = upstream::start(None).await;
    let cfg = config(&up.url(), "");
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    assert_eq!(
        client()
            .get(gw.url("/orders/1"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let disabled = cfg.replacen(
        "id = \"billing\"\n",
        "id = \"billing\"\nenabled = false\n",
        1,
    );
    assert_ne!(disabled, cfg);
    gw.rewrite_config(&disabled);
    assert!(
        gw.stdout
            .wait_for(&["configuration reloaded"], Duration::from_secs(10))
            .is_some(),
        "{}",
        gw.stdout.all()
    );
    assert_problem(
        client()
            .get(gw.url("/orders/1"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        401,
        "unauthenticated",
    )
    .await;
}

/// The `last_used_at` the store holds for `client`'s keys, as `client key list --json` prints it.
fn last_used(gw: &Gw, client_id: &str) -> Vec<Option<i64>> {
    let out = gw.cli(&["client", "key", "list", client_id, "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    list.iter().map(|k| k["last_used_at"].as_i64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_use_gets_its_last_used_time_recorded_in_the_store() {
    let up = upstream::start(None).await;
    let gw = Gw::start(&config(&up.url(), ""));
    let key = issue(&gw, "billing");
    assert_eq!(last_used(&gw, "billing"), vec![None], "never used yet");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    wait_until_accepted(&gw, &key).await;
    // The gateway writes last-used times from its one-second watch.
    let mut seen = vec![None];
    for _ in 0..100 {
        seen = last_used(&gw, "billing");
        if seen[0].is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = seen[0].expect("last_used_at never recorded");
    assert!(at >= before, "{at} < {before}");
}

#[tokio::test]
async fn a_range_request_cannot_cut_a_denied_field_out_of_a_filtered_response() {
    // An upstream that honours `Range` on its JSON, as static-file handlers do; `/always`
    // answers 206 whatever was asked.
    const DOC: &str = r#"{"id":"42","internal_notes":"card ending 4242"}"#;
    let addr = common::serve_fn(|parts, _| {
        let range = parts.headers.get("range").is_some();
        if range || parts.uri.path() == "/always" {
            let mut res = common::json_response(206, &DOC[17..35]);
            res.headers_mut().insert(
                "content-range",
                http::HeaderValue::from_static("bytes 17-34/48"),
            );
            return res;
        }
        common::json_response(200, DOC)
    })
    .await;
    let u = format!("http://{addr}");
    let rules =
        "auth = [\"api_key\"]\nresponse_fields = { default = { deny = [\"internal_notes\"] } }";
    let gw = Gw::start(&format!(
        "{}{CLIENTS}{}{}",
        server_section(""),
        route("doc", "[\"GET\"]", "/doc", &u, rules),
        route("always", "[\"GET\"]", "/always", &u, rules),
    ));
    let key = gw.issue_key("billing").await;
    let res = client()
        .get(gw.url("/doc"))
        .bearer_auth(&key)
        .header("range", "bytes=17-34")
        .header("if-range", "\"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), r#"{"id":"42"}"#);
    let res = client()
        .get(gw.url("/always"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let v = assert_problem(res, 502, "upstream-unavailable").await;
    assert!(!v.to_string().contains("4242"), "{v}");
}
