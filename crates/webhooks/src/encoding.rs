//! Hex and base64 helpers, MACs over several slices, and the replay-key hash.
//!
//! Decoders here work on received signatures, which are not secret, so they need not be
//! constant time; comparisons against computed MACs are (see `verifier.rs`).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

/// Base64 for secrets and keys: padding optional, as the Standard Webhooks reference
/// libraries accept it (Python appends `==` before decoding).
const B64_SECRET: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a secret's base64 part (standard alphabet, padding optional).
pub(crate) fn decode_secret_b64(text: &[u8]) -> Option<Vec<u8>> {
    B64_SECRET.decode(text).ok()
}

/// Decodes a received base64 signature of exactly `N` bytes (standard alphabet, canonical
/// padding). Anything else is `None`.
pub(crate) fn decode_b64_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    // Canonical padded length of N bytes; longer input cannot decode to N bytes.
    if text.len() != N.div_ceil(3) * 4 {
        return None;
    }
    let bytes = STANDARD.decode(text).ok()?;
    bytes.try_into().ok()
}

/// Encodes bytes as standard padded base64.
pub(crate) fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes of hex (either case).
pub(crate) fn decode_hex_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

/// Lowercase hex.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// HMAC-SHA256 of the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA512 of the concatenation of `parts`.
pub(crate) fn hmac_sha512(key: &[u8], parts: &[&[u8]]) -> [u8; 64] {
    let mut mac = match <Hmac<Sha512> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 64],
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `h:<hex SHA-256 of the concatenation of parts>`: the replay key of a scheme that signs no id.
pub(crate) fn material_key(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    let mut key = String::with_capacity(2 + 64);
    key.push_str("h:");
    key.push_str(&encode_hex(&hash.finalize()));
    key
}
