//! Request ids: accepted from the client when well-formed, generated otherwise, sent upstream
//! and returned to the client, so one id ties the client's, the gateway's and the upstream's
//! logs together.

use http::HeaderValue;
use std::{fmt, sync::Arc};

/// The header that carries the request id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A request id: 1-128 characters of `[A-Za-z0-9._:-]`. Anything else a client sends is
/// replaced, so an id can never smuggle log-injection or header-splitting characters.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// Uses the client's id when it is well-formed, otherwise makes a new one.
    pub fn from_header_or_new(value: Option<&HeaderValue>) -> Self {
        value
            .and_then(|v| v.to_str().ok())
            .filter(|s| Self::is_valid(s))
            .map(|s| RequestId(Arc::from(s)))
            .unwrap_or_else(Self::generate)
    }

    /// A fresh random id in UUID v4 form. Request ids need to be unique, not secret, so a
    /// fast non-cryptographic generator is enough and keeps a syscall off the hot path.
    pub fn generate() -> Self {
        let bytes = fastrand::u128(..).to_le_bytes();
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        RequestId(Arc::from(id.hyphenated().to_string()))
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
        &self.0
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        // Valid ids are visible ASCII by construction.
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
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
