//! The configuration file exactly as written: serde types that reject unknown fields and keep
//! source spans for the values that cross-field validation talks about. Only `validate` reads
//! these; everything else uses the typed model.

use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub shared_state: RawSharedState,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub vault: RawVault,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub clients: Vec<Spanned<RawClient>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub webhooks: Vec<Spanned<RawWebhook>>,
    pub webhook_signing: Option<Spanned<RawWebhookSigning>>,
    #[serde(default)]
    pub integrations: Vec<Spanned<RawIntegration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntegration {
    pub id: Spanned<String>,
    pub base_url: Spanned<String>,
    pub allow: Spanned<Vec<Spanned<RawAllow>>>,
    pub clients: Spanned<Vec<String>>,
    pub credential: Option<Spanned<RawCredential>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub max_body: Option<ByteSize>,
    pub max_response: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub strip_response_headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub dangerous_allow_cidrs: Vec<Spanned<String>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub circuit_breaker: Option<Spanned<RawBreaker>>,
    pub response_schema: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub response_content_types: Vec<String>,
    pub response_fields: Option<Spanned<RawResponseFilter>>,
    pub rate_limit: Option<Spanned<RawOutboundLimit>>,
    pub follow_redirects: Option<Spanned<u32>>,
    pub fallback_base_url: Option<Spanned<String>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub pin_sha256: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub path: String,
    pub interval: Option<HumanDuration>,
    pub unhealthy_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutboundLimit {
    pub limit: u64,
    pub period: HumanDuration,
    #[serde(default)]
    pub burst: u64,
    pub max_wait: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResponseFilter {
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
    pub mask_style: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub attempts: Option<u32>,
    pub base: Option<HumanDuration>,
    pub max: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub failure_ratio: Option<f64>,
    pub min_requests: Option<u32>,
    pub open_for: Option<HumanDuration>,
    pub window: Option<Spanned<HumanDuration>>,
    pub half_open_probes: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    pub methods: Vec<Spanned<String>>,
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub secret: Spanned<String>,
    pub header: Option<Spanned<String>>,
    pub param: Option<String>,
    pub token_url: Option<Spanned<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhookSigning {
    pub secret: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub id: Spanned<String>,
    pub path: Spanned<String>,
    pub provider: Spanned<String>,
    pub secrets: Spanned<Vec<Spanned<String>>>,
    pub tolerance: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    pub event_types: Vec<String>,
    pub schema: Option<Spanned<PathBuf>>,
    pub forward: Spanned<String>,
    pub delivery: Option<Spanned<String>>,
    pub max_body: Option<ByteSize>,
    pub dedup_window: Option<Spanned<HumanDuration>>,
    pub timeout: Option<HumanDuration>,
    pub max_age: Option<Spanned<HumanDuration>>,
    pub hmac: Option<Spanned<RawHmacScheme>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHmacScheme {
    pub signature_header: Spanned<String>,
    pub algorithm: Option<Spanned<String>>,
    pub encoding: Option<Spanned<String>>,
    pub prefix: Option<String>,
    pub timestamp_header: Option<Spanned<String>>,
    pub template: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub client_ca: Option<Spanned<PathBuf>>,
    pub admin_listen: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny_ips: Vec<Spanned<String>>,
    pub data_dir: Option<PathBuf>,
    pub shutdown_grace: Option<Spanned<HumanDuration>>,
    pub header_read_timeout: Option<Spanned<HumanDuration>>,
    pub send_timeout: Option<Spanned<HumanDuration>>,
    pub max_header_count: Option<Spanned<usize>>,
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    pub max_url_bytes: Option<Spanned<ByteSize>>,
    pub max_connections: Option<Spanned<usize>>,
    pub min_body_rate: Option<Spanned<ByteSize>>,
    pub body_rate_grace: Option<Spanned<HumanDuration>>,
    pub dangerous_expose_admin: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub url: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSharedState {
    pub url: Option<Spanned<String>>,
    pub instances: Option<Spanned<u32>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub key_prefix: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuota {
    pub daily: Option<u64>,
    pub monthly: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogging {
    pub format: Option<Spanned<String>>,
    pub level: Option<Spanned<String>>,
    pub access_log: Option<bool>,
    #[serde(default)]
    pub redact_headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub redact_fields: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVault {
    pub key_provider: Option<Spanned<String>>,
    pub key_file: Option<Spanned<PathBuf>>,
    pub expiry_warning: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub brute_force: Option<RawBruteForce>,
    #[serde(default)]
    pub jwt: Vec<Spanned<RawJwtIssuer>>,
    pub oauth2: Option<RawOAuth2>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth2 {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub token_ttl: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwtIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_url: Option<Spanned<String>>,
    pub jwks_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub public_keys: Vec<RawJwtKey>,
    pub algorithms: Spanned<Vec<String>>,
    pub client_claim: Option<String>,
    pub leeway: Option<Spanned<HumanDuration>>,
    pub jwks_refresh: Option<Spanned<HumanDuration>>,
    pub jwks_refetch_after: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwtKey {
    pub kid: Option<String>,
    pub pem: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBruteForce {
    pub max_failures: Option<Spanned<u32>>,
    pub window: Option<Spanned<HumanDuration>>,
    pub cooldown: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClient {
    pub id: Spanned<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub allow_ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny_ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub cert_fingerprints: Vec<Spanned<String>>,
    #[serde(default)]
    pub cert_sans: Vec<String>,
    pub enabled: Option<bool>,
    pub quota: Option<Spanned<RawQuota>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub id: Spanned<String>,
    pub methods: Spanned<Vec<Spanned<String>>>,
    pub path: Spanned<String>,
    pub upstream: Spanned<String>,
    pub rewrite: Option<Spanned<String>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub read_timeout: Option<Spanned<HumanDuration>>,
    pub max_body: Option<ByteSize>,
    pub max_concurrent: Option<Spanned<u64>>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub deprecated: Option<Spanned<RawDeprecation>>,
    #[serde(default)]
    pub preserve_host: bool,
    pub upstream_ca: Option<Spanned<PathBuf>>,
    pub auth: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(rename = "match")]
    pub match_rules: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    #[serde(default)]
    pub request_deny_fields: Vec<String>,
    #[serde(default)]
    pub identity_assertion: bool,
    pub request_schema: Option<Spanned<PathBuf>>,
    pub json_limits: Option<RawJsonLimits>,
    pub params: Option<RawParams>,
    pub cors: Option<Spanned<RawCors>>,
    #[serde(default)]
    pub allow_ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny_ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub rate_limits: Vec<Spanned<RawRateLimit>>,
    pub shared_state_failure: Option<Spanned<String>>,
    pub quota: Option<Spanned<RawQuota>>,
    pub response_fields: Option<Spanned<std::collections::BTreeMap<String, RawFieldRule>>>,
    #[serde(default)]
    pub upstream_headers: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    pub dangerous_skip_upstream_tls_verify: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCors {
    pub origins: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    pub max_age: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub per: String,
    pub limit: u64,
    pub period: HumanDuration,
    #[serde(default)]
    pub burst: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFieldRule {
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeprecation {
    pub since: Option<Spanned<String>>,
    pub sunset: Spanned<String>,
    pub link: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJsonLimits {
    pub max_depth: Option<Spanned<u64>>,
    pub max_string: Option<Spanned<ByteSize>>,
    pub max_array: Option<Spanned<u64>>,
    pub max_members: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawParams {
    #[serde(default)]
    pub path: std::collections::BTreeMap<String, Spanned<RawParam>>,
    #[serde(default)]
    pub query: std::collections::BTreeMap<String, Spanned<RawParam>>,
    pub unknown_query: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawParam {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub required: Option<Spanned<bool>>,
    pub minimum: Option<Spanned<RawScalar>>,
    pub maximum: Option<Spanned<RawScalar>>,
    pub min_length: Option<Spanned<u64>>,
    pub max_length: Option<Spanned<u64>>,
    pub pattern: Option<Spanned<String>>,
    #[serde(rename = "enum")]
    pub values: Option<Spanned<Vec<RawScalar>>>,
}

/// A TOML scalar whose type validation checks against the parameter's declared type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawScalar {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl<'de> Deserialize<'de> for RawScalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawScalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawScalar, E> {
                Ok(RawScalar::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawScalar, E> {
                i64::try_from(v)
                    .map(RawScalar::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawScalar, E> {
                Ok(RawScalar::Float(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawScalar, E> {
                Ok(RawScalar::Str(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawScalar, E> {
                Ok(RawScalar::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}
