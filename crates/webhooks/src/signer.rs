//! Standard Webhooks signing, for forwarding verified deliveries to the workflow backend under
//! Portcullis's own secret (the backend then verifies one scheme, whatever the provider was).

use std::fmt;

use zeroize::Zeroizing;

use crate::encoding::{encode_b64, hmac_sha256};
use crate::verifier::{parse_standard_secret, StandardKey};
use crate::ConfigError;

/// The shortest signing key accepted, in bytes (the Standard Webhooks spec asks for at least
/// 24 random bytes).
const MIN_SIGNING_KEY: usize = 24;

/// Signs with one Standard Webhooks `whsec_` secret (`v1`, HMAC-SHA256). The key stays in a
/// `Zeroizing` buffer; `Debug` does not show it.
pub struct StandardSigner {
    key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for StandardSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StandardSigner { key: <redacted> }")
    }
}

impl StandardSigner {
    /// Builds a signer from a `whsec_<base64>` secret of at least 24 bytes. A `whpk_` key, a
    /// missing prefix, bad base64 or a short key are configuration errors.
    pub fn new(secret_whsec: &[u8]) -> Result<Self, ConfigError> {
        let bad = |reason| ConfigError::BadSecret { index: 0, reason };
        match parse_standard_secret(0, secret_whsec)? {
            StandardKey::Hmac(key) if key.len() >= MIN_SIGNING_KEY => Ok(StandardSigner { key }),
            StandardKey::Hmac(_) => Err(bad("a signing key must be at least 24 bytes")),
            StandardKey::Ed25519(_) => Err(bad("signing needs a whsec_ secret, not a whpk_ key")),
        }
    }

    /// The `webhook-signature` header value (`v1,<base64>`) for `id`, `timestamp` (unix
    /// seconds) and `body`. The caller sends `webhook-id: id` and `webhook-timestamp: timestamp`
    /// with it; `id` should not contain `.` (verifiers, this crate's included, refuse it).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mac = hmac_sha256(&self.key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        let mut out = String::with_capacity(3 + 44);
        out.push_str("v1,");
        out.push_str(&encode_b64(&mac));
        out
    }
}
