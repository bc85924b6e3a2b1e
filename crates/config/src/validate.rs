//! Raw model → typed model, collecting every error and lint on the way.

use crate::{
    diagnostic::{line_col, ConfigError, Diagnostic, Severity},
    model::*,
    parse_template,
    raw::*,
    Loaded,
};
use ipnet::IpNet;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use time::{format_description::well_known::Rfc3339, Date, OffsetDateTime};
use toml::Spanned;

mod input;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// Methods a route may declare. CONNECT and TRACE are left out on purpose: a gateway has no
/// business tunnelling, and TRACE reflects credentials back (cross-site tracing).
const ROUTE_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

pub(crate) struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    base: &'a Path,
    found: Vec<Diagnostic>,
    sites: Vec<crate::SecretSite>,
}

impl Checker<'_> {
    fn push(&mut self, severity: Severity, span: Option<Range<usize>>, message: String) {
        let place = span.map(|s| line_col(self.text, s.start));
        self.found.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line: place.map(|p| p.0),
            column: place.map(|p| p.1),
            message,
        });
    }
    pub(crate) fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.push(Severity::Error, span, message.into());
    }
    pub(crate) fn warn(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.push(Severity::Warning, span, message.into());
    }
    /// Records where `consumer`'s reference to secret `name` is written.
    pub(crate) fn secret_site(&mut self, consumer: String, name: &str, span: Range<usize>) {
        let (line, column) = line_col(self.text, span.start);
        self.sites.push(crate::SecretSite {
            consumer,
            name: name.to_string(),
            line,
            column,
        });
    }
    /// `p` resolved like [`Checker::path`], with a located error when it is not a file.
    fn existing_file(&mut self, p: &Spanned<PathBuf>, what: &str) -> PathBuf {
        let path = self.path(p.get_ref());
        if !path.is_file() {
            self.error(
                Some(p.span()),
                format!("{what} file {} does not exist", path.display()),
            );
        }
        path
    }
    pub(crate) fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

pub(crate) fn validate(
    raw: RawConfig,
    text: &str,
    file: &str,
    base: &Path,
) -> Result<Loaded, ConfigError> {
    let mut c = Checker {
        text,
        file,
        base,
        found: Vec::new(),
        sites: Vec::new(),
    };
    let server = server(&mut c, raw.server);
    let store = store(&mut c, raw.store, &server.data_dir);
    let shared_state = crate::validate_limits::shared_state(&mut c, raw.shared_state);
    let logging = logging(&mut c, raw.logging);
    let vault = vault(&mut c, raw.vault, &server.data_dir);
    let auth = auth(&mut c, raw.auth);
    let clients = clients(&mut c, raw.clients);
    let mut spans: HashMap<String, Range<usize>> = HashMap::new();
    for r in &raw.routes {
        let id = r.get_ref().id.get_ref();
        if spans.insert(id.clone(), r.span()).is_some() {
            c.error(
                Some(r.get_ref().id.span()),
                format!("route id {id:?} is declared more than once"),
            );
        }
    }
    let routes: Vec<Arc<RouteConfig>> = raw
        .routes
        .into_iter()
        .filter_map(|r| route(&mut c, r).map(Arc::new))
        .collect();
    if server.client_ca.is_none() {
        for r in routes.iter().filter(|r| r.auth.contains(&AuthMethod::Mtls)) {
            c.error(
                spans.get(&r.id).cloned(),
                format!(
                    "route {:?} accepts mtls, but server.client_ca is not set",
                    r.id
                ),
            );
        }
    }
    if auth.oauth2.is_none() {
        for r in routes.iter().filter(|r| r.identity_assertion) {
            c.error(spans.get(&r.id).cloned(), format!("route {:?} sends identity assertions, which are signed with the [auth.oauth2] key and published at its JWKS; configure [auth.oauth2]", r.id));
        }
        for r in routes
            .iter()
            .filter(|r| r.auth.contains(&AuthMethod::OAuth2))
        {
            c.error(
                spans.get(&r.id).cloned(),
                format!(
                    "route {:?} accepts oauth2, but [auth.oauth2] is not configured",
                    r.id
                ),
            );
        }
    }
    if auth.jwt.is_empty() {
        for r in routes.iter().filter(|r| r.auth.contains(&AuthMethod::Jwt)) {
            c.error(
                spans.get(&r.id).cloned(),
                format!(
                    "route {:?} accepts jwt, but no [[auth.jwt]] issuer is configured",
                    r.id
                ),
            );
        }
    }
    let webhooks = crate::validate_webhooks::webhooks(&mut c, raw.webhooks, &routes);
    let webhook_signing =
        crate::validate_webhooks::signing(&mut c, raw.webhook_signing, !webhooks.is_empty());
    let integrations =
        crate::validate_integrations::integrations(&mut c, raw.integrations, &clients);
    if !c.found.iter().any(|d| d.severity == Severity::Error) {
        overlaps(&mut c, &routes, &spans);
    }
    crate::validate_limits::fleet(
        &mut c,
        &store,
        &shared_state,
        &clients,
        &routes,
        !webhooks.is_empty(),
        &spans,
    );
    // In the file's order, as an editor shows it; findings about the file as a whole last.
    // (Stable: two findings at one place keep the order they were found in.)
    c.found
        .sort_by_key(|d| (d.line.is_none(), d.line, d.column));
    if c.found.iter().any(|d| d.severity == Severity::Error) {
        return Err(ConfigError {
            diagnostics: c.found,
        });
    }
    Ok(Loaded {
        config: Config {
            server,
            store,
            shared_state,
            logging,
            vault,
            auth,
            clients,
            routes,
            webhooks,
            webhook_signing,
            integrations,
        },
        warnings: c.found,
        secret_sites: c.sites,
    })
}

fn socket_addr(
    c: &mut Checker,
    v: Option<Spanned<String>>,
    default: &str,
    what: &str,
) -> SocketAddr {
    let fallback: SocketAddr = default
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    let Some(v) = v else { return fallback };
    match v.get_ref().parse() {
        Ok(a) => a,
        Err(_) => {
            c.error(
                Some(v.span()),
                format!(
                    "{what}: {:?} is not an address; expected IP:port, such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    v.get_ref()
                ),
            );
            fallback
        }
    }
}

fn server(c: &mut Checker, raw: RawServer) -> ServerConfig {
    let listen_span = raw.listen.as_ref().map(|s| s.span());
    let admin_span = raw.admin_listen.as_ref().map(|s| s.span());
    let listen = socket_addr(c, raw.listen, DEFAULT_LISTEN, "server.listen");
    let admin_listen = socket_addr(
        c,
        raw.admin_listen,
        DEFAULT_ADMIN_LISTEN,
        "server.admin_listen",
    );
    let expose = raw
        .dangerous_expose_admin
        .as_ref()
        .is_some_and(|b| *b.get_ref());

    // The same port on the same address, or on an address that binds every interface.
    // An IPv4 wildcard leaves IPv6 addresses free; `[::]` binds both families on Linux.
    let wildcard =
        |a: &SocketAddr, b: &SocketAddr| a.ip().is_unspecified() && (a.is_ipv6() || b.is_ipv4());
    let clash = listen.port() == admin_listen.port()
        && (listen.ip() == admin_listen.ip()
            || wildcard(&listen, &admin_listen)
            || wildcard(&admin_listen, &listen));
    if listen.port() != 0 && clash {
        c.error(
            admin_span.clone(),
            "server.admin_listen must differ from server.listen",
        );
    }
    if expose && admin_listen.ip().is_loopback() {
        c.warn(
            raw.dangerous_expose_admin.as_ref().map(|s| s.span()),
            format!("dangerous_expose_admin has no effect: the admin listener binds {admin_listen}, a loopback address"),
        );
    }
    if !admin_listen.ip().is_loopback() {
        if expose {
            c.warn(
                raw.dangerous_expose_admin.as_ref().map(|s| s.span()),
                format!("dangerous_expose_admin: the admin listener binds {admin_listen}, reachable from other machines"),
            );
        } else {
            c.error(
                admin_span,
                format!("server.admin_listen {admin_listen} is not a loopback address; the admin API stays on loopback unless dangerous_expose_admin = true"),
            );
        }
    }

    let tls = raw.tls.map(|t| {
        let span = t.span();
        let t = t.into_inner();
        let files = TlsFiles {
            cert: c.path(&t.cert),
            key: c.path(&t.key),
        };
        for (what, p) in [("certificate", &files.cert), ("key", &files.key)] {
            if !p.is_file() {
                c.error(
                    Some(span.clone()),
                    format!("server.tls: {what} file {} does not exist", p.display()),
                );
            }
        }
        files
    });
    let client_ca = raw.client_ca.map(|p| {
        let path = c.existing_file(&p, "server.client_ca");
        if tls.is_none() {
            c.error(Some(p.span()), "server.client_ca needs server.tls: client certificates are part of the TLS handshake");
        }
        path
    });
    if tls.is_none() && !listen.ip().is_loopback() {
        c.warn(
            listen_span,
            format!("server.listen {listen} serves plaintext HTTP beyond this machine; set server.tls or terminate TLS in front"),
        );
    }

    let mut trusted_proxies = Vec::new();
    for p in raw.trusted_proxies {
        let s = p.get_ref().trim();
        match parse_net(s) {
            Ok(n) => {
                if n.prefix_len() == 0 {
                    c.warn(Some(p.span()), format!("server.trusted_proxies: {n} believes X-Forwarded-For from every peer, so any client can choose its own address"));
                }
                trusted_proxies.push(n);
            }
            Err(e) => c.error(Some(p.span()), format!("server.trusted_proxies: {e}")),
        }
    }

    let ip_rules = IpRules {
        allow: nets(c, raw.allow_ips, "server.allow_ips"),
        deny: nets(c, raw.deny_ips, "server.deny_ips"),
    };
    let max_header_count = bounded(
        c,
        raw.max_header_count,
        64,
        1..=10_000,
        "server.max_header_count",
        |n| *n as u64,
    );
    let max_header_bytes = bounded(
        c,
        raw.max_header_bytes,
        16 * 1024,
        1024..=1024 * 1024,
        "server.max_header_bytes",
        |b| b.0,
    );
    let max_url_bytes = bounded(
        c,
        raw.max_url_bytes,
        8 * 1024,
        256..=1024 * 1024,
        "server.max_url_bytes",
        |b| b.0,
    );
    let max_connections = bounded(
        c,
        raw.max_connections,
        10_000,
        1..=1_000_000,
        "server.max_connections",
        |n| *n as u64,
    );
    let min_body_rate = bounded(
        c,
        raw.min_body_rate,
        1024,
        0..=1 << 30,
        "server.min_body_rate (bytes per second; 0 turns it off)",
        |b| b.0,
    );
    let body_rate_grace = raw.body_rate_grace.map_or(Duration::from_secs(5), |g| {
        let d = g.get_ref().0;
        if d.is_zero() || d > Duration::from_secs(600) {
            c.error(
                Some(g.span()),
                "server.body_rate_grace must be greater than zero and at most 10m",
            );
        }
        d
    });

    ServerConfig {
        listen,
        tls,
        client_ca,
        admin_listen,
        trusted_proxies,
        ip_rules,
        data_dir: c.path(
            &raw.data_dir
                .unwrap_or_else(|| PathBuf::from("portcullis-data")),
        ),
        shutdown_grace: duration_within(
            c,
            raw.shutdown_grace,
            Duration::from_secs(30),
            Duration::ZERO..=Duration::from_secs(3600),
            "server.shutdown_grace",
        ),
        // Zero would close every connection whose head arrives in more than one read.
        header_read_timeout: duration_within(
            c,
            raw.header_read_timeout,
            Duration::from_secs(10),
            Duration::from_millis(100)..=Duration::from_secs(600),
            "server.header_read_timeout",
        ),
        send_timeout: duration_within(
            c,
            raw.send_timeout,
            Duration::from_secs(30),
            Duration::from_secs(1)..=Duration::from_secs(3600),
            "server.send_timeout",
        ),
        max_header_count: max_header_count as usize,
        max_header_bytes,
        max_url_bytes,
        max_connections: max_connections as usize,
        min_body_rate,
        body_rate_grace,
        dangerous_expose_admin: expose,
    }
}

fn nets(c: &mut Checker, raw: Vec<Spanned<String>>, what: &str) -> Vec<IpNet> {
    let mut out = Vec::new();
    for p in raw {
        let s = p.get_ref().trim();
        match parse_net(s) {
            Ok(n) => {
                if covers_mapped_range(&n) {
                    c.warn(Some(p.span()), format!("{what}: {n} includes the IPv4-mapped range, but IPv4 clients are compared as IPv4 and never match it; add 0.0.0.0/0 (or the IPv4 networks meant) to cover them"));
                }
                out.push(n);
            }
            Err(e) => c.error(Some(p.span()), format!("{what}: {e}")),
        }
    }
    out
}

/// Whether `n` is an IPv6 network wider than the IPv4-mapped range that holds it (`::/0`):
/// written for "everyone", it does not hold IPv4 clients, which are compared as IPv4.
fn covers_mapped_range(n: &IpNet) -> bool {
    match n {
        IpNet::V6(v6) => {
            v6.prefix_len() < 96
                && v6.contains(&std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0))
        }
        IpNet::V4(_) => false,
    }
}

/// A network (`10.0.0.0/8`) or one address, as the gateway compares clients with it. Client
/// addresses in the IPv4-mapped form (`::ffff:10.1.2.3`) are compared as the IPv4 address
/// they carry, so a rule written in that form is turned into its IPv4 network here: as
/// written it could never match. (Wider IPv6 networks that merely include the mapped range,
/// such as `::/0`, stay IPv6 rules.)
///
/// A network with host bits set (`10.1.2.3/8`) is refused: silently widening it to
/// `10.0.0.0/8` would turn a typo for `/32` into an allow for a whole network.
pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    let Ok(net) = s
        .parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
    else {
        return Err(format!(
            "{s:?} is not an IP address or CIDR such as \"10.0.0.0/8\""
        ));
    };
    if net.trunc() != net {
        let host = IpNet::from(net.addr());
        return Err(format!(
            "{s:?} has host bits set past its /{}; write the network {} or the single address {host}",
            net.prefix_len(),
            net.trunc()
        ));
    }
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(len)) = (v6.addr().to_ipv4_mapped(), v6.prefix_len().checked_sub(96))
        {
            if let Ok(v4) = ipnet::Ipv4Net::new(v4, len) {
                return Ok(IpNet::V4(v4));
            }
        }
    }
    Ok(net)
}

pub(crate) fn bounded<T>(
    c: &mut Checker,
    v: Option<Spanned<T>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
    as_u64: impl Fn(&T) -> u64,
) -> u64 {
    let Some(v) = v else { return default };
    let n = as_u64(v.get_ref());
    if !range.contains(&n) {
        c.error(
            Some(v.span()),
            format!(
                "{what} is {n}; expected between {} and {}",
                range.start(),
                range.end()
            ),
        );
        return default;
    }
    n
}

/// `v` (or `default` when absent), which must lie within `range`; outside it, a located error
/// naming the bounds. Zero and huge durations are refused rather than clamped: a zero window
/// switches a protection off, and a huge one overflows the clock arithmetic it feeds.
pub(crate) fn duration_within(
    c: &mut Checker,
    v: Option<Spanned<crate::units::HumanDuration>>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
    what: &str,
) -> Duration {
    let Some(v) = v else { return default };
    let d = v.get_ref().0;
    if !range.contains(&d) {
        let show = |d: &Duration| humantime::format_duration(*d).to_string();
        c.error(
            Some(v.span()),
            format!(
                "{what} is {}; expected between {} and {}",
                show(&d),
                show(range.start()),
                show(range.end())
            ),
        );
        return default;
    }
    d
}

fn store(c: &mut Checker, raw: RawStore, data_dir: &Path) -> StoreConfig {
    let default = format!("sqlite://{}", data_dir.join("portcullis.db").display());
    let Some(url) = raw.url else {
        return StoreConfig { url: default };
    };
    let u = url.get_ref().trim();
    if u == "sqlite::memory:" {
        return StoreConfig { url: u.to_string() };
    }
    if let Some(rest) = u.strip_prefix("sqlite://") {
        if rest.trim().is_empty() || rest.ends_with('/') {
            c.error(
                Some(url.span()),
                format!("store.url: {u:?} names no database file; expected sqlite://PATH, such as \"sqlite://portcullis-data/portcullis.db\""),
            );
            return StoreConfig { url: default };
        }
        let path = c.path(Path::new(rest));
        return StoreConfig {
            url: format!("sqlite://{}", path.display()),
        };
    }
    let scheme = u
        .split_once(':')
        .map_or("", |(s, _)| s)
        .to_ascii_lowercase();
    if u.starts_with("postgres://") || u.starts_with("postgresql://") {
        if crate::validate_store::postgres_url(c, u, url.span()) {
            return StoreConfig { url: u.to_string() };
        }
    } else if scheme.starts_with("postgres") {
        // Never echoed: it may hold a password.
        c.error(
            Some(url.span()),
            "store.url: a PostgreSQL URL starts with postgres:// or postgresql:// (lower case)",
        );
    } else {
        c.error(
            Some(url.span()),
            "store.url is not a store URL; expected sqlite://PATH or postgres://HOST/DATABASE",
        );
    }
    StoreConfig { url: default }
}

fn logging(c: &mut Checker, raw: RawLogging) -> LoggingConfig {
    let format = match raw.format.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            c.error(
                raw.format.as_ref().map(|f| f.span()),
                format!(
                    "logging.format: {other:?} is not a format; expected \"json\" or \"pretty\""
                ),
            );
            LogFormat::Json
        }
    };
    let level = match raw.level {
        None => "info".to_string(),
        Some(l) if l.get_ref().trim().is_empty() => {
            c.error(Some(l.span()), "logging.level is empty; expected a level such as \"info\" or a directive such as \"portcullis=debug\"");
            "info".to_string()
        }
        // Parsed here as the logger will parse it, so `check` refuses what `serve` would.
        Some(l) => match tracing_subscriber::EnvFilter::try_new(l.get_ref()) {
            Ok(_) => l.into_inner(),
            Err(e) => {
                c.error(Some(l.span()), format!("logging.level {:?} is not a level or filter directive ({e}); expected a level such as \"info\" or directives such as \"info,portcullis=debug\"", l.get_ref()));
                "info".to_string()
            }
        },
    };
    let mut names = |list: Vec<Spanned<String>>, what: &str| -> Vec<String> {
        let mut out = Vec::new();
        for n in list {
            let lower = n.get_ref().trim().to_ascii_lowercase();
            if lower.is_empty() || http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                c.error(
                    Some(n.span()),
                    format!("{what}: {:?} is not a valid name", n.get_ref()),
                );
            } else {
                out.push(lower);
            }
        }
        out
    };
    let redact_headers = names(raw.redact_headers, "logging.redact_headers");
    let redact_fields = names(raw.redact_fields, "logging.redact_fields");
    LoggingConfig {
        format,
        level,
        access_log: raw.access_log.unwrap_or(true),
        redact_headers,
        redact_fields,
    }
}

fn vault(c: &mut Checker, raw: RawVault, data_dir: &Path) -> VaultConfig {
    let key_provider = match raw.key_provider.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("file") => {
            if let Some(p) = raw.key_file.as_ref().filter(|p| {
                let p = p.get_ref();
                p.as_os_str().is_empty() || p.to_string_lossy().ends_with('/')
            }) {
                c.error(
                    Some(p.span()),
                    "vault.key_file names no file; give the master key's file (or leave it out for DATA_DIR/master.key)",
                );
            }
            VaultKeyProvider::File(
                raw.key_file
                    .as_ref()
                    .map_or_else(|| data_dir.join("master.key"), |p| c.path(p.get_ref())),
            )
        }
        Some("env") => {
            if let Some(p) = &raw.key_file {
                c.warn(
                    Some(p.span()),
                    "vault.key_file has no effect with key_provider = \"env\"",
                );
            }
            VaultKeyProvider::Env
        }
        Some(other) => {
            c.error(
                raw.key_provider.as_ref().map(|p| p.span()),
                format!(
                    "vault.key_provider {other:?} is not a provider; expected \"file\" or \"env\""
                ),
            );
            VaultKeyProvider::Env
        }
    };
    VaultConfig {
        key_provider,
        expiry_warning: raw
            .expiry_warning
            .map_or(Duration::from_secs(14 * 86400), |d| d.0),
    }
}

const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn jwt_issuer(c: &mut Checker, raw: Spanned<RawJwtIssuer>) -> Option<JwtIssuerConfig> {
    let span = raw.span();
    let r = raw.into_inner();
    let ctx = format!("auth.jwt {:?}", r.issuer);
    if r.issuer.is_empty() || r.audiences.is_empty() {
        c.error(
            Some(span.clone()),
            format!("{ctx}: issuer and at least one audience are required"),
        );
    }
    for a in r.algorithms.get_ref() {
        if !JWT_ALGORITHMS.contains(&a.as_str()) {
            c.error(
                Some(r.algorithms.span()),
                format!(
                    "{ctx}: algorithm {a:?} is not allowed; expected some of {}",
                    JWT_ALGORITHMS.join(", ")
                ),
            );
        }
    }
    if r.algorithms.get_ref().is_empty() {
        c.error(
            Some(r.algorithms.span()),
            format!("{ctx}: algorithms is empty"),
        );
    }
    if let Some(u) = &r.jwks_url {
        match url::Url::parse(u.get_ref()) {
            Ok(url) if url.scheme() == "https" => {}
            _ => c.error(
                Some(u.span()),
                format!("{ctx}: jwks_url must be an https:// URL"),
            ),
        }
    }
    if r.jwks_url.is_none() && r.public_keys.is_empty() {
        c.error(
            Some(span.clone()),
            format!("{ctx}: give jwks_url or public_keys"),
        );
    }
    let public_keys: Vec<(Option<String>, PathBuf)> = r
        .public_keys
        .into_iter()
        .map(|k| (k.kid, c.path(&k.pem)))
        .collect();
    for (_, p) in &public_keys {
        if !p.is_file() {
            c.error(
                Some(span.clone()),
                format!("{ctx}: public key file {} does not exist", p.display()),
            );
        }
    }
    let jwks_ca = r
        .jwks_ca
        .map(|p| c.existing_file(&p, &format!("{ctx}: jwks_ca")));
    let leeway = duration_within(
        c,
        r.leeway,
        Duration::from_secs(30),
        Duration::ZERO..=Duration::from_secs(600),
        &format!("{ctx}: leeway"),
    );
    let jwks_refresh = duration_within(
        c,
        r.jwks_refresh,
        Duration::from_secs(300),
        Duration::from_secs(1)..=Duration::from_secs(7 * 86_400),
        &format!("{ctx}: jwks_refresh"),
    );
    let jwks_refetch_after = duration_within(
        c,
        r.jwks_refetch_after,
        Duration::from_secs(30),
        Duration::from_secs(1)..=Duration::from_secs(86_400),
        &format!("{ctx}: jwks_refetch_after"),
    );
    Some(JwtIssuerConfig {
        issuer: r.issuer,
        audiences: r.audiences,
        jwks_url: r.jwks_url.map(Spanned::into_inner),
        jwks_ca,
        public_keys,
        algorithms: r.algorithms.into_inner(),
        client_claim: r.client_claim.unwrap_or_else(|| "azp".into()),
        leeway,
        jwks_refresh,
        jwks_refetch_after,
    })
}

fn auth(c: &mut Checker, raw: RawAuth) -> AuthConfig {
    let jwt = raw
        .jwt
        .into_iter()
        .filter_map(|j| jwt_issuer(c, j))
        .collect();
    let oauth2 = raw.oauth2.map(|o| OAuth2Config {
        issuer: o.issuer.unwrap_or_else(|| "urn:portcullis".into()),
        audience: o.audience.unwrap_or_else(|| "portcullis".into()),
        token_ttl: duration_within(
            c,
            o.token_ttl,
            Duration::from_secs(600),
            Duration::from_secs(1)..=Duration::from_secs(86_400),
            "auth.oauth2.token_ttl",
        ),
    });
    // A zero window or cooldown would switch the lockout off without a word; bounded, so
    // the clock arithmetic of a lockout cannot overflow.
    let bf = raw.brute_force.unwrap_or_default();
    let max_failures = bounded(
        c,
        bf.max_failures,
        10,
        1..=1_000_000,
        "auth.brute_force.max_failures",
        |n| u64::from(*n),
    );
    AuthConfig {
        oauth2,
        jwt,
        brute_force: BruteForceConfig {
            max_failures: u32::try_from(max_failures).unwrap_or(10),
            window: duration_within(
                c,
                bf.window,
                Duration::from_secs(60),
                Duration::from_secs(1)..=Duration::from_secs(86_400),
                "auth.brute_force.window",
            ),
            cooldown: duration_within(
                c,
                bf.cooldown,
                Duration::from_secs(300),
                Duration::from_secs(1)..=Duration::from_secs(7 * 86_400),
                "auth.brute_force.cooldown",
            ),
        },
    }
}

fn clients(c: &mut Checker, raw: Vec<Spanned<RawClient>>) -> Vec<Arc<ClientConfig>> {
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut out = Vec::new();
    for rc in raw {
        let r = rc.into_inner();
        let id = r.id.get_ref().clone();
        if !valid_id(&id) {
            c.error(
                Some(r.id.span()),
                format!(
                    "client id {id:?} is not valid; expected 1-64 letters, digits, '.', '_' or '-'"
                ),
            );
            continue;
        }
        if seen.insert(id.clone(), ()).is_some() {
            c.error(
                Some(r.id.span()),
                format!("client id {id:?} is declared more than once"),
            );
            continue;
        }
        let ip_rules = IpRules {
            allow: nets(c, r.allow_ips, &format!("client {id:?}: allow_ips")),
            deny: nets(c, r.deny_ips, &format!("client {id:?}: deny_ips")),
        };
        let quota = r
            .quota
            .and_then(|q| crate::validate_limits::quota(c, q, &format!("client {id:?}")));
        let mut cert_fingerprints = Vec::new();
        for f in r.cert_fingerprints {
            let hex: String = f
                .get_ref()
                .trim()
                .trim_start_matches("sha256:")
                .chars()
                .filter(|ch| *ch != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                cert_fingerprints.push(hex);
            } else {
                c.error(Some(f.span()), format!("client {id:?}: cert_fingerprints entry {:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)", f.get_ref()));
            }
        }
        out.push(Arc::new(ClientConfig {
            cert_fingerprints,
            cert_sans: r.cert_sans.iter().map(|s| s.to_ascii_lowercase()).collect(),
            id,
            name: r.name,
            roles: r.roles,
            scopes: r.scopes,
            attributes: r.attributes,
            ip_rules,
            enabled: r.enabled.unwrap_or(true),
            quota,
        }));
    }
    out
}

fn route_auth(
    c: &mut Checker,
    raw: Option<Spanned<Vec<Spanned<String>>>>,
    scopes: &[String],
    roles: &[String],
    ctx: &str,
) -> Vec<AuthMethod> {
    let mut methods = Vec::new();
    let span = raw.as_ref().map(|r| r.span());
    for m in raw.map(Spanned::into_inner).unwrap_or_default() {
        match m.get_ref().as_str() {
            "api_key" => methods.push(AuthMethod::ApiKey),
            "jwt" => methods.push(AuthMethod::Jwt),
            "mtls" => methods.push(AuthMethod::Mtls),
            "oauth2" => methods.push(AuthMethod::OAuth2),
            other => c.error(
                Some(m.span()),
                format!("{ctx}: auth method {other:?} is not known; expected api_key, jwt, oauth2 or mtls"),
            ),
        }
    }
    if methods.is_empty() && (!scopes.is_empty() || !roles.is_empty()) {
        c.error(
            span,
            format!(
                "{ctx}: scopes and roles need an authenticated caller; add auth = [\"api_key\"]"
            ),
        );
    }
    methods
}

fn object_rules(
    c: &mut Checker,
    raw: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    params: &[String],
    authenticated: bool,
    ctx: &str,
) -> Vec<ObjectRule> {
    let Some(raw) = raw else { return Vec::new() };
    let span = raw.span();
    if !authenticated {
        c.error(Some(span.clone()), format!("{ctx}: match rules compare request values with the caller; add auth = [\"api_key\"]"));
        return Vec::new();
    }
    let mut out = Vec::new();
    for (lhs, rhs) in raw.into_inner() {
        let source = match lhs.split_once('.') {
            Some(("path", p)) if params.iter().any(|x| x.trim_start_matches('*') == p) => {
                ObjectSource::Path(p.to_string())
            }
            Some(("path", p)) => {
                c.error(
                    Some(span.clone()),
                    format!("{ctx}: match: the path does not capture {{{p}}}"),
                );
                continue;
            }
            Some(("query", q)) if !q.is_empty() => ObjectSource::Query(q.to_string()),
            Some(("body", b)) if !b.is_empty() => ObjectSource::Body(b.to_string()),
            _ => {
                c.error(
                    Some(span.clone()),
                    format!("{ctx}: match: {lhs:?} must be path.NAME, query.NAME or body.FIELD"),
                );
                continue;
            }
        };
        let Some(attribute) = rhs.strip_prefix("client.").filter(|a| !a.is_empty()) else {
            c.error(
                Some(span.clone()),
                format!("{ctx}: match: {rhs:?} must be client.ATTRIBUTE (or client.id)"),
            );
            continue;
        };
        out.push(ObjectRule {
            source,
            attribute: attribute.to_string(),
        });
    }
    out
}

fn rate_limits(
    c: &mut Checker,
    raw: Vec<Spanned<RawRateLimit>>,
    authenticated: bool,
    ctx: &str,
) -> Vec<RateLimitConfig> {
    let mut out = Vec::new();
    for rl in raw {
        let span = rl.span();
        let r = rl.into_inner();
        let per = match r.per.as_str() {
            "client" => RateKey::Client,
            "ip" => RateKey::Ip,
            "route" => RateKey::Route,
            "client_route" => RateKey::ClientRoute,
            other => match (
                other
                    .strip_prefix("header:")
                    .map(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())),
                other
                    .strip_prefix("claim:")
                    .filter(|n| !n.trim().is_empty()),
            ) {
                (Some(Ok(h)), _) => RateKey::Header(h),
                (_, Some(name)) => RateKey::Claim(name.trim().to_string()),
                _ => {
                    c.error(Some(span), format!("{ctx}: rate_limits per {other:?} is not known; expected client, ip, route, client_route, header:NAME or claim:NAME"));
                    continue;
                }
            },
        };
        if matches!(
            per,
            RateKey::Client | RateKey::ClientRoute | RateKey::Claim(_)
        ) && !authenticated
        {
            c.error(
                Some(span.clone()),
                format!("{ctx}: a per-client rate limit needs an authenticated caller; add auth"),
            );
        }
        if r.limit == 0 || r.period.0.is_zero() {
            c.error(
                Some(span),
                format!("{ctx}: rate limit needs limit > 0 and a period > 0"),
            );
            continue;
        }
        if let Err(e) = refill_fits(r.limit, r.period.0, r.burst) {
            c.error(Some(span), format!("{ctx}: rate limit {e}"));
            continue;
        }
        out.push(RateLimitConfig {
            per,
            limit: r.limit,
            period: r.period.0,
            burst: r.burst,
        });
    }
    out
}

/// The longest a rate's full allowance may take to refill. The limiters count in nanoseconds
/// (memory) and in microseconds held as Lua doubles (Redis): far past this they would
/// saturate or lose precision, and a saturated window admits everything.
const MAX_REFILL: Duration = Duration::from_secs(10 * 366 * 86_400);

/// Whether a full allowance of `limit + burst` at `limit` per `period` refills within
/// [`MAX_REFILL`]; the message says what it takes otherwise.
pub(crate) fn refill_fits(limit: u64, period: Duration, burst: u64) -> Result<(), String> {
    let capacity = u128::from(limit.saturating_add(burst));
    let refill_ns = period.as_nanos().saturating_mul(capacity) / u128::from(limit.max(1));
    if refill_ns > MAX_REFILL.as_nanos() {
        let years = refill_ns / (365 * 86_400 * 1_000_000_000);
        return Err(format!(
            "takes about {years} years to refill its limit + burst (period x (limit + burst) / limit); expected at most 10 years"
        ));
    }
    Ok(())
}

fn response_fields(
    c: &mut Checker,
    raw: Option<Spanned<std::collections::BTreeMap<String, RawFieldRule>>>,
    ctx: &str,
) -> Vec<(String, FieldFilter)> {
    let Some(raw) = raw else { return Vec::new() };
    let span = raw.span();
    let map = raw.into_inner();
    if !map.contains_key("default") {
        c.error(Some(span), format!("{ctx}: response_fields needs a \"default\" entry for callers without a listed role"));
        return Vec::new();
    }
    map.into_iter()
        .map(|(role, r)| {
            (
                role,
                FieldFilter {
                    allow: r.allow,
                    deny: r.deny,
                },
            )
        })
        .collect()
}

/// Header names whose values are credentials: they may only come from the vault.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

fn upstream_headers(
    c: &mut Checker,
    raw: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    ctx: &str,
    consumer: &str,
) -> Vec<UpstreamHeader> {
    let Some(raw) = raw else { return Vec::new() };
    let span = raw.span();
    let mut out = Vec::new();
    for (name, value) in raw.into_inner() {
        let lower = name.to_ascii_lowercase();
        let Ok(header) = http::HeaderName::from_bytes(lower.as_bytes()) else {
            c.error(
                Some(span.clone()),
                format!("{ctx}: upstream_headers: {name:?} is not a header name"),
            );
            continue;
        };
        if matches!(
            lower.as_str(),
            "host"
                | "connection"
                | "transfer-encoding"
                | "content-length"
                | "x-request-id"
                | "x-forwarded-for"
                | "forwarded"
        ) {
            c.error(
                Some(span.clone()),
                format!("{ctx}: upstream_headers: the gateway sets {lower} itself"),
            );
            continue;
        }
        // Keys carry no place of their own in TOML's spans; values do.
        let at = value.span();
        match parse_template(value.get_ref()) {
            Ok(t) => {
                if t.secret.is_none() && CREDENTIAL_HEADERS.contains(&lower.as_str()) {
                    c.error(Some(at), format!("{ctx}: upstream_headers: {lower} carries a credential; reference it from the vault as {{secret:NAME}} instead of writing it here"));
                    continue;
                }
                if let Some(s) = &t.secret {
                    c.secret_site(consumer.to_string(), &s.name, at);
                }
                out.push(UpstreamHeader {
                    name: header,
                    value: t,
                });
            }
            Err(e) => c.error(Some(at), format!("{ctx}: upstream_headers.{lower}: {e}")),
        }
    }
    out
}

fn route(c: &mut Checker, raw: Spanned<RawRoute>) -> Option<RouteConfig> {
    let r = raw.into_inner();
    let errors_before = c.found.len();
    let id = r.id.get_ref().clone();
    if !valid_id(&id) {
        c.error(Some(r.id.span()), format!("route id {id:?} is not valid; expected 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"));
    }
    let ctx = format!("route {id:?}");

    let methods = route_methods(c, &r.methods, &ctx);
    let params = template_params(c, &r.path, &ctx, "path");
    let upstream = upstream_url(c, &r.upstream, &ctx);
    if let Some(rw) = &r.rewrite {
        let rw_params = template_params(c, rw, &ctx, "rewrite");
        for p in rw_params {
            if !params.contains(&p) {
                c.error(
                    Some(rw.span()),
                    format!(
                        "{ctx}: rewrite uses {{{}}}, which the path {:?} does not capture",
                        p.trim_start_matches('*'),
                        r.path.get_ref()
                    ),
                );
            }
        }
    }

    let total = r
        .timeout
        .as_ref()
        .map_or(DEFAULT_TIMEOUT, |t| t.get_ref().0);
    let connect = r
        .connect_timeout
        .as_ref()
        .map_or(DEFAULT_CONNECT_TIMEOUT.min(total), |t| t.get_ref().0);
    let read = r.read_timeout.as_ref().map_or(total, |t| t.get_ref().0);
    for (name, v, d) in [
        ("timeout", &r.timeout, total),
        ("connect_timeout", &r.connect_timeout, connect),
        ("read_timeout", &r.read_timeout, read),
    ] {
        let span = v.as_ref().map(|s| s.span());
        if d.is_zero() {
            c.error(span, format!("{ctx}: {name} must be greater than zero"));
        } else if d > total {
            c.error(
                span,
                format!(
                    "{ctx}: {name} ({}) is longer than the route's total timeout ({})",
                    humantime::format_duration(d),
                    humantime::format_duration(total)
                ),
            );
        }
    }

    let deprecation = r.deprecated.map(|d| deprecation(c, d, &ctx));
    let headers = upstream_headers(c, r.upstream_headers, &ctx, &route_consumer(&id));
    let auth = route_auth(c, r.auth, &r.scopes, &r.roles, &ctx);
    let object_rules = object_rules(c, r.match_rules, &params, !auth.is_empty(), &ctx);
    let response_fields = response_fields(c, r.response_fields, &ctx);
    let rate_limits = rate_limits(c, r.rate_limits, !auth.is_empty(), &ctx);
    let shared_state_failure =
        crate::validate_limits::failure_choice(c, r.shared_state_failure, &ctx);
    let quota = r.quota.and_then(|q| {
        if auth.is_empty() {
            c.error(
                Some(q.span()),
                format!(
                    "{ctx}: a quota counts per client and needs an authenticated caller; add auth"
                ),
            );
        }
        crate::validate_limits::quota(c, q, &ctx)
    });
    let max_concurrent = r.max_concurrent.map(|n| {
        let what = format!("{ctx}: max_concurrent");
        bounded(c, Some(n), 1, 1..=1_000_000, &what, |n| *n) as u32
    });
    let cors = r.cors.map(|raw| {
        let span = raw.span();
        let cr = raw.into_inner();
        let wildcard = cr.origins.iter().any(|o| o == "*");
        if wildcard && cr.credentials {
            c.error(Some(span.clone()), format!("{ctx}: cors: origins = [\"*\"] with credentials = true lets any site act with the user's credentials; list the origins"));
        }
        if cr.origins.is_empty() {
            c.error(Some(span.clone()), format!("{ctx}: cors: origins is empty, so no browser origin is allowed; list the origins (or remove cors)"));
        }
        for o in cr.origins.iter().filter(|o| *o != "*") {
            let parsed = url::Url::parse(o).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.path() == "/" && !o.ends_with('/'));
            let Some(u) = parsed else {
                c.error(Some(span.clone()), format!("{ctx}: cors: origin {o:?} must be scheme://host[:port] with no path"));
                continue;
            };
            if o.contains('*') {
                c.error(Some(span.clone()), format!("{ctx}: cors: origin {o:?}: wildcard origins are not supported; list each origin"));
                continue;
            }
            // Origins are compared as browsers send them, without a default port (case does
            // not matter: the comparison ignores it). One written otherwise would never match.
            let sent = u.origin().ascii_serialization();
            if !sent.eq_ignore_ascii_case(o) {
                c.error(Some(span.clone()), format!("{ctx}: cors: origin {o:?} is never sent that way by a browser, so it would never match; write {sent:?}"));
            }
        }
        // A preflight is answered by the route that serves the requested method (GET brings
        // HEAD), so a CORS method the route does not take is not this route's to allow.
        let takes = |m: &str| methods.iter().any(|r| r.as_str() == m) || (m == "HEAD" && methods.contains(&http::Method::GET));
        for m in &cr.methods {
            let upper = m.to_ascii_uppercase();
            if !ROUTE_METHODS.contains(&upper.as_str()) {
                c.error(Some(span.clone()), format!("{ctx}: cors: method {m:?} is not allowed; expected some of {}", ROUTE_METHODS.join(", ")));
            } else if !takes(&upper) {
                // A warning: routes sharing a path may share one CORS table, and the route
                // that takes the method answers its preflight (with its own `cors`).
                let own: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
                c.warn(Some(span.clone()), format!("{ctx}: cors: method {m:?} is not one of the route's methods ({}): a preflight for it is answered only by a route that takes it and has cors itself", own.join(", ")));
            }
        }
        // `*` is a wildcard browsers honour in expose_headers (without credentials), never in
        // the allowed request headers, which are compared name by name.
        for h in cr.headers.iter().chain(cr.expose_headers.iter().filter(|h| *h != "*")) {
            if h == "*" || http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_err() {
                c.error(Some(span.clone()), format!("{ctx}: cors: {h:?} is not a header name (wildcards are not supported; list the headers)"));
            }
        }
        if cr.max_age.is_some_and(|d| d.0 > Duration::from_secs(86_400)) {
            c.warn(Some(span.clone()), format!("{ctx}: cors: browsers cap max_age at 24h or less, so a longer one is not honoured"));
        }
        CorsConfig {
            origins: cr.origins,
            methods: if cr.methods.is_empty() { methods.iter().map(|m| m.to_string()).collect() } else { cr.methods.iter().map(|m| m.to_ascii_uppercase()).collect() },
            headers: cr.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            expose_headers: cr.expose_headers,
            credentials: cr.credentials,
            max_age: cr.max_age.map_or(Duration::from_secs(600), |d| d.0),
        }
    });
    let request_schema = r
        .request_schema
        .and_then(|p| load_json_schema(c, p, &format!("{ctx}: request_schema")));
    let json_limits = input::json_limits(c, r.json_limits, &ctx);
    let params_rules = input::params(c, r.params, &params, &ctx);
    let ip_rules = IpRules {
        allow: nets(c, r.allow_ips, &format!("{ctx}: allow_ips")),
        deny: nets(c, r.deny_ips, &format!("{ctx}: deny_ips")),
    };

    let ca = r
        .upstream_ca
        .map(|p| c.existing_file(&p, &format!("{ctx}: upstream_ca")));
    let skip_verify = r
        .dangerous_skip_upstream_tls_verify
        .as_ref()
        .is_some_and(|b| *b.get_ref());
    if let Some(up) = &upstream {
        let https = up.scheme == http::uri::Scheme::HTTPS;
        if skip_verify {
            c.warn(
                r.dangerous_skip_upstream_tls_verify.as_ref().map(|s| s.span()),
                format!("{ctx}: dangerous_skip_upstream_tls_verify turns off certificate checks; anyone on the path can impersonate {}", up.authority),
            );
        }
        if !https && (skip_verify || ca.is_some()) {
            c.warn(
                Some(r.upstream.span()),
                format!("{ctx}: upstream TLS settings have no effect on a plain http:// upstream"),
            );
        }
        if !https && !host_is_local(up.url.host()) {
            c.warn(Some(r.upstream.span()), format!("{ctx}: upstream {} is plain http:// to another machine; requests travel unencrypted", up.url));
        }
    }

    if c.found[errors_before..]
        .iter()
        .any(|d| d.severity == Severity::Error)
    {
        return None;
    }
    Some(RouteConfig {
        id,
        methods,
        path: r.path.into_inner(),
        upstream: upstream?,
        rewrite: r.rewrite.map(Spanned::into_inner),
        timeouts: Timeouts {
            connect,
            read,
            total,
        },
        max_body: r.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0),
        max_concurrent,
        tags: r.tags,
        deprecation: deprecation.flatten(),
        preserve_host: r.preserve_host,
        upstream_tls: UpstreamTls {
            ca,
            dangerous_skip_verify: skip_verify,
        },
        upstream_headers: headers,
        auth,
        scopes: r.scopes,
        roles: r.roles,
        object_rules,
        request_deny_fields: r.request_deny_fields,
        identity_assertion: r.identity_assertion,
        rate_limits,
        shared_state_failure,
        quota,
        ip_rules,
        request_schema,
        json_limits,
        params: params_rules,
        cors,
        response_fields,
    })
}

/// Reads and parses a JSON Schema file named in the config (relative to the config's
/// directory); a missing or invalid file is an error at `what`'s location.
pub(crate) fn load_json_schema(
    c: &mut Checker,
    p: Spanned<PathBuf>,
    what: &str,
) -> Option<Arc<serde_json::Value>> {
    let path = c.path(p.get_ref());
    match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string()))
    {
        // Compiled here too, as the gateway compiles it (draft 2020-12), so `check` names the
        // file and the place in the schema that is wrong; the compiled form is not kept.
        Ok(v) => match jsonschema::draft202012::new(&v) {
            Ok(_) => Some(Arc::new(v)),
            Err(e) => {
                let at = e.instance_path.to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                c.error(
                    Some(p.span()),
                    format!(
                        "{what} {}: not a valid JSON Schema (draft 2020-12) at {at}: {e}",
                        path.display()
                    ),
                );
                None
            }
        },
        Err(e) => {
            c.error(Some(p.span()), format!("{what} {}: {e}", path.display()));
            None
        }
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn route_methods(
    c: &mut Checker,
    raw: &Spanned<Vec<Spanned<String>>>,
    ctx: &str,
) -> Vec<http::Method> {
    if raw.get_ref().is_empty() {
        c.error(
            Some(raw.span()),
            format!(
                "{ctx}: methods is empty; expected at least one of {}",
                ROUTE_METHODS.join(", ")
            ),
        );
    }
    let mut out: Vec<http::Method> = Vec::new();
    for m in raw.get_ref() {
        let upper = m.get_ref().trim().to_ascii_uppercase();
        if !ROUTE_METHODS.contains(&upper.as_str()) {
            c.error(
                Some(m.span()),
                format!(
                    "{ctx}: method {:?} is not supported; expected one of {}",
                    m.get_ref(),
                    ROUTE_METHODS.join(", ")
                ),
            );
            continue;
        }
        match http::Method::from_bytes(upper.as_bytes()) {
            Ok(method) if out.contains(&method) => c.error(
                Some(m.span()),
                format!("{ctx}: method {upper} is listed twice"),
            ),
            Ok(method) => out.push(method),
            Err(_) => c.error(
                Some(m.span()),
                format!("{ctx}: method {:?} is not valid", m.get_ref()),
            ),
        }
    }
    out
}

/// Checks a path template and returns its parameter names (catch-alls keep their `*`).
fn template_params(c: &mut Checker, t: &Spanned<String>, ctx: &str, what: &str) -> Vec<String> {
    let s = t.get_ref();
    if !s.starts_with('/') {
        c.error(
            Some(t.span()),
            format!("{ctx}: {what} {s:?} must start with '/'"),
        );
        return Vec::new();
    }
    if s.contains(['?', '#', ' ']) {
        c.error(
            Some(t.span()),
            format!(
                "{ctx}: {what} {s:?} may not contain '?', '#' or spaces; declare only the path"
            ),
        );
        return Vec::new();
    }
    let mut probe = matchit::Router::new();
    if let Err(e) = probe.insert(s.as_str(), ()) {
        c.error(Some(t.span()), format!("{ctx}: {what} {s:?} is not a valid template ({e}); parameters look like {{id}}, and a final catch-all like {{*rest}}"));
        return Vec::new();
    }
    let mut names = Vec::new();
    let mut rest = s.as_str();
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        if names
            .iter()
            .any(|n: &String| n.trim_start_matches('*') == name.trim_start_matches('*'))
        {
            c.error(
                Some(t.span()),
                format!("{ctx}: {what} {s:?} uses the parameter {{{name}}} twice"),
            );
        }
        names.push(name.to_string());
        rest = &rest[open + close + 1..];
    }
    names
}

pub(crate) fn upstream_url(c: &mut Checker, raw: &Spanned<String>, ctx: &str) -> Option<Upstream> {
    let span = Some(raw.span());
    let url = match url::Url::parse(raw.get_ref().trim()) {
        Ok(u) => u,
        Err(e) => {
            c.error(span, format!("{ctx}: upstream {:?} is not a URL ({e}); expected such as \"http://127.0.0.1:7000\"", raw.get_ref()));
            return None;
        }
    };
    let scheme = match url.scheme() {
        "http" => http::uri::Scheme::HTTP,
        "https" => http::uri::Scheme::HTTPS,
        other => {
            c.error(
                span,
                format!(
                    "{ctx}: upstream scheme {other:?} is not supported; expected http or https"
                ),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        c.error(
            span,
            format!(
                "{ctx}: upstream URL may not carry credentials; credentials never belong in config"
            ),
        );
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() {
        c.error(
            span,
            format!("{ctx}: upstream URL may not have a query or fragment"),
        );
        return None;
    }
    let Some(host) = url.host_str() else {
        c.error(span, format!("{ctx}: upstream URL has no host"));
        return None;
    };
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let Ok(authority) = authority.parse::<http::uri::Authority>() else {
        c.error(span, format!("{ctx}: upstream host {host:?} is not valid"));
        return None;
    };
    let base_path = url.path().trim_end_matches('/').to_string();
    Some(Upstream {
        url,
        scheme,
        authority,
        base_path,
    })
}

fn host_is_local(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn deprecation(c: &mut Checker, raw: Spanned<RawDeprecation>, ctx: &str) -> Option<Deprecation> {
    let span = raw.span();
    let d = raw.into_inner();
    let sunset = instant(c, &d.sunset, ctx, "deprecated.sunset")?;
    let since = match &d.since {
        Some(s) => Some(instant(c, s, ctx, "deprecated.since")?),
        None => None,
    };
    if since.is_some_and(|s| s > sunset) {
        c.error(
            Some(span.clone()),
            format!("{ctx}: deprecated.since is after deprecated.sunset"),
        );
    }
    let link = match d.link {
        Some(l) => match url::Url::parse(l.get_ref()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u.to_string()),
            _ => {
                c.error(
                    Some(l.span()),
                    format!(
                        "{ctx}: deprecated.link {:?} is not an http(s) URL",
                        l.get_ref()
                    ),
                );
                None
            }
        },
        None => None,
    };
    if sunset <= OffsetDateTime::now_utc() {
        c.warn(
            Some(span),
            format!("{ctx}: the sunset date has passed; the route answers 410 Gone"),
        );
    }
    Some(Deprecation {
        since,
        sunset,
        link,
    })
}

/// A date ("2027-03-01", midnight UTC) or an RFC 3339 timestamp.
fn instant(
    c: &mut Checker,
    raw: &Spanned<String>,
    ctx: &str,
    what: &str,
) -> Option<OffsetDateTime> {
    let s = raw.get_ref().trim();
    let date_fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = Date::parse(s, &date_fmt) {
        return Some(d.midnight().assume_utc());
    }
    match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => Some(t),
        Err(_) => {
            c.error(Some(raw.span()), format!("{ctx}: {what} {s:?} is not a date; expected \"2027-03-01\" or an RFC 3339 time"));
            None
        }
    }
}

/// Two routes overlap when a request could match both: the same method on the same template,
/// or templates the router cannot tell apart (`/a/{x}` and `/a/{y}`).
fn overlaps(c: &mut Checker, routes: &[Arc<RouteConfig>], spans: &HashMap<String, Range<usize>>) {
    let mut by_path: HashMap<&str, Vec<&RouteConfig>> = HashMap::new();
    for r in routes {
        by_path.entry(r.path.as_str()).or_default().push(r);
    }
    let mut router = matchit::Router::new();
    let mut paths: Vec<&str> = Vec::new();
    for r in routes {
        if paths.contains(&r.path.as_str()) {
            continue;
        }
        if let Err(matchit::InsertError::Conflict { with }) =
            router.insert(r.path.as_str(), r.id.as_str())
        {
            let other = by_path
                .get(with.as_str())
                .and_then(|v| v.first())
                .map_or(with.clone(), |o| o.id.clone());
            c.error(spans.get(&r.id).cloned(), format!("route {:?} path {:?} overlaps route {other:?} path {with:?}; use the same parameter names or distinct paths", r.id, r.path));
        }
        paths.push(r.path.as_str());
    }
    let mut same_path: Vec<_> = by_path.into_iter().collect();
    same_path.sort_by_key(|(p, _)| *p);
    for (path, rs) in same_path {
        for (i, a) in rs.iter().enumerate() {
            for b in &rs[i + 1..] {
                if let Some(m) = a.methods.iter().find(|m| b.methods.contains(m)) {
                    c.error(
                        spans.get(&b.id).cloned(),
                        format!("routes {:?} and {:?} both answer {m} {path}", a.id, b.id),
                    );
                }
            }
        }
    }
}
