//! Request body size limit. A declared `Content-Length` over the limit is refused before
//! anything is read; a chunked body is counted as it streams, and the stream fails the moment
//! it passes the limit, so an oversized body is never buffered and never fully forwarded.

use crate::{Flow, Policy, Step};
use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use portcullis_core::{Body, BodyTooSlow, BoxError, GatewayError};
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

/// How much of an oversized body is still read (and discarded) before the 413 goes out. A
/// client still uploading when the server closes gets a TCP reset and may never see the 413;
/// reading a bounded remainder first lets ordinary clients get the answer ("lingering read").
/// Anything larger is cut off at once.
const DRAIN_CAP: u64 = 256 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The error a limited body stream fails with. The forwarder looks for it in an upstream
/// error's source chain to answer 413 instead of 502.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit that was passed.
    pub limit: u64,
}

/// The body-size policy for one route.
pub struct BodyLimit {
    limit: u64,
}

impl BodyLimit {
    /// Refuses request bodies larger than `limit` bytes.
    pub fn new(limit: u64) -> Self {
        BodyLimit { limit }
    }
}

impl Policy for BodyLimit {
    fn name(&self) -> &'static str {
        "body_limit"
    }

    fn has_response_phase(&self) -> bool {
        false
    }

    /// A request without a body and without a declared length has nothing to limit.
    fn applies(&self, req: &Request<Body>) -> bool {
        !req.body().is_end_stream() || req.headers().contains_key(http::header::CONTENT_LENGTH)
    }

    /// Decided in place; a future only to drain a declared oversized body before the 413.
    fn on_request(&self, req: Request<Body>) -> Step<'_, Flow> {
        let limit = self.limit;
        if let Some(len) = req.headers().get(http::header::CONTENT_LENGTH) {
            let Some(len) = len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) else {
                return Err(GatewayError::Malformed(
                    portcullis_core::MalformedKind::InvalidHeader,
                ))
                .into();
            };
            if len > limit {
                if len > limit.saturating_add(DRAIN_CAP) {
                    return Err(GatewayError::PayloadTooLarge { limit }).into();
                }
                return Step::later(async move {
                    let _ = tokio::time::timeout(DRAIN_TIME, req.into_body().collect()).await;
                    Err(GatewayError::PayloadTooLarge { limit })
                });
            }
            // hyper enforces a declared length exactly, so nothing more to count.
            return Ok(Flow::Continue(req)).into();
        }
        if req.body().is_end_stream() {
            return Ok(Flow::Continue(req)).into();
        }
        Ok(Flow::Continue(
            req.map(|b| Limited::new(b, limit).boxed_unsync()),
        ))
        .into()
    }
}

/// A body that fails with [`BodyTooLarge`] once more than `limit` bytes have passed, after
/// discarding up to [`DRAIN_CAP`] more bytes of what the client is still sending.
struct Limited {
    inner: Body,
    remaining: u64,
    limit: u64,
    exceeded: bool,
    drained: u64,
}

impl Limited {
    fn new(inner: Body, limit: u64) -> Self {
        Limited {
            inner,
            remaining: limit,
            limit,
            exceeded: false,
            drained: 0,
        }
    }

    fn too_large(&self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: self.limit }))))
    }
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if !this.exceeded {
                        if n <= this.remaining {
                            this.remaining -= n;
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        this.exceeded = true;
                    }
                    // Past the limit: keep reading and discarding, up to the drain cap.
                    this.drained = this.drained.saturating_add(n);
                    if this.drained > DRAIN_CAP {
                        return this.too_large();
                    }
                }
                Poll::Ready(None) if this.exceeded => return this.too_large(),
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a whole body into memory, refusing more than `limit` bytes. For policies that must
/// see the body (schema validation, signatures); everything else streams.
pub async fn read_limited(body: Body, limit: u64) -> Result<Bytes, GatewayError> {
    let mut limited = Limited::new(body, limit);
    // Gathered by hand rather than with `collect`: most bodies a policy reads arrive as one
    // data frame, and that frame is then the body itself, with no list of buffers built
    // and copied out of for every request. Trailers are dropped, as `collect` then
    // `to_bytes` dropped them.
    let mut whole = Bytes::new();
    let mut gathered: Option<BytesMut> = None;
    while let Some(frame) = limited.frame().await {
        let Ok(data) = frame.map_err(|e| read_error(e, limit))?.into_data() else {
            continue;
        };
        if let Some(buf) = &mut gathered {
            buf.extend_from_slice(&data);
        } else if whole.is_empty() {
            whole = data;
        } else {
            let mut buf = BytesMut::with_capacity(whole.len() + data.len());
            buf.extend_from_slice(&whole);
            buf.extend_from_slice(&data);
            gathered = Some(buf);
        }
        // A body that knows it has ended (a `Content-Length` fully read) is not polled
        // again for the end it would report.
        if limited.is_end_stream() {
            break;
        }
    }
    Ok(gathered.map_or(whole, BytesMut::freeze))
}

/// The answer for a body that failed while it was read.
fn read_error(e: BoxError, limit: u64) -> GatewayError {
    if e.is::<BodyTooLarge>() {
        GatewayError::PayloadTooLarge { limit }
    } else if portcullis_core::find_cause::<BodyTooSlow>(e.as_ref()).is_some() {
        GatewayError::RequestTimeout
    } else {
        GatewayError::Malformed(portcullis_core::MalformedKind::InvalidBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunked(chunks: &[&'static [u8]]) -> Body {
        let frames = chunks
            .iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c))));
        StreamBody::new(stream::iter(frames.collect::<Vec<_>>())).boxed_unsync()
    }

    #[tokio::test]
    async fn streaming_body_fails_once_past_the_limit() {
        let ok = read_limited(chunked(&[b"abc", b"def"]), 6).await;
        assert_eq!(ok.ok().as_deref(), Some(&b"abcdef"[..]));
        let too_big = read_limited(chunked(&[b"abc", b"defg"]), 6).await;
        assert!(matches!(
            too_big,
            Err(GatewayError::PayloadTooLarge { limit: 6 })
        ));
    }

    #[tokio::test]
    async fn a_body_is_gathered_whole_from_any_frames_and_one_frame_is_not_copied() {
        let empty = read_limited(chunked(&[]), 6).await;
        assert_eq!(empty.ok().as_deref(), Some(&b""[..]));
        let text: &'static [u8] = b"hello";
        let one = read_limited(chunked(&[text]), 6)
            .await
            .expect("within the limit");
        assert_eq!(
            one.as_ptr(),
            text.as_ptr(),
            "a single frame is the body itself"
        );
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b""))),
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::data(Bytes::from_static(b""))),
            Ok(Frame::data(Bytes::from_static(b"e"))),
            Ok(Frame::trailers(http::HeaderMap::new())),
        ];
        let many = read_limited(StreamBody::new(stream::iter(frames)).boxed_unsync(), 6).await;
        assert_eq!(many.ok().as_deref(), Some(&b"abcde"[..]));
    }

    #[tokio::test]
    async fn a_body_that_arrives_too_slowly_is_a_408() {
        let slow = portcullis_core::client_body(
            StreamBody::new(stream::iter(vec![
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"ab"))),
                Err(Box::new(BodyTooSlow) as BoxError),
            ]))
            .boxed_unsync(),
        );
        let r = read_limited(slow, 100).await;
        assert!(matches!(r, Err(GatewayError::RequestTimeout)), "{r:?}");
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused_before_reading() {
        let req = Request::builder()
            .header("content-length", "100")
            .body(chunked(&[b"x"]))
            .unwrap_or_default();
        let r = BodyLimit::new(10).on_request(req).await;
        assert!(matches!(
            r,
            Err(GatewayError::PayloadTooLarge { limit: 10 })
        ));
    }
}
