//! The validated configuration. Every value here has been checked: addresses parse, URLs are
//! absolute http(s), route templates compile, references resolve.

use ipnet::IpNet;
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use time::OffsetDateTime;

/// The whole gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners and connection-level limits.
    pub server: ServerConfig,
    /// Where persistent state lives.
    pub store: StoreConfig,
    /// Where rate-limit counters live: this process, or Redis shared by several instances.
    pub shared_state: SharedStateConfig,
    /// Log format, level and redaction lists.
    pub logging: LoggingConfig,
    /// Where the vault's master key comes from.
    pub vault: VaultConfig,
    /// Authentication settings shared by every route.
    pub auth: AuthConfig,
    /// Callers known to the gateway.
    pub clients: Vec<Arc<ClientConfig>>,
    /// Declared routes, in file order. Shared with the data plane without copying.
    pub routes: Vec<Arc<RouteConfig>>,
    /// Inbound webhook endpoints (workflow triggers).
    pub webhooks: Vec<Arc<WebhookConfig>>,
    /// The vault secret (`whsec_...`) Portcullis signs forwarded webhooks with; required when
    /// there are webhooks. Bound to the consumer `gateway:webhook-signing`.
    pub webhook_signing: Option<crate::SecretRef>,
    /// Third-party APIs workflows call through the gateway (egress).
    pub integrations: Vec<Arc<IntegrationConfig>>,
}

/// One egress integration: a third-party API, what workflows may call on it, and the
/// credential the gateway adds.
#[derive(Debug, Clone)]
pub struct IntegrationConfig {
    /// Stable identifier: the `<id>` in `/egress/<id>/...`.
    pub id: String,
    /// The only destination: scheme, host, port and base path.
    pub base_url: url::Url,
    /// Allowed (methods, path template) pairs; everything else is refused.
    pub allow: Vec<(Vec<http::Method>, String)>,
    /// Clients that may use it.
    pub clients: Vec<String>,
    /// The credential added to every call.
    pub credential: Option<CredentialConfig>,
    /// Whole-call deadline.
    pub timeout: Duration,
    /// Connect deadline (resolution, TCP, TLS).
    pub connect_timeout: Duration,
    /// Largest request body a workflow may send.
    pub max_body: u64,
    /// Largest response body passed back (502 beyond).
    pub max_response: u64,
    /// Response headers removed before the workflow sees the response (with `set-cookie`).
    pub strip_response_headers: Vec<http::HeaderName>,
    /// Networks re-admitted although the SSRF guard refuses them. Dangerous.
    pub dangerous_allow_cidrs: Vec<IpNet>,
    /// Total attempts (1 = no retry), first-retry ceiling and largest ceiling (full jitter).
    pub retry: (u32, Duration, Duration),
    /// Circuit-breaker thresholds.
    pub breaker: BreakerSettings,
    /// JSON Schema (2020-12) successful responses must satisfy (502 otherwise).
    pub response_schema: Option<Arc<serde_json::Value>>,
    /// Media types a response may have (lower-case, no parameters); empty: any.
    pub response_content_types: Vec<String>,
    /// Data minimization of JSON responses.
    pub response_filter: Option<ResponseFilter>,
    /// Calls per period to the third party, shared by every workflow and every instance on
    /// the shared state; callers over it wait up to `max_wait`, then get 429.
    pub rate_limit: Option<(RateLimitConfig, Duration)>,
    /// Redirect hops followed (0: 3xx answers are handed back). Every hop is re-checked.
    pub follow_redirects: u32,
    /// Where calls go while the primary base URL fails its health check.
    pub fallback_base_url: Option<url::Url>,
    /// Active health check of the primary: path, interval, failures before it counts as down.
    pub health_check: Option<(String, Duration, u32)>,
    /// A private CA (PEM) trusted beside the webpki roots.
    pub ca: Option<PathBuf>,
    /// SHA-256 pins (of the certificate or its public key) the server's leaf must match.
    pub pin_sha256: Vec<[u8; 32]>,
}

/// When an integration's circuit breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Opens when failures / outcomes in the window reaches this, in `(0, 1]`.
    pub failure_ratio: f64,
    /// No opening before the window holds this many outcomes.
    pub min_requests: u32,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// The rolling window outcomes are counted over.
    pub window: Duration,
    /// Calls admitted at a time as probes while half-open; the first success closes it.
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_ratio: 0.5,
            min_requests: 20,
            open_for: Duration::from_secs(30),
            window: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

/// Which fields of a third party's JSON response a workflow sees, and which are masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFilter {
    /// Top-level fields kept (`None`: all).
    pub allow: Option<Vec<String>>,
    /// Dotted paths removed.
    pub deny: Vec<String>,
    /// Dotted paths masked.
    pub mask: Vec<String>,
    /// Masking by hash (`sha256:...`) instead of keeping the last four characters.
    pub mask_hash: bool,
}

/// The vault consumer id of route `id`.
pub(crate) fn route_consumer(id: &str) -> String {
    format!("route:{id}")
}

/// The vault consumer id of webhook endpoint `id`.
pub(crate) fn webhook_consumer(id: &str) -> String {
    format!("webhook:{id}")
}

/// The vault consumer id of integration `id`.
pub(crate) fn integration_consumer(id: &str) -> String {
    format!("integration:{id}")
}

impl IntegrationConfig {
    /// The consumer id the vault binds this integration's credential to.
    pub fn consumer(&self) -> String {
        integration_consumer(&self.id)
    }
}

/// Where an integration's credential goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialPlacement {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<header>: <secret>`.
    Header(http::HeaderName),
    /// `Authorization: Basic <base64(secret)>`, the secret being `user:password`.
    Basic,
    /// `?<param>=<secret>` on the query string.
    Query(String),
    /// `Authorization: Bearer <token>` with a token from an OAuth 2.0 client-credentials
    /// grant; the secret is a JSON object with `client_id` and `client_secret`.
    OAuth2ClientCredentials {
        /// The token endpoint.
        token_url: url::Url,
        /// Scopes requested.
        scopes: Vec<String>,
    },
    /// `Authorization: Bearer <token>` with a token from an OAuth 2.0 refresh-token grant;
    /// the secret is a JSON object with `client_id`, `client_secret` and `refresh_token`, and
    /// a rotated refresh token is written back to the vault as a new version.
    OAuth2RefreshToken {
        /// The token endpoint.
        token_url: url::Url,
        /// Scopes requested.
        scopes: Vec<String>,
    },
}

/// An integration's credential: a vault secret and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialConfig {
    /// Where it goes.
    pub placement: CredentialPlacement,
    /// The vault secret's name (bound to consumer `integration:<id>`).
    pub secret: String,
}

/// One inbound webhook endpoint: who signs it, how, and where verified events go.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Stable identifier, used in metrics, logs and replay keys.
    pub id: String,
    /// Exact request path (POST).
    pub path: String,
    /// The signature scheme.
    pub provider: WebhookProvider,
    /// Signing secrets in the vault; several at once during a rotation.
    pub secrets: Vec<crate::SecretRef>,
    /// How far a signed timestamp may be from now, either way.
    pub tolerance: Duration,
    /// When non-empty, only these event types are forwarded; others are acknowledged.
    pub event_types: Vec<String>,
    /// JSON Schema (2020-12) the payload must satisfy.
    pub schema: Option<Arc<serde_json::Value>>,
    /// Where verified events go.
    pub forward: url::Url,
    /// Forward while the sender waits, or queue durably first.
    pub delivery: Delivery,
    /// Largest body accepted (413 beyond).
    pub max_body: u64,
    /// How long an accepted message is remembered to refuse replays and duplicates.
    pub dedup_window: Duration,
    /// Deadline for the forward.
    pub timeout: Duration,
    /// Queued delivery: how long an event is retried before it goes to the dead-letter list.
    pub max_age: Duration,
}

impl WebhookConfig {
    /// The consumer id the vault binds this endpoint's secrets to.
    pub fn consumer(&self) -> String {
        webhook_consumer(&self.id)
    }
}

/// A webhook signature scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookProvider {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Standard,
    /// Stripe (`Stripe-Signature`).
    Stripe,
    /// GitHub (`X-Hub-Signature-256`).
    Github,
    /// Slack (`X-Slack-Signature`, `X-Slack-Request-Timestamp`).
    Slack,
    /// Shopify (`X-Shopify-Hmac-Sha256`).
    Shopify,
    /// A generic HMAC scheme.
    Hmac(HmacSchemeConfig),
}

/// The generic HMAC scheme's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacSchemeConfig {
    /// Header carrying the signature.
    pub signature_header: http::HeaderName,
    /// `sha256` or `sha512`.
    pub sha512: bool,
    /// Signature encoding: base64 when true, hex otherwise.
    pub base64: bool,
    /// Text before the signature in the header, such as `sha256=`.
    pub prefix: Option<String>,
    /// Header carrying a signed Unix timestamp, when the sender sends one.
    pub timestamp_header: Option<http::HeaderName>,
    /// The signed string: `{body}`, optionally with `{timestamp}`.
    pub template: String,
}

/// How a verified webhook reaches its workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Forwarded while the sender waits; the backend's status is passed through.
    Direct,
    /// Written to a durable outbox before the sender gets 2xx; delivered by a worker.
    Queued,
}

/// `[server]`: listeners and connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data-plane listen address.
    pub listen: SocketAddr,
    /// TLS certificate and key for the data plane; plaintext when absent.
    pub tls: Option<TlsFiles>,
    /// CA whose client certificates the TLS listener accepts (mTLS). Certificates are
    /// optional at the handshake; routes with `auth = ["mtls"]` require one.
    pub client_ca: Option<PathBuf>,
    /// Admin listener (health, readiness, metrics, inventory). Loopback unless
    /// `dangerous_expose_admin` is set.
    pub admin_listen: SocketAddr,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Client networks allowed on every route (empty: all), checked before routing.
    pub ip_rules: IpRules,
    /// Directory for the embedded database and other state; created 0700.
    pub data_dir: PathBuf,
    /// How long shutdown waits for in-flight requests before it gives up on them.
    pub shutdown_grace: Duration,
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
    /// How long a response write may wait on a client that does not read before the
    /// connection is closed, so a client that stops reading cannot hold a connection (and a
    /// route's concurrency slot) for ever.
    pub send_timeout: Duration,
    /// Most request headers accepted (431 beyond).
    pub max_header_count: usize,
    /// Most bytes of request headers accepted, names and values together (431 beyond).
    pub max_header_bytes: u64,
    /// Longest request target accepted, path and query (414 beyond).
    pub max_url_bytes: u64,
    /// Most open client connections; beyond it a new connection gets one 503 and is closed.
    pub max_connections: usize,
    /// Slowest request body accepted, in bytes per second after `body_rate_grace` (408
    /// below it); 0 turns the check off. Slow-loris protection for bodies.
    pub min_body_rate: u64,
    /// Time a request body gets before `min_body_rate` applies.
    pub body_rate_grace: Duration,
    /// Admin listener may bind a non-loopback address.
    pub dangerous_expose_admin: bool,
}

/// PEM files for a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[store]`: the database.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `sqlite://PATH` (absolute), `sqlite::memory:`, or a `postgres://` URL, which may hold a
    /// password.
    pub url: String,
}

impl StoreConfig {
    /// Whether several instances can share this store (PostgreSQL), rather than it being
    /// one process's own file.
    pub fn is_shared(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }
}

impl std::fmt::Debug for StoreConfig {
    // A PostgreSQL URL may carry a password: it never reaches a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = if self.is_shared() {
            "<postgres url>"
        } else {
            &self.url
        };
        f.debug_struct("StoreConfig").field("url", &shown).finish()
    }
}

/// `[shared_state]`: where counters that instances must agree on live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStateConfig {
    /// Memory (one instance) or Redis (several).
    pub backend: SharedBackend,
    /// How many instances share the limits; with `fall_back_local`, each instance enforces
    /// `limit / instances` on its own while Redis is unreachable.
    pub instances: u32,
    /// Longest wait for Redis before a decision counts as failed.
    pub timeout: Duration,
    /// Prefix of every Redis key, so deployments can share one Redis.
    pub key_prefix: String,
}

/// Where shared counters live.
#[derive(Clone, PartialEq, Eq)]
pub enum SharedBackend {
    /// In this process (the default; exact for one instance).
    Memory,
    /// A Redis server at this `redis://` / `rediss://` URL, which may hold a password.
    Redis(String),
}

impl std::fmt::Debug for SharedBackend {
    // The URL may carry a password: it never reaches a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis(_) => f.write_str("Redis(<url>)"),
        }
    }
}

/// What a route does when the shared state cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharedStateFailure {
    /// Decide locally with each limit divided by `shared_state.instances`, and log and meter
    /// the degradation.
    #[default]
    FallBackLocal,
    /// Refuse with 503.
    FailClosed,
}

/// Request quotas over calendar days and months (UTC), persisted in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Requests per UTC day.
    pub daily: Option<u64>,
    /// Requests per UTC month.
    pub monthly: Option<u64>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default; what log pipelines want).
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// JSON or pretty.
    pub format: LogFormat,
    /// A tracing filter directive, such as `info` or `portcullis=debug`.
    pub level: String,
    /// One access-log line per request.
    pub access_log: bool,
    /// Header names (lower-case) redacted in addition to the built-in list.
    pub redact_headers: Vec<String>,
    /// JSON field names (lower-case) redacted wherever they appear in a log line.
    pub redact_fields: Vec<String>,
}

/// One declared route: what it matches and where it goes.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Stable identifier, used in metrics, logs and the inventory.
    pub id: String,
    /// Methods this route answers.
    pub methods: Vec<http::Method>,
    /// Path template, such as `/orders/{id}` or `/files/{*rest}`.
    pub path: String,
    /// Where matched requests go.
    pub upstream: Upstream,
    /// Path template for the upstream request, using the route's parameters. When absent
    /// the request path is forwarded as it came, under the upstream's base path.
    pub rewrite: Option<String>,
    /// Connect, read and total deadlines.
    pub timeouts: Timeouts,
    /// Largest request body accepted (413 beyond).
    pub max_body: u64,
    /// Most requests in flight on this route at once (503 beyond, no queueing); none: no limit.
    pub max_concurrent: Option<u32>,
    /// Free-form labels for the inventory.
    pub tags: Vec<String>,
    /// Deprecation and sunset; past the sunset the route answers 410.
    pub deprecation: Option<Deprecation>,
    /// Send the client's Host header upstream instead of the upstream's authority.
    pub preserve_host: bool,
    /// How upstream TLS is verified.
    pub upstream_tls: UpstreamTls,
    /// Headers added to the upstream request, typically credentials from the vault.
    pub upstream_headers: Vec<UpstreamHeader>,
    /// Accepted ways to authenticate; empty means the route is public.
    pub auth: Vec<AuthMethod>,
    /// Scopes the caller must all hold (function-level authorization).
    pub scopes: Vec<String>,
    /// Roles of which the caller must hold at least one.
    pub roles: Vec<String>,
    /// Object-level rules: request values that must equal the caller's attributes.
    pub object_rules: Vec<ObjectRule>,
    /// JSON body fields a caller may not set (mass assignment).
    pub request_deny_fields: Vec<String>,
    /// Send a signed assertion of the verified caller upstream (`X-Portcullis-Assertion`).
    pub identity_assertion: bool,
    /// Rate limits; every one must admit a request.
    pub rate_limits: Vec<RateLimitConfig>,
    /// What the rate limits do when the shared state is unreachable.
    pub shared_state_failure: SharedStateFailure,
    /// Per-client quota on this route.
    pub quota: Option<QuotaConfig>,
    /// Client networks allowed or denied on this route.
    pub ip_rules: IpRules,
    /// JSON Schema (2020-12) request bodies must satisfy; JSON content type required.
    pub request_schema: Option<Arc<serde_json::Value>>,
    /// Structural limits on JSON request bodies, checked wherever the gateway parses a body.
    pub json_limits: JsonLimits,
    /// Declared types of path and query parameters (400 when a request breaks them).
    pub params: Option<ParamsConfig>,
    /// Cross-origin access for browsers.
    pub cors: Option<CorsConfig>,
    /// Response field filters by role; `default` applies to callers without a listed role.
    pub response_fields: Vec<(String, FieldFilter)>,
}

/// Structural limits on a JSON request body, so that a small document cannot make the gateway
/// (or the upstream) do disproportionate work: deep nesting, huge strings, huge arrays or objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Deepest nesting of arrays and objects (the top-level container is depth 1).
    pub max_depth: u32,
    /// Longest string in bytes after unescaping; applies to object keys and values.
    pub max_string: u64,
    /// Most elements in one array.
    pub max_array: u64,
    /// Most members in one object.
    pub max_members: u64,
    /// Set when the route declares `json_limits`: then every request with a JSON content type
    /// is checked, not only bodies a policy (schema, object rules) parses anyway.
    pub explicit: bool,
}

impl JsonLimits {
    /// The limits routes get without `json_limits`, applied wherever a body is parsed anyway.
    pub const DEFAULT: JsonLimits = JsonLimits {
        max_depth: 32,
        max_string: 64 * 1024,
        max_array: 10_000,
        max_members: 1_000,
        explicit: false,
    };
}

/// Declared path and query parameters of a route.
#[derive(Debug, Clone)]
pub struct ParamsConfig {
    /// Path parameters by name (each one a parameter of the route's template).
    pub path: Vec<(String, ParamRule)>,
    /// Query parameters by name (matched after percent-decoding).
    pub query: Vec<(String, ParamRule)>,
    /// Refuse query parameters that are not declared (`unknown_query = "reject"`).
    pub reject_unknown_query: bool,
}

/// What one parameter must look like.
#[derive(Debug, Clone)]
pub struct ParamRule {
    /// Query parameters only: the parameter must be present.
    pub required: bool,
    /// Its type and the rules that go with the type.
    pub kind: ParamKind,
}

/// A parameter's type with the rules that apply to it.
#[derive(Debug, Clone)]
pub enum ParamKind {
    /// Any UTF-8 text; lengths count characters.
    String {
        /// Fewest characters.
        min_length: Option<u64>,
        /// Most characters.
        max_length: Option<u64>,
        /// A regular expression the value must match (unanchored unless it says `^...$`).
        pattern: Option<regex::Regex>,
        /// When non-empty, the only values accepted.
        values: Vec<String>,
    },
    /// A decimal integer (`-?[0-9]+`, within 64 bits).
    Integer {
        /// Smallest value.
        minimum: Option<i64>,
        /// Largest value.
        maximum: Option<i64>,
        /// When non-empty, the only values accepted.
        values: Vec<i64>,
    },
    /// A finite decimal number in JSON number syntax.
    Number {
        /// Smallest value.
        minimum: Option<f64>,
        /// Largest value.
        maximum: Option<f64>,
    },
    /// `true` or `false`.
    Boolean,
    /// A hyphenated UUID (`8-4-4-4-12` hex digits).
    Uuid,
}

/// Allow and deny lists of client networks. Deny wins; a non-empty allow list admits only
/// its networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    /// Networks allowed (empty: all).
    pub allow: Vec<IpNet>,
    /// Networks refused.
    pub deny: Vec<IpNet>,
}

impl IpRules {
    /// True when `ip` may pass.
    pub fn admits(&self, ip: &std::net::IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip)))
    }

    /// True when there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// CORS for one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Allowed origins (`scheme://host[:port]`), or `*` without credentials.
    pub origins: Vec<String>,
    /// Allowed methods (default: the route's).
    pub methods: Vec<String>,
    /// Allowed request headers (lower-case).
    pub headers: Vec<String>,
    /// Response headers scripts may read.
    pub expose_headers: Vec<String>,
    /// Cookies and credentials allowed.
    pub credentials: bool,
    /// How long browsers may cache a preflight.
    pub max_age: Duration,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The authenticated client.
    Client,
    /// The client IP.
    Ip,
    /// The route as a whole.
    Route,
    /// The client on this route.
    ClientRoute,
    /// A request header's value.
    Header(http::HeaderName),
    /// A claim of the caller's verified token, or for a caller without a token (an API key,
    /// a certificate) the client's attribute of that name.
    Claim(String),
}

/// `limit` requests per `period`, plus `burst` extra at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// What is counted.
    pub per: RateKey,
    /// Requests per period.
    pub limit: u64,
    /// The period.
    pub period: Duration,
    /// Extra requests allowed at once beyond `limit`.
    pub burst: u64,
}

/// Where an object rule reads the requested object's owner from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSource {
    /// A path parameter.
    Path(String),
    /// A query parameter.
    Query(String),
    /// A field of the JSON body (dotted path).
    Body(String),
}

/// `source` must equal the caller's `attribute` (`id` means the client id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRule {
    /// Where the value comes from.
    pub source: ObjectSource,
    /// The caller attribute it must equal.
    pub attribute: String,
}

/// Which JSON response fields a caller sees. Paths are dotted (`user.email`) and apply to
/// every element of arrays on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldFilter {
    /// When set, only these top-level paths are kept.
    pub allow: Option<Vec<String>>,
    /// These paths are removed.
    pub deny: Vec<String>,
}

/// A way a caller proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A Portcullis API key (`pcl_<id>_<secret>`), as a bearer token or in `X-Api-Key`.
    ApiKey,
    /// A JWT from a trusted issuer, as a bearer token.
    Jwt,
    /// A client certificate verified by the TLS listener against `server.client_ca`.
    Mtls,
    /// An access token Portcullis issued (`[auth.oauth2]`).
    OAuth2,
}

/// A caller known to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Stable id, used in keys, logs and identity headers.
    pub id: String,
    /// Human name.
    pub name: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Scopes the client may hold.
    pub scopes: Vec<String>,
    /// Attributes for object-level rules (such as `tenant`).
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The networks the client may call from (`allow_ips`, `deny_ips`): checked once the
    /// caller is known to be this client, as the route's rules are for every caller.
    pub ip_rules: IpRules,
    /// SHA-256 fingerprints (lower-case hex) of client certificates bound to this client.
    pub cert_fingerprints: Vec<String>,
    /// DNS subject alternative names of client certificates bound to this client.
    pub cert_sans: Vec<String>,
    /// A disabled client is refused at once.
    pub enabled: bool,
    /// Quota over all of this client's requests.
    pub quota: Option<QuotaConfig>,
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Lockout after repeated authentication failures.
    pub brute_force: BruteForceConfig,
    /// Trusted JWT issuers.
    pub jwt: Vec<JwtIssuerConfig>,
    /// Portcullis as an OAuth 2.0 token issuer (client credentials grant).
    pub oauth2: Option<OAuth2Config>,
}

/// `[auth.oauth2]`: tokens Portcullis issues to declared clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
}

/// A trusted issuer of JWT bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuerConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (at least one must match).
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys (https).
    pub jwks_url: Option<String>,
    /// Extra CA trusted for the JWKS endpoint.
    pub jwks_ca: Option<PathBuf>,
    /// Public keys from PEM files, with optional key ids.
    pub public_keys: Vec<(Option<String>, PathBuf)>,
    /// Allowed signature algorithms (never `none`, never HMAC).
    pub algorithms: Vec<String>,
    /// The claim that names the client (default `azp`, then `client_id`).
    pub client_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often the JWKS is refreshed.
    pub jwks_refresh: Duration,
    /// The least time between fetches triggered by an unknown `kid` (so a flood of made-up
    /// key ids cannot make the gateway hammer the issuer).
    pub jwks_refetch_after: Duration,
}

/// Failures from one source IP or against one key id within `window` beyond `max_failures`
/// lock that source out for `cooldown` (429 with Retry-After).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BruteForceConfig {
    /// Failures allowed within the window.
    pub max_failures: u32,
    /// The counting window.
    pub window: Duration,
    /// How long a source stays refused.
    pub cooldown: Duration,
}

/// A header the gateway adds to upstream requests; its value may come from the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHeader {
    /// Header name.
    pub name: http::HeaderName,
    /// Literal text and at most one secret reference.
    pub value: crate::SecretTemplate,
}

/// Which key provider holds the vault's key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultKeyProvider {
    /// A key file, created 0600 on first start.
    File(PathBuf),
    /// `PORTCULLIS_MASTER_KEY`.
    Env,
}

/// `[vault]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// Where the KEK comes from.
    pub key_provider: VaultKeyProvider,
    /// Warn (and emit an event) when a secret expires within this window.
    pub expiry_warning: Duration,
}

/// A parsed upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as written, normalised.
    pub url: url::Url,
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash (empty for `/`).
    pub base_path: String,
}

/// Deadlines for one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connection establishment.
    pub connect: Duration,
    /// Longest wait for the upstream's response head, and between body chunks.
    pub read: Duration,
    /// The whole exchange, response body included.
    pub total: Duration,
}

/// Deprecation metadata (RFC 9745 `Deprecation`, RFC 8594 `Sunset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecation {
    /// When the route was deprecated; defaults to "deprecated now".
    pub since: Option<OffsetDateTime>,
    /// When the route stops answering (410 from then on).
    pub sunset: OffsetDateTime,
    /// Where callers read about the replacement.
    pub link: Option<String>,
}

/// Upstream certificate verification.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct UpstreamTls {
    /// Extra CA certificate (PEM) trusted for this upstream, beside the webpki roots.
    pub ca: Option<PathBuf>,
    /// Skip certificate verification. Never do this outside a lab.
    pub dangerous_skip_verify: bool,
}

impl RouteConfig {
    /// The consumer id the vault binds this route's secrets to.
    pub fn consumer(&self) -> String {
        route_consumer(&self.id)
    }

    /// True when `method` is one of the route's methods.
    pub fn allows(&self, method: &http::Method) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}
