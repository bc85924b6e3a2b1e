//! One body type for the whole data plane, so policies and the forwarder compose without
//! generics leaking everywhere. It is unsync-boxed: bodies stream, and hyper's `Incoming`
//! goes in without buffering.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Boxed error carried by bodies and services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The streaming body type of requests and responses inside the gateway.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with nothing in it.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
