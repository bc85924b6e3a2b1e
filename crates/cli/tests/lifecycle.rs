//! Process lifecycle, end to end: start-up, hot reload, graceful shutdown, `check`, `demo` and
//! `inventory`, all through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, route, run_cli, server_section, upstream, Gw, BIN};
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Polls `f` every 100ms until it returns true or `limit` passes.
async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn status(url: &str) -> u16 {
    client()
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn hot_reload_applies_valid_configs_and_refuses_invalid_ones() {
    let up = upstream::start(None).await;
    let a = route("a", "[\"GET\"]", "/a", &up.url(), "");
    let b = route("b", "[\"GET\"]", "/b", &up.url(), "");
    let gw = Gw::start(&format!("{}{a}", server_section("")));
    assert_eq!(status(&gw.url("/a")).await, 200);
    assert_eq!(status(&gw.url("/b")).await, 404);

    // A valid change on disk is picked up without a signal.
    gw.rewrite_config(&format!("{}{a}{b}", server_section("")));
    assert!(
        eventually(Duration::from_secs(10), async || status(&gw.url("/b"))
            .await
            == 200)
        .await,
        "{}",
        gw.stdout.all()
    );

    // An invalid one is refused with its location, and the running config stays.
    gw.rewrite_config(&format!(
        "{}{a}{b}[[routes]]\nid = \"c\"\nbogus = 1\n",
        server_section("")
    ));
    let refused = gw.stdout.wait_for(
        &["reload refused", "unknown field"],
        Duration::from_secs(10),
    );
    assert!(refused.is_some(), "{}", gw.stdout.all());
    assert!(refused.unwrap().contains("portcullis.toml:"));
    assert_eq!(status(&gw.url("/a")).await, 200);
    assert_eq!(status(&gw.url("/b")).await, 200);

    // Valid TOML that fails cross-field validation is refused too.
    gw.rewrite_config(&format!(
        "{}{a}{}",
        server_section(""),
        a.replace("\"/a\"", "\"/a2\"")
    ));
    assert!(
        gw.stdout
            .wait_for(
                &["reload refused", "more than once"],
                Duration::from_secs(10)
            )
            .is_some(),
        "{}",
        gw.stdout.all()
    );
    assert_eq!(status(&gw.url("/b")).await, 200);

    // SIGHUP reloads on demand.
    gw.rewrite_config(&format!("{}{a}", server_section("")));
    assert!(
        eventually(Duration::from_secs(10), async || status(&gw.url("/b"))
            .await
            == 404)
        .await
    );
    gw.signal("HUP");
    assert!(
        gw.stdout
            .wait_for(
                &["configuration reloaded", "SIGHUP"],
                Duration::from_secs(10)
            )
            .is_some(),
        "{}",
        gw.stdout.all()
    );

    // A header-count limit past hyper's own, which is set at start: applied, and the log
    // says what needs a restart.
    gw.rewrite_config(&format!("{}{a}", server_section("max_header_count = 120")));
    assert!(
        gw.stdout
            .wait_for(&["hyper's own header limit"], Duration::from_secs(10))
            .is_some(),
        "{}",
        gw.stdout.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_is_read_only_once_it_is_whole() {
    use std::io::Write;
    let up = upstream::start(None).await;
    let open = route("open", "[\"GET\"]", "/open", &up.url(), "");
    // The route's auth line comes last: a file cut short before it is still a valid
    // configuration, with the route unauthenticated.
    let secure_head = route("secure", "[\"GET\"]", "/secure", &up.url(), "");
    let full = format!(
        "{}{open}{}auth = [\"api_key\"]\n",
        server_section(""),
        secure_head
    );
    let later = route("later", "[\"GET\"]", "/later", &up.url(), "");
    let gw = Gw::start(&full);
    assert_eq!(status(&gw.url("/secure")).await, 401);

    // Written in place, as `cat > file` or scp do: truncated, then written in pieces over
    // 1.2 s (comment lines), the auth line last. The old reload read the file 200 ms after
    // the first event, cut short, and swapped it in.
    let cut = full.len() - "auth = [\"api_key\"]\n".len();
    let path = gw.config_path();
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&full.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    let mut unauthenticated_ok = 0;
    let started = Instant::now();
    let mut pieces = 0;
    while started.elapsed() < Duration::from_millis(3000) {
        let due = (started.elapsed().as_millis() / 100) as usize;
        while pieces < due.min(13) {
            pieces += 1;
            if pieces < 13 {
                writeln!(f, "# piece {pieces}").unwrap();
            } else {
                // The auth line, then a new route: once the file is whole it is loaded.
                f.write_all(&full.as_bytes()[cut..]).unwrap();
                f.write_all(later.as_bytes()).unwrap();
            }
            f.flush().unwrap();
        }
        if status(&gw.url("/secure")).await == 200 {
            unauthenticated_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        unauthenticated_ok,
        0,
        "the half-written file was swapped in\n{}",
        gw.stdout.all()
    );
    assert!(
        eventually(Duration::from_secs(10), async || status(&gw.url("/later"))
            .await
            == 200)
        .await,
        "the whole file was never loaded\n{}",
        gw.stdout.all()
    );
    assert_eq!(status(&gw.url("/secure")).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_behind_a_swapped_symlink_is_reloaded() {
    // The layout of a Kubernetes ConfigMap volume: the file is a symlink through `..data`,
    // and an update swaps `..data` to a new directory. No event names the file itself.
    let up = upstream::start(None).await;
    let a = route("a", "[\"GET\"]", "/a", &up.url(), "");
    let b = route("b", "[\"GET\"]", "/b", &up.url(), "");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (version, body) in [
        ("..v1", format!("{}{a}", server_section(""))),
        ("..v2", format!("{}{a}{b}", server_section(""))),
    ] {
        std::fs::create_dir(root.join(version)).unwrap();
        std::fs::write(root.join(version).join("portcullis.toml"), body).unwrap();
    }
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/portcullis.toml", root.join("portcullis.toml")).unwrap();
    let gw = Gw::start_in(dir);
    assert_eq!(status(&gw.url("/b")).await, 404);
    let root = gw.config_path().parent().unwrap().to_path_buf();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    assert!(
        eventually(Duration::from_secs(15), async || status(&gw.url("/b"))
            .await
            == 200)
        .await,
        "{}",
        gw.stdout.all()
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_or_a_config_change() {
    // certbot and cert-manager rewrite the certificate and key and leave the configuration
    // alone: the gateway must notice the files themselves.
    let (old, new) = (upstream::TestPki::new(), upstream::TestPki::new());
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    old.write_server_files(dir.path());
    let config = format!(
        "{}{}",
        server_section("tls = { cert = \"gw.pem\", key = \"gw.key\" }"),
        route("r", "[\"GET\"]", "/r", &up.url(), ""),
    );
    std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
    let gw = Gw::start_in(dir);
    let url = format!("https://localhost:{}/r", gw.data.port());
    // A new client per call: a pooled TLS connection would keep the old certificate.
    let status_trusting = |ca: &str| {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let url = url.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(status_trusting(&old.ca_pem).await, 200);
    assert_eq!(status_trusting(&new.ca_pem).await, 0);

    let root = gw.config_path().parent().unwrap().to_path_buf();
    new.write_server_files(&root);
    assert!(
        eventually(Duration::from_secs(20), async || status_trusting(
            &new.ca_pem
        )
        .await
            == 200)
        .await,
        "{}",
        gw.stdout.all()
    );
    assert_eq!(status_trusting(&old.ca_pem).await, 0);
    // The line follows the swap (and the log's batching), so it may come a moment later.
    assert!(gw
        .stdout
        .wait_for(&["configuration reloaded"], Duration::from_secs(5))
        .is_some());

    // An edit of the configuration that is refused must not hold the next renewal back.
    let third = upstream::TestPki::new();
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), format!("{config}\nnot toml [\n")).unwrap();
    assert!(gw
        .stdout
        .wait_for(&["configuration reload refused"], Duration::from_secs(20))
        .is_some());
    third.write_server_files(&root);
    assert!(
        eventually(Duration::from_secs(20), async || status_trusting(
            &third.ca_pem
        )
        .await
            == 200)
        .await,
        "{}",
        gw.stdout.all()
    );
    assert!(gw
        .stdout
        .wait_for(
            &["loaded with the running configuration"],
            Duration::from_secs(5)
        )
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_log_keeps_overriding_the_level_across_reloads() {
    let up = upstream::start(None).await;
    let a = route("a", "[\"GET\"]", "/a", &up.url(), "");
    let dir = tempfile::tempdir().unwrap();
    // The configuration says `warn`; the environment says `info`, so the start line, the
    // reload's summary and the access lines are all logged, before the reload and after.
    let config = format!("{}[logging]\nlevel = \"warn\"\n{a}", server_section(""));
    std::fs::write(dir.path().join("portcullis.toml"), &config).unwrap();
    let gw = Gw::start_in_with_env(dir, &[("PORTCULLIS_LOG", "info")]);
    gw.signal("HUP");
    // The reload used to apply the configured `warn` over the environment's `info`, so its
    // own summary (an info line) and later access lines were no longer logged.
    assert!(
        gw.stdout
            .wait_for(&["configuration reloaded"], Duration::from_secs(10))
            .is_some(),
        "{}",
        gw.stdout.all()
    );
    assert_eq!(status(&gw.url("/a")).await, 200);
    assert!(
        gw.stdout
            .wait_for(&["\"route\":\"a\""], Duration::from_secs(10))
            .is_some(),
        "{}",
        gw.stdout.all()
    );
}

#[tokio::test]
async fn upstream_connections_are_reused_across_requests_and_reloads() {
    let up = upstream::start(None).await;
    let a = route("a", "[\"GET\"]", "/a", &up.url(), "");
    let b = route("b", "[\"GET\"]", "/b", &up.url(), "");
    let gw = Gw::start(&format!("{}{a}", server_section("")));
    // A short pause between requests lets a connection that was still settling when its
    // response ended reach the pool; it is not a timing claim.
    let settle = || tokio::time::sleep(Duration::from_millis(50));
    for _ in 0..5 {
        assert_eq!(status(&gw.url("/a")).await, 200);
        settle().await;
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A reload builds new routes; a route to the same upstream keeps the warm connection.
    gw.rewrite_config(&format!("{}{a}{b}", server_section("")));
    assert!(gw
        .stdout
        .wait_for(&["configuration reloaded"], Duration::from_secs(10))
        .is_some());
    for path in ["/b", "/a", "/b"] {
        assert_eq!(status(&gw.url(path)).await, 200);
        settle().await;
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The gateway counts the one connection it opened.
    let metrics = gw.metrics().await;
    let opened = format!(
        "portcullis_upstream_connections_opened_total{{upstream=\"{}\"}} 1",
        up.addr
    );
    assert!(metrics.contains(&opened), "{metrics}");
}

#[tokio::test]
async fn a_rate_limit_edited_by_a_reload_starts_afresh_and_an_unchanged_one_keeps_its_count() {
    let up = upstream::start(None).await;
    let limited = |rate: &str| {
        route(
            "limited",
            "[\"GET\"]",
            "/limited",
            &up.url(),
            &format!("rate_limits = [{{ per = \"route\", {rate} }}]"),
        )
    };
    let kept = route(
        "kept",
        "[\"GET\"]",
        "/kept",
        &up.url(),
        "rate_limits = [{ per = \"route\", limit = 1, period = \"1h\" }]",
    );
    let gw = Gw::start(&format!(
        "{}{}{kept}",
        server_section(""),
        limited("limit = 1, period = \"1h\"")
    ));
    for path in ["/limited", "/kept"] {
        assert_eq!(status(&gw.url(path)).await, 200);
        assert_eq!(status(&gw.url(path)).await, 429);
    }
    // The operator raises the first limit. Its state outlives the reload (the limiter is
    // shared by generations, and in Redis by instances), so a key without the rate made the
    // new limit start from the old one's hour-long wait.
    gw.rewrite_config(&format!(
        "{}{}{kept}",
        server_section(""),
        limited("limit = 100, period = \"1m\"")
    ));
    assert!(gw
        .stdout
        .wait_for(&["configuration reloaded"], Duration::from_secs(10))
        .is_some());
    assert_eq!(status(&gw.url("/limited")).await, 200);
    // The limit nobody edited is not reset by the reload.
    assert_eq!(status(&gw.url("/kept")).await, 429);
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_config_they_started_with() {
    let up = upstream::start(None).await;
    let slow = route("slow", "[\"GET\"]", "/sleep/{ms}", &up.url(), "");
    let gw = Gw::start(&format!("{}{slow}", server_section("")));
    let url = gw.url("/sleep/1500");
    let pending =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    // Wait until the upstream has the request, then remove the route.
    let arrived =
        tokio::time::timeout(Duration::from_secs(10), up.arrivals.lock().await.recv()).await;
    assert_eq!(arrived.unwrap().as_deref(), Some("/sleep/1500"));
    gw.rewrite_config(&server_section(""));
    assert!(gw
        .stdout
        .wait_for(&["configuration reloaded"], Duration::from_secs(10))
        .is_some());
    assert_eq!(status(&gw.url("/sleep/1")).await, 404);
    assert_eq!(pending.await.unwrap().unwrap(), 200);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let up = upstream::start(None).await;
    let slow = route("slow", "[\"GET\"]", "/sleep/{ms}", &up.url(), "");
    // Idle connections are closed by the drain, not by the header read timeout, which is
    // set past the grace period here.
    let mut gw = Gw::start(&format!(
        "{}{slow}",
        server_section("header_read_timeout = \"60s\"")
    ));
    let url = gw.url("/sleep/1500");
    let pending =
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) });
    let arrived =
        tokio::time::timeout(Duration::from_secs(10), up.arrivals.lock().await.recv()).await;
    assert!(arrived.is_ok());
    // An idle keep-alive connection too: the drain must close it, not wait for the client.
    let idle = client();
    assert_eq!(
        idle.get(gw.url("/sleep/1")).send().await.unwrap().status(),
        200
    );
    let _ = up.arrivals.lock().await.try_recv();
    gw.signal("TERM");
    // Readiness drops and new connections are refused while the slow request completes.
    assert!(
        gw.stdout
            .wait_for(&["draining"], Duration::from_secs(10))
            .is_some(),
        "{}",
        gw.stdout.all()
    );
    // The admin listener stays up through the drain: readiness says 503, so a load balancer
    // that polls it learns of the drain instead of meeting a closed port.
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(pending.await.unwrap().unwrap(), 200);
    let exit = gw
        .wait_exit(Duration::from_secs(15))
        .expect("gateway did not exit");
    assert_eq!(exit.code(), Some(0));
    assert!(std::net::TcpStream::connect(gw.data).is_err());
    // Every connection closed within the grace period, the idle one included.
    let all = gw.stdout.all();
    assert!(all.contains("all connections drained"), "{all}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_admin_request_neither_stays_open_nor_holds_up_the_exit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut gw = Gw::start(&server_section("header_read_timeout = \"1s\""));
    // Half a head: the admin listener closes it at the header timeout, as the data plane does.
    let mut half = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), half.read(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the admin listener kept a half-sent head open"
    );
    // Another one left hanging at shutdown: the process still exits, within its grace.
    let mut held = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    gw.signal("TERM");
    let exit = gw
        .wait_exit(Duration::from_secs(20))
        .expect("a half-sent admin request held up the exit");
    assert_eq!(exit.code(), Some(0));
    drop(held);
}

#[tokio::test]
async fn serve_without_config_starts_safely_and_says_how_to_add_routes() {
    let dir = tempfile::tempdir().unwrap();
    // With no file the gateway uses its fixed loopback defaults (8080 and 9901).
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("PORTCULLIS_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = common::Lines::default();
    let stderr = common::Lines::default();
    common::capture(child.stdout.take().unwrap(), stdout.clone());
    common::capture(child.stderr.take().unwrap(), stderr.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut started = false;
    while Instant::now() < deadline {
        if stdout
            .wait_for(&["no configuration given"], Duration::from_millis(100))
            .is_some()
        {
            started = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if started {
        let all = stdout.all();
        assert!(all.contains("\"listen\":\"127.0.0.1:8080\""), "{all}");
        assert!(all.contains("\"admin\":\"127.0.0.1:9901\""), "{all}");
        assert!(all.contains("portcullis serve --config FILE"), "{all}");
        assert!(dir.path().join("portcullis-data/portcullis.db").exists());
    } else {
        // Those ports are taken on this machine: then it must fail clearly, not start elsewhere.
        let err = stderr.all();
        assert!(
            err.contains("binding the data-plane listener 127.0.0.1:8080")
                || err.contains("binding the admin listener 127.0.0.1:9901"),
            "{err}\n{}",
            stdout.all()
        );
    }
}

#[test]
fn check_reports_errors_with_location_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\nid = \"x\"\nmethods = [\"GET\"]\npath = \"/x\"\nupstream = \"http://127.0.0.1:1\"\ntimeout = \"soon\"\n").unwrap();
    let (code, _out, err) = run_cli(&["check", bad.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml:9:"), "{err}");
    assert!(err.contains("invalid duration"), "{err}");

    let (code, _, err) = run_cli(&["serve", "--config", bad.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing was started"), "{err}");
    assert!(
        !dir.path().join("portcullis-data").exists(),
        "serve created state for an invalid config"
    );

    let warn = dir.path().join("warn.toml");
    std::fs::write(
        &warn,
        "[[routes]]\nid = \"x\"\nmethods = [\"GET\"]\npath = \"/x\"\nupstream = \"https://example.com\"\ndangerous_skip_upstream_tls_verify = true\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", warn.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("dangerous_skip_upstream_tls_verify"),
        "{err}"
    );
    assert!(out.contains("1 route, 1 warning"), "{out}");
    let (code, _, _) = run_cli(&["check", "--strict", warn.to_str().unwrap()], dir.path());
    assert_eq!(code, 1);

    // A certificate file that exists but is not a certificate fails check, not first use.
    let tls = dir.path().join("tls.toml");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    std::fs::write(
        &tls,
        "[server]\ntls = { cert = \"junk.pem\", key = \"junk.pem\" }\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", tls.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TLS"), "{err}");
    // `serve` loads the same files before it creates a vault or binds a port: exit 2 too.
    let (code, _, err) = run_cli(&["serve", "--config", tls.to_str().unwrap()], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("TLS") && err.contains("nothing was started"),
        "{err}"
    );
    assert!(
        !dir.path().join("portcullis-data").exists(),
        "serve created state for a config whose files do not load"
    );

    // A JWT issuer's key file that is not a key, likewise, for check and serve.
    let jwt = dir.path().join("jwt.toml");
    std::fs::write(
        &jwt,
        "[[auth.jwt]]\nissuer = \"https://login.example.com/\"\naudiences = [\"portcullis\"]\nalgorithms = [\"ES256\"]\npublic_keys = [{ pem = \"junk.pem\" }]\n",
    )
    .unwrap();
    for args in [&["check"][..], &["serve", "--config"][..]] {
        let mut argv = args.to_vec();
        argv.push(jwt.to_str().unwrap());
        let (code, _, err) = run_cli(&argv, dir.path());
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("jwt.toml") && err.contains("login.example.com"),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.path().join("portcullis-data").exists());

    let (code, out, _) = run_cli(&["version"], dir.path());
    assert_eq!(code, 0);
    assert!(out.starts_with("portcullis "));
}

#[tokio::test]
async fn undeclared_endpoints_persist_and_show_in_the_inventory_command() {
    let up = upstream::start(None).await;
    let config = format!(
        "{}{}",
        server_section(""),
        route("a", "[\"GET\"]", "/a", &up.url(), "")
    );
    let mut gw = Gw::start(&config);
    for _ in 0..4 {
        status(&gw.url("/wp-admin/setup.php")).await;
    }
    gw.signal("TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(15)).and_then(|s| s.code()),
        Some(0)
    );
    let cfg = gw.config_path();
    let (code, out, err) = run_cli(
        &["inventory", "--config", cfg.to_str().unwrap(), "--json"],
        gw.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hit = v["undeclared"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["shape"] == "/wp-admin/setup.php")
        .cloned();
    assert_eq!(hit.map(|h| h["hits"].clone()), Some(serde_json::json!(4)));
    assert_eq!(v["declared"][0]["id"], "a");
    let (_, table, _) = run_cli(
        &["inventory", "--config", cfg.to_str().unwrap()],
        gw.dir.path(),
    );
    assert!(
        table.contains("/wp-admin/setup.php") && table.contains("Declared routes (1)"),
        "{table}"
    );
}

#[tokio::test]
async fn demo_commands_work_as_printed() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        let end = l.starts_with("Press Ctrl-C");
        printed.push(l);
        if end {
            break;
        }
    }
    let mut checked = 0;
    let mut expect = String::new();
    for l in &printed {
        let t = l.trim();
        if let Some(e) = t.strip_prefix("# ") {
            expect = e.to_string();
            continue;
        }
        if !t.starts_with("curl ") {
            continue;
        }
        let out = Command::new("bash").arg("-c").arg(t).output().unwrap();
        assert!(
            out.status.success(),
            "{t} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout);
        let code = expect.split([' ', ',']).next().unwrap_or("");
        if code.len() == 3 && code.chars().all(|c| c.is_ascii_digit()) {
            assert!(
                body.starts_with(&format!("HTTP/1.1 {code}")),
                "{t}: expected {code}, got:\n{body}"
            );
        }
        if expect.contains("problem+json") {
            assert!(body.contains("application/problem+json"), "{t}:\n{body}");
        }
        if expect.contains("Deprecation") {
            assert!(
                body.contains("deprecation: @") && body.contains("sunset: "),
                "{body}"
            );
        }
        if expect.contains("declared routes") {
            assert!(
                body.contains("\"declared\"") && body.contains("/admin/debug"),
                "{body}"
            );
        }
        if expect.contains("request counters") {
            assert!(body.contains("portcullis_http_requests_total{"), "{body}");
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} commands found in:\n{}",
        printed.join("\n")
    );
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_second_stop_signal_exits_at_once_and_still_writes_the_queued_log_lines() {
    let up = upstream::start(None).await;
    let slow = route("slow", "[\"GET\"]", "/sleep/{ms}", &up.url(), "");
    let mut gw = Gw::start(&format!(
        "{}{slow}",
        server_section("header_read_timeout = \"60s\"")
    ));
    // A request the drain would wait for (the tests' grace period is 10 s).
    let url = gw.url("/sleep/30000");
    let _pending = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    let arrived =
        tokio::time::timeout(Duration::from_secs(10), up.arrivals.lock().await.recv()).await;
    assert!(arrived.is_ok());
    gw.signal("TERM");
    assert!(gw
        .stdout
        .wait_for(&["draining"], Duration::from_secs(10))
        .is_some());
    gw.signal("TERM");
    let exit = gw
        .wait_exit(Duration::from_secs(5))
        .expect("a second signal did not end the process");
    assert_eq!(exit.code(), Some(1));
    // The warning is logged right before the exit: it reaches the log only if the queued
    // lines are written out first.
    let out = gw.stdout.all();
    assert!(
        out.lines().any(|l| l.contains("\"level\":\"WARN\"")
            && l.contains("second stop signal: exiting without waiting for the drain")),
        "{out}"
    );
}
