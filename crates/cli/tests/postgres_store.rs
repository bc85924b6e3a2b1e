//! The gateway on a PostgreSQL store (a fresh database on the machine's server per test):
//! its state kept across restarts and shared by instances, the database password kept out of
//! every output, and an unreachable database refusing to start instead of running without
//! state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, postgres::PrivatePostgres, route, run_cli, server_section, upstream, Gw};
use portcullis_store::testing::TestDb;
use std::time::Duration;

const SENTINEL: &str = "Sentinel-Pg-Pass-5521";

/// The test database's URL with a password in it. The machine's server trusts loopback
/// connections, so the password is carried and never checked: what matters is where it ends up.
fn url_with_password(db: &TestDb) -> String {
    db.url()
        .replacen("://postgres@", &format!("://postgres:{SENTINEL}@"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_on_postgres_is_shared_kept_across_restarts_and_the_password_never_shows() {
    let db = TestDb::create().await;
    let url = url_with_password(&db);
    assert!(url.contains(SENTINEL), "{url}");
    let keys = tempfile::tempdir().unwrap();
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[store]\nurl = \"{url}\"\n\n[vault]\nkey_file = \"{}\"\n\n[[clients]]\nid = \"billing\"\n\n{}",
        server_section(""),
        keys.path().join("master.key").display(),
        route("a", "[\"GET\"]", "/a", &up.url(), "auth = [\"api_key\"]"),
    );
    let mut a = Gw::start(&cfg);
    let key = a.issue_key("billing").await;
    let c = client();
    for _ in 0..3 {
        c.get(a.url("/wp-admin/setup.php")).send().await.unwrap();
    }
    // A second instance on the same database knows the key at once: one vault, one key table.
    let b = Gw::start(&cfg);
    assert_eq!(b.get_with_key("/a", &key).await.status(), 200);
    let metrics = b.metrics().await;

    a.signal("TERM");
    assert_eq!(
        a.wait_exit(Duration::from_secs(15)).and_then(|s| s.code()),
        Some(0)
    );
    // The undeclared hits the first instance flushed at exit are in the shared database.
    let (code, out, err) = run_cli(
        &[
            "inventory",
            "--config",
            a.config_path().to_str().unwrap(),
            "--json",
        ],
        a.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hits = v["undeclared"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["shape"] == "/wp-admin/setup.php")
        .map(|u| u["hits"].clone());
    assert_eq!(hits, Some(serde_json::json!(3)), "{v}");
    let (code, checked, check_err) =
        run_cli(&["check", a.config_path().to_str().unwrap()], a.dir.path());
    assert_eq!(code, 0, "{check_err}");
    assert!(
        checked.contains("PGPASSWORD") || check_err.contains("PGPASSWORD"),
        "{checked}{check_err}"
    );

    // Already stopped: start it again on the same directory.
    let a = a.crash_and_restart();
    assert_eq!(a.get_with_key("/a", &key).await.status(), 200);

    let everything = [
        a.stdout.all(),
        a.stderr.all(),
        b.stdout.all(),
        b.stderr.all(),
        out,
        err,
        checked,
        check_err,
        metrics,
    ]
    .concat();
    assert!(everything.contains("portcullis started"));
    // The migrator's "relation already exists, skipping" notice is not logged on each start.
    assert!(!everything.contains("already exists"), "{everything}");
    assert!(
        !everything.contains(SENTINEL),
        "the database password leaked"
    );
}

#[test]
fn an_unreachable_database_stops_the_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let cfg = format!(
        "{}[store]\nurl = \"postgres://gw:{SENTINEL}@127.0.0.1:1/gateway\"\n",
        server_section("")
    );
    std::fs::write(dir.path().join("portcullis.toml"), cfg).unwrap();
    let (code, out, err) = run_cli(&["serve", "--config", "portcullis.toml"], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("portcullis started"), "{out}");
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert!(err.contains("opening the store"), "{err}");
    assert!(!format!("{out}{err}").contains(SENTINEL), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_closed_and_the_gateway_recovers_when_it_returns() {
    let pg = PrivatePostgres::start();
    let keys = tempfile::tempdir().unwrap();
    let up = upstream::start(None).await;
    let cfg = format!(
        "{}[store]\nurl = \"{}\"\n\n[vault]\nkey_file = \"{}\"\n\n[[clients]]\nid = \"billing\"\nquota = {{ daily = 1000 }}\n\n{}{}",
        server_section(""),
        pg.url(),
        keys.path().join("master.key").display(),
        route("q", "[\"GET\"]", "/q", &up.url(), "auth = [\"api_key\"]"),
        route("open", "[\"GET\"]", "/open", &up.url(), ""),
    );
    let gw = Gw::start(&cfg);
    let key = gw.issue_key("billing").await;
    let c = client();
    let ready = || async {
        c.get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(gw.get_with_key("/q", &key).await.status(), 200);
    assert_eq!(ready().await, 200);

    pg.stop();
    // A quota that cannot be charged refuses the request rather than letting it through.
    let res = gw.get_with_key("/q", &key).await;
    assert!(res.headers().contains_key("retry-after"));
    common::assert_problem(res, 503, "unavailable").await;
    assert_eq!(ready().await, 503);
    // Routes that need nothing from the store keep serving.
    assert_eq!(c.get(gw.url("/open")).send().await.unwrap().status(), 200);
    assert!(gw.stdout.all().contains("quota store unavailable"));

    // Back on the same port: the pool reconnects on its own, no restart.
    pg.start_again();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while gw.get_with_key("/q", &key).await.status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready().await, 200);
}
