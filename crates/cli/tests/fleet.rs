//! Several gateway processes on one new PostgreSQL database (a fresh one per test, on the
//! machine's real server): started at the same moment they create each shared key once, a
//! token revoked on one is refused by the others, and `check` looks at the database without
//! changing it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, put_secret, route, run_cli, server_section, upstream, Gw};
use portcullis_store::{testing::TestDb, PgStore, Store};
use std::{os::unix::fs::PermissionsExt, time::Duration};

/// Base64 of the bytes 0..32: the one master key every instance is given.
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Polls `f` every 400 ms until it is true, for at most 10 attempts (other instances see
/// changes within about a second; the bound stays under the brute-force lockout's 10).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..10 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    panic!("{what}: not within 10 attempts");
}

async fn token(gw: &Gw, secret: &str) -> String {
    let res = client()
        .post(gw.url("/oauth/token"))
        .basic_auth("billing", Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_share_one_pepper_one_signing_key_and_revocations() {
    let db = TestDb::create().await;
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[store]\nurl = \"{}\"\n\n[vault]\nkey_provider = \"env\"\n\n[[clients]]\nid = \"billing\"\nscopes = [\"orders:read\"]\n\n[auth.oauth2]\ntoken_ttl = \"10m\"\n\n{}{}",
        server_section(""),
        db.url(),
        route("key", "[\"GET\"]", "/key", &up.url(), "auth = [\"api_key\"]"),
        route("orders", "[\"GET\"]", "/orders", &up.url(), "auth = [\"oauth2\"]\nscopes = [\"orders:read\"]"),
    );
    // Three processes at once on a database none of them has seen: each finds no pepper and
    // no signing key. Only one may create them; the others must read what it made.
    let gws: Vec<Gw> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let cfg = cfg.clone();
                s.spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
                    Gw::start_in_with_env(dir, &[("PORTCULLIS_MASTER_KEY", MASTER_KEY)])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let store = PgStore::connect_read_only(&db.url()).await.unwrap();
    let names: Vec<String> = store
        .vault()
        .secrets()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names,
        ["portcullis.api-key-pepper", "portcullis.oauth-signing-key"]
    );
    for name in &names {
        assert_eq!(
            store.vault().versions(name).await.unwrap().len(),
            1,
            "{name} was created once"
        );
    }
    assert_eq!(store.vault().keks().await.unwrap().len(), 1);

    // A key issued on one instance is accepted by the others at its first use there: one
    // pepper, and an unknown key id reloads the keys before it is refused.
    let key = gws[0].issue_key("billing").await;
    for gw in &gws[1..] {
        assert_eq!(gw.get_with_key("/key", &key).await.status(), 200);
    }
    // And through the OAuth client-credentials grant, on an instance yet to see it.
    let fresh = gws[0].issue_key("billing").await;
    let _ = token(&gws[2], &fresh).await;
    // A token issued on one verifies on the others: one signing key.
    let access = token(&gws[1], &key).await;
    for gw in &gws {
        assert_eq!(gw.get_with_key("/orders", &access).await.status(), 200);
    }
    // Revoked on one (RFC 7009), refused by every instance, not only by the one asked.
    let res = client()
        .post(gws[2].url("/oauth/revoke"))
        .basic_auth("billing", Some(&key))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for gw in &gws {
        eventually("the revocation reaches every instance", || async {
            gw.get_with_key("/orders", &access).await.status() == 401
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_a_shared_database_changes_nothing_in_it() {
    let db = TestDb::create().await;
    let up = upstream::start(None).await;
    let gw_keys = tempfile::tempdir().unwrap();
    let cfg_with_key = |key_file: &std::path::Path| {
        format!(
            "{}[store]\nurl = \"{}\"\n\n[vault]\nkey_file = \"{}\"\n\n{}",
            server_section(""),
            db.url(),
            key_file.display(),
            route(
                "a",
                "[\"GET\"]",
                "/a",
                &up.url(),
                "upstream_headers = { authorization = \"Bearer {secret:backend-token}\" }"
            ),
        )
    };
    let checker = tempfile::tempdir().unwrap();
    let write = |name: &str, key_file: &std::path::Path| {
        let path = checker.path().join(name);
        std::fs::write(&path, cfg_with_key(key_file)).unwrap();
        path.to_str().unwrap().to_string()
    };

    // Not migrated yet: check says so and creates no table.
    let fresh = write("fresh.toml", &gw_keys.path().join("master.key"));
    let (code, _, err) = run_cli(&["check", &fresh], checker.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("secret references were not checked"), "{err}");
    let ro = PgStore::connect_read_only(&db.url()).await.unwrap();
    assert!(
        ro.vault().epoch().await.is_err(),
        "check migrated the database"
    );
    assert!(
        !gw_keys.path().join("master.key").exists(),
        "check created a master key"
    );

    // The gateway's own machine: it creates the vault and the secret the route needs.
    let gw_cfg = write("gateway.toml", &gw_keys.path().join("master.key"));
    let gw = Gw::start(&std::fs::read_to_string(&gw_cfg).unwrap());
    put_secret(&gw.config_path(), "backend-token", "route:a", "tok-1");
    let keks = ro.vault().keks().await.unwrap();
    let epoch = ro.vault().epoch().await.unwrap();
    let (code, out, err) = run_cli(&["check", &gw_cfg], checker.path());
    assert_eq!((code, out.contains(": ok")), (0, true), "{out}{err}");

    // A CI runner without the key: the references are checked, the key is not, and no key
    // file appears.
    let absent = checker.path().join("none/master.key");
    let (code, _, err) = run_cli(&["check", &write("ci.toml", &absent)], checker.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("master key was not verified here"), "{err}");
    assert!(!absent.exists());

    // A machine with another key: refused, and that key is not registered.
    let other = checker.path().join("other.key");
    std::fs::write(&other, "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run_cli(&["check", &write("other.toml", &other)], checker.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not match"), "{err}");

    // A key that is there but unusable (not base64, or readable by others) is an error too,
    // not the "not verified here" of a machine without one: the gateway would not start.
    let garbled = checker.path().join("garbled.key");
    std::fs::write(&garbled, "not a key").unwrap();
    std::fs::set_permissions(&garbled, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run_cli(&["check", &write("garbled.toml", &garbled)], checker.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not base64"), "{err}");
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run_cli(&["check", &write("open.toml", &other)], checker.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    // The env provider: a variable set but empty is a CI runner's withheld secret (a
    // warning), one with a value that is no key is an error.
    let env_cfg = std::fs::read_to_string(&gw_cfg).unwrap().replace(
        &format!(
            "key_file = \"{}\"",
            gw_keys.path().join("master.key").display()
        ),
        "key_provider = \"env\"",
    );
    assert!(env_cfg.contains("key_provider = \"env\""), "{env_cfg}");
    let env_path = checker.path().join("env.toml");
    std::fs::write(&env_path, env_cfg).unwrap();
    let check_with = |value: &str| {
        let out = std::process::Command::new(common::BIN)
            .args(["check", env_path.to_str().unwrap()])
            .env("PORTCULLIS_MASTER_KEY", value)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check_with("");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("master key was not verified here"), "{err}");
    let (code, err) = check_with("not-a-key");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not base64"), "{err}");

    // A reference to a missing secret is still an error.
    let missing = std::fs::read_to_string(&gw_cfg)
        .unwrap()
        .replace("secret:backend-token", "secret:nope");
    let path = checker.path().join("missing.toml");
    std::fs::write(&path, missing).unwrap();
    let (code, _, err) = run_cli(&["check", path.to_str().unwrap()], checker.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    // Without the key and with an error: the warning that the key was not verified is
    // shown beside the error, not held back until the error is fixed.
    let both = std::fs::read_to_string(checker.path().join("ci.toml"))
        .unwrap()
        .replace("secret:backend-token", "secret:nope");
    let path = checker.path().join("missing-ci.toml");
    std::fs::write(&path, both).unwrap();
    let (code, _, err) = run_cli(&["check", path.to_str().unwrap()], checker.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("does not exist") && err.contains("master key was not verified here"),
        "{err}"
    );
    // A malformed key's error says "master key" once.
    let (_, _, err) = run_cli(
        &[
            "check",
            checker.path().join("garbled.toml").to_str().unwrap(),
        ],
        checker.path(),
    );
    assert!(!err.contains("master key: master key"), "{err}");

    assert_eq!(ro.vault().keks().await.unwrap(), keks, "no key registered");
    assert_eq!(ro.vault().epoch().await.unwrap(), epoch, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_key_a_rotation_retired_reports_not_ready_until_it_has_the_new_key() {
    let db = TestDb::create().await;
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[store]\nurl = \"{}\"\n\n[vault]\nkey_file = \"master.key\"\n\n{}",
        server_section(""),
        db.url(),
        route(
            "a",
            "[\"GET\"]",
            "/a",
            &up.url(),
            "upstream_headers = { authorization = \"Bearer {secret:backend-token}\" }"
        ),
    );
    let start = |key: Option<&[u8]>| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("portcullis.toml"), &cfg).unwrap();
        if let Some(key) = key {
            let path = dir.path().join("master.key");
            std::fs::write(&path, key).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Gw::start_in(dir)
    };
    let gw0 = start(None);
    let key = std::fs::read(gw0.dir.path().join("master.key")).unwrap();
    let gw1 = start(Some(&key));
    put_secret(&gw0.config_path(), "backend-token", "route:a", "tok-1");
    let ready = |gw: &Gw| {
        let url = gw.admin_url("/readyz");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!((ready(&gw0).await, ready(&gw1).await), (200, 200));

    // The rotation runs with gw0's key files, so gw0 holds the new key and gw1 the old one.
    let out = gw0.cli(&["vault", "rotate-kek"]);
    assert!(out.contains("master key rotated"), "{out}");
    assert_eq!(ready(&gw0).await, 200);
    let res = client().get(gw1.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{res:?}"
    );
    assert!(
        gw1.stdout
            .wait_for(&["retired by a KEK rotation"], Duration::from_secs(5))
            .is_some(),
        "the log says why"
    );
    // Its route that needs a secret fails closed, as problem+json without detail.
    let res = client().get(gw1.url("/a")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.text().await.unwrap().contains("credential-unavailable"));

    // Probed again meanwhile: still 503, and logged once, not once per probe.
    assert_eq!((ready(&gw1).await, ready(&gw1).await), (503, 503));

    // Given the new key (no restart), it is ready again, and the log says so.
    let path = gw1.dir.path().join("master.key");
    std::fs::write(
        &path,
        std::fs::read(gw0.dir.path().join("master.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(ready(&gw1).await, 200);
    assert!(gw1
        .stdout
        .wait_for(&["readiness: ready again"], Duration::from_secs(5))
        .is_some());
    let all = gw1.stdout.all();
    assert_eq!(all.matches("readiness: not ready").count(), 1, "{all}");
    assert_eq!(
        client().get(gw1.url("/a")).send().await.unwrap().status(),
        200
    );
}
