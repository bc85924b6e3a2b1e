//! Portcullis configuration: one TOML file, parsed into a raw serde model that keeps source
//! spans, then validated into the typed [`Config`] the rest of the gateway uses.
//!
//! "Parse, don't validate": nothing outside this crate sees an unchecked string. Every problem
//! found on the way is a [`Diagnostic`] that names the file, line and column, so `portcullis
//! check` and a refused hot reload say exactly what is wrong and where.

mod diagnostic;
mod model;
mod raw;
mod secret_ref;
mod units;
mod validate;
mod validate_integrations;
mod validate_limits;
mod validate_store;
mod validate_webhooks;

pub use diagnostic::{ConfigError, Diagnostic, Severity};
pub use model::{
    AuthConfig, AuthMethod, BruteForceConfig, ClientConfig, Config, Deprecation, FieldFilter,
    JsonLimits, JwtIssuerConfig, LogFormat, LoggingConfig, OAuth2Config, ObjectRule, ObjectSource,
    ParamKind, ParamRule, ParamsConfig, RateKey, RateLimitConfig, RouteConfig, ServerConfig,
    StoreConfig, Timeouts, TlsFiles, Upstream, UpstreamHeader, UpstreamTls, VaultConfig,
    VaultKeyProvider,
};
pub use secret_ref::{parse_template, SecretRef, SecretTemplate};
pub use units::{ByteSize, HumanDuration};

use std::path::Path;

/// A validated configuration together with the warnings the linter raised about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, ready to run.
    pub config: Config,
    /// Lints that do not stop the gateway (risky `dangerous_*` switches, plaintext listeners...).
    pub warnings: Vec<Diagnostic>,
    /// Where each `{secret:...}` reference is written, so a finding about the vault (`check`:
    /// the secret does not exist, is not bound to its consumer) points at its line.
    pub secret_sites: Vec<SecretSite>,
}

impl Loaded {
    /// The place of the reference to secret `name` made by `consumer`, when the file writes one
    /// (the default `[webhook_signing]` secret is implied, not written).
    pub fn secret_site(&self, consumer: &str, name: &str) -> Option<&SecretSite> {
        self.secret_sites
            .iter()
            .find(|s| s.consumer == consumer && s.name == name)
    }
}

/// One `{secret:...}` reference in the file: who makes it, what it names, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSite {
    /// The vault consumer the reference is made for (`route:ID`, `webhook:ID`...).
    pub consumer: String,
    /// The secret's name.
    pub name: String,
    /// 1-based line of the value that holds the reference.
    pub line: usize,
    /// 1-based column of that value.
    pub column: usize,
}

/// The consumer the gateway's own webhook signing secret (`[webhook_signing]`) is bound to.
pub const WEBHOOK_SIGNING_CONSUMER: &str = "gateway:webhook-signing";

/// The consumers of the gateway's own secrets: the API-key pepper and the OAuth signing key
/// (`portcullis_identity`'s, whose tests check they are listed), and `[webhook_signing]`.
pub const GATEWAY_CONSUMERS: &[&str] = &[
    "gateway:api-keys",
    "gateway:oauth",
    WEBHOOK_SIGNING_CONSUMER,
];

/// True when `c` is a consumer a configuration can name: `route:ID`, `webhook:ID` or
/// `integration:ID` with an id this file format accepts, or one of [`GATEWAY_CONSUMERS`].
pub fn is_consumer(c: &str) -> bool {
    GATEWAY_CONSUMERS.contains(&c)
        || c.split_once(':').is_some_and(|(kind, id)| {
            matches!(kind, "route" | "webhook" | "integration") && validate::valid_id(id)
        })
}

/// Reads, parses and validates the configuration file at `path`.
///
/// Relative paths inside the file (TLS certificates, data directory) are resolved against the
/// file's own directory, so the gateway behaves the same whatever directory it starts from.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::io(&path.display().to_string(), &e))?;
    load_text(path, &text)
}

/// Parses and validates `text` as the content of the file at `path`, read by the caller. Hot
/// reload validates the very bytes it saw settle: reading the file again could get a later,
/// half-written version.
pub fn load_text(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    parse(text, &file, base)
}

/// Parses and validates configuration text. `file` names the source in diagnostics; `base` is
/// the directory relative paths are resolved against.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Loaded, ConfigError> {
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|e| ConfigError::syntax(file, text, &e))?;
    validate::validate(raw, text, file, base)
}

/// The configuration `portcullis serve` runs with when given no file: loopback listeners, no
/// routes, data in `./portcullis-data`. Safe by construction: it exposes nothing.
pub fn zero_config() -> Config {
    match parse("", "<built-in defaults>", Path::new(".")) {
        Ok(loaded) => loaded.config,
        // The empty document is covered by a unit test; reaching this is a bug in the defaults.
        Err(e) => unreachable!("built-in defaults are invalid: {e}"),
    }
}

#[cfg(test)]
mod tests;
pub use model::CorsConfig;
pub use model::IpRules;
pub use model::{
    BreakerSettings, CredentialConfig, CredentialPlacement, IntegrationConfig, ResponseFilter,
};
pub use model::{Delivery, HmacSchemeConfig, WebhookConfig, WebhookProvider};
pub use model::{QuotaConfig, SharedBackend, SharedStateConfig, SharedStateFailure};
