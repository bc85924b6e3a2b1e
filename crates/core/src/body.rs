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

/// A failure reading the client's request body (malformed chunking, early close). Marked so
/// that an upstream call that failed because of it answers 400, not 502.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// The client sent its request body more slowly than `server.min_body_rate` allows. Marked,
/// like [`ClientBodyError`], so whoever reads the body (a policy or the upstream call) answers
/// 408 rather than 400 or 502; look for it with [`find_cause`] before `ClientBodyError`.
#[derive(Debug, thiserror::Error)]
#[error("request body arrived below the minimum rate")]
pub struct BodyTooSlow;

/// Wraps a client's request body so its read errors carry [`ClientBodyError`].
pub fn client_body<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| Box::new(ClientBodyError(e.into())) as BoxError)
        .boxed_unsync()
}

/// Walks an error's source chain looking for a `T`.
pub fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}
