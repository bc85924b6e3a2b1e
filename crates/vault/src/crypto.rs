//! AES-256-GCM envelope encryption. Nonces are 96 random bits; a data key encrypts exactly one
//! value, and the KEK wraps one data key per version, far below the random-nonce limit.

use crate::VaultError;
use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

const NONCE_LEN: usize = 12;
const KCV_LABEL: &[u8] = b"portcullis key check value v1";

/// A 256-bit key-encryption key. Zeroed on drop; never printed.
#[derive(Clone)]
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
    id: String,
    kcv: Vec<u8>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    /// Wraps raw key bytes.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let key = Zeroizing::new(bytes);
        bytes.zeroize();
        let kcv = kcv(&key);
        let id = kcv.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Kek { key, id, kcv }
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, VaultError> {
        let mut b = [0u8; 32];
        random(&mut b)?;
        Ok(Self::from_bytes(b))
    }

    /// The key's identifier (derived from its check value).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// HMAC-SHA256 of a fixed label: proves which key this is without revealing it.
    pub fn kcv(&self) -> &[u8] {
        &self.kcv
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

fn kcv(key: &[u8; 32]) -> Vec<u8> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(KCV_LABEL);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), VaultError> {
    getrandom::getrandom(buf)
        .map_err(|e| VaultError::KeyProvider(format!("no randomness available: {e}")))
}

fn value_aad(name: &str, version: i64) -> Vec<u8> {
    format!("portcullis/secret/v1\0{name}\0{version}").into_bytes()
}

fn dek_aad(kek_id: &str, name: &str, version: i64) -> Vec<u8> {
    format!("portcullis/dek/v1\0{kek_id}\0{name}\0{version}").into_bytes()
}

fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
    let cipher =
        Aes256Gcm::new_from_slice(key).map_err(|_| VaultError::Invalid("key length".into()))?;
    let mut nonce = [0u8; NONCE_LEN];
    random(&mut nonce)?;
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| VaultError::Invalid("encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new_from_slice(key).ok()?;
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

/// An encrypted value: the wrapped data key and the value's ciphertext. Also used for
/// payloads the gateway must hold (approvals, queued webhooks).
pub struct Sealed {
    /// Nonce and ciphertext of the data key, under the KEK.
    pub wrapped_dek: Vec<u8>,
    /// Nonce and ciphertext of the value, under the data key.
    pub ciphertext: Vec<u8>,
}

/// Encrypts `value` for (`name`, `version`) under a new data key wrapped by `kek`.
pub fn encrypt(kek: &Kek, name: &str, version: i64, value: &[u8]) -> Result<Sealed, VaultError> {
    let mut dek = Zeroizing::new([0u8; 32]);
    random(dek.as_mut())?;
    let ciphertext = seal(&dek, value, &value_aad(name, version))?;
    let wrapped_dek = seal(kek.bytes(), dek.as_ref(), &dek_aad(kek.id(), name, version))?;
    Ok(Sealed {
        wrapped_dek,
        ciphertext,
    })
}

fn unwrap_dek(kek: &Kek, name: &str, version: i64, wrapped: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let raw = open(kek.bytes(), wrapped, &dek_aad(kek.id(), name, version))?;
    let mut dek = Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return None;
    }
    dek.copy_from_slice(&raw);
    Some(dek)
}

/// Decrypts a version's value.
pub fn decrypt(
    kek: &Kek,
    name: &str,
    version: i64,
    wrapped: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let fail = || VaultError::Decrypt {
        name: name.to_string(),
        version,
    };
    let dek = unwrap_dek(kek, name, version, wrapped).ok_or_else(fail)?;
    open(&dek, ciphertext, &value_aad(name, version)).ok_or_else(fail)
}

/// Re-wraps a version's data key from `from` to `to` without touching the value.
pub(crate) fn rewrap(
    from: &Kek,
    to: &Kek,
    name: &str,
    version: i64,
    wrapped: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let dek = unwrap_dek(from, name, version, wrapped).ok_or_else(|| VaultError::Decrypt {
        name: name.to_string(),
        version,
    })?;
    seal(to.bytes(), dek.as_ref(), &dek_aad(to.id(), name, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::from_bytes([7u8; 32])
    }

    #[test]
    fn round_trip_and_binding() -> Result<(), VaultError> {
        let k = kek();
        let s = encrypt(&k, "a", 1, b"value")?;
        assert_eq!(
            decrypt(&k, "a", 1, &s.wrapped_dek, &s.ciphertext)?.as_slice(),
            b"value"
        );
        // Moved to another name or version: refused.
        assert!(decrypt(&k, "b", 1, &s.wrapped_dek, &s.ciphertext).is_err());
        assert!(decrypt(&k, "a", 2, &s.wrapped_dek, &s.ciphertext).is_err());
        // Another KEK: refused.
        assert!(decrypt(
            &Kek::from_bytes([8u8; 32]),
            "a",
            1,
            &s.wrapped_dek,
            &s.ciphertext
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn every_flipped_bit_is_detected() -> Result<(), VaultError> {
        let k = kek();
        let s = encrypt(&k, "a", 1, b"value")?;
        for i in 0..s.ciphertext.len() * 8 {
            let mut ct = s.ciphertext.clone();
            ct[i / 8] ^= 1 << (i % 8);
            assert!(decrypt(&k, "a", 1, &s.wrapped_dek, &ct).is_err(), "bit {i}");
        }
        for len in 0..s.ciphertext.len() {
            assert!(decrypt(&k, "a", 1, &s.wrapped_dek, &s.ciphertext[..len]).is_err());
        }
        Ok(())
    }

    #[test]
    fn nonces_and_keys_are_fresh_each_time() -> Result<(), VaultError> {
        let k = kek();
        let a = encrypt(&k, "a", 1, b"same")?;
        let b = encrypt(&k, "a", 1, b"same")?;
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_dek[..12], b.wrapped_dek[..12]);
        Ok(())
    }

    #[test]
    fn rewrap_keeps_the_value() -> Result<(), VaultError> {
        let (k1, k2) = (kek(), Kek::from_bytes([9u8; 32]));
        let s = encrypt(&k1, "a", 3, b"v")?;
        let w2 = rewrap(&k1, &k2, "a", 3, &s.wrapped_dek)?;
        assert_eq!(decrypt(&k2, "a", 3, &w2, &s.ciphertext)?.as_slice(), b"v");
        assert!(decrypt(&k1, "a", 3, &w2, &s.ciphertext).is_err());
        Ok(())
    }

    #[test]
    fn kcv_identifies_the_key() {
        assert_eq!(kek().kcv(), Kek::from_bytes([7u8; 32]).kcv());
        assert_ne!(kek().id(), Kek::from_bytes([8u8; 32]).id());
    }
}
