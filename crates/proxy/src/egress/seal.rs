//! Sealing of OAuth access tokens for the shared cache: the only crypto of the egress
//! gateway.
//!
//! The key is HKDF-SHA256 of the integration's own client secret, with the integration id in
//! the context: every instance that can read the secret from the vault derives the same key,
//! and nobody without the secret can (not Redis, not another integration). A token is sealed
//! with AES-256-GCM under a random 96-bit nonce, with the integration id and the token URL as
//! associated data, so an entry copied to another integration or endpoint does not open.
//! Rotating the client secret changes the key: old entries no longer open and count as
//! misses. A short key id (also derived, independent of the key) goes into the cache key, so
//! instances on the old and the new secret during a rotation do not overwrite each other.
//!
//! Layout: version (1 byte) ‖ nonce (12) ‖ AES-GCM(usable-until in Unix milliseconds, 8 bytes
//! big-endian ‖ token).

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const KEY_INFO: &[u8] = b"portcullis/egress-token/v1/key\0";
const ID_INFO: &[u8] = b"portcullis/egress-token/v1/key-id\0";

/// Seals and opens one integration's tokens.
pub(crate) struct TokenSeal {
    cipher: Aes256Gcm,
    aad: Vec<u8>,
    key_id: String,
}

impl TokenSeal {
    /// The seal for `integration`'s tokens from `token_url`, keyed by its `client_secret`.
    /// `None` only if key derivation fails, which it cannot for these lengths; the caller then
    /// does without the shared cache.
    pub(crate) fn new(integration: &str, token_url: &str, client_secret: &[u8]) -> Option<Self> {
        let hk = Hkdf::<Sha256>::new(None, client_secret);
        let mut key = Zeroizing::new([0u8; 32]);
        hk.expand_multi_info(&[KEY_INFO, integration.as_bytes()], key.as_mut_slice())
            .ok()?;
        let mut id = [0u8; 8];
        hk.expand_multi_info(&[ID_INFO, integration.as_bytes()], &mut id)
            .ok()?;
        let cipher = Aes256Gcm::new_from_slice(key.as_slice()).ok()?;
        Some(TokenSeal {
            cipher,
            aad: format!("portcullis/egress-token/v1\0{integration}\0{token_url}").into_bytes(),
            key_id: id.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// Identifies the key (not secret: derived separately from the same secret).
    pub(crate) fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The sealed form of `token`, usable until `usable_until_ms` (Unix milliseconds).
    pub(crate) fn seal(&self, token: &str, usable_until_ms: u64) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).ok()?;
        let mut plain = Zeroizing::new(Vec::with_capacity(8 + token.len()));
        plain.extend_from_slice(&usable_until_ms.to_be_bytes());
        plain.extend_from_slice(token.as_bytes());
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &self.aad,
                },
            )
            .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// The token and its usable-until time, if `sealed` was sealed by this key for this
    /// integration and endpoint and is intact.
    pub(crate) fn open(&self, sealed: &[u8]) -> Option<(Zeroizing<String>, u64)> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: body,
                        aad: &self.aad,
                    },
                )
                .ok()?,
        );
        let (until, token) = plain.split_at_checked(8)?;
        let until = u64::from_be_bytes(until.try_into().ok()?);
        let token = std::str::from_utf8(token).ok()?;
        Some((Zeroizing::new(token.to_string()), until))
    }
}

#[cfg(test)]
mod tests {
    use super::TokenSeal;

    const URL: &str = "https://login.example/oauth2/token";

    fn seal(integration: &str, url: &str, secret: &str) -> TokenSeal {
        match TokenSeal::new(integration, url, secret.as_bytes()) {
            Some(s) => s,
            None => panic!("key derivation failed"),
        }
    }

    #[test]
    fn a_sealed_token_opens_only_under_the_same_secret_integration_and_endpoint() {
        let s = seal("crm", URL, "client-secret-1");
        let sealed = s.seal("ACCESS-TOKEN-SENTINEL", 1_700_000_000_000);
        let Some(sealed) = sealed else {
            panic!("sealing failed")
        };
        assert!(
            !sealed.windows(b"SENTINEL".len()).any(|w| w == b"SENTINEL"),
            "plaintext in the sealed form"
        );
        let opened = s.open(&sealed).map(|(t, u)| (t.to_string(), u));
        assert_eq!(
            opened,
            Some(("ACCESS-TOKEN-SENTINEL".to_string(), 1_700_000_000_000))
        );
        // Same secret elsewhere, or a rotated secret: no.
        assert!(seal("crm", URL, "client-secret-2").open(&sealed).is_none());
        assert!(seal("erp", URL, "client-secret-1").open(&sealed).is_none());
        assert!(
            seal("crm", "https://other.example/token", "client-secret-1")
                .open(&sealed)
                .is_none()
        );
        // Any changed byte, a truncation or another version byte: no.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(s.open(&bad).is_none(), "byte {i}");
        }
        assert!(s.open(&sealed[..sealed.len() - 1]).is_none());
        assert!(s.open(&[]).is_none());
        // Fresh nonces: sealing twice gives different bytes.
        assert_ne!(s.seal("t", 1), s.seal("t", 1));
    }

    #[test]
    fn the_key_id_follows_the_secret_and_the_integration() {
        let a = seal("crm", URL, "client-secret-1");
        assert_eq!(a.key_id(), seal("crm", URL, "client-secret-1").key_id());
        assert_eq!(a.key_id().len(), 16);
        assert_ne!(a.key_id(), seal("crm", URL, "client-secret-2").key_id());
        assert_ne!(a.key_id(), seal("erp", URL, "client-secret-1").key_id());
    }
}
