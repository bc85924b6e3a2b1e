//! The running gateway: the current configuration generation, swapped atomically on reload,
//! and the request entry point.

use crate::{
    body_rate::request_body,
    build::route_chain,
    client::ClientCache,
    forward::Forwarder,
    headers::{client_ip, strip_hop_by_hop},
    inventory::{DeclaredRoute, Inventory, InventoryReport},
    observe::{self, Outcome},
    router::{check_path, CompiledRoute, Lookup, RouteTable},
    tls::load_server_tls,
};
use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use ipnet::IpNet;
use portcullis_config::{Config, ServerConfig};
use portcullis_core::{
    problem_response, Body, Connection, ErrorInfo, GatewayError, MalformedKind, RequestContext,
    RequestId, REQUEST_ID_HEADER,
};
use portcullis_identity::{ApiKeys, BruteForce, JwtVerifier, TokenIssuer};
use portcullis_policy::Clients;
use portcullis_store::{Store, StoreError};
use portcullis_telemetry::Redactor;
use portcullis_vault::Vault;
use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

/// The configuration could not be turned into a running generation.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A certificate, key or CA file could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A route could not be built.
    #[error("route {id:?}: {reason}")]
    Route {
        /// Route id.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// An internal invariant failed.
    #[error("internal: {0}")]
    Internal(String),
}

/// Request-head limits from `[server]`.
#[derive(Clone, Copy)]
struct HeadLimits {
    header_count: usize,
    header_bytes: u64,
    url_bytes: u64,
}

/// One immutable configuration generation. A request holds the generation it started with
/// until it finishes, so a reload never changes the rules under an in-flight request.
struct Generation {
    config: Arc<Config>,
    clients: Clients,
    routes: RouteTable,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HeadLimits,
    trusted: Arc<[IpNet]>,
    access_log: bool,
    /// Webhook endpoints by exact path.
    webhooks: std::collections::HashMap<String, Arc<crate::webhook::WebhookEndpoint>>,
    /// Egress integrations by id: authentication, then the egress terminal (kept beside the
    /// chain for its breaker state).
    integrations: std::collections::HashMap<
        String,
        (portcullis_policy::Chain, Arc<crate::egress::EgressTerminal>),
    >,
}

/// The gateway's shared state.
/// Process-wide services the data plane uses; built once at start.
#[derive(Clone)]
pub struct Services {
    /// The secrets vault.
    pub vault: Option<Arc<Vault>>,
    /// API key verification.
    pub api_keys: Option<Arc<ApiKeys>>,
    /// JWT verification for the configured issuers.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// The OAuth 2.0 token issuer, when `[auth.oauth2]` is configured.
    pub oauth: Option<Arc<TokenIssuer>>,
    /// Where rate-limit state lives, and the local fallback.
    pub limits: portcullis_policy::LimitStore,
    /// Authentication-failure lockout.
    pub brute_force: Arc<BruteForce>,
    /// The store quotas are counted in; without it, routes with quotas refuse (503).
    pub store: Option<Arc<dyn Store>>,
    /// Where accepted webhook messages are remembered (replays and duplicates).
    pub replay: Arc<dyn portcullis_state::ReplayCache>,
    /// Wakes the outbox worker when an event is queued.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    /// Failed webhook verifications per endpoint and source address.
    pub webhook_failures: Arc<crate::WebhookFailures>,
    /// Where egress OAuth access tokens are shared between instances (Redis); `None` keeps
    /// them in each process only.
    pub egress_tokens: Option<Arc<dyn portcullis_state::TokenCache>>,
}

impl Services {
    /// No vault and no keys: routes that need them fail closed. For `check` and `inventory`.
    pub fn none(cfg: &Config) -> Self {
        let bf = cfg.auth.brute_force;
        Services {
            vault: None,
            api_keys: None,
            jwt: None,
            oauth: None,
            limits: portcullis_policy::LimitStore {
                shared: portcullis_state::MemoryLimiter::shared(),
                local: portcullis_state::MemoryLimiter::shared(),
                instances: cfg.shared_state.instances,
            },
            brute_force: Arc::new(BruteForce::new(bf.max_failures, bf.window, bf.cooldown)),
            store: None,
            replay: Arc::new(portcullis_state::MemoryReplayCache::default()),
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            webhook_failures: Arc::new(crate::WebhookFailures::default()),
            egress_tokens: None,
        }
    }
}

/// The gateway's shared state.
pub struct Gateway {
    current: ArcSwap<Generation>,
    services: Services,
    clients: ClientCache,
    inventory: Arc<Inventory>,
    draining: AtomicBool,
    header_redactor: Redactor,
    /// The configuration the process started with: what its start-time settings still are,
    /// whatever reloads came since.
    started: Arc<Config>,
}

impl Gateway {
    /// Builds the first generation from `cfg`.
    pub fn new(
        cfg: &Config,
        store: Arc<dyn Store>,
        services: Services,
    ) -> Result<Arc<Self>, BuildError> {
        let clients = ClientCache::default();
        let generation = build_generation(cfg, &clients, None, &services)?;
        Ok(Arc::new(Gateway {
            started: generation.config.clone(),
            current: ArcSwap::from_pointee(generation),
            services,
            clients,
            inventory: Arc::new(Inventory::new(store)),
            draining: AtomicBool::new(false),
            header_redactor: Redactor::default(),
        }))
    }

    /// Builds a generation from `cfg` and swaps it in. On error the running generation stays.
    /// Listener addresses, TLS on/off, the store, shared state and identity providers are
    /// fixed at start; where `cfg` differs from what the process started with, a note says
    /// so (on every reload until a restart), and those settings keep their start values.
    pub fn reload(&self, cfg: &Config) -> Result<Vec<String>, BuildError> {
        let old = self.current.load_full();
        let started = &self.started;
        let mut notes = Vec::new();
        let (o, n) = (&started.server, &cfg.server);
        if o.listen != n.listen
            || o.admin_listen != n.admin_listen
            || o.tls.is_some() != n.tls.is_some()
        {
            notes.push(
                "listener address or TLS on/off changed: takes effect after a restart".to_string(),
            );
        }
        if o.data_dir != n.data_dir || started.store != cfg.store {
            notes.push("data directory or store changed: takes effect after a restart".to_string());
        }
        if crate::server::header_count_backstop(o.max_header_count)
            != crate::server::header_count_backstop(n.max_header_count)
        {
            notes.push(
                "server.max_header_count: hyper's own header limit is set at start; heads over \
                 it get its bare 431 until a restart"
                    .to_string(),
            );
        }
        if started.shared_state != cfg.shared_state {
            notes.push("shared_state changed: takes effect after a restart".to_string());
        }
        if started.auth != cfg.auth {
            notes.push(
                "[auth] changed (JWT issuers, OAuth2, the brute-force lockout): it is read at \
                 start, so the identity providers and settings the process started with stay in \
                 force until a restart"
                    .to_string(),
            );
        }
        let generation = build_generation(cfg, &self.clients, old.tls.clone(), &self.services)?;
        self.current.store(Arc::new(generation));
        drop(old);
        self.clients.prune_unused_pools();
        Ok(notes)
    }

    /// The vault, when the gateway has one.
    pub fn vault(&self) -> Option<&Arc<Vault>> {
        self.services.vault.as_ref()
    }

    /// The API key service, when the gateway has one.
    pub fn api_keys(&self) -> Option<&Arc<ApiKeys>> {
        self.services.api_keys.as_ref()
    }

    /// The running configuration.
    pub fn config(&self) -> Arc<Config> {
        self.current.load().config.clone()
    }

    /// The data-plane TLS configuration, when the listener serves TLS.
    pub fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current.load().tls.clone()
    }

    /// The undeclared-endpoint counter.
    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    /// Declared routes of the running generation and undeclared endpoints seen so far.
    pub async fn inventory_report(&self) -> Result<InventoryReport, StoreError> {
        let declared = self
            .current
            .load()
            .routes
            .routes()
            .map(|r| DeclaredRoute {
                id: r.config.id.clone(),
                methods: r.config.methods.iter().map(|m| m.to_string()).collect(),
                path: r.config.path.clone(),
                upstream: r.config.upstream.url.to_string(),
                tags: r.config.tags.clone(),
                sunset: r.config.deprecation.as_ref().and_then(|d| {
                    d.sunset
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok()
                }),
                policies: r.chain.policy_names(),
            })
            .collect();
        Ok(InventoryReport {
            declared,
            undeclared: self.inventory.undeclared().await?,
        })
    }

    /// Marks the gateway as shutting down (readiness turns false).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The process-wide services.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The webhook endpoint `id` of the running configuration.
    pub(crate) fn webhook(&self, id: &str) -> Option<Arc<crate::webhook::WebhookEndpoint>> {
        self.current
            .load()
            .webhooks
            .values()
            .find(|w| w.id() == id)
            .cloned()
    }

    /// Each egress integration's circuit-breaker state (`closed`, `open`, `half_open`) and
    /// whether its primary base URL passes its health check.
    pub fn integration_states(&self) -> Vec<(String, &'static str, bool)> {
        let g = self.current.load();
        let mut out: Vec<(String, &'static str, bool)> = g
            .integrations
            .iter()
            .map(|(id, (_, t))| (id.clone(), t.breaker_state(), t.primary_healthy()))
            .collect();
        out.sort();
        out
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Answers one data-plane request. The steps below are the inbound stack, in order.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        connection: &Arc<Connection>,
    ) -> Response<Body> {
        let generation = self.current.load_full();
        let received_at = Instant::now();

        // 1. Context: a request id (the client's if well-formed) and the client address
        //    (X-Forwarded-For believed only from trusted proxies).
        let ctx = RequestContext {
            request_id: RequestId::from_header_or_new(req.headers().get(REQUEST_ID_HEADER)),
            client_ip: client_ip(connection.peer.ip(), req.headers(), &generation.trusted),
            received_at,
            identity: None,
            connection: connection.clone(),
        };
        if tracing::enabled!(target: "portcullis::request", tracing::Level::DEBUG) {
            tracing::debug!(target: "portcullis::request", request_id = %ctx.request_id, headers = %self.header_redactor.headers_for_log(req.headers()), "request headers");
        }
        let method = req.method().clone();
        // The access line's path: the URI shares the bytes hyper read (a reference-count
        // increment, where a copy of the path was an allocation per request).
        let uri = req.uri().clone();

        // 2-4. Head limits, path hygiene and routing; 5. the route's policy chain.
        let (mut res, route) = match self.admit(&generation, req, &ctx).await {
            Ok((res, route)) => (res, route),
            Err((e, route)) => (problem_response(&e, &ctx.request_id), route),
        };

        // 6. The request id goes back to the client on every response.
        res.headers_mut()
            .insert(REQUEST_ID_HEADER, ctx.request_id.header_value());
        observe::record(
            &Outcome {
                ctx: &ctx,
                method: &method,
                path: uri.path(),
                route: &route,
                status: res.status(),
                error: res.extensions().get::<ErrorInfo>(),
                elapsed: received_at.elapsed(),
            },
            generation.access_log,
        );
        res
    }

    async fn admit<'g>(
        &self,
        generation: &'g Generation,
        req: Request<Incoming>,
        ctx: &RequestContext,
    ) -> Result<(Response<Body>, Cow<'g, str>), (GatewayError, Cow<'g, str>)> {
        // The route's name for the access log and metrics: borrowed from the generation, so
        // no reference count shared by every request on the route is touched.
        let none = || Cow::Borrowed("-");
        // 2. Request head within limits (414, 431) before anything else looks at it.
        let hop_by_hop = check_head(&req, generation.limits).map_err(|e| (e, none()))?;
        // What the policies judge is what the upstream gets: a header the client names in
        // `Connection` (`Connection: content-type`) went only at the forwarder, after the
        // body checks had read it, so the upstream saw a body without its validated type.
        let mut req = req;
        if hop_by_hop {
            strip_hop_by_hop(req.headers_mut());
        }
        // 3. A path every server reads the same way (400 otherwise).
        check_path(req.uri().path()).map_err(|k| (GatewayError::Malformed(k), none()))?;
        // Server-wide client network rules, before anything else is revealed (403).
        if !generation.config.server.ip_rules.admits(&ctx.client_ip) {
            return Err((GatewayError::Forbidden, none()));
        }
        // From here the body is the gateway's: read errors marked, minimum rate enforced (408).
        let s = &generation.config.server;
        let req = req.map(|b| request_body(b, s.min_body_rate, s.body_rate_grace));
        // The OAuth 2.0 endpoints, when Portcullis issues tokens.
        if let Some(issuer) = &self.services.oauth {
            if crate::oauth_endpoints::is_endpoint(req.uri().path()) {
                let route = Cow::Borrowed("oauth");
                // Boxed, like the webhook's below: held inline, these rare futures made
                // every request's future (moved on each request) 1.5 KB larger.
                return Box::pin(crate::oauth_endpoints::handle(
                    issuer,
                    &generation.clients,
                    &self.services.brute_force,
                    ctx.client_ip,
                    req,
                ))
                .await
                .map(|r| (r, route.clone()))
                .map_err(|e| (e, route));
            }
        }
        // Webhook endpoints: exact paths, verified before anything else happens.
        // (Most gateways declare none: no SipHash of the path for them.)
        let hook = (!generation.webhooks.is_empty())
            .then(|| generation.webhooks.get(req.uri().path()))
            .flatten();
        if let Some(hook) = hook {
            let id = Cow::Borrowed(hook.id());
            return Box::pin(hook.handle(req, ctx))
                .await
                .map(|r| (r, id.clone()))
                .map_err(|e| (e, id));
        }
        // Egress: workflows calling third-party APIs through an integration.
        if let Some(rest) = req.uri().path().strip_prefix("/egress/") {
            let id = rest.split('/').next().unwrap_or("");
            if let Some((chain, _)) = generation.integrations.get(id) {
                let name = Cow::Owned(id.to_string());
                return Ok((chain.run(req, ctx).await, name));
            }
        }
        // CORS preflight: answered for the route the browser is about to call.
        if req.method() == http::Method::OPTIONS {
            if let Some(want) = req
                .headers()
                .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|v| http::Method::from_bytes(v.as_bytes()).ok())
            {
                // The route for the requested method; failing that, a CORS route on the same
                // path, which then refuses the method (403, as a CORS route's own list would)
                // rather than leaving the preflight to a 405.
                let path = req.uri().path();
                let (route, method_ok) = match generation.routes.lookup(&want, path) {
                    Lookup::Found(route, _) if route.config.cors.is_some() => (Some(route), true),
                    Lookup::NoMethod(_) => (generation.routes.cors_route_at(path), false),
                    _ => (None, false),
                };
                if let Some((route, cors)) = route.and_then(|r| Some((r, r.config.cors.as_ref()?)))
                {
                    let id = Cow::Borrowed(&*route.id);
                    // The route's network rules hold for its preflight too: a refused
                    // network learns nothing of the route's CORS lists.
                    let answer = if !route.config.ip_rules.admits(&ctx.client_ip) || !method_ok {
                        Err(GatewayError::Forbidden)
                    } else {
                        portcullis_policy::preflight(cors, req.headers())
                    };
                    let res = answer.unwrap_or_else(|e| {
                        portcullis_policy::refused_preflight(&e, &ctx.request_id)
                    });
                    return Ok((res, id));
                }
            }
        }
        // 4. A declared route, or 404/405 and a count in the undeclared inventory.
        let (route, matched) = match generation.routes.lookup(req.method(), req.uri().path()) {
            Lookup::Found(route, matched) => (route, matched),
            Lookup::NoPath => {
                self.inventory.record(req.method(), req.uri().path());
                return Err((GatewayError::NotFound, Cow::Borrowed("undeclared")));
            }
            Lookup::NoMethod(allow) => {
                self.inventory.record(req.method(), req.uri().path());
                let e = GatewayError::MethodNotAllowed { allow };
                // On a CORS route's path the 405 carries that route's CORS headers: without
                // them a browser shows the page a CORS failure, not the 405. Its network
                // rules hold here as for its preflight.
                let cors = generation
                    .routes
                    .cors_route_at(req.uri().path())
                    .filter(|r| r.config.ip_rules.admits(&ctx.client_ip))
                    .and_then(|r| r.config.cors.as_ref());
                if let Some(cors) = cors {
                    let mut res = problem_response(&e, &ctx.request_id);
                    let h = portcullis_policy::cors_headers(cors, req.headers());
                    res.headers_mut().extend(h);
                    return Ok((res, Cow::Borrowed("undeclared")));
                }
                return Err((e, Cow::Borrowed("undeclared")));
            }
        };
        // 5. The route's policies, then the upstream.
        let mut req = req;
        if let Some(m) = matched {
            req.extensions_mut().insert(m);
        }
        Ok((route.chain.run(req, ctx).await, Cow::Borrowed(&*route.id)))
    }
}

/// Checks the head against the limits; true when it carries `Connection` (which may name
/// headers to remove), found in the same pass.
fn check_head(req: &Request<Incoming>, limits: HeadLimits) -> Result<bool, GatewayError> {
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len as u64 > limits.url_bytes {
        return Err(GatewayError::UriTooLong);
    }
    let headers = req.headers();
    if headers.len() > limits.header_count {
        return Err(GatewayError::HeadersTooLarge);
    }
    // Host and Content-Type are found in the same pass that sums the sizes: a standard name
    // compares without hashing.
    let mut bytes = 0u64;
    let mut hosts = 0usize;
    let mut host = None;
    let mut content_types = 0usize;
    let mut content_type = None;
    let mut connection = false;
    for (n, v) in headers {
        bytes += (n.as_str().len() + v.len() + 4) as u64;
        if n == http::header::HOST {
            hosts += 1;
            host = Some(v);
        } else if n == http::header::CONTENT_TYPE {
            content_types += 1;
            content_type = Some(v);
        } else if n == http::header::CONNECTION {
            connection = true;
        }
    }
    if bytes > limits.header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    // hyper decodes the chunked coding when it comes last and leaves the others (`gzip,
    // chunked`) in the body. The header goes as hop-by-hop, so the upstream would get
    // compressed bytes with nothing saying so. A second line is chunked applied twice. Only
    // a body of unknown length can be chunked, so bodiless and Content-Length requests skip
    // the lookup.
    if hyper::body::Body::size_hint(req.body()).exact().is_none()
        && !hyper::body::Body::is_end_stream(req.body())
    {
        let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
        let first = codings.next();
        let only_chunked =
            first.is_none_or(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if !only_chunked || codings.next().is_some() {
            return Err(GatewayError::UnsupportedTransferCoding);
        }
    }
    // One Content-Type (RFC 9110 §8.3 has one media type): with two, the body checks judged
    // the first while an upstream that reads the last saw another format (JSON limits
    // skipped for a `text/plain, application/json` pair).
    if content_types > 1 || content_type.is_some_and(|v| is_list(v.as_bytes())) {
        return Err(GatewayError::Malformed(MalformedKind::InvalidHeader));
    }
    check_host(req, hosts, host).map(|()| connection)
}

/// True when a header value is a list: a `,` outside a quoted string (`text/plain,
/// application/json` is two media types on one line; `boundary="a,b"` is one).
fn is_list(v: &[u8]) -> bool {
    if memchr::memchr(b',', v).is_none() {
        return false;
    }
    let (mut quoted, mut escaped) = (false, false);
    for &b in v {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return true,
            _ => {}
        }
    }
    false
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and it must be an authority;
/// and where the target carries its own authority (absolute form, HTTP/2's `:authority`), a
/// `Host` beside it must name the same one. Otherwise the gateway, the upstream and the
/// access log could each take a different host from one request (400).
fn check_host(
    req: &Request<Incoming>,
    hosts: usize,
    host: Option<&http::HeaderValue>,
) -> Result<(), GatewayError> {
    let bad = || GatewayError::Malformed(MalformedKind::InvalidHeader);
    if hosts > 1 || (hosts == 0 && req.version() == http::Version::HTTP_11) {
        return Err(bad());
    }
    let target = req.uri().authority().map(|a| a.as_str().as_bytes());
    let Some(host) = host else {
        // No `Host`: HTTP/2's `:authority` or an HTTP/1.0 absolute-form target names the
        // host instead, and is forwarded as `Host` and `X-Forwarded-Host` the same way, so it
        // is held to the same rule (no userinfo, no comma).
        return match target {
            Some(t) if !is_host_text(t) => Err(bad()),
            _ => Ok(()),
        };
    };
    let host = host.as_bytes();
    if !is_host_text(host) {
        return Err(bad());
    }
    match target {
        Some(target) if !target.eq_ignore_ascii_case(host) => Err(bad()),
        _ => Ok(()),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets, or a
/// name of unreserved, sub-delim and `%` characters, but not `,` (frameworks split
/// `X-Forwarded-Host`, which carries this value, on commas: `a,b` would be two hosts again);
/// then digits after one `:`. Checked in
/// place: `http::uri::Authority` would copy the value on every request, and it also admits
/// userinfo, which a `Host` never has.
fn is_host_text(v: &[u8]) -> bool {
    // One table lookup per byte: the value is checked on every request.
    const NAME: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b';'
                        | b'='
                );
            c += 1;
        }
        t
    };
    let digits = |p: &[u8]| p.iter().all(u8::is_ascii_digit);
    if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&c| c == b']') else {
            return false;
        };
        let inside = &rest[..end];
        let literal = !inside.is_empty()
            && inside
                .iter()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'));
        return literal
            && match &rest[end + 1..] {
                [] => true,
                [b':', port @ ..] => digits(port),
                _ => false,
            };
    }
    let (name, port) = match v.iter().rposition(|&c| c == b':') {
        Some(at) => (&v[..at], &v[at + 1..]),
        None => (v, &b""[..]),
    };
    !name.is_empty() && name.iter().all(|&c| NAME[c as usize]) && digits(port)
}

fn build_generation(
    cfg: &Config,
    clients: &ClientCache,
    previous_tls: Option<Arc<rustls::ServerConfig>>,
    services: &Services,
) -> Result<Generation, BuildError> {
    let trusted: Arc<[IpNet]> = cfg.server.trusted_proxies.clone().into();
    let known: Clients = Arc::new(
        cfg.clients
            .iter()
            .map(|c| (c.id.clone(), c.clone()))
            .collect(),
    );
    let mut routes = RouteTable::default();
    for route in &cfg.routes {
        let transport = clients
            .transport(
                &route.upstream.scheme,
                &route.upstream.authority,
                &route.upstream_tls,
                route.timeouts.connect,
            )
            .map_err(|e| BuildError::Route {
                id: route.id.clone(),
                reason: e.to_string(),
            })?;
        let forwarder = Forwarder::new(
            route,
            transport,
            trusted.clone(),
            services.vault.clone(),
            services.oauth.clone(),
        );
        routes
            .insert(CompiledRoute {
                id: Arc::from(route.id.as_str()),
                config: route.clone(),
                chain: route_chain(route, forwarder, services, &known).map_err(|reason| {
                    BuildError::Route {
                        id: route.id.clone(),
                        reason,
                    }
                })?,
            })
            .map_err(|reason| BuildError::Route {
                id: route.id.clone(),
                reason,
            })?;
    }
    let tls = match &cfg.server.tls {
        Some(files) => Some(load_server_tls(files, cfg.server.client_ca.as_deref())?),
        None => previous_tls,
    };
    let mut webhooks = std::collections::HashMap::new();
    // Per configuration generation, so a reload that adds webhooks (or names another
    // [webhook_signing] secret) signs with the secret it names; `serve` checks at start that
    // the first one is usable.
    let signer = cfg
        .webhook_signing
        .as_ref()
        .zip(services.vault.clone())
        .map(|(r, vault)| Arc::new(crate::WebhookSigner::lazy(vault, &r.name)));
    for w in &cfg.webhooks {
        let endpoint = crate::webhook::WebhookEndpoint::new(
            w.clone(),
            services.vault.clone(),
            services.replay.clone(),
            services.webhook_failures.clone(),
            signer.clone(),
            services.store.clone().map(|store| crate::webhook::Outbox {
                store,
                wake: services.outbox_wake.clone(),
            }),
            clients,
        )
        .map_err(|reason| BuildError::Route {
            id: w.id.clone(),
            reason,
        })?;
        webhooks.insert(w.path.clone(), Arc::new(endpoint));
    }
    let mut integrations = std::collections::HashMap::new();
    for i in &cfg.integrations {
        let terminal = Arc::new(
            crate::egress::EgressTerminal::new(
                i.clone(),
                services.vault.clone(),
                Some(services.limits.clone()),
                services.egress_tokens.clone(),
            )
            .map_err(|reason| BuildError::Route {
                id: i.id.clone(),
                reason,
            })?,
        );
        terminal.start_health_check();
        let chain = crate::build::egress_chain(&i.id, terminal.clone(), services, &known);
        integrations.insert(i.id.clone(), (chain, terminal));
    }
    Ok(Generation {
        integrations,
        webhooks,
        config: Arc::new(cfg.clone()),
        clients: known,
        routes,
        tls,
        limits: limits(&cfg.server),
        trusted,
        access_log: cfg.logging.access_log,
    })
}

fn limits(s: &ServerConfig) -> HeadLimits {
    HeadLimits {
        header_count: s.max_header_count,
        header_bytes: s.max_header_bytes,
        url_bytes: s.max_url_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::{is_host_text, is_list};

    #[test]
    fn a_comma_outside_quotes_makes_a_header_value_a_list() {
        for v in ["text/plain, application/json", "a,b", "x; q=\"a\", y"] {
            assert!(is_list(v.as_bytes()), "{v}");
        }
        for v in [
            "application/json",
            "multipart/form-data; boundary=\"a,b\"",
            "x; p=\"a\\\",b\"",
        ] {
            assert!(!is_list(v.as_bytes()), "{v}");
        }
    }

    #[test]
    fn host_values_are_a_host_and_an_optional_port() {
        for ok in [
            "gw.example",
            "gw.example:8080",
            "GW.Example:",
            "127.0.0.1",
            "[::1]",
            "[::1]:8443",
            "[::ffff:10.0.0.1]:80",
            "xn--caf-dma.example",
        ] {
            assert!(is_host_text(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a.example/x",
            "user@a.example",
            "a.example:80x",
            "[::1",
            "[zz]",
            "[::1]x",
            ":80",
            "a\tb",
            "a.example?q",
            "a.example,evil.example",
        ] {
            assert!(!is_host_text(bad.as_bytes()), "{bad}");
        }
    }
}
