//! Request ids: accepted from the client when well-formed, generated otherwise, sent upstream
//! and returned to the client, so one id ties the client's, the gateway's and the upstream's
//! logs together.

use http::{HeaderName, HeaderValue};
use std::fmt;

/// The header that carries the request id both ways. A parsed name, not a string: a custom
/// header name given as a string is parsed and copied into a new allocation on every insert.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A request id: 1-128 characters of `[A-Za-z0-9._:-]`. Anything else a client sends is
/// replaced, so an id can never smuggle log-injection or header-splitting characters.
///
/// It is kept as the header value it travels as: a client's id shares the bytes hyper read,
/// and setting it on the upstream request and on the response is a reference-count increment.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Uses the client's id when it is well-formed, otherwise makes a new one.
    pub fn from_header_or_new(value: Option<&HeaderValue>) -> Self {
        value
            .filter(|v| v.to_str().is_ok_and(Self::is_valid))
            .map(|v| {
                let mut v = v.clone();
                v.set_sensitive(false);
                RequestId(v)
            })
            .unwrap_or_else(Self::generate)
    }

    /// A fresh random id in UUID v4 form. Request ids need to be unique, not secret, so a
    /// fast non-cryptographic generator is enough and keeps a syscall off the hot path.
    pub fn generate() -> Self {
        let bytes = fastrand::u128(..).to_le_bytes();
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        id.hyphenated().encode_lower(&mut text);
        // Owned once, shared after: the id is set on the upstream request and the response,
        // and a `HeaderValue` copied from a slice would allocate again on its first clone.
        RequestId(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        )
    }

    /// True when `s` is acceptable as a request id.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Valid ids are visible ASCII by construction.
        self.0.to_str().unwrap_or("invalid")
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_good_ids_and_replaces_bad_ones() {
        let good = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(
            RequestId::from_header_or_new(Some(&good)).as_str(),
            "abc-123_x.y:z"
        );
        for bad in ["", "has space", "new\u{7f}line", "ä"] {
            let v = HeaderValue::from_bytes(bad.as_bytes()).ok();
            let id = RequestId::from_header_or_new(v.as_ref());
            assert_ne!(id.as_str(), bad);
            assert!(RequestId::is_valid(id.as_str()));
        }
        let long = "a".repeat(129);
        let v = HeaderValue::from_str(&long).ok();
        assert_eq!(RequestId::from_header_or_new(v.as_ref()).as_str().len(), 36);
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(RequestId::generate(), RequestId::generate());
    }

    #[test]
    fn generated_ids_are_hyphenated_uuids_and_survive_clones() {
        let id = RequestId::generate();
        let text = id.as_str().to_string();
        assert!(RequestId::is_valid(&text));
        assert_eq!(text.len(), 36);
        assert_eq!(text.matches('-').count(), 4);
        assert!(text
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(id.header_value().to_str().ok(), Some(text.as_str()));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_header_gives_a_valid_id(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let v = HeaderValue::from_bytes(&bytes).ok();
            let id = RequestId::from_header_or_new(v.as_ref());
            prop_assert!(RequestId::is_valid(id.as_str()));
            prop_assert!(HeaderValue::from_str(id.as_str()).is_ok());
        }
    }
}
