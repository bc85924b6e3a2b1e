//! The vault end to end: secrets put with the CLI while the gateway runs, injected into
//! upstream requests, revoked through the admin API, and never visible anywhere else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_problem, client, route, server_section, upstream, Gw, BIN};
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const SENTINEL: &str = "SENTINELvault4c7e1a90";

fn cli(gw_config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(gw_config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn seen_by_upstream(gw: &Gw) -> Option<String> {
    let res = client().get(gw.url("/r")).send().await.ok()?;
    if res.status() != 200 {
        return None;
    }
    let v: serde_json::Value = res.json().await.ok()?;
    v["headers"]["authorization"].as_str().map(str::to_string)
}

fn grep_dir(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file()
            && std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        {
            hits.push(p.display().to_string());
        }
    }
    hits
}

#[tokio::test]
async fn credentials_are_injected_from_the_vault_and_revocation_is_immediate() {
    let up = upstream::start(None).await;
    let config = format!(
        "{}[logging]\nlevel = \"info,portcullis::request=debug\"\n{}",
        server_section(""),
        route(
            "r",
            "[\"GET\"]",
            "/r",
            &up.url(),
            "upstream_headers = { authorization = \"Bearer {secret:backend-token}\" }"
        ),
    );
    let gw = Gw::start(&config);
    let cfg = gw.config_path();

    // No secret yet: the request fails closed instead of going out without its credential.
    assert_problem(
        client().get(gw.url("/r")).send().await.unwrap(),
        503,
        "credential-unavailable",
    )
    .await;

    // Put it with the CLI, value on stdin, while the gateway runs; bound to this route only.
    let (code, out, err) = cli(
        &cfg,
        &[
            "secret",
            "put",
            "backend-token",
            "--type",
            "bearer_token",
            "--consumer",
            "route:r",
        ],
        Some(&format!("{SENTINEL}\n")),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version 1") && !out.contains(SENTINEL));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline && seen.is_none() {
        seen = seen_by_upstream(&gw).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.as_deref(), Some(format!("Bearer {SENTINEL}").as_str()));

    // The admin API needs the token, and never returns the value.
    let token = std::fs::read_to_string(gw.dir.path().join("state/admin.token")).unwrap();
    let res = client()
        .get(gw.admin_url("/admin/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let listed = client()
        .get(gw.admin_url("/admin/secrets/backend-token"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed = listed.text().await.unwrap();
    assert!(
        listed.contains("\"current_version\":1") && !listed.contains(SENTINEL),
        "{listed}"
    );
    let (_, shown, _) = cli(&cfg, &["secret", "show", "backend-token"], None);
    assert!(
        shown.contains("backend-token") && !shown.contains(SENTINEL),
        "{shown}"
    );

    // Revoke through the admin API: the very next request fails closed.
    let res = client()
        .post(gw.admin_url("/admin/secrets/backend-token/versions/1/revoke"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let v = assert_problem(
        client().get(gw.url("/r")).send().await.unwrap(),
        503,
        "credential-unavailable",
    )
    .await;
    assert!(!v.to_string().contains("backend-token"), "{v}");

    // Rotate via the admin API: served again, with the new version.
    let res = client()
        .put(gw.admin_url("/admin/secrets/backend-token"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({ "value": format!("{SENTINEL}-2") }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        seen_by_upstream(&gw).await.as_deref(),
        Some(format!("Bearer {SENTINEL}-2").as_str())
    );

    // Requests axum refuses before a handler runs answer problem+json too, and never quote
    // the body (serde's own message would: `invalid type: string "...", expected i64`).
    let put = |body: &'static str, json: bool| {
        let mut r = client()
            .put(gw.admin_url("/admin/secrets/backend-token"))
            .bearer_auth(token.trim())
            .body(body.replace("SENTINEL", SENTINEL));
        if json {
            r = r.header("content-type", "application/json");
        }
        r.send()
    };
    for (res, status, slug) in [
        (
            put("{\"keep\": \"SENTINEL\"}", true).await.unwrap(),
            422,
            "invalid-body",
        ),
        (
            put("{\"value\": \"SENTINEL\"", true).await.unwrap(),
            400,
            "malformed-request",
        ),
        (
            put("{\"value\": \"SENTINEL\"}", false).await.unwrap(),
            415,
            "unsupported-media-type",
        ),
    ] {
        let v = assert_problem(res, status, slug).await;
        assert!(!v.to_string().contains(SENTINEL), "{v}");
    }
    let res = client()
        .patch(gw.admin_url("/admin/secrets/backend-token"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("allow"), "{:?}", res.headers());
    assert_problem(res, 405, "method-not-allowed").await;
    // A path segment of the wrong type (the version is a number).
    let res = client()
        .post(gw.admin_url("/admin/secrets/backend-token/versions/x/revoke"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_problem(res, 400, "malformed-request").await;

    // Nowhere else: not in the logs, not in the database files (db, WAL, SHM).
    assert!(
        gw.stdout
            .wait_for(
                &["\"action\":\"revoke\"", "\"secret_name\":\"backend-token\""],
                Duration::from_secs(5)
            )
            .is_some(),
        "{}",
        gw.stdout.all()
    );
    let logs = format!("{}\n{}", gw.stdout.all(), gw.stderr.all());
    assert!(
        !logs.contains(SENTINEL),
        "the secret reached the log:\n{logs}"
    );
    assert!(grep_dir(&gw.dir.path().join("state"), SENTINEL.as_bytes()).is_empty());
}

#[tokio::test]
async fn check_refuses_references_from_consumers_the_secret_is_not_bound_to() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    let config = format!(
        "{}{}{}",
        server_section(""),
        route(
            "a",
            "[\"GET\"]",
            "/a",
            "http://127.0.0.1:9",
            "upstream_headers = { x-token = \"{secret:shared}\" }"
        ),
        route(
            "b",
            "[\"GET\"]",
            "/b",
            "http://127.0.0.1:9",
            "upstream_headers = { x-token = \"{secret:shared}\" }"
        ),
    );
    std::fs::write(&cfg, &config).unwrap();
    // Route b's value: the error points at it, line and column (of its opening quote).
    let at = config.rfind("\"{secret:shared}\"").unwrap();
    let line = config[..at].matches('\n').count() + 1;
    let column = at - config[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    let (code, _, err) = cli(
        &cfg,
        &["secret", "put", "shared", "--consumer", "route:a"],
        Some("value"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("not declared"), "{err}");
    // A consumer this configuration does not declare (a typo in the id, most often): stored,
    // with a warning.
    let (code, _, err) = cli(
        &cfg,
        &["secret", "put", "other", "--consumer", "route:aa"],
        Some("value"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("consumer \"route:aa\" is not declared in this configuration"),
        "{err}"
    );
    let out = Command::new(BIN).arg("check").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "portcullis.toml:{line}:{column}: error: route:b references secret \"shared\", which is not bound to it"
        )),
        "{err}"
    );
    assert!(!err.contains("route:a references"), "{err}");
}

#[tokio::test]
async fn check_warns_of_a_field_reference_the_secret_may_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    let header = |id: &str, value: &str| {
        route(
            id,
            "[\"GET\"]",
            &format!("/{id}"),
            "http://127.0.0.1:9",
            &format!("upstream_headers = {{ x-value = \"{value}\" }}"),
        )
    };
    let config = format!(
        "{}{}{}{}",
        server_section(""),
        header("a", "{secret:tok#password}"),
        header("b", "{secret:login#password}"),
        header("c", "{secret:login#pasword}"),
    );
    std::fs::write(&cfg, &config).unwrap();
    let put = |args: &[&str], value: &str| {
        let (code, _, err) = cli(&cfg, args, Some(value));
        assert_eq!(code, 0, "{err}");
    };
    put(
        &[
            "secret",
            "put",
            "tok",
            "--type",
            "bearer_token",
            "--consumer",
            "route:a",
        ],
        "token-value",
    );
    put(
        &[
            "secret",
            "put",
            "login",
            "--type",
            "basic_credentials",
            "--consumer",
            "route:b",
            "--consumer",
            "route:c",
        ],
        "{\"username\":\"u\",\"password\":\"p\"}",
    );
    let out = Command::new(BIN).arg("check").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Warnings, not errors: a bearer token's value may be a JSON object with that field.
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("route:a references field \"password\" of secret \"tok\", but a bearer_token secret has no fields of its own"),
        "{err}"
    );
    assert!(
        err.contains("route:c references field \"pasword\" of secret \"login\", but a basic_credentials secret's fields are username, password"),
        "{err}"
    );
    assert!(
        !err.contains("route:b"),
        "a field the type has is fine: {err}"
    );
    let strict = Command::new(BIN)
        .args(["check", "--strict"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));
}

#[tokio::test]
async fn a_wrong_or_exposed_master_key_stops_start_up() {
    let config = format!(
        "{}{}",
        server_section(""),
        route("a", "[\"GET\"]", "/a", "http://127.0.0.1:9", "")
    );
    let mut gw = Gw::start(&config);
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)).and_then(|s| s.code()),
        Some(0)
    );
    let key = gw.dir.path().join("state/master.key");
    let original = std::fs::read(&key).unwrap();

    // Each refused start exits 1 and says why; nothing listens.
    let refused = || {
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(gw.config_path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // Another valid key.
    std::fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    let err = refused();
    assert!(err.contains("master key does not match"), "{err}");

    // No key file at all: no new (necessarily wrong) key is made up either.
    std::fs::remove_file(&key).unwrap();
    let err = refused();
    assert!(err.contains("does not exist"), "{err}");
    assert!(!key.exists(), "a key file was created");

    // The right key with mode 0644.
    std::fs::write(&key, &original).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused();
    assert!(err.contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn master_key_rotation_from_the_cli_keeps_a_running_gateway_serving() {
    let up = upstream::start(None).await;
    let config = format!(
        "{}{}",
        server_section(""),
        route(
            "r",
            "[\"GET\"]",
            "/r",
            &up.url(),
            "upstream_headers = { authorization = \"Bearer {secret:tok}\" }"
        ),
    );
    let gw = Gw::start(&config);
    let cfg = gw.config_path();
    let (code, _, err) = cli(
        &cfg,
        &["secret", "put", "tok", "--consumer", "route:r"],
        Some("rotating-value"),
    );
    assert_eq!(code, 0, "{err}");
    let key = gw.dir.path().join("state/master.key");
    let before = std::fs::read(&key).unwrap();
    // Stopped after staging the new key, then resumed: the gateway keeps serving throughout.
    let (code, out, err) = cli(&cfg, &["vault", "rotate-kek", "--batch", "0"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("in progress"), "{out}");
    assert!(gw.dir.path().join("state/master.key.next").exists());
    let (code, out, err) = cli(&cfg, &["vault", "rotate-kek"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("master key rotated: ") && out.contains("data keys rewrapped"),
        "{out}"
    );
    // It says where the new key now is, and that the other instances need it.
    assert!(
        out.contains(&format!("{} now holds the new key", key.display()))
            && out.contains("every other instance"),
        "{out}"
    );
    assert_ne!(std::fs::read(&key).unwrap(), before);
    // The gateway drops its cache (change watch) and decrypts under the new key.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = 0;
    while Instant::now() < deadline && ok < 15 {
        assert_eq!(
            seen_by_upstream(&gw).await.as_deref(),
            Some("Bearer rotating-value")
        );
        ok += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.stdout.all().contains("\"action\":\"first_use\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_master_key_was_retired_answers_admin_writes_with_a_clear_503() {
    let gw = Gw::start(&server_section(""));
    // Another process (a rotation this instance missed) retired the key this one holds.
    let store = portcullis_store::SqliteStore::open(&gw.dir.path().join("state/portcullis.db"))
        .await
        .unwrap();
    use portcullis_store::Store;
    for k in store.vault().keks().await.unwrap() {
        store.vault().set_kek_state(&k.id, "retired").await.unwrap();
    }
    let res = client()
        .put(gw.admin_url("/admin/secrets/tok"))
        .bearer_auth(gw.admin_token())
        .json(&serde_json::json!({ "value": "v", "consumers": ["route:a"] }))
        .send()
        .await
        .unwrap();
    let p = assert_problem(res, 503, "vault-key-unusable").await;
    assert!(p["detail"].as_str().unwrap().contains("retired"), "{p}");
}
