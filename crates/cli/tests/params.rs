//! Typed path and query parameters through the real gateway: 400 problem+json naming each
//! failing parameter and rule, never the value; parameter pollution and unknown parameters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_problem, client, route, server_section, upstream, Gw};

const ORDERS_PARAMS: &str = r#"params.path = { id = { type = "integer", minimum = 1 } }
params.query = { limit = { type = "integer", minimum = 1, maximum = 100 }, status = { type = "string", enum = ["open", "closed"] }, q = { type = "string", max_length = 16, pattern = "^[a-z ]+$", required = true } }
params.unknown_query = "reject""#;

const TYPES_PARAMS: &str = r#"params.path = { ref = { type = "uuid" } }
params.query = { ratio = { type = "number", minimum = 0, maximum = 1 }, flag = { type = "boolean" } }"#;

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

fn pr(pointer: &str, rule: &str) -> (String, String) {
    (pointer.into(), rule.into())
}

#[tokio::test]
async fn declared_parameters_are_typed_and_checked() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}{}{}",
        server_section(""),
        route(
            "orders",
            "[\"GET\"]",
            "/orders/{id}",
            &up.url(),
            ORDERS_PARAMS
        ),
        route(
            "things",
            "[\"GET\"]",
            "/things/{ref}",
            &up.url(),
            TYPES_PARAMS
        ),
    );
    let gw = Gw::start(&cfg);
    let c = client();
    let get = |path: &str| {
        let (c, url) = (c.clone(), gw.url(path));
        async move { c.get(url).send().await.unwrap() }
    };

    // Valid requests pass, and the upstream gets the query exactly as sent.
    for q in [
        "q=hello%20world&limit=100&status=open",
        "q=hello+world",
        "limit=1&q=abc",
    ] {
        let res = get(&format!("/orders/42?{q}")).await;
        assert_eq!(res.status(), 200, "{q}");
        let echoed: serde_json::Value = res.json().await.unwrap();
        assert_eq!(echoed["query"], q);
    }

    for (target, want) in [
        ("/orders/0?q=a", vec![pr("/path/id", "minimum")]),
        ("/orders/SENTINEL?q=a", vec![pr("/path/id", "type")]),
        ("/orders/1", vec![pr("/query/q", "required")]),
        ("/orders/1?q=SENTINEL", vec![pr("/query/q", "pattern")]),
        (
            "/orders/1?q=aaaaaaaaaaaaaaaaaaaaa",
            vec![pr("/query/q", "max_length")],
        ),
        (
            "/orders/1?q=a&limit=101",
            vec![pr("/query/limit", "maximum")],
        ),
        ("/orders/1?q=a&limit=ten", vec![pr("/query/limit", "type")]),
        (
            "/orders/1?q=a&status=SENTINEL",
            vec![pr("/query/status", "enum")],
        ),
        ("/orders/1?q=a%FF", vec![pr("/query/q", "encoding")]),
        // Parameter pollution: the gateway and the upstream might read different copies.
        (
            "/orders/1?q=a&limit=5&limit=500",
            vec![pr("/query/limit", "duplicate")],
        ),
        (
            "/orders/1?q=a&limit=5&li%6Dit=500",
            vec![pr("/query/limit", "duplicate")],
        ),
        // ASP.NET binds query names in any case: `LIMIT` is another copy of `limit`.
        (
            "/orders/1?q=a&limit=5&LIMIT=500",
            vec![pr("/query/limit", "duplicate")],
        ),
        // qs-style parsers read `limit[]` and `limit[x]` as `limit`, an array or an object.
        (
            "/orders/1?q=a&limit=5&limit[]=500",
            vec![
                pr("/query/limit", "structured"),
                pr("/query/limit[]", "unknown"),
            ],
        ),
        (
            "/orders/1?q=a&limit%5Bx%5D=500",
            vec![
                pr("/query/limit", "structured"),
                pr("/query/limit[x]", "unknown"),
            ],
        ),
        (
            "/orders/1?q=a&debug=1&SENTINEL",
            vec![
                pr("/query/debug", "unknown"),
                pr("/query/SENTINEL", "unknown"),
            ],
        ),
        (
            "/orders/0?limit=0&status=x",
            vec![
                pr("/path/id", "minimum"),
                pr("/query/limit", "minimum"),
                pr("/query/status", "enum"),
                pr("/query/q", "required"),
            ],
        ),
    ] {
        let res = get(target).await;
        if want.is_empty() {
            assert_eq!(res.status(), 200, "{target}");
            continue;
        }
        let v = assert_problem(res, 400, "invalid-parameters").await;
        let mut got = pointer_rules(&v);
        let mut want = want;
        got.sort();
        want.sort();
        assert_eq!(got, want, "{target}");
        // Names may appear in pointers; values never do.
        if !target.contains("&SENTINEL") {
            assert!(!v.to_string().contains("SENTINEL"), "value echoed: {v}");
        }
    }
    // A digit written as an escape (`%31` for `1`) is refused before routing: escapes of
    // characters that need none only serve to write one path two ways.
    assert_problem(get("/orders/%31?q=a").await, 400, "malformed-request").await;

    let uuid = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    assert_eq!(
        get(&format!("/things/{uuid}?ratio=0.25&flag=true&other=1"))
            .await
            .status(),
        200
    );
    for (target, want) in [
        (
            "/things/67e5504410b1426f9247bb680e5fe0c8".to_string(),
            pr("/path/ref", "type"),
        ),
        (
            format!("/things/{uuid}?ratio=1.5"),
            pr("/query/ratio", "maximum"),
        ),
        (
            format!("/things/{uuid}?ratio=NaN"),
            pr("/query/ratio", "type"),
        ),
        (
            format!("/things/{uuid}?flag=yes"),
            pr("/query/flag", "type"),
        ),
    ] {
        let v = assert_problem(get(&target).await, 400, "invalid-parameters").await;
        assert_eq!(pointer_rules(&v), vec![want], "{target}");
    }
}

#[tokio::test]
async fn parameters_are_checked_after_authentication() {
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[[clients]]\nid = \"billing\"\n\n{}",
        server_section(""),
        route(
            "orders",
            "[\"GET\"]",
            "/orders/{id}",
            &up.url(),
            &format!("auth = [\"api_key\"]\n{ORDERS_PARAMS}")
        ),
    );
    let gw = Gw::start(&cfg);
    // An anonymous caller learns nothing about the parameters.
    assert_problem(
        client().get(gw.url("/orders/x")).send().await.unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    let key = gw.issue_key("billing").await;
    let v = assert_problem(
        gw.get_with_key("/orders/x?q=a", &key).await,
        400,
        "invalid-parameters",
    )
    .await;
    assert_eq!(pointer_rules(&v), vec![pr("/path/id", "type")]);
    assert_eq!(gw.get_with_key("/orders/7?q=a", &key).await.status(), 200);
}

#[tokio::test]
async fn parameter_mistakes_are_configuration_errors_with_a_location() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, line, want) in [
        (
            r#"params.path = { nope = { type = "integer" } }"#,
            6,
            "does not capture {nope}",
        ),
        (
            "params.query = { q = { type = \"string\", pattern = \"^[a-\" } }",
            6,
            "pattern is not a valid regular expression",
        ),
        (
            "json_limits = { max_depth = 1 }\nparams.query = { n = { type = \"integer\", maximum = 0.5 } }",
            7,
            "maximum of an integer parameter must be an integer",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            route("r", "[\"GET\"]", "/r/{id}", "http://127.0.0.1:9", extra),
        )
        .unwrap();
        let (code, _, err) = common::run_cli(&["check", bad.to_str().unwrap()], dir.path());
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("bad.toml:{line}:")) && err.contains(want),
            "{extra}: {err}"
        );
    }
}
