//! The verifier: secrets parsed once at configuration time, one verification per delivery.

use std::fmt;
use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use http::{HeaderMap, HeaderName};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::encoding::{
    decode_b64_exact, decode_hex_exact, decode_secret_b64, hmac_sha256, hmac_sha512, material_key,
};
use crate::headers::{check_window, single, timestamp};
use crate::{
    ConfigError, HmacAlgorithm, HmacScheme, Scheme, SigEncoding, VerifyError,
    MAX_ED25519_SIGNATURES, MAX_ID_LEN, MAX_SECRETS, MAX_SIGNATURES, MAX_SIGNATURE_HEADER,
    WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP,
};

const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");
const GITHUB_SIGNATURE: HeaderName = HeaderName::from_static("x-hub-signature-256");
const SLACK_SIGNATURE: HeaderName = HeaderName::from_static("x-slack-signature");
const SLACK_TIMESTAMP: HeaderName = HeaderName::from_static("x-slack-request-timestamp");
const SHOPIFY_SIGNATURE: HeaderName = HeaderName::from_static("x-shopify-hmac-sha256");

/// Longest timestamp header read (the parser then allows 12 digits).
const MAX_TIMESTAMP_HEADER: usize = 32;
/// Longest generic template, in bytes.
const MAX_TEMPLATE: usize = 1024;

/// A successfully verified delivery: what the signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The message id when the scheme signs one (Standard Webhooks `webhook-id`); `None`
    /// otherwise. Unsigned id headers (GitHub's `X-GitHub-Delivery`, Shopify's
    /// `X-Shopify-Webhook-Id`) are never reported here.
    pub signed_id: Option<String>,
    /// The signed timestamp (unix seconds) when the scheme signs one (Standard, Stripe, Slack,
    /// generic with a timestamp header); `None` otherwise.
    pub timestamp: Option<i64>,
    /// The replay/deduplication key: `id:<signed id>` when the scheme signs an id, else
    /// `h:<lowercase hex SHA-256 of the signed material>` (the exact bytes that were MACed or
    /// signed, which include the timestamp where one is signed). Never derived from unsigned
    /// headers, so an attacker cannot make a replay look new without breaking the signature.
    /// For timestamped schemes a provider's retry is re-signed with a new timestamp and gets a
    /// new key: this key detects replays, it is not an idempotency key.
    pub replay_key: String,
}

/// One piece of a compiled generic template.
#[derive(Debug)]
enum Part {
    Literal(Vec<u8>),
    Body,
    Timestamp,
}

/// Verifies deliveries for one endpoint: its scheme, its secrets (several during rotation) and
/// its timestamp tolerance. Built once per configuration; `Send + Sync`, cheap to share in an
/// `Arc`. Secrets stay in `Zeroizing` buffers; `Debug` shows only counts.
pub struct Verifier {
    scheme: Scheme,
    /// Compiled template of a generic scheme; empty otherwise.
    template: Vec<Part>,
    /// HMAC keys (for Standard: the decoded `whsec_` secrets; for the others: the secret bytes).
    hmac_keys: Vec<Zeroizing<Vec<u8>>>,
    /// Standard Webhooks `whpk_` public keys.
    ed25519_keys: Vec<VerifyingKey>,
    /// Tolerance in seconds, saturated.
    tolerance: i64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("hmac_keys", &self.hmac_keys.len())
            .field("ed25519_keys", &self.ed25519_keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// A Standard Webhooks secret, parsed.
pub(crate) enum StandardKey {
    Hmac(Zeroizing<Vec<u8>>),
    Ed25519(VerifyingKey),
}

/// Parses a Standard Webhooks secret: `whsec_<base64>` (HMAC key) or `whpk_<base64>` (Ed25519
/// public key). The prefix is required: without it a raw secret and a base64 one are ambiguous.
pub(crate) fn parse_standard_secret(index: usize, raw: &[u8]) -> Result<StandardKey, ConfigError> {
    let bad = |reason| ConfigError::BadSecret { index, reason };
    if let Some(b64) = raw.strip_prefix(b"whsec_") {
        let key = Zeroizing::new(decode_secret_b64(b64).ok_or(bad("invalid base64 after whsec_"))?);
        if key.is_empty() {
            return Err(bad("empty key after whsec_"));
        }
        Ok(StandardKey::Hmac(key))
    } else if let Some(b64) = raw.strip_prefix(b"whpk_") {
        let bytes = decode_secret_b64(b64).ok_or(bad("invalid base64 after whpk_"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("a whpk_ public key must be 32 bytes"))?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|_| bad("invalid Ed25519 public key"))?;
        if key.is_weak() {
            return Err(bad("weak (small-order) Ed25519 public key"));
        }
        Ok(StandardKey::Ed25519(key))
    } else if raw.starts_with(b"whsk_") {
        Err(bad(
            "a whsk_ private key: configure the matching whpk_ public key instead",
        ))
    } else {
        Err(bad("expected a whsec_ or whpk_ prefix"))
    }
}

fn compile_template(scheme: &HmacScheme) -> Result<Vec<Part>, ConfigError> {
    let t = scheme.template.as_str();
    if t.len() > MAX_TEMPLATE {
        return Err(ConfigError::BadTemplate("longer than 1024 bytes"));
    }
    let mut parts = Vec::new();
    let mut literal = Vec::new();
    let (mut bodies, mut timestamps) = (0, 0);
    let mut rest = t;
    while let Some(pos) = rest.find(['{', '}']) {
        literal.extend_from_slice(&rest.as_bytes()[..pos]);
        let tail = &rest[pos..];
        let part = if let Some(after) = tail.strip_prefix("{body}") {
            bodies += 1;
            rest = after;
            Part::Body
        } else if let Some(after) = tail.strip_prefix("{timestamp}") {
            timestamps += 1;
            rest = after;
            Part::Timestamp
        } else {
            return Err(ConfigError::BadTemplate(
                "only the placeholders {body} and {timestamp} are allowed; no other braces",
            ));
        };
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(part);
    }
    literal.extend_from_slice(rest.as_bytes());
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    if bodies != 1 {
        return Err(ConfigError::BadTemplate("must contain {body} exactly once"));
    }
    match (scheme.timestamp_header.is_some(), timestamps) {
        (true, 1) | (false, 0) => {}
        (true, _) => {
            return Err(ConfigError::BadTemplate(
                "a timestamp header is set: the template must contain {timestamp} exactly once",
            ))
        }
        (false, _) => {
            return Err(ConfigError::BadTemplate(
                "{timestamp} needs a timestamp header",
            ))
        }
    }
    if let Some(prefix) = &scheme.prefix {
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::BadTemplate(
                "the signature prefix must be non-empty visible ASCII",
            ));
        }
    }
    Ok(parts)
}

impl Verifier {
    /// Builds a verifier.
    ///
    /// `secrets`: raw secret strings from the vault (several at once for rotation), exactly as
    /// the provider shows them: Standard Webhooks `whsec_<base64>` (v1, HMAC) and
    /// `whpk_<base64>` (v1a, Ed25519 public key), freely mixed; Stripe `whsec_…` used as-is as
    /// the HMAC key; GitHub, Slack, Shopify and generic: the bytes as-is. A secret with leading
    /// or trailing whitespace is refused (almost always a paste error that would otherwise
    /// surface as unexplained 401s). `tolerance`: how far a signed timestamp may be from now,
    /// either way.
    ///
    /// Errors (empty list, bad base64, bad key, bad template) are configuration errors.
    pub fn new(
        scheme: Scheme,
        secrets: Vec<Zeroizing<Vec<u8>>>,
        tolerance: Duration,
    ) -> Result<Verifier, ConfigError> {
        if secrets.is_empty() {
            return Err(ConfigError::NoSecrets);
        }
        if secrets.len() > MAX_SECRETS {
            return Err(ConfigError::TooManySecrets(secrets.len()));
        }
        for (index, secret) in secrets.iter().enumerate() {
            if secret.is_empty() {
                return Err(ConfigError::BadSecret {
                    index,
                    reason: "empty",
                });
            }
            if secret.trim_ascii().len() != secret.len() {
                return Err(ConfigError::BadSecret {
                    index,
                    reason: "leading or trailing whitespace",
                });
            }
        }
        let template = match &scheme {
            Scheme::Hmac(h) => compile_template(h)?,
            _ => Vec::new(),
        };
        let mut hmac_keys = Vec::new();
        let mut ed25519_keys = Vec::new();
        if scheme == Scheme::Standard {
            for (index, secret) in secrets.iter().enumerate() {
                match parse_standard_secret(index, secret)? {
                    StandardKey::Hmac(key) => hmac_keys.push(key),
                    StandardKey::Ed25519(key) => ed25519_keys.push(key),
                }
            }
        } else {
            hmac_keys = secrets;
        }
        Ok(Verifier {
            scheme,
            template,
            hmac_keys,
            ed25519_keys,
            tolerance: i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX),
        })
    }

    /// The provider name: `standard`, `stripe`, `github`, `slack`, `shopify` or `hmac`.
    pub fn provider(&self) -> &'static str {
        self.scheme.name()
    }

    /// The scheme this verifier checks (for [`crate::event_type`]).
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Verifies one delivery over the EXACT raw body bytes. `now` is the current unix time in
    /// seconds (injected so tests are deterministic).
    ///
    /// The signature is checked first and the timestamp window second, so a window error means
    /// the delivery was genuine but stale (or the clocks disagree).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        match &self.scheme {
            Scheme::Standard => self.verify_standard(headers, body, now),
            Scheme::Stripe => self.verify_stripe(headers, body, now),
            Scheme::Github => {
                let label = "x-hub-signature-256";
                let value = single(headers, &GITHUB_SIGNATURE, label, MAX_SIGNATURE_HEADER)?;
                let sig = value
                    .strip_prefix("sha256=")
                    .and_then(decode_hex_exact::<32>)
                    .ok_or(VerifyError::MalformedHeader(label))?;
                let parts = [body];
                self.require(self.hmac_matches(HmacAlgorithm::Sha256, &parts, &[sig]))?;
                Ok(Verified {
                    signed_id: None,
                    timestamp: None,
                    replay_key: material_key(&parts),
                })
            }
            Scheme::Slack => {
                let label = "x-slack-signature";
                let value = single(headers, &SLACK_SIGNATURE, label, MAX_SIGNATURE_HEADER)?;
                let sig = value
                    .strip_prefix("v0=")
                    .and_then(decode_hex_exact::<32>)
                    .ok_or(VerifyError::MalformedHeader(label))?;
                let ts_label = "x-slack-request-timestamp";
                let ts_text = single(headers, &SLACK_TIMESTAMP, ts_label, MAX_TIMESTAMP_HEADER)?;
                let ts = timestamp(ts_text, ts_label)?;
                let parts = [b"v0:".as_slice(), ts_text.as_bytes(), b":", body];
                self.require(self.hmac_matches(HmacAlgorithm::Sha256, &parts, &[sig]))?;
                check_window(ts, now, self.tolerance)?;
                Ok(Verified {
                    signed_id: None,
                    timestamp: Some(ts),
                    replay_key: material_key(&parts),
                })
            }
            Scheme::Shopify => {
                let label = "x-shopify-hmac-sha256";
                let value = single(headers, &SHOPIFY_SIGNATURE, label, MAX_SIGNATURE_HEADER)?;
                let sig =
                    decode_b64_exact::<32>(value).ok_or(VerifyError::MalformedHeader(label))?;
                let parts = [body];
                self.require(self.hmac_matches(HmacAlgorithm::Sha256, &parts, &[sig]))?;
                Ok(Verified {
                    signed_id: None,
                    timestamp: None,
                    replay_key: material_key(&parts),
                })
            }
            Scheme::Hmac(h) => self.verify_generic(h, headers, body, now),
        }
    }

    fn require(&self, ok: bool) -> Result<(), VerifyError> {
        if ok {
            Ok(())
        } else {
            Err(VerifyError::NoValidSignature)
        }
    }

    /// Whether any HMAC key's MAC over `parts` equals any candidate, compared in constant time.
    /// One MAC per key, however many candidates.
    fn hmac_matches<C: AsRef<[u8]>>(
        &self,
        algorithm: HmacAlgorithm,
        parts: &[&[u8]],
        candidates: &[C],
    ) -> bool {
        fn any<C: AsRef<[u8]>>(mac: &[u8], candidates: &[C]) -> Choice {
            candidates
                .iter()
                .fold(Choice::from(0), |acc, c| acc | mac.ct_eq(c.as_ref()))
        }
        for key in &self.hmac_keys {
            let found = match algorithm {
                HmacAlgorithm::Sha256 => any(&hmac_sha256(key, parts), candidates),
                HmacAlgorithm::Sha512 => any(&hmac_sha512(key, parts), candidates),
            };
            if bool::from(found) {
                return true;
            }
        }
        false
    }

    fn verify_standard(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let id = single(headers, &WEBHOOK_ID, "webhook-id", MAX_ID_LEN)?;
        // The signed content is `{id}.{timestamp}.{body}`: an id containing `.` could shift the
        // boundaries, so ids are visible ASCII without dots (the spec asks producers for that).
        if !id.bytes().all(|b| b.is_ascii_graphic() && b != b'.') {
            return Err(VerifyError::MalformedHeader("webhook-id"));
        }
        let ts_text = single(
            headers,
            &WEBHOOK_TIMESTAMP,
            "webhook-timestamp",
            MAX_TIMESTAMP_HEADER,
        )?;
        let ts = timestamp(ts_text, "webhook-timestamp")?;
        let label = "webhook-signature";
        let header = single(headers, &WEBHOOK_SIGNATURE, label, MAX_SIGNATURE_HEADER)?;

        let mut v1: Vec<[u8; 32]> = Vec::new();
        let mut v1a: Vec<Signature> = Vec::new();
        let (mut entries, mut parsable) = (0usize, 0usize);
        for entry in header.split(' ').filter(|e| !e.is_empty()) {
            entries += 1;
            if entries > MAX_SIGNATURES {
                return Err(VerifyError::MalformedHeader(label));
            }
            let Some((version, sig)) = entry.split_once(',') else {
                continue;
            };
            if version.is_empty() || sig.is_empty() {
                continue;
            }
            match version {
                "v1" => {
                    if let Some(sig) = decode_b64_exact::<32>(sig) {
                        v1.push(sig);
                        parsable += 1;
                    }
                }
                "v1a" => {
                    if let Some(sig) = decode_b64_exact::<64>(sig) {
                        if v1a.len() == MAX_ED25519_SIGNATURES {
                            return Err(VerifyError::MalformedHeader(label));
                        }
                        v1a.push(Signature::from_bytes(&sig));
                        parsable += 1;
                    }
                }
                // Unknown versions are ignored (forward compatibility), but still count as
                // parsable entries: the header is well formed, just not for us.
                _ => parsable += 1,
            }
        }
        if parsable == 0 {
            return Err(VerifyError::MalformedHeader(label));
        }

        let parts = [id.as_bytes(), b".", ts_text.as_bytes(), b".", body];
        let mut ok = !v1.is_empty() && self.hmac_matches(HmacAlgorithm::Sha256, &parts, &v1);
        if !ok && !v1a.is_empty() && !self.ed25519_keys.is_empty() {
            let message = parts.concat();
            ok = self.ed25519_keys.iter().any(|key| {
                v1a.iter()
                    .any(|sig| key.verify_strict(&message, sig).is_ok())
            });
        }
        self.require(ok)?;
        check_window(ts, now, self.tolerance)?;
        Ok(Verified {
            signed_id: Some(id.to_owned()),
            timestamp: Some(ts),
            replay_key: format!("id:{id}"),
        })
    }

    fn verify_stripe(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let label = "stripe-signature";
        let malformed = VerifyError::MalformedHeader(label);
        let header = single(headers, &STRIPE_SIGNATURE, label, MAX_SIGNATURE_HEADER)?;
        let mut t = None;
        let mut v1: Vec<[u8; 32]> = Vec::new();
        for (n, item) in header.split(',').enumerate() {
            // Room for t, the v1 list and a few other schemes (v0, …).
            if n >= 2 * MAX_SIGNATURES {
                return Err(malformed);
            }
            let (key, value) = item.split_once('=').ok_or(malformed.clone())?;
            match key {
                "t" if t.is_none() => t = Some(value),
                "t" => return Err(malformed),
                "v1" => {
                    if v1.len() == MAX_SIGNATURES {
                        return Err(malformed);
                    }
                    v1.push(decode_hex_exact::<32>(value).ok_or(malformed.clone())?);
                }
                // v0 (test-mode legacy) and future schemes: not verified, not an error.
                _ => {}
            }
        }
        let ts_text = t.ok_or(malformed.clone())?;
        let ts = timestamp(ts_text, label)?;
        if v1.is_empty() {
            return Err(malformed);
        }
        let parts = [ts_text.as_bytes(), b".", body];
        self.require(self.hmac_matches(HmacAlgorithm::Sha256, &parts, &v1))?;
        check_window(ts, now, self.tolerance)?;
        Ok(Verified {
            signed_id: None,
            timestamp: Some(ts),
            replay_key: material_key(&parts),
        })
    }

    fn verify_generic(
        &self,
        scheme: &HmacScheme,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let label = "signature";
        let value = single(
            headers,
            &scheme.signature_header,
            label,
            MAX_SIGNATURE_HEADER,
        )?;
        let value = match &scheme.prefix {
            Some(prefix) => value
                .strip_prefix(prefix.as_str())
                .ok_or(VerifyError::MalformedHeader(label))?,
            None => value,
        };
        let sig: Option<Vec<u8>> = match (scheme.algorithm, scheme.encoding) {
            (HmacAlgorithm::Sha256, SigEncoding::Hex) => {
                decode_hex_exact::<32>(value).map(|s| s.to_vec())
            }
            (HmacAlgorithm::Sha256, SigEncoding::Base64) => {
                decode_b64_exact::<32>(value).map(|s| s.to_vec())
            }
            (HmacAlgorithm::Sha512, SigEncoding::Hex) => {
                decode_hex_exact::<64>(value).map(|s| s.to_vec())
            }
            (HmacAlgorithm::Sha512, SigEncoding::Base64) => {
                decode_b64_exact::<64>(value).map(|s| s.to_vec())
            }
        };
        let sig = sig.ok_or(VerifyError::MalformedHeader(label))?;
        let ts = match &scheme.timestamp_header {
            Some(name) => {
                let text = single(headers, name, "timestamp", MAX_TIMESTAMP_HEADER)?;
                Some((text, timestamp(text, "timestamp")?))
            }
            None => None,
        };
        let ts_bytes = ts.map(|(text, _)| text.as_bytes()).unwrap_or_default();
        let parts: Vec<&[u8]> = self
            .template
            .iter()
            .map(|part| match part {
                Part::Literal(bytes) => bytes.as_slice(),
                Part::Body => body,
                Part::Timestamp => ts_bytes,
            })
            .collect();
        self.require(self.hmac_matches(scheme.algorithm, &parts, &[sig]))?;
        if let Some((_, ts)) = ts {
            check_window(ts, now, self.tolerance)?;
        }
        Ok(Verified {
            signed_id: None,
            timestamp: ts.map(|(_, ts)| ts),
            replay_key: material_key(&parts),
        })
    }
}
