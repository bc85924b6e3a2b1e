//! Inbound webhook signature verification, and Standard Webhooks signing for forwarding.
//!
//! A webhook endpoint in front of a workflow backend must know that a delivery really comes
//! from the provider it claims, that it was not changed on the way and that it is fresh. Each
//! provider signs differently; this crate implements the schemes Portcullis supports, each
//! exactly as its provider documents it:
//!
//! | scheme | signature header | signed material | MAC / signature |
//! |---|---|---|---|
//! | [`Scheme::Standard`] | `webhook-signature: v1,<b64> v1a,<b64> …` | `{webhook-id}.{webhook-timestamp}.{body}` | HMAC-SHA256 (`whsec_` keys) or Ed25519 (`whpk_` public keys) |
//! | [`Scheme::Stripe`] | `Stripe-Signature: t=<ts>,v1=<hex>[,v1=…]` | `{t}.{body}` | HMAC-SHA256 keyed with the whole `whsec_…` string |
//! | [`Scheme::Github`] | `X-Hub-Signature-256: sha256=<hex>` | `{body}` | HMAC-SHA256 |
//! | [`Scheme::Slack`] | `X-Slack-Signature: v0=<hex>`, `X-Slack-Request-Timestamp` | `v0:{ts}:{body}` | HMAC-SHA256 |
//! | [`Scheme::Shopify`] | `X-Shopify-Hmac-Sha256: <base64>` | `{body}` | HMAC-SHA256 |
//! | [`Scheme::Hmac`] | configured | configured template | HMAC-SHA256 or HMAC-SHA512, hex or base64 |
//!
//! Rules shared by every scheme:
//! - Verification is over the exact raw body bytes; nothing is parsed or re-serialized first.
//! - Every comparison of a MAC is constant time; Ed25519 uses `verify_strict`.
//! - Several secrets may be configured at once (rotation); a delivery passes when any secret
//!   verifies any of its signatures.
//! - Anything unexpected fails closed: a header repeated with different values, a non-ASCII or
//!   over-long header, more than [`MAX_SIGNATURES`] signatures, a timestamp that is not a
//!   canonical non-negative integer.
//! - Signed timestamps must be within the tolerance in both directions. The signature is
//!   checked before the window, so `TimestampTooOld` in a log means "genuine but stale",
//!   typically a replay.
//! - Errors never contain a secret or a signature (expected or received); the HTTP answer to any
//!   of them is one generic 401, chosen by the caller.
//! - No input panics (proptests in the crate, `fuzz/fuzz_targets/webhook_verify.rs`).

#![forbid(unsafe_code)]

mod encoding;
mod event;
mod headers;
mod signer;
mod verifier;

#[cfg(test)]
mod tests;

pub use event::event_type;
pub use signer::StandardSigner;
pub use verifier::{Verified, Verifier};

/// Standard Webhooks' `webhook-id` header: read by the verifier, set on forwarded deliveries.
pub const WEBHOOK_ID: http::HeaderName = http::HeaderName::from_static("webhook-id");
/// Standard Webhooks' `webhook-timestamp` header.
pub const WEBHOOK_TIMESTAMP: http::HeaderName = http::HeaderName::from_static("webhook-timestamp");
/// Standard Webhooks' `webhook-signature` header.
pub const WEBHOOK_SIGNATURE: http::HeaderName = http::HeaderName::from_static("webhook-signature");

/// The largest signature header accepted, in bytes. Real ones are well under 1 KiB (a Standard
/// Webhooks header with a v1 and a v1a signature is about 140 bytes).
pub const MAX_SIGNATURE_HEADER: usize = 4096;
/// The most signatures one header may carry (Standard Webhooks lists, Stripe `v1=` entries).
/// Providers send one per active secret, so two or three in practice.
pub const MAX_SIGNATURES: usize = 16;
/// The most Ed25519 (`v1a`) signatures one Standard Webhooks header may carry. Each costs an
/// Ed25519 verification per configured public key, so this bounds the CPU an attacker can make
/// one request cost.
pub const MAX_ED25519_SIGNATURES: usize = 4;
/// The most secrets one verifier accepts (rotation needs two, occasionally three).
pub const MAX_SECRETS: usize = 8;
/// The longest message id accepted in a Standard Webhooks `webhook-id` header.
pub const MAX_ID_LEN: usize = 256;

/// Which signature scheme an endpoint uses.
///
/// The named variants follow their provider's documentation exactly and need no further
/// settings; [`Scheme::Hmac`] describes everyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks (standardwebhooks.com): `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`; symmetric `v1` (HMAC-SHA256, `whsec_` secrets) and asymmetric `v1a`
    /// (Ed25519, `whpk_` public keys). Also what Svix and its customers send.
    Standard,
    /// Stripe: `Stripe-Signature: t=…,v1=…`.
    Stripe,
    /// GitHub: `X-Hub-Signature-256: sha256=…` (the SHA-1 `X-Hub-Signature` is ignored).
    Github,
    /// Slack: `X-Slack-Signature: v0=…` with `X-Slack-Request-Timestamp`.
    Slack,
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify,
    /// A generic HMAC scheme for providers without a named variant.
    Hmac(HmacScheme),
}

impl Scheme {
    /// The scheme's short name, as used in configuration, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Standard => "standard",
            Scheme::Stripe => "stripe",
            Scheme::Github => "github",
            Scheme::Slack => "slack",
            Scheme::Shopify => "shopify",
            Scheme::Hmac(_) => "hmac",
        }
    }
}

/// The generic HMAC scheme: where the signature is, how it is computed and encoded, and what
/// string was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    /// The header carrying the signature, e.g. `x-signature`.
    pub signature_header: http::HeaderName,
    /// The HMAC hash function.
    pub algorithm: HmacAlgorithm,
    /// How the MAC is written in the header.
    pub encoding: SigEncoding,
    /// A prefix the header value must start with, stripped before decoding (e.g. `sha256=`).
    /// When set, a value without it is malformed.
    pub prefix: Option<String>,
    /// The header carrying the timestamp. When set, the timestamp is required, must be a unix
    /// time in seconds, must be signed (the template must contain `{timestamp}`) and is checked
    /// against the tolerance.
    pub timestamp_header: Option<http::HeaderName>,
    /// The signed string: literal text with the placeholders `{body}` (required, exactly once)
    /// and `{timestamp}` (exactly once when, and only when, `timestamp_header` is set), e.g.
    /// `{timestamp}.{body}` or `{body}`. Any other `{` or `}` is a configuration error.
    pub template: String,
}

/// The hash function of a generic HMAC scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    /// HMAC-SHA256 (32-byte MAC).
    Sha256,
    /// HMAC-SHA512 (64-byte MAC).
    Sha512,
}

/// How a generic HMAC scheme writes its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigEncoding {
    /// Hexadecimal, either case.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// Why a verifier could not be built: a configuration error, reported at load time. Never
/// contains a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The secret list is empty.
    #[error("no webhook secret configured")]
    NoSecrets,
    /// More secrets than [`MAX_SECRETS`].
    #[error("{0} webhook secrets configured; at most {MAX_SECRETS} are allowed")]
    TooManySecrets(usize),
    /// One secret is unusable for the scheme; `index` counts from 0 in the order given.
    #[error("webhook secret #{index}: {reason}")]
    BadSecret {
        /// Position of the secret in the list.
        index: usize,
        /// What is wrong with it (never its value).
        reason: &'static str,
    },
    /// The generic scheme's template or prefix is invalid.
    #[error("webhook signature template: {0}")]
    BadTemplate(&'static str),
}

/// Why a delivery failed verification. For the log only: the HTTP answer is one generic 401.
/// Never contains a secret, the expected signature or the received one.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header is present but unusable: not ASCII, too long, repeated with different values,
    /// not in the scheme's format, or carrying no parsable signature.
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    /// The signature is valid but the signed timestamp is older than the tolerance.
    #[error("signed timestamp is older than the tolerance")]
    TimestampTooOld,
    /// The signature is valid but the signed timestamp is further ahead than the tolerance.
    #[error("signed timestamp is further in the future than the tolerance")]
    TimestampInFuture,
    /// No configured secret verifies any signature in the request.
    #[error("no valid signature")]
    NoValidSignature,
}
