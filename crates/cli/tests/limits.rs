//! Rate limits through the real gateway: exact under concurrency, with Retry-After and the
//! IETF RateLimit headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, route, server_section, upstream, Gw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_100_admits_exactly_100_of_150_concurrent_requests() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\n\n{}{}",
        server_section(""),
        route("limited", "[\"GET\"]", "/limited", &up.url(), "auth = [\"api_key\"]\nrate_limits = [{ per = \"client\", limit = 100, period = \"1m\" }]"),
        route("by-ip", "[\"GET\"]", "/by-ip", &up.url(), "rate_limits = [{ per = \"ip\", limit = 3, period = \"1m\" }]"),
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    let c = client();
    let tasks: Vec<_> = (0..150)
        .map(|_| {
            let (c, url, key) = (c.clone(), gw.url("/limited"), key.clone());
            tokio::spawn(async move { c.get(url).bearer_auth(key).send().await.unwrap() })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let res = t.await.unwrap();
        assert!(res.headers().contains_key("ratelimit-policy"));
        match res.status().as_u16() {
            200 => {
                assert!(res.headers()["ratelimit"].to_str().unwrap().contains(";r="));
                ok += 1;
            }
            429 => {
                let retry: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry));
                limited += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, limited), (100, 50));
    // Counted per route, limit and outcome.
    let m = gw.metrics().await;
    let count = |outcome: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("portcullis_rate_limit_decisions_total{")
                    && l.contains("route=\"limited\"")
                    && l.contains("limit=\"0\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.to_string())
    };
    assert_eq!(count("admitted").as_deref(), Some("100"), "{m}");
    assert_eq!(count("limited").as_deref(), Some("50"), "{m}");

    // Per IP on a public route.
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..5).map(|_| c.get(gw.url("/by-ip")).send()))
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_client_limit_is_one_allowance_across_routes_and_a_client_route_limit_is_not() {
    let up = upstream::start(None).await;
    let client_limit =
        "auth = [\"api_key\"]\nrate_limits = [{ per = \"client\", limit = 2, period = \"1h\" }]";
    let route_limit = "auth = [\"api_key\"]\nrate_limits = [{ per = \"client_route\", limit = 2, period = \"1h\" }]";
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\n\n{}{}{}{}",
        server_section(""),
        route("a", "[\"GET\"]", "/a", &up.url(), client_limit),
        route("b", "[\"GET\"]", "/b", &up.url(), client_limit),
        route("c", "[\"GET\"]", "/c", &up.url(), route_limit),
        route("d", "[\"GET\"]", "/d", &up.url(), route_limit),
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    let c = client();
    let mut statuses = Vec::new();
    for path in ["/a", "/b", "/a", "/b", "/c", "/d", "/c", "/d", "/c", "/d"] {
        let res = c.get(gw.url(path)).bearer_auth(&key).send().await.unwrap();
        statuses.push((path, res.status().as_u16()));
    }
    assert_eq!(
        statuses,
        [
            ("/a", 200),
            ("/b", 200),
            ("/a", 429),
            ("/b", 429),
            ("/c", 200),
            ("/d", 200),
            ("/c", 200),
            ("/d", 200),
            ("/c", 429),
            ("/d", 429),
        ]
    );
}

#[tokio::test]
async fn a_client_that_waits_retry_after_is_admitted() {
    let up = upstream::start(None).await;
    // One request per 3 s: the second waits just under 3 s, which a rounded-down
    // Retry-After would give as 2, too early.
    let cfg = format!(
        "{}{}",
        server_section(""),
        route(
            "slow",
            "[\"GET\"]",
            "/slow",
            &up.url(),
            "rate_limits = [{ per = \"ip\", limit = 1, period = \"3s\" }]"
        ),
    );
    let gw = Gw::start(&cfg);
    let c = client();
    assert_eq!(c.get(gw.url("/slow")).send().await.unwrap().status(), 200);
    let res = c.get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let t = res.headers()["ratelimit"].to_str().unwrap().to_string();
    // Both say the same whole number of seconds, rounded up.
    assert!(t.ends_with(&format!(";t={retry}")), "{t}");
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    assert_eq!(c.get(gw.url("/slow")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn client_network_rules_apply_per_route_and_server_wide() {
    let up = upstream::start(None).await;
    let routes = [
        route(
            "denied",
            "[\"GET\"]",
            "/denied",
            &up.url(),
            "deny_ips = [\"127.0.0.0/8\"]",
        ),
        route(
            "office",
            "[\"GET\"]",
            "/office",
            &up.url(),
            "allow_ips = [\"10.0.0.0/8\"]",
        ),
        route(
            "local",
            "[\"GET\"]",
            "/local",
            &up.url(),
            "allow_ips = [\"127.0.0.1\", \"::1\"]",
        ),
        // Rules written in the IPv4-mapped form hold for IPv4 clients, as written.
        route(
            "mapped-deny",
            "[\"GET\"]",
            "/mapped-deny",
            &up.url(),
            "deny_ips = [\"::ffff:127.0.0.1\"]",
        ),
        route(
            "mapped-allow",
            "[\"GET\"]",
            "/mapped-allow",
            &up.url(),
            "allow_ips = [\"::ffff:127.0.0.0/104\"]",
        ),
    ]
    .concat();
    let gw = Gw::start(&format!("{}{routes}", server_section("")));
    let c = client();
    assert_eq!(c.get(gw.url("/denied")).send().await.unwrap().status(), 403);
    assert_eq!(c.get(gw.url("/office")).send().await.unwrap().status(), 403);
    assert_eq!(c.get(gw.url("/local")).send().await.unwrap().status(), 200);
    assert_eq!(
        c.get(gw.url("/mapped-deny")).send().await.unwrap().status(),
        403
    );
    assert_eq!(
        c.get(gw.url("/mapped-allow"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let locked = Gw::start(&format!(
        "{}{routes}",
        server_section("deny_ips = [\"127.0.0.1/32\"]")
    ));
    let res = c.get(locked.url("/local")).send().await.unwrap();
    common::assert_problem(res, 403, "forbidden").await;
    // Refused before routing: an undeclared path is not revealed as 404 either.
    assert_eq!(
        c.get(locked.url("/nope")).send().await.unwrap().status(),
        403
    );
}

#[tokio::test]
async fn request_bodies_are_validated_against_the_schema() {
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["sku", "qty"],
        "properties": { "sku": { "type": "string", "maxLength": 8 }, "qty": { "type": "integer", "minimum": 1 } },
        "additionalProperties": false
    });
    std::fs::write(dir.path().join("order.json"), schema.to_string()).unwrap();
    let cfg = format!(
        "{}{}",
        server_section(""),
        route(
            "create",
            "[\"POST\"]",
            "/orders",
            &up.url(),
            "request_schema = \"order.json\""
        )
    );
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let gw = Gw::start_in(dir);
    let c = client();
    let post = |body: String, ct: &'static str| {
        let (c, url) = (c.clone(), gw.url("/orders"));
        async move {
            c.post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let res = post(r#"{"sku":"A1","qty":2}"#.into(), "application/json").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["body_len"],
        20
    );

    let res = post(
        r#"{"sku":"SENTINEL-long-value","qty":0,"x":1}"#.into(),
        "application/json",
    )
    .await;
    let v = common::assert_problem(res, 422, "invalid-body").await;
    let errors: Vec<(String, String)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().into(),
                e["rule"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        errors.contains(&("/sku".into(), "maxLength".into())),
        "{errors:?}"
    );
    assert!(
        errors.contains(&("/qty".into(), "minimum".into())),
        "{errors:?}"
    );
    // The unexpected member is named, not its object.
    assert!(
        errors.contains(&("/x".into(), "additionalProperties".into())),
        "{errors:?}"
    );
    assert!(
        !v.to_string().contains("SENTINEL"),
        "the value was echoed: {v}"
    );
    // A fraction the nearest double still tells from an integer is refused: it was read one
    // unit off, as 10.0, and passed (the upstream reads 10.000000000000002).
    let v = common::assert_problem(
        post(
            r#"{"sku":"A1","qty":10.000000000000001}"#.into(),
            "application/json",
        )
        .await,
        422,
        "invalid-body",
    )
    .await;
    assert_eq!(v["errors"][0]["pointer"], "/qty", "{v}");
    let v = common::assert_problem(
        post(r#"{"sku":"A1"}"#.into(), "application/json").await,
        422,
        "invalid-body",
    )
    .await;
    assert_eq!(v["errors"][0]["rule"], "required");
    assert_eq!(
        v["errors"][0]["pointer"], "/qty",
        "the missing member is named: {v}"
    );
    for ct in ["text/plain", "application/json; charset=utf-7"] {
        common::assert_problem(
            post(r#"{"sku":"A1","qty":2}"#.into(), ct).await,
            415,
            "unsupported-media-type",
        )
        .await;
    }
    common::assert_problem(
        post("{not json".into(), "application/json").await,
        400,
        "malformed-request",
    )
    .await;
    // A client naming Content-Type in `Connection` had it removed only at the forwarder,
    // after the schema had passed the body as JSON: the upstream got it with no type. Now
    // it goes before the policies look, so the route's type requirement refuses it.
    let res = c
        .post(gw.url("/orders"))
        .header("content-type", "application/json")
        .header("connection", "content-type")
        .body(r#"{"sku":"A1","qty":2}"#)
        .send()
        .await
        .unwrap();
    common::assert_problem(res, 415, "unsupported-media-type").await;
    // Two Content-Type headers: the schema judged the body as the first while an upstream
    // that reads the last saw a form. One media type per request.
    for (first, second) in [
        ("application/json", "application/x-www-form-urlencoded"),
        ("text/plain", "application/json"),
    ] {
        let res = c
            .post(gw.url("/orders"))
            .header("content-type", first)
            .header("content-type", second)
            .body(r#"{"sku":"A1","qty":2}"#)
            .send()
            .await
            .unwrap();
        common::assert_problem(res, 400, "malformed-request").await;
    }
    // The same two on one line.
    let res = post(
        r#"{"sku":"A1","qty":2}"#.into(),
        "text/plain, application/json",
    )
    .await;
    common::assert_problem(res, 400, "malformed-request").await;
    // A parameter may quote a comma: one media type.
    let res = post(
        r#"{"sku":"A1","qty":2}"#.into(),
        "application/json; x=\"a,b\"",
    )
    .await;
    assert_eq!(res.status(), 200);
    // A repeated name: serde_json's tree keeps the last "sku", which passes, and a
    // first-wins upstream would act on the first, which does not. Both orders are refused.
    for body in [
        r#"{"sku":"SENTINEL-too-long","qty":2,"sku":"A1"}"#,
        r#"{"sku":"A1","qty":2,"sku":"SENTINEL-too-long"}"#,
    ] {
        let res = post(body.into(), "application/json").await;
        let v = common::assert_problem(res, 400, "json-limit-exceeded").await;
        assert_eq!(v["errors"][0]["rule"], "unique_member_names", "{body}: {v}");
        assert_eq!(v["errors"][0]["pointer"], "/", "{v}");
        assert!(!v.to_string().contains("SENTINEL"), "{v}");
    }
}

#[tokio::test]
async fn cors_preflights_and_responses() {
    let up = upstream::start(None).await;
    let cors = "cors = { origins = [\"https://app.example\"], headers = [\"content-type\", \"authorization\"], credentials = true, max_age = \"5m\" }";
    let cfg = format!(
        "{}[[clients]]\nid = \"c\"\n\n{}",
        server_section(""),
        route(
            "api",
            "[\"GET\", \"POST\"]",
            "/api",
            &up.url(),
            &format!("auth = [\"api_key\"]\n{cors}")
        ),
    );
    let gw = Gw::start(&cfg);
    let c = client();
    let pre = |origin: &'static str, method: &'static str, headers: &'static str| {
        let (c, url) = (c.clone(), gw.url("/api"));
        async move {
            c.request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header("access-control-request-headers", headers)
                .send()
                .await
                .unwrap()
        }
    };
    let res = pre("https://app.example", "POST", "content-type, authorization").await;
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-max-age"], "300");
    // Refusals: another origin, a method the path does not have at all (it was a 405 from
    // the route lookup), a header not listed. Each is a 403 that varies by Origin.
    for (origin, method, headers) in [
        ("https://evil.example", "POST", "content-type"),
        ("https://app.example", "DELETE", ""),
        ("https://app.example", "GET", "x-unlisted"),
    ] {
        let res = pre(origin, method, headers).await;
        assert_eq!(
            res.headers().get("vary").map(|v| v.to_str().unwrap()),
            Some("Origin"),
            "{method}"
        );
        assert!(res.headers().get("access-control-allow-origin").is_none());
        common::assert_problem(res, 403, "forbidden").await;
    }

    // Actual requests: even a 401 carries the headers for an allowed origin; others get none.
    let res = c
        .get(gw.url("/api"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(res.headers()["vary"], "Origin");
    let res = c
        .get(gw.url("/api"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());

    // A method the path does not take is a 405 the page can read: it carries the route's
    // CORS headers for an allowed origin (without them the browser reports a CORS failure).
    let res = c
        .delete(gw.url("/api"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://app.example")
    );
    assert_eq!(res.headers()["vary"], "Origin");
    assert_eq!(res.headers()["allow"], "GET, POST, HEAD");
    common::assert_problem(res, 405, "method-not-allowed").await;
    let res = c
        .delete(gw.url("/api"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(res.status(), 405);

    // `*` with credentials is refused by check.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        route(
            "r",
            "[\"GET\"]",
            "/r",
            &up.url(),
            "cors = { origins = [\"*\"], credentials = true }",
        ),
    )
    .unwrap();
    let (code, _, err) = common::run_cli(&["check", bad.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("credentials"), "{err}");
}

#[tokio::test]
async fn cors_is_decided_by_the_route_not_the_upstream() {
    let up = upstream::start(None).await;
    let cors =
        "cors = { origins = [\"https://app.example\"], expose_headers = [\"x-request-id\"] }";
    let cfg = format!(
        "{}{}{}",
        server_section(""),
        route("open", "[\"GET\"]", "/cors-open", &up.url(), cors),
        route(
            "walled",
            "[\"GET\"]",
            "/walled",
            &up.url(),
            &format!("{cors}\nallow_ips = [\"10.0.0.0/8\"]")
        ),
    );
    let gw = Gw::start(&cfg);
    let c = client();
    let get = |origin: Option<&'static str>| {
        let mut r = c.get(gw.url("/cors-open"));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    // The upstream answers `*` with credentials: a refused origin must get none of it.
    let res = get(Some("https://evil.example")).await.unwrap();
    assert_eq!(res.status(), 200);
    for name in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
    ] {
        assert!(
            res.headers().get(name).is_none(),
            "{name} reached a refused origin"
        );
    }
    assert_eq!(res.headers()["vary"], "Origin");
    // An allowed origin gets exactly the route's answer: one origin, its expose list, and
    // no credentials the route did not allow.
    let res = get(Some("https://app.example")).await.unwrap();
    let origins: Vec<_> = res
        .headers()
        .get_all("access-control-allow-origin")
        .iter()
        .collect();
    assert_eq!(origins, ["https://app.example"]);
    assert_eq!(
        res.headers()["access-control-expose-headers"],
        "x-request-id"
    );
    assert!(res
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    // No Origin at all: still `Vary: Origin`, so a cache does not serve this to a browser.
    let res = get(None).await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(res.headers()["vary"], "Origin");

    // A preflight from a network the route refuses is refused like the route itself.
    let res = c
        .request(reqwest::Method::OPTIONS, gw.url("/walled"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    common::assert_problem(res, 403, "forbidden").await;
}

/// The (pointer, rule) pairs of a problem's `errors` list.
fn pointer_rules(v: &serde_json::Value) -> Vec<(String, String)> {
    v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().into(),
                e["rule"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn json_structure_limits_refuse_with_pointer_and_rule() {
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("any.json"),
        r#"{"$schema": "https://json-schema.org/draft/2020-12/schema"}"#,
    )
    .unwrap();
    let cfg = format!(
        "{}{}{}{}",
        server_section(""),
        route(
            "limited",
            "[\"POST\"]",
            "/limited",
            &up.url(),
            "json_limits = { max_depth = 3, max_string = 16, max_array = 3, max_members = 4 }"
        ),
        // No json_limits: the defaults apply because the schema validator parses the body.
        route(
            "schema",
            "[\"POST\"]",
            "/schema",
            &up.url(),
            "request_schema = \"any.json\""
        ),
        // Both: the schema's one-pass check also applies the limits, with the same refusals.
        route(
            "strict",
            "[\"POST\"]",
            "/strict",
            &up.url(),
            "request_schema = \"list.json\"\njson_limits = { max_depth = 2, max_string = 16, max_array = 3, max_members = 4 }"
        ),
    );
    std::fs::write(
        dir.path().join("list.json"),
        r#"{"type": "object", "properties": {"list": {"type": "array", "items": {"type": "integer"}}}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let gw = Gw::start_in(dir);
    let c = client();
    let post = |path: &'static str, body: String, ct: &'static str| {
        let (c, url) = (c.clone(), gw.url(path));
        async move {
            c.post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };

    let fine = r#"{"a":[1,2,{"b":"short"}],"c":null}"#;
    let res = post("/limited", fine.into(), "application/json").await;
    assert_eq!(res.status(), 200);
    // A number JSON allows but no checker can represent is refused as such, not as a body
    // that "could not be read".
    for body in ["[1e999999]", "{\"n\":-1e400}"] {
        let res = post("/limited", body.into(), "application/json").await;
        let v = common::assert_problem(res, 400, "malformed-request").await;
        assert!(
            v["detail"].as_str().unwrap().contains("not valid JSON"),
            "{body}: {v}"
        );
    }
    let echoed: serde_json::Value = res.json().await.unwrap();
    assert_eq!(echoed["body_len"], fine.len());

    for (body, pointer, rule) in [
        (r#"{"a":[[{"b":1}]]}"#, "/a/0/0", "max_depth"),
        (
            r#"{"a":[1,{"b":"SENTINEL-0123456789"}]}"#,
            "/a/1/b",
            "max_string",
        ),
        (r#"{"a":{"SENTINEL-key-0123456789":1}}"#, "/a", "max_string"),
        (r#"{"list":[1,2,3,4]}"#, "/list", "max_array"),
        (r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#, "/", "max_members"),
    ] {
        let res = post("/limited", body.into(), "application/json; charset=utf-8").await;
        let v = common::assert_problem(res, 400, "json-limit-exceeded").await;
        assert_eq!(
            pointer_rules(&v),
            vec![(pointer.to_string(), rule.to_string())],
            "{body}"
        );
        assert!(!v.to_string().contains("SENTINEL"), "value echoed: {v}");
    }

    // 100 000 nested arrays: refused at the limit, no stack overflow; the gateway carries on.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let v = common::assert_problem(
        post("/limited", deep.clone(), "application/json").await,
        400,
        "json-limit-exceeded",
    )
    .await;
    assert_eq!(
        pointer_rules(&v),
        vec![("/0/0/0".to_string(), "max_depth".to_string())]
    );
    // Bodies that are not JSON by their content type are not the checker's business.
    assert_eq!(
        post("/limited", deep.clone(), "text/plain").await.status(),
        200
    );
    common::assert_problem(
        post("/limited", "{not json".into(), "application/json").await,
        400,
        "malformed-request",
    )
    .await;

    // Default limits (depth 32) where the body is parsed anyway, before the schema sees it.
    let v = common::assert_problem(
        post("/schema", deep, "application/json").await,
        400,
        "json-limit-exceeded",
    )
    .await;
    assert_eq!(v["errors"][0]["pointer"], "/0".repeat(32));
    let nested_33 = format!("{}{}", "[".repeat(33), "]".repeat(33));
    let v = common::assert_problem(
        post("/schema", nested_33, "application/json").await,
        400,
        "json-limit-exceeded",
    )
    .await;
    assert_eq!(v["errors"][0]["rule"], "max_depth");
    let nested_32 = format!("{}{}", "[".repeat(32), "]".repeat(32));
    assert_eq!(
        post("/schema", nested_32, "application/json")
            .await
            .status(),
        200
    );

    let res = post("/strict", r#"{"list":[1,2,3]}"#.into(), "application/json").await;
    assert_eq!(res.status(), 200);
    for (body, pointer, rule) in [
        (r#"{"list":[1,2,3,4]}"#, "/list", "max_array"),
        (r#"{"list":[[1]]}"#, "/list/0", "max_depth"),
        (r#"{"x":"SENTINEL-0123456789"}"#, "/x", "max_string"),
    ] {
        let res = post("/strict", body.into(), "application/json").await;
        let v = common::assert_problem(res, 400, "json-limit-exceeded").await;
        assert_eq!(
            pointer_rules(&v),
            vec![(pointer.to_string(), rule.to_string())],
            "{body}"
        );
    }
    let res = post("/strict", r#"{"list":[1,"a"]}"#.into(), "application/json").await;
    let v = common::assert_problem(res, 422, "invalid-body").await;
    assert_eq!(
        pointer_rules(&v),
        vec![("/list/1".to_string(), "type".to_string())]
    );

    // Zero limits are a configuration error with a location.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        route(
            "r",
            "[\"POST\"]",
            "/r",
            &up.url(),
            "json_limits = { max_array = 0 }",
        ),
    )
    .unwrap();
    let (code, _, err) = common::run_cli(&["check", bad.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml:6:") && err.contains("json_limits.max_array must be at least 1"),
        "{err}"
    );
}

#[tokio::test]
async fn the_client_address_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
    let up = upstream::start(None).await;
    let routes = [
        route(
            "office",
            "[\"GET\"]",
            "/office",
            &up.url(),
            "allow_ips = [\"10.0.0.0/8\"]",
        ),
        route(
            "v4-only",
            "[\"GET\"]",
            "/v4",
            &up.url(),
            "allow_ips = [\"127.0.0.1/32\"]",
        ),
        route(
            "no-loopback",
            "[\"GET\"]",
            "/deny",
            &up.url(),
            "deny_ips = [\"127.0.0.0/8\"]",
        ),
    ]
    .concat();
    let c = client();

    // An untrusted peer cannot choose its address by sending X-Forwarded-For.
    let gw = Gw::start(&format!("{}{routes}", server_section("")));
    let res = c
        .get(gw.url("/office"))
        .header("x-forwarded-for", "10.1.2.3")
        .header("forwarded", "for=10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // A trusted proxy's X-Forwarded-For is believed.
    let trusted = Gw::start(&format!(
        "{}{routes}",
        server_section("trusted_proxies = [\"127.0.0.1\"]")
    ));
    let res = c
        .get(trusted.url("/office"))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A listener on an IPv6 socket sees IPv4 clients as ::ffff:127.0.0.1; IPv4 rules still
    // apply to them.
    let v6 = Gw::start(&format!(
        "[server]\nlisten = \"[::ffff:127.0.0.1]:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"state\"\n\n{routes}"
    ));
    assert!(v6.data.is_ipv6(), "{}", v6.data);
    assert_eq!(c.get(v6.url("/v4")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(v6.url("/deny")).send().await.unwrap().status(), 403);
}
