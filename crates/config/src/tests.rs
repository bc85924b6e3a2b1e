use super::*;
use std::{path::Path, time::Duration};

fn ok(text: &str) -> Loaded {
    match parse(text, "test.toml", Path::new(".")) {
        Ok(l) => l,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse(text, "test.toml", Path::new(".")) {
        Ok(_) => panic!("expected an invalid config"),
        Err(e) => e
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
    }
}

const ROUTE: &str = r#"
[[routes]]
id = "orders"
methods = ["GET"]
path = "/orders/{id}"
upstream = "http://127.0.0.1:7000"
"#;

#[test]
fn empty_document_gives_safe_defaults() {
    let c = ok("").config;
    assert!(c.server.listen.ip().is_loopback());
    assert!(c.server.admin_listen.ip().is_loopback());
    assert!(c.routes.is_empty());
    assert!(c.store.url.starts_with("sqlite://"));
    let z = zero_config();
    assert_eq!(z.server.listen, c.server.listen);
}

#[test]
fn a_route_gets_default_limits() {
    let c = ok(ROUTE).config;
    let r = &c.routes[0];
    assert_eq!(r.methods, vec![http::Method::GET]);
    assert_eq!(r.timeouts.total, std::time::Duration::from_secs(30));
    assert_eq!(r.timeouts.connect, std::time::Duration::from_secs(5));
    assert_eq!(r.max_body, 1024 * 1024);
    assert_eq!(r.upstream.authority.as_str(), "127.0.0.1:7000");
    assert_eq!(r.upstream.base_path, "");
}

#[test]
fn units_parse() {
    let c = ok(&format!(
        "{ROUTE}timeout = \"1m\"\nconnect_timeout = \"500ms\"\nmax_body = \"64KiB\"\n"
    ))
    .config;
    let r = &c.routes[0];
    assert_eq!(r.timeouts.total, std::time::Duration::from_secs(60));
    assert_eq!(r.timeouts.connect, std::time::Duration::from_millis(500));
    assert_eq!(r.max_body, 64 * 1024);
}

#[test]
fn unknown_fields_are_rejected_everywhere_with_a_location() {
    for (doc, line) in [
        ("bogus = 1", 1),
        ("[server]\nlisten = \"127.0.0.1:1\"\nlsten = \"x\"", 3),
        ("[store]\nurll = \"x\"", 2),
        ("[logging]\nformat = \"json\"\ncolour = true", 3),
        (&format!("{ROUTE}retries = 3\n") as &str, 7),
        (
            &format!("{ROUTE}deprecated = {{ sunset = \"2099-01-01\", sunsett = \"x\" }}\n"),
            7,
        ),
        (
            "[server]\ntls = { cert = \"a\", key = \"b\", ca = \"c\" }",
            2,
        ),
    ] {
        let errs = errors(doc);
        assert_eq!(errs.len(), 1, "{doc}: {errs:?}");
        assert!(
            errs[0].message.contains("unknown field"),
            "{doc}: {}",
            errs[0].message
        );
        assert_eq!(errs[0].line, Some(line), "{doc}: {}", errs[0]);
        assert!(errs[0].column.is_some());
    }
}

#[test]
fn bad_values_say_what_was_expected() {
    let e = errors(&format!("{ROUTE}timeout = \"ten seconds\"\n"));
    assert!(
        e[0].message.contains("expected a number and a unit"),
        "{}",
        e[0]
    );
    assert_eq!(e[0].line, Some(7));
    let e = errors(&format!("{ROUTE}max_body = \"lots\"\n"));
    assert!(e[0].message.contains("invalid size"), "{}", e[0]);
    let e = errors("[server]\nlisten = \"localhost\"");
    assert!(e[0].message.contains("expected IP:port"), "{}", e[0]);
    assert_eq!((e[0].line, e[0].column), (Some(2), Some(10)));
}

#[test]
fn cross_field_errors_point_at_the_route() {
    let dup = format!("{ROUTE}{}", ROUTE.replace("/orders/{id}", "/other"));
    let e = errors(&dup);
    assert!(
        e.iter()
            .any(|d| d.message.contains("declared more than once") && d.line == Some(9)),
        "{e:?}"
    );

    let same = format!("{ROUTE}{}", ROUTE.replace("\"orders\"", "\"orders2\""));
    let e = errors(&same);
    assert!(
        e.iter()
            .any(|d| d.message.contains("both answer GET /orders/{id}")),
        "{e:?}"
    );

    let conflict = format!(
        "{ROUTE}{}",
        ROUTE
            .replace("\"orders\"", "\"o2\"")
            .replace("{id}", "{oid}")
    );
    let e = errors(&conflict);
    assert!(e.iter().any(|d| d.message.contains("overlaps")), "{e:?}");

    // The same template with different methods is fine.
    let split = format!(
        "{ROUTE}{}",
        ROUTE.replace("\"orders\"", "\"o2\"").replace("GET", "POST")
    );
    ok(&split);
}

#[test]
fn route_fields_are_checked() {
    let cases = [
        ("methods = [\"GET\"]", "methods = []", "methods is empty"),
        (
            "methods = [\"GET\"]",
            "methods = [\"TRACE\"]",
            "not supported",
        ),
        (
            "methods = [\"GET\"]",
            "methods = [\"GET\", \"get\"]",
            "listed twice",
        ),
        (
            "path = \"/orders/{id}\"",
            "path = \"orders\"",
            "must start with '/'",
        ),
        (
            "path = \"/orders/{id}\"",
            "path = \"/orders/{*rest}/x\"",
            "not a valid template",
        ),
        (
            "upstream = \"http://127.0.0.1:7000\"",
            "upstream = \"ftp://h\"",
            "scheme",
        ),
        (
            "upstream = \"http://127.0.0.1:7000\"",
            "upstream = \"http://u:p@h\"",
            "credentials",
        ),
        (
            "upstream = \"http://127.0.0.1:7000\"",
            "upstream = \"not a url\"",
            "not a URL",
        ),
        ("id = \"orders\"", "id = \"has space\"", "not valid"),
    ];
    for (from, to, want) in cases {
        let doc = ROUTE.replace(from, to);
        let e = errors(&doc);
        assert!(e.iter().any(|d| d.message.contains(want)), "{to}: {e:?}");
    }
    let e = errors(&format!("{ROUTE}rewrite = \"/v2/{{nope}}\"\n"));
    assert!(e[0].message.contains("does not capture"), "{e:?}");
    let e = errors(&format!(
        "{ROUTE}timeout = \"1s\"\nconnect_timeout = \"2s\"\n"
    ));
    assert!(e[0].message.contains("longer than"), "{e:?}");
}

#[test]
fn admin_stays_on_loopback_unless_dangerous() {
    let e = errors("[server]\nadmin_listen = \"0.0.0.0:9901\"");
    assert!(e[0].message.contains("loopback"), "{e:?}");
    let l = ok("[server]\nadmin_listen = \"0.0.0.0:9901\"\ndangerous_expose_admin = true");
    assert!(l
        .warnings
        .iter()
        .any(|w| w.message.contains("dangerous_expose_admin")));
}

#[test]
fn lints_warn_about_risky_settings() {
    let l = ok("[server]\nlisten = \"0.0.0.0:8080\"\ntrusted_proxies = [\"0.0.0.0/0\"]");
    assert!(
        l.warnings.iter().any(|w| w.message.contains("plaintext")),
        "{:?}",
        l.warnings
    );
    assert!(
        l.warnings.iter().any(|w| w.message.contains("every peer")),
        "{:?}",
        l.warnings
    );
    let l = ok(&ROUTE
        .replace("http://127.0.0.1:7000", "https://example.com")
        .replace(
            "]\npath",
            "]\ndangerous_skip_upstream_tls_verify = true\npath",
        ));
    assert!(
        l.warnings
            .iter()
            .any(|w| w.message.contains("dangerous_skip_upstream_tls_verify")),
        "{:?}",
        l.warnings
    );
    let l = ok(&ROUTE.replace("http://127.0.0.1:7000", "http://example.com"));
    assert!(
        l.warnings.iter().any(|w| w.message.contains("unencrypted")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn deprecation_parses_dates_and_warns_past_sunset() {
    let l = ok(&format!("{ROUTE}deprecated = {{ sunset = \"2001-01-01\", link = \"https://docs.example.com/m\" }}\n"));
    assert!(l.warnings.iter().any(|w| w.message.contains("410")));
    let d = l.config.routes[0].deprecation.clone().expect("deprecation");
    assert_eq!(d.sunset.year(), 2001);
    let e = errors(&format!(
        "{ROUTE}deprecated = {{ sunset = \"tomorrow\" }}\n"
    ));
    assert!(e[0].message.contains("not a date"));
}

#[test]
fn trusted_proxies_accept_cidrs_and_addresses() {
    let c = ok("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"::1\"]").config;
    assert_eq!(c.server.trusted_proxies.len(), 3);
    let e = errors("[server]\ntrusted_proxies = [\"10.0.0.0/99\"]");
    assert!(e[0].message.contains("CIDR"));
}

#[test]
fn syntax_errors_have_a_location() {
    let e = errors("[server\nlisten = 1");
    assert_eq!(e[0].line, Some(1));
    let shown = e[0].to_string();
    assert!(shown.starts_with("test.toml:1:"), "{shown}");
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let l = parse(
        "[server]\ndata_dir = \"state\"",
        "x",
        Path::new("/etc/portcullis"),
    )
    .map_err(|e| e.to_string());
    let c = l.map(|l| l.config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.data_dir, Path::new("/etc/portcullis/state"));
    assert_eq!(c.store.url, "sqlite:///etc/portcullis/state/portcullis.db");
}

#[test]
fn a_postgres_store_is_checked_without_repeating_its_password() {
    let warnings =
        |doc: &str| -> Vec<String> { ok(doc).warnings.into_iter().map(|w| w.message).collect() };
    // Loopback, no password in the file: nothing to say, and the URL is kept as written.
    let local = "[store]\nurl = \"postgres://portcullis@127.0.0.1:5432/gateway\"\n";
    assert!(warnings(local).is_empty(), "{:?}", warnings(local));
    let c = ok(local).config;
    assert_eq!(c.store.url, "postgres://portcullis@127.0.0.1:5432/gateway");
    assert!(c.store.is_shared());
    assert!(!ok("").config.store.is_shared());

    let secret = "Sentinel-Pg-Pass-7731";
    for url in [
        format!("postgresql://gw:{secret}@db.internal/gateway"),
        format!("postgres://gw@db.internal/gateway?password={secret}"),
    ] {
        let w = warnings(&format!("[store]\nurl = \"{url}\"\n"));
        assert!(w.iter().any(|m| m.contains("PGPASSWORD")), "{w:?}");
        assert!(w.iter().any(|m| m.contains("sslmode=verify-full")), "{w:?}");
        assert!(!w.iter().any(|m| m.contains(secret)), "{w:?}");
        // Nor in a debug dump of the configuration.
        let c = ok(&format!("[store]\nurl = \"{url}\"\n")).config;
        assert!(!format!("{c:?}").contains(secret));
    }
    // A verified connection to another machine is fine.
    let verified = "[store]\nurl = \"postgres://gw@db.internal/gateway?sslmode=verify-full\"\n";
    assert!(warnings(verified).is_empty(), "{:?}", warnings(verified));

    let bad = format!("[store]\nurl = \"postgres://gw:{secret}@db/x?sslmode=sometimes\"\n");
    let e = errors(&bad);
    assert!(e[0].message.contains("sslmode must be one of"), "{e:?}");
    assert!(e[0].line.is_some());
    assert!(!e.iter().any(|d| d.message.contains(secret)));
    for url in [
        format!("postgres://gw@127.0.0.1/x?sslpassword={secret}"),
        format!("Postgres://gw:{secret}@127.0.0.1/x"),
        format!("postgresql:/gw:{secret}@127.0.0.1/x"),
        format!("mysql://gw:{secret}@127.0.0.1/x"),
    ] {
        let e = errors(&format!("[store]\nurl = \"{url}\"\n"));
        assert!(e[0].line.is_some(), "{e:?}");
        assert!(!e.iter().any(|d| d.message.contains(secret)), "{e:?}");
    }
    // A host in the query is where the driver goes: still another machine.
    let w = warnings("[store]\nurl = \"postgres://gw@127.0.0.1/x?host=db.internal\"\n");
    assert!(w.iter().any(|m| m.contains("sslmode=verify-full")), "{w:?}");
    let e = errors(&format!(
        "[store]\nurl = \"postgres://gw:{secret}@[::1/x\"\n"
    ));
    assert!(e[0].message.contains("not a valid PostgreSQL URL"), "{e:?}");
    assert!(!e.iter().any(|d| d.message.contains(secret)));
}

#[test]
fn upstream_headers_take_credentials_only_from_the_vault() {
    let l = ok(&format!("{ROUTE}upstream_headers = {{ authorization = \"Bearer {{secret:tok}}\", x-env = \"prod\" }}\n"));
    let h = &l.config.routes[0].upstream_headers;
    assert_eq!(h.len(), 2);
    let auth = h
        .iter()
        .find(|x| x.name == "authorization")
        .map(|x| x.value.clone());
    assert_eq!(
        auth.and_then(|t| t.secret).map(|s| s.name),
        Some("tok".to_string())
    );
    let e = errors(&format!(
        "{ROUTE}upstream_headers = {{ x-api-key = \"abc123\" }}\n"
    ));
    assert!(
        e[0].message.contains("reference it from the vault"),
        "{e:?}"
    );
    assert_eq!(e[0].line, Some(7));
    let e = errors(&format!(
        "{ROUTE}upstream_headers = {{ x-key = \"{{secret:bad name}}\" }}\n"
    ));
    assert!(e[0].message.contains("not valid"), "{e:?}");
    assert_eq!(l.config.routes[0].consumer(), "route:orders");
}

#[test]
fn vault_section_chooses_the_key_provider() {
    let c = ok("").config;
    assert_eq!(
        c.vault.key_provider,
        VaultKeyProvider::File(c.server.data_dir.join("master.key"))
    );
    let c = ok("[vault]\nkey_provider = \"env\"").config;
    assert_eq!(c.vault.key_provider, VaultKeyProvider::Env);
    let e = errors("[vault]\nkey_provider = \"kms\"");
    assert!(e[0].message.contains("expected \"file\" or \"env\""));
}

#[test]
fn jwt_issuers_are_validated() {
    let base = "[[auth.jwt]]\nissuer = \"https://login.example.com/\"\naudiences = [\"portcullis\"]\njwks_url = \"https://login.example.com/jwks\"\n";
    let l = ok(&format!("{base}algorithms = [\"ES256\", \"EdDSA\"]\n"));
    assert_eq!(l.config.auth.jwt[0].client_claim, "azp");
    let e = errors(&format!("{base}algorithms = [\"HS256\"]\n"));
    assert!(e[0].message.contains("not allowed"), "{e:?}");
    let e = errors(&format!("{base}algorithms = [\"none\"]\n"));
    assert!(e[0].message.contains("not allowed"), "{e:?}");
    let e = errors(
        &base
            .replace(
                "https://login.example.com/jwks",
                "http://login.example.com/jwks",
            )
            .replace("jwks\"\n", "jwks\"\nalgorithms = [\"ES256\"]\n"),
    );
    assert!(e.iter().any(|d| d.message.contains("https://")), "{e:?}");
    let e = errors(&format!("{ROUTE}auth = [\"jwt\"]\n"));
    assert!(
        e.iter()
            .any(|d| d.message.contains("no [[auth.jwt]] issuer")),
        "{e:?}"
    );
    let e = errors(&format!("{ROUTE}scopes = [\"a\"]\n"));
    assert!(
        e.iter()
            .any(|d| d.message.contains("need an authenticated caller")),
        "{e:?}"
    );
}

#[test]
fn clients_and_object_rules_are_validated() {
    let c = "[[clients]]\nid = \"a\"\nallow_ips = [\"10.0.0.0/8\"]\n[[clients]]\nid = \"a\"\n";
    let e = errors(c);
    assert!(
        e.iter()
            .any(|d| d.message.contains("declared more than once")),
        "{e:?}"
    );
    let r = ROUTE.replace(
        "path = \"/orders/{id}\"",
        "path = \"/t/{tenant}/orders/{id}\"",
    );
    ok(&format!(
        "{r}auth = [\"api_key\"]\nmatch = {{ \"path.tenant\" = \"client.tenant\" }}\n"
    ));
    let e = errors(&format!(
        "{r}auth = [\"api_key\"]\nmatch = {{ \"path.nope\" = \"client.tenant\" }}\n"
    ));
    assert!(e[0].message.contains("does not capture"), "{e:?}");
    let e = errors(&format!(
        "{r}match = {{ \"path.tenant\" = \"client.tenant\" }}\n"
    ));
    assert!(e[0].message.contains("add auth"), "{e:?}");
    let e = errors(&format!(
        "{r}response_fields = {{ admin = {{ deny = [\"x\"] }} }}\n"
    ));
    assert!(e[0].message.contains("\"default\""), "{e:?}");
}

#[test]
fn ip_rules_deny_wins_and_allow_restricts() {
    let c = ok(&format!("[server]\ndeny_ips = [\"10.1.0.0/16\"]\nallow_ips = [\"10.0.0.0/8\"]\n{ROUTE}deny_ips = [\"192.0.2.1\"]\n")).config;
    let ip = |s: &str| {
        s.parse::<std::net::IpAddr>()
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
    };
    assert!(c.server.ip_rules.admits(&ip("10.2.3.4")));
    assert!(!c.server.ip_rules.admits(&ip("10.1.3.4")));
    assert!(!c.server.ip_rules.admits(&ip("192.0.2.9")));
    assert!(!c.routes[0].ip_rules.admits(&ip("192.0.2.1")));
    assert!(c.routes[0].ip_rules.admits(&ip("192.0.2.2")));
    let e = errors(&format!("{ROUTE}allow_ips = [\"nope\"]\n"));
    assert!(e[0].message.contains("not an IP address"), "{e:?}");
}

#[test]
fn networks_in_the_ipv4_mapped_form_become_the_ipv4_networks_they_name() {
    let c = ok(&format!(
        "[server]\ntrusted_proxies = [\"::ffff:10.0.0.1\"]\ndeny_ips = [\"::ffff:192.0.2.0/120\"]\n{ROUTE}allow_ips = [\"::ffff:0:0/96\", \"::/0\"]\n"
    ))
    .config;
    let net = |s: &str| s.parse::<ipnet::IpNet>().ok();
    assert_eq!(
        c.server.trusted_proxies.first().copied(),
        net("10.0.0.1/32")
    );
    assert_eq!(c.server.ip_rules.deny.first().copied(), net("192.0.2.0/24"));
    // The whole mapped range is every IPv4 address; wider IPv6 networks stay as written.
    let allow: Vec<_> = c.routes[0]
        .ip_rules
        .allow
        .iter()
        .map(|n| Some(*n))
        .collect();
    assert_eq!(allow, [net("0.0.0.0/0"), net("::/0")]);
    // `::/0` holds every IPv6 client only: `check` says so.
    let l = ok(&format!("{ROUTE}deny_ips = [\"::/0\"]\n"));
    assert!(
        l.warnings
            .iter()
            .any(|w| w.message.contains("IPv4-mapped range")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn shared_state_and_quotas_are_validated() {
    let l = ok("");
    assert_eq!(l.config.shared_state.backend, SharedBackend::Memory);
    assert_eq!(l.config.shared_state.instances, 1);

    let l = ok(
        "[shared_state]\nurl = \"redis://127.0.0.1:6379/2\"\ninstances = 3\ntimeout = \"100ms\"",
    );
    assert_eq!(
        l.config.shared_state.backend,
        SharedBackend::Redis("redis://127.0.0.1:6379/2".into())
    );
    assert_eq!(l.config.shared_state.instances, 3);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);

    // The password is warned about, and neither the warning nor a debug dump repeats it.
    let l = ok("[shared_state]\nurl = \"redis://:hunter2pw@10.0.0.5:6379\"");
    let text: String = l.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        text.contains("password") && text.contains("unencrypted"),
        "{text}"
    );
    assert!(!text.contains("hunter2pw"));
    assert!(!format!("{:?}", l.config).contains("hunter2pw"));

    for (doc, needle) in [
        ("[shared_state]\nurl = \"http://:pw@x\"", "not \"memory\""),
        ("[shared_state]\ninstances = 0", "at least 1"),
        ("[shared_state]\ntimeout = \"1m\"", "between"),
        ("[shared_state]\nurll = \"memory\"", "unknown field"),
        ("[shared_state]\nkey_prefix = \"a b\"", "key_prefix"),
        (&format!("{ROUTE}rate_limits = [{{ per = \"ip\", limit = 1, period = \"1s\" }}]\nshared_state_failure = \"ignore\"") as &str, "fall_back_local or fail_closed"),
        (&format!("{ROUTE}quota = {{ daily = 10 }}") as &str, "authenticated caller"),
        (&format!("{ROUTE}auth = [\"api_key\"]\nquota = {{ }}") as &str, "daily, monthly or both"),
        (&format!("{ROUTE}auth = [\"api_key\"]\nquota = {{ daily = 0 }}") as &str, "refuses everything"),
        (&format!("{ROUTE}auth = [\"api_key\"]\nquota = {{ dayly = 5 }}") as &str, "unknown field"),
        ("[[clients]]\nid = \"a\"\nquota = { monthly = 0 }", "refuses everything"),
    ] {
        let errs = errors(doc);
        assert!(
            errs.iter().any(|e| e.message.contains(needle) && e.line.is_some()),
            "{doc}: {errs:?}"
        );
        assert!(!errs.iter().any(|e| e.message.contains(":pw@")));
    }

    let l = ok(&format!("[[clients]]\nid = \"a\"\nquota = {{ daily = 100, monthly = 2000 }}\n{ROUTE}auth = [\"api_key\"]\nquota = {{ daily = 5 }}\nshared_state_failure = \"fail_closed\""));
    assert_eq!(
        l.config.clients[0].quota,
        Some(QuotaConfig {
            daily: Some(100),
            monthly: Some(2000)
        })
    );
    let r = &l.config.routes[0];
    assert_eq!(r.quota.and_then(|q| q.daily), Some(5));
    assert_eq!(r.shared_state_failure, SharedStateFailure::FailClosed);
}

#[test]
fn load_shedding_settings_have_safe_defaults_and_checked_values() {
    let c = ok(ROUTE).config;
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.min_body_rate, 1024);
    assert_eq!(c.server.body_rate_grace, std::time::Duration::from_secs(5));
    assert_eq!(c.routes[0].max_concurrent, None);

    let c = ok(&format!(
        "[server]\nmax_connections = 2\nmin_body_rate = \"64KiB\"\nbody_rate_grace = \"1s\"\n{ROUTE}max_concurrent = 100\n"
    ))
    .config;
    assert_eq!(c.server.max_connections, 2);
    assert_eq!(c.server.min_body_rate, 64 * 1024);
    assert_eq!(c.server.body_rate_grace, std::time::Duration::from_secs(1));
    assert_eq!(c.routes[0].max_concurrent, Some(100));
    // 0 turns the body rate check off.
    assert_eq!(
        ok("[server]\nmin_body_rate = 0\n")
            .config
            .server
            .min_body_rate,
        0
    );

    let e = errors(&format!("{ROUTE}max_concurrent = 0\n"));
    assert!(e[0].message.contains("max_concurrent is 0"), "{e:?}");
    assert_eq!((e[0].line, e[0].column), (Some(7), Some(18)));
    let e = errors(&format!("{ROUTE}max_concurrent = -1\n"));
    assert_eq!(e[0].line, Some(7), "{e:?}");
    let e = errors("[server]\nmax_connections = 0\n");
    assert!(e[0].message.contains("server.max_connections"), "{e:?}");
    assert_eq!((e[0].line, e[0].column), (Some(2), Some(19)));
    let e = errors("[server]\nbody_rate_grace = \"0s\"\n");
    assert!(e[0].message.contains("body_rate_grace"), "{e:?}");
    assert_eq!(e[0].line, Some(2));
    let e = errors("[server]\nmin_body_rate = \"fast\"\n");
    assert!(e[0].message.contains("invalid size"), "{e:?}");
    assert_eq!(e[0].line, Some(2));
}

#[test]
fn json_limits_default_and_explicit() {
    let r = ok(ROUTE).config.routes[0].clone();
    assert_eq!(r.json_limits, JsonLimits::DEFAULT);
    assert!(!r.json_limits.explicit);
    let r = ok(&format!(
        "{ROUTE}json_limits = {{ max_depth = 8, max_string = \"1KiB\" }}\n"
    ))
    .config
    .routes[0]
        .clone();
    assert_eq!(r.json_limits.max_depth, 8);
    assert_eq!(r.json_limits.max_string, 1024);
    assert_eq!(r.json_limits.max_array, JsonLimits::DEFAULT.max_array);
    assert!(r.json_limits.explicit);
    // Dotted keys work too.
    let r = ok(&format!("{ROUTE}json_limits.max_members = 5\n"))
        .config
        .routes[0]
        .clone();
    assert_eq!(r.json_limits.max_members, 5);
    assert!(r.json_limits.explicit);
}

#[test]
fn json_limits_refuse_nonsense_with_a_location() {
    for (field, want) in [
        ("max_depth = 0", "max_depth must be at least 1"),
        ("max_depth = 101", "between 1 and 100"),
        ("max_string = 0", "max_string must be at least 1"),
        ("max_array = 0", "max_array must be at least 1"),
        ("max_members = 0", "max_members must be at least 1"),
        ("max_depth = -1", "invalid value"),
        ("max_strings = 5", "unknown field"),
    ] {
        let e = errors(&format!("{ROUTE}json_limits = {{ {field} }}\n"));
        assert!(e[0].message.contains(want), "{field}: {e:?}");
        assert_eq!(e[0].line, Some(7), "{field}: {e:?}");
        assert!(e[0].column.is_some_and(|c| c > 15), "{field}: {e:?}");
    }
}

#[test]
fn typed_params_are_compiled() {
    let doc = format!(
        "{ROUTE}{}",
        r#"params.path = { id = { type = "integer", minimum = 1 } }
params.query = { limit = { type = "integer", minimum = 1, maximum = 100 }, status = { type = "string", enum = ["open", "closed"] }, q = { type = "string", max_length = 64, pattern = "^[a-z ]+$", required = true }, ratio = { type = "number", maximum = 0.5 }, flag = { type = "boolean" }, ref = { type = "uuid" } }
params.unknown_query = "reject"
"#
    );
    let r = ok(&doc).config.routes[0].clone();
    let p = r.params.clone().expect("params");
    assert!(p.reject_unknown_query);
    assert_eq!(p.path.len(), 1);
    assert!(matches!(
        p.path[0].1.kind,
        ParamKind::Integer {
            minimum: Some(1),
            maximum: None,
            ..
        }
    ));
    let q = |name: &str| {
        p.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
    };
    assert!(q("q").is_some_and(|r| r.required));
    assert!(q("limit").is_some_and(|r| !r.required));
    match q("q").map(|r| r.kind) {
        Some(ParamKind::String {
            max_length: Some(64),
            pattern: Some(re),
            ..
        }) => assert!(re.is_match("hello world") && !re.is_match("Hello")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        q("status").map(|r| r.kind),
        Some(ParamKind::String { values, .. }) if values == ["open", "closed"]
    ));
    assert!(matches!(
        q("ratio").map(|r| r.kind),
        Some(ParamKind::Number { maximum: Some(m), .. }) if m == 0.5
    ));
    // A catch-all is named without its star.
    let files = ROUTE.replace("/orders/{id}", "/files/{*rest}");
    ok(&format!(
        "{files}params.path = {{ rest = {{ type = \"string\", max_length = 100 }} }}\n"
    ));
}

#[test]
fn typed_params_refuse_mistakes_with_a_location() {
    for (params, want) in [
        (
            r#"params.path = { nope = { type = "integer" } }"#,
            "does not capture {nope}",
        ),
        (
            r#"params.path = { id = { type = "integer", required = true } }"#,
            "always present",
        ),
        (r#"params.query = { q = { type = "text" } }"#, "not known"),
        (
            r#"params.query = { q = { type = "string", pattern = "[a-" } }"#,
            "pattern is not a valid regular expression: unclosed character class",
        ),
        (
            r#"params.query = { q = { type = "string", minimum = 1 } }"#,
            "minimum does not apply to a string parameter",
        ),
        (
            r#"params.query = { q = { type = "uuid", pattern = "x" } }"#,
            "pattern does not apply to a uuid parameter",
        ),
        (
            r#"params.query = { q = { type = "integer", minimum = 1.5 } }"#,
            "must be an integer",
        ),
        (
            r#"params.query = { q = { type = "integer", minimum = 5, maximum = 1 } }"#,
            "greater than maximum",
        ),
        (
            r#"params.query = { q = { type = "string", min_length = 5, max_length = 1 } }"#,
            "greater than max_length",
        ),
        (
            r#"params.query = { q = { type = "string", enum = [] } }"#,
            "enum is empty",
        ),
        (
            r#"params.query = { q = { type = "string", enum = ["a", 1] } }"#,
            "enum value 1 does not have",
        ),
        (
            r#"params.query = { q = { type = "string", max_len = 1 } }"#,
            "unknown field",
        ),
        (
            r#"params.unknown_query = "deny""#,
            "expected \"allow\" or \"reject\"",
        ),
    ] {
        let e = errors(&format!("{ROUTE}{params}\n"));
        assert!(e[0].message.contains(want), "{params}: {e:?}");
        assert_eq!(e[0].line, Some(7), "{params}: {e:?}");
        assert!(e[0].column.is_some(), "{params}: {e:?}");
    }
}

#[test]
fn webhooks_are_validated() {
    const HOOK: &str = "[webhook_signing]\nsecret = \"{secret:sign}\"\n[[webhooks]]\nid = \"stripe\"\npath = \"/hooks/stripe\"\nforward = \"http://127.0.0.1:7000/wf\"\n";
    let l = ok(&format!("{HOOK}provider = \"stripe\"\nsecrets = [\"{{secret:a}}\", \"{{secret:b}}\"]\nevent_types = [\"charge.succeeded\"]"));
    let w = &l.config.webhooks[0];
    assert_eq!(w.provider, WebhookProvider::Stripe);
    assert_eq!(w.secrets.len(), 2);
    assert_eq!(w.tolerance, std::time::Duration::from_secs(300));
    assert_eq!(w.dedup_window, std::time::Duration::from_secs(660));
    assert_eq!(w.delivery, Delivery::Direct);
    assert_eq!(w.consumer(), "webhook:stripe");
    let l = ok("[[webhooks]]\nid = \"s\"\npath = \"/h\"\nprovider = \"github\"\nsecrets = [\"{secret:a}\"]\nforward = \"http://127.0.0.1:1/\"");
    assert_eq!(
        l.config.webhook_signing.map(|s| s.name).as_deref(),
        Some("portcullis-webhook-signing"),
        "the signing secret's default name"
    );
    let l = ok(&format!(
        "{HOOK}provider = \"github\"\nsecrets = [\"{{secret:a}}\"]"
    ));
    assert_eq!(
        l.config.webhooks[0].dedup_window,
        std::time::Duration::from_secs(86_400)
    );
    let l = ok(&format!("{HOOK}provider = \"hmac\"\nsecrets = [\"{{secret:a}}\"]\nhmac = {{ signature_header = \"X-Sig\", algorithm = \"sha512\", encoding = \"base64\", timestamp_header = \"x-ts\", template = \"{{timestamp}}.{{body}}\" }}"));
    match &l.config.webhooks[0].provider {
        WebhookProvider::Hmac(h) => {
            assert!(h.sha512 && h.base64);
            assert_eq!(h.signature_header.as_str(), "x-sig");
        }
        p => panic!("{p:?}"),
    }

    for (doc, needle) in [
        (format!("{HOOK}provider = \"paypal\"\nsecrets = [\"{{secret:a}}\"]"), "not known"),
        (format!("{HOOK}provider = \"stripe\"\nsecrets = [\"whsec_plaintext\"]"), "vault reference"),
        (format!("{HOOK}provider = \"stripe\"\nsecrets = []"), "at least one"),
        (format!("{HOOK}provider = \"stripe\"\nsecrets = [\"{{secret:a}}\"]\ndelivery = \"later\""), "direct or queued"),
        (format!("{HOOK}provider = \"stripe\"\nsecrets = [\"{{secret:a}}\"]\ndedup_window = \"1m\""), "twice the tolerance"),
        (format!("{HOOK}provider = \"stripe\"\nsecrets = [\"{{secret:a}}\"]\ntolerance = \"2h\""), "between 1s and 1h"),
        (format!("{HOOK}provider = \"stripe\"\nsecrets = [\"{{secret:a}}\"]\nhmac = {{ signature_header = \"x\" }}"), "only to provider"),
        (format!("{HOOK}provider = \"hmac\"\nsecrets = [\"{{secret:a}}\"]"), "needs an hmac"),
        (format!("{HOOK}provider = \"hmac\"\nsecrets = [\"{{secret:a}}\"]\nhmac = {{ signature_header = \"x\", template = \"{{timestamp}}.{{body}}\" }}"), "exactly when timestamp_header"),
        (format!("{HOOK}provider = \"hmac\"\nsecrets = [\"{{secret:a}}\"]\nhmac = {{ signature_header = \"x\", template = \"{{nonce}}{{body}}\" }}"), "knows only"),
        (format!("{HOOK}provider = \"stripe\"\nsecrets = [\"{{secret:a}}\"]\nsecretz = 1"), "unknown field"),
        (format!("{HOOK}provider = \"stripe\"\nsecrets = [\"{{secret:a}}\"]\n[[webhooks]]\nid = \"stripe\"\npath = \"/x\"\nprovider = \"stripe\"\nsecrets = [\"{{secret:a}}\"]\nforward = \"http://127.0.0.1:1/\""), "already used"),
        ("[[webhooks]]\nid = \"s\"\npath = \"/h/{id}\"\nprovider = \"github\"\nsecrets = [\"{secret:a}\"]\nforward = \"http://127.0.0.1:1/\"".to_string(), "exact absolute path"),
    ] {
        let errs = errors(&doc);
        assert!(errs.iter().any(|e| e.message.contains(needle)), "{doc}: {errs:?}");
    }
}

#[test]
fn integrations_are_validated() {
    const C: &str = "[[clients]]\nid = \"wf\"\n";
    let l = ok(&format!("{C}[[integrations]]\nid = \"gh\"\nbase_url = \"https://api.github.com\"\nallow = [{{ methods = [\"get\"], path = \"/repos/{{o}}/{{r}}\" }}]\nclients = [\"wf\"]\ncredential = {{ type = \"header\", header = \"X-Token\", secret = \"{{secret:gh}}\" }}"));
    let i = &l.config.integrations[0];
    assert_eq!(i.allow[0].0, vec![http::Method::GET]);
    assert_eq!(i.consumer(), "integration:gh");
    assert!(
        matches!(&i.credential.as_ref().map(|c| &c.placement), Some(CredentialPlacement::Header(h)) if h.as_str() == "x-token")
    );
    let l = ok(&format!("{C}[[integrations]]\nid = \"lab\"\nbase_url = \"http://127.0.0.1:9\"\nallow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\ndangerous_allow_cidrs = [\"127.0.0.1/32\"]"));
    let text: String = l.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        text.contains("dangerous_allow_cidrs") && text.contains("plain http"),
        "{text}"
    );
    for (doc, needle) in [
        ("base_url = \"https://u:p@api.example\"\nallow = [{ methods = [\"GET\"], path = \"/x\" }]\nclients = [\"wf\"]", "no credentials"),
        ("base_url = \"ftp://api.example\"\nallow = [{ methods = [\"GET\"], path = \"/x\" }]\nclients = [\"wf\"]", "http(s)"),
        ("base_url = \"https://api.example\"\nallow = []\nclients = [\"wf\"]", "at least one"),
        ("base_url = \"https://api.example\"\nallow = [{ methods = [\"GET\"], path = \"/a/../b\" }]\nclients = [\"wf\"]", "dot segments"),
        ("base_url = \"https://api.example\"\nallow = [{ methods = [\"GET\"], path = \"/x\" }]\nclients = [\"nobody\"]", "not declared"),
        ("base_url = \"https://api.example\"\nallow = [{ methods = [\"GET\"], path = \"/x\" }]\nclients = [\"wf\"]\ncredential = { type = \"bearer\", secret = \"plain text!\" }", "name a vault secret"),
        ("base_url = \"https://api.example\"\nallow = [{ methods = [\"GET\"], path = \"/x\" }]\nclients = [\"wf\"]\ncredential = { type = \"oauth2\", secret = \"{secret:a}\" }", "not supported"),
        ("base_url = \"https://api.example\"\nallow = [{ methods = [\"GET\"], path = \"/x\" }]\nclients = [\"wf\"]\nretries = 3", "unknown field"),
    ] {
        let errs = errors(&format!("{C}[[integrations]]\nid = \"i\"\n{doc}"));
        assert!(errs.iter().any(|e| e.message.contains(needle)), "{doc}: {errs:?}");
    }
}

#[test]
fn circuit_breaker_window_and_probes_are_configurable_and_checked_where_written() {
    const HEAD: &str = "[[clients]]\nid = \"wf\"\n[[integrations]]\nid = \"i\"\nbase_url = \"https://api.example\"\nallow = [{ methods = [\"GET\"], path = \"/x\" }]\nclients = [\"wf\"]\n";
    // Without the table, or with only the older fields: the defaults hold (existing files stay valid).
    let d = ok(HEAD).config.integrations[0].breaker;
    assert_eq!(d, BreakerSettings::default());
    assert_eq!(d.window, std::time::Duration::from_secs(30));
    assert_eq!(d.half_open_probes, 1);
    let old = ok(&format!(
        "{HEAD}circuit_breaker = {{ failure_ratio = 0.25, min_requests = 4, open_for = \"5s\" }}\n"
    ))
    .config
    .integrations[0]
        .breaker;
    assert_eq!(
        (
            old.failure_ratio,
            old.min_requests,
            old.open_for,
            old.window,
            old.half_open_probes
        ),
        (
            0.25,
            4,
            std::time::Duration::from_secs(5),
            d.window,
            d.half_open_probes
        )
    );
    let b = ok(&format!(
        "{HEAD}circuit_breaker = {{ window = \"2m\", half_open_probes = 3 }}\n"
    ))
    .config
    .integrations[0]
        .breaker;
    assert_eq!(b.window, std::time::Duration::from_secs(120));
    assert_eq!(b.half_open_probes, 3);
    assert_eq!(b.min_requests, d.min_requests);

    // Out-of-range values: an error on the line and column of the value itself.
    for (table, needle, column) in [
        ("{ window = \"10ms\" }", "circuit_breaker.window", 30),
        ("{ window = \"2h\" }", "circuit_breaker.window", 30),
        (
            "{ half_open_probes = 0 }",
            "circuit_breaker.half_open_probes",
            40,
        ),
        (
            "{ half_open_probes = 101 }",
            "circuit_breaker.half_open_probes",
            40,
        ),
        ("{ failure_ratio = 0.0 }", "0 < failure_ratio <= 1", 19),
    ] {
        let e = errors(&format!("{HEAD}circuit_breaker = {table}\n"));
        assert_eq!(e.len(), 1, "{table}: {e:?}");
        assert!(e[0].message.contains(needle), "{table}: {}", e[0]);
        assert_eq!(
            (e[0].line, e[0].column),
            (Some(8), Some(column)),
            "{table}: {}",
            e[0]
        );
    }
    // Unknown fields are still refused.
    let e = errors(&format!("{HEAD}circuit_breaker = {{ probes = 2 }}\n"));
    assert!(
        e.iter().any(|e| e.message.contains("unknown field")),
        "{e:?}"
    );
}

/// The one error of `text`, which must have a location and mention every word of `words`.
fn located_error(text: &str, words: &[&str]) {
    let e = errors(text);
    assert!(
        e.iter()
            .any(|d| d.line.is_some() && words.iter().all(|w| d.message.contains(w))),
        "no located error with {words:?} for:\n{text}\ngot {e:?}"
    );
}

#[test]
fn durations_that_would_switch_a_protection_off_or_overflow_are_refused_where_written() {
    let jwt = "[[auth.jwt]]\nissuer = \"https://login.example.com/\"\naudiences = [\"portcullis\"]\njwks_url = \"https://login.example.com/jwks\"\nalgorithms = [\"ES256\"]\n";
    let cases = [
        // A zero window never counts a second failure; a huge cool-down overflowed the clock.
        (
            "[auth]\nbrute_force = { window = \"0s\" }\n".to_string(),
            "auth.brute_force.window",
        ),
        (
            "[auth]\nbrute_force = { cooldown = \"400000000000y\" }\n".into(),
            "auth.brute_force.cooldown",
        ),
        (
            "[auth]\nbrute_force = { max_failures = 0 }\n".into(),
            "auth.brute_force.max_failures",
        ),
        // A zero refresh period panicked the refresh task at start.
        (format!("{jwt}jwks_refresh = \"0s\"\n"), "jwks_refresh"),
        (
            format!("{jwt}jwks_refetch_after = \"0s\"\n"),
            "jwks_refetch_after",
        ),
        (format!("{jwt}leeway = \"3650d\"\n"), "leeway"),
        // Zero closed every connection whose head arrived in two reads.
        (
            "[server]\nheader_read_timeout = \"0s\"\n".into(),
            "server.header_read_timeout",
        ),
        (
            "[server]\nshutdown_grace = \"2h\"\n".into(),
            "server.shutdown_grace",
        ),
        // Zero would cut every response that meets a full socket buffer once.
        (
            "[server]\nsend_timeout = \"0s\"\n".into(),
            "server.send_timeout",
        ),
        (
            "[auth.oauth2]\ntoken_ttl = \"0s\"\n".into(),
            "auth.oauth2.token_ttl",
        ),
    ];
    for (text, what) in &cases {
        located_error(text, &[what, "expected between"]);
    }
    let l = ok(&format!(
        "[auth]\nbrute_force = {{ max_failures = 3, window = \"30s\", cooldown = \"1h\" }}\n{jwt}jwks_refresh = \"10m\"\nleeway = \"0s\"\n"
    ));
    let bf = &l.config.auth.brute_force;
    assert_eq!(
        (bf.max_failures, bf.window, bf.cooldown),
        (3, Duration::from_secs(30), Duration::from_secs(3600))
    );
    assert_eq!(l.config.auth.jwt[0].leeway, Duration::ZERO);
}

#[test]
fn a_rate_limit_whose_allowance_would_take_centuries_to_refill_is_refused() {
    // These passed, and the limiter's saturated arithmetic then admitted every request.
    for rl in [
        "{ per = \"ip\", limit = 1, period = \"600y\" }",
        "{ per = \"ip\", limit = 1, period = \"1y\", burst = 600 }",
    ] {
        located_error(
            &format!("{ROUTE}rate_limits = [{rl}]\n"),
            &["rate limit", "years to refill"],
        );
    }
    let c = ok(&format!(
        "{ROUTE}rate_limits = [{{ per = \"ip\", limit = 1, period = \"1y\", burst = 5 }}]\n"
    ))
    .config;
    assert_eq!(c.routes[0].rate_limits[0].burst, 5);
}

#[test]
fn networks_with_host_bits_set_are_refused_with_both_readings() {
    // `203.0.113.7/0` used to become 0.0.0.0/0: an allow list for one address let everyone in.
    for (list, text) in [
        ("allow_ips", "203.0.113.7/0"),
        ("deny_ips", "10.1.2.3/8"),
        ("allow_ips", "2001:db8::1/32"),
    ] {
        located_error(
            &format!("{ROUTE}{list} = [\"{text}\"]\n"),
            &["host bits", "single address"],
        );
    }
    located_error(
        "[server]\ntrusted_proxies = [\"10.1.2.3/8\"]\n",
        &["trusted_proxies", "10.0.0.0/8", "10.1.2.3/32"],
    );
    let c = ok(&format!(
        "{ROUTE}allow_ips = [\"10.0.0.0/8\", \"10.1.2.3\"]\n"
    ))
    .config;
    assert_eq!(c.routes[0].ip_rules.allow.len(), 2);
}

#[test]
fn cors_entries_that_could_never_match_are_refused() {
    for (cors, words) in [
        ("origins = []", &["origins is empty"][..]),
        (
            "origins = [\"https://*.example.com\"]",
            &["wildcard origins"][..],
        ),
        (
            "origins = [\"https://app.example.com:443\"]",
            &["never sent", "\"https://app.example.com\""][..],
        ),
        (
            "origins = [\"https://app.example.com\"], methods = [\"TRACE\"]",
            &["method \"TRACE\""][..],
        ),
        (
            "origins = [\"https://app.example.com\"], headers = [\"*\"]",
            &["not a header name"][..],
        ),
    ] {
        located_error(&format!("{ROUTE}cors = {{ {cors} }}\n"), words);
    }
    ok(&format!(
        "{ROUTE}cors = {{ origins = [\"https://app.example.com:8443\", \"http://localhost:3000\", \"https://App.Example.com\"], methods = [\"get\", \"HEAD\"], headers = [\"content-type\"], expose_headers = [\"*\"] }}\n"
    ));
    let l = ok(&format!(
        "{ROUTE}cors = {{ origins = [\"https://app.example.com\"], max_age = \"2d\" }}\n"
    ));
    assert!(l.warnings.iter().any(|w| w.message.contains("max_age")));
    // The route takes GET only: a preflight for POST is answered by another route, if any.
    let l = ok(&format!(
        "{ROUTE}cors = {{ origins = [\"https://app.example.com\"], methods = [\"POST\"] }}\n"
    ));
    assert!(
        l.warnings.iter().any(|w| w.line.is_some()
            && w.message
                .contains("method \"POST\" is not one of the route's methods (GET)")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn the_log_level_is_parsed_as_the_logger_parses_it() {
    located_error(
        "[logging]\nlevel = \"info,portcullis=notalevel\"\n",
        &["logging.level", "not a level"],
    );
    ok("[logging]\nlevel = \"warn,portcullis=debug\"\n");
}

#[test]
fn the_admin_listener_cannot_share_the_data_planes_port_on_any_address() {
    located_error(
        "[server]\nlisten = \"0.0.0.0:18080\"\nadmin_listen = \"127.0.0.1:18080\"\n",
        &["admin_listen must differ"],
    );
    located_error(
        "[server]\nlisten = \"[::]:18080\"\nadmin_listen = \"127.0.0.1:18080\"\n",
        &["admin_listen must differ"],
    );
    ok("[server]\nlisten = \"127.0.0.2:18080\"\nadmin_listen = \"127.0.0.1:18080\"\n");
    ok("[server]\nlisten = \"0.0.0.0:18080\"\nadmin_listen = \"[::1]:18080\"\n");
}

#[test]
fn a_schema_file_that_is_not_a_valid_schema_is_refused_with_the_place_in_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        dir.path().join("bad.json"),
        r#"{"type": "object", "properties": {"n": {"minimum": "x"}}}"#,
    )
    .expect("the schema file is written");
    let text = format!("{ROUTE}methods = [\"POST\"]\nrequest_schema = \"bad.json\"\n").replacen(
        "methods = [\"GET\"]\n",
        "",
        1,
    );
    let e = match parse(&text, "test.toml", dir.path()) {
        Ok(_) => panic!("an invalid schema was accepted"),
        Err(e) => e.diagnostics,
    };
    assert!(
        e.iter().any(|d| d.line.is_some()
            && d.message.contains("bad.json")
            && d.message.contains("not a valid JSON Schema")
            && d.message.contains("/properties/n/minimum")),
        "{e:?}"
    );
}

#[test]
fn store_and_vault_paths_that_name_no_file_are_refused_where_written() {
    // These failed only at start, as "cannot open the vault" and "./: Is a directory".
    located_error(
        "[store]\nurl = \"sqlite://\"\n",
        &["store.url", "names no database file"],
    );
    located_error(
        "[vault]\nkey_file = \"\"\n",
        &["vault.key_file names no file"],
    );
    located_error(
        "[vault]\nkey_file = \"keys/\"\n",
        &["vault.key_file names no file"],
    );
    ok("[store]\nurl = \"sqlite://state/p.db\"\n[vault]\nkey_file = \"keys/master.key\"\n");
}

#[test]
fn a_dangerous_switch_that_changes_nothing_is_pointed_out() {
    let l = ok("[server]\ndangerous_expose_admin = true\n");
    assert!(
        l.warnings
            .iter()
            .any(|w| w.message.contains("has no effect") && w.line.is_some()),
        "{:?}",
        l.warnings
    );
}

#[test]
fn integration_timeouts_sizes_and_health_checks_refuse_zero() {
    let base = "[[clients]]\nid = \"wf\"\n\n[[integrations]]\nid = \"crm\"\nbase_url = \"https://api.example.com\"\nallow = [{ methods = [\"GET\"], path = \"/v1/{*rest}\" }]\nclients = [\"wf\"]\n";
    ok(base);
    for (extra, words) in [
        ("timeout = \"0s\"\n", &["timeout", "expected between"][..]),
        ("connect_timeout = \"0s\"\n", &["connect_timeout"][..]),
        ("max_response = 0\n", &["max_response"][..]),
        (
            "health_check = { path = \"/health\", interval = \"0s\" }\n",
            &["health_check needs"][..],
        ),
        (
            "health_check = { path = \"/health\", unhealthy_after = 0 }\n",
            &["health_check needs"][..],
        ),
        (
            "rate_limit = { limit = 1, period = \"600y\" }\n",
            &["years to refill"][..],
        ),
        (
            "dangerous_allow_cidrs = [\"10.1.2.3/8\"]\n",
            &["host bits"][..],
        ),
    ] {
        located_error(&format!("{base}{extra}"), words);
    }
}

#[test]
fn a_fleet_is_warned_that_quotas_are_per_instance_and_fallback_needs_its_size() {
    let limited = ROUTE.replace(
        "]\npath",
        "]\nrate_limits = [{ per = \"ip\", limit = 10, period = \"1m\" }]\nquota = { daily = 100 }\nauth = [\"api_key\"]\npath",
    );
    let warned = |doc: &str, what: &str| ok(doc).warnings.iter().any(|w| w.message.contains(what));
    let redis = "[shared_state]\nurl = \"redis://127.0.0.1:6379\"\n";
    let redis_fleet = "[shared_state]\nurl = \"redis://127.0.0.1:6379\"\ninstances = 3\n";
    // One instance on its own: nothing to say.
    assert!(!warned(&limited, "each instance's own store"));
    assert!(!warned(&limited, "instances = 1"));
    // Redis with the default instances = 1: both.
    let doc = format!("{redis}{limited}");
    assert!(
        warned(&doc, "each instance's own store"),
        "{:?}",
        ok(&doc).warnings
    );
    assert!(warned(&doc, "instances = 1"), "{:?}", ok(&doc).warnings);
    // Redis and the fleet's size: only the quotas.
    let doc = format!("{redis_fleet}{limited}");
    assert!(warned(&doc, "each instance's own store"));
    assert!(!warned(&doc, "instances = 1"));
    // A shared PostgreSQL store shares the quotas too.
    let pg = "[store]\nurl = \"postgres://gw@127.0.0.1/gateway\"\n";
    let doc = format!("{pg}{redis_fleet}{limited}");
    assert!(
        !warned(&doc, "each instance's own store"),
        "{:?}",
        ok(&doc).warnings
    );
    assert!(!warned(&doc, "[shared_state] is in memory"));
    // But with limits kept in memory each instance still counts its own rate limits,
    // and remembers its own webhook message ids.
    let doc = format!("{pg}{limited}");
    assert!(
        warned(&doc, "[shared_state] is in memory"),
        "{:?}",
        ok(&doc).warnings
    );
    let hook = "[[webhooks]]\nid = \"s\"\npath = \"/h\"\nprovider = \"github\"\nsecrets = [\"{secret:a}\"]\nforward = \"http://127.0.0.1:1/\"\n";
    assert!(warned(&format!("{pg}{hook}"), "webhook message ids"));
    assert!(!warned(
        &format!("{pg}{ROUTE}"),
        "[shared_state] is in memory"
    ));
}

#[test]
fn an_invalid_file_reports_its_warnings_too_in_the_files_order() {
    // Fixing errors one round at a time must not hide the risky settings until the last one.
    let text = "[server]\ntrusted_proxies = [\"bogus\", \"0.0.0.0/0\"]\n\n[[routes]]\nid = \"r\"\nmethods = [\"GET\"]\npath = \"r\"\nupstream = \"http://127.0.0.1:7000\"\ncors = { origins = [\"https://a.example\"], max_age = \"2d\" }\n";
    let e = match parse(text, "test.toml", Path::new(".")) {
        Ok(_) => panic!("expected an invalid config"),
        Err(e) => e,
    };
    let shown = e.to_string();
    let at = |w: &str| {
        shown
            .find(w)
            .unwrap_or_else(|| panic!("{w:?} missing from:\n{shown}"))
    };
    // Line 2 (an error, then a warning), line 7 (an error), line 9 (a warning).
    assert!(at("\"bogus\"") < at("0.0.0.0/0 believes"), "{shown}");
    assert!(
        at("0.0.0.0/0 believes") < at("must start with '/'"),
        "{shown}"
    );
    assert!(at("must start with '/'") < at("max_age"), "{shown}");
    assert!(shown.contains("test.toml:9:"), "{shown}");
}

#[test]
fn every_written_secret_reference_has_its_consumer_and_place() {
    let text = format!(
        "{ROUTE}upstream_headers = {{ x-key = \"{{secret:up}}\", x-env = \"prod\" }}\n\
         [webhook_signing]\nsecret = \"{{secret:sign}}\"\n\
         [[webhooks]]\nid = \"s\"\npath = \"/h\"\nprovider = \"github\"\n\
         secrets = [\"{{secret:a}}\", \"{{secret:b}}\"]\nforward = \"http://127.0.0.1:1/\"\n\
         [[clients]]\nid = \"wf\"\n\
         [[integrations]]\nid = \"gh\"\nbase_url = \"https://api.github.com\"\n\
         allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\n\
         credential = {{ type = \"bearer\", secret = \"gh-token\" }}\n"
    );
    let l = ok(&text);
    // The place of each value, found the way an editor would: line and column of its quote.
    let place = |needle: &str| {
        let at = text.find(needle).unwrap_or_else(|| panic!("{needle}"));
        let line = text[..at].matches('\n').count() + 1;
        (line, at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1)
    };
    for (consumer, name, needle) in [
        ("route:orders", "up", "\"{secret:up}\""),
        ("gateway:webhook-signing", "sign", "\"{secret:sign}\""),
        ("webhook:s", "a", "\"{secret:a}\""),
        ("webhook:s", "b", "\"{secret:b}\""),
        ("integration:gh", "gh-token", "\"gh-token\""),
    ] {
        let site = l
            .secret_site(consumer, name)
            .unwrap_or_else(|| panic!("no site for {consumer} {name}"));
        assert_eq!((site.line, site.column), place(needle), "{consumer} {name}");
    }
    assert_eq!(l.secret_sites.len(), 5, "{:?}", l.secret_sites);
    assert!(l.secret_site("route:orders", "a").is_none());
}

#[test]
fn an_upstream_header_value_error_points_at_the_value() {
    let text = format!(
        "{ROUTE}[routes.upstream_headers]\nx-env = \"prod\"\nx-key = \"{{secret:bad name}}\"\n"
    );
    let errs = errors(&text);
    let line = text[..text.find("x-key").unwrap_or(0)]
        .matches('\n')
        .count()
        + 1;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, Some(line), "{errs:?}");
}
