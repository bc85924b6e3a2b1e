//! Minimum request-body rate: slow-loris protection for bodies. `header_read_timeout` bounds
//! how long a client may take over its request head; this bounds the body. A body must have
//! delivered `received / min_rate` seconds' worth of bytes within `grace` plus that time, or it
//! fails with [`BodyTooSlow`], which whoever reads it turns into 408.
//!
//! The clock runs only while the gateway is waiting for the client: time the reader spends
//! not reading (authenticating, waiting for a slow upstream to accept more) is credited back,
//! so backpressure from the gateway's side never counts against the client. One `Sleep` per
//! body, armed lazily: it is reset only when it fires before the moving deadline.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use portcullis_core::{client_body, Body, BodyTooSlow, BoxError};
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// Turns a client's request body into the gateway [`Body`], with read errors marked
/// (`ClientBodyError`) and, when `min_rate` (bytes per second) is not zero and the request
/// has a body, the minimum rate enforced after `grace`. Bodiless requests get no timer.
pub(crate) fn request_body(body: hyper::body::Incoming, min_rate: u64, grace: Duration) -> Body {
    client_body_with_rate(body, min_rate, grace)
}

fn client_body_with_rate<B>(body: B, min_rate: u64, grace: Duration) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        // Nothing will ever arrive: an empty body, whose box holds nothing and allocates
        // nothing (most requests are bodiless GETs).
        return portcullis_core::empty();
    }
    if min_rate == 0 {
        return client_body(body);
    }
    client_body(MinRate::new(body, min_rate, grace))
}

pin_project_lite::pin_project! {
    struct MinRate<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        // Where the allowance counts from; moved on by the time the reader spent not reading.
        base: Instant,
        // Set when a frame was handed out and the reader has not asked for the next one yet.
        idle_since: Option<Instant>,
        received: u64,
        rate: u64,
        grace: Duration,
    }
}

impl<B> MinRate<B> {
    fn new(inner: B, rate: u64, grace: Duration) -> Self {
        let now = Instant::now();
        MinRate {
            inner,
            timer: tokio::time::sleep_until(now + grace),
            base: now,
            // Until the first read, the gateway is busy with other steps, not waiting.
            idle_since: Some(now),
            received: 0,
            rate,
            grace,
        }
    }
}

/// `base + grace + received / rate`: when the body is late.
fn due(base: Instant, grace: Duration, received: u64, rate: u64) -> Instant {
    let nanos = u128::from(received) * 1_000_000_000 / u128::from(rate.max(1));
    base + grace + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl<B> HttpBody for MinRate<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(since) = this.idle_since.take() {
            *this.base += since.elapsed();
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.received = this.received.saturating_add(d.len() as u64);
                }
                *this.idle_since = Some(Instant::now());
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // Waiting for the client. The timer never runs later than the deadline (which
                // only moves out), so when it fires, either the body is late or it re-arms.
                while this.timer.as_mut().poll(cx).is_ready() {
                    let deadline = due(*this.base, *this.grace, *this.received, *this.rate);
                    if deadline <= Instant::now() || deadline <= this.timer.deadline() {
                        return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
                    }
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Pending
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use portcullis_core::{find_cause, ClientBodyError};
    use tokio::sync::mpsc;

    fn channel_body() -> (mpsc::UnboundedSender<&'static [u8]>, Body) {
        let (tx, rx) = mpsc::unbounded_channel::<&'static [u8]>();
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, BoxError>(Frame::data(Bytes::from_static(b))), rx))
        });
        (tx, StreamBody::new(frames).boxed_unsync())
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_fails_marked_as_too_slow() {
        let (tx, inner) = channel_body();
        let mut body = client_body_with_rate(inner, 1000, Duration::from_secs(2));
        tx.send(b"abc").unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // Nothing more arrives: after the grace (plus 3 ms of allowance), the body fails.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(find_cause::<BodyTooSlow>(err.as_ref()).is_some(), "{err}");
        assert!(find_cause::<ClientBodyError>(err.as_ref()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_and_time_spent_not_reading_are_fine() {
        let (tx, inner) = channel_body();
        let mut body = client_body_with_rate(inner, 1000, Duration::from_secs(1));
        // The gateway is busy elsewhere for longer than the grace before it reads.
        tokio::time::sleep(Duration::from_secs(5)).await;
        tx.send(&[0; 1000]).unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // 1000 bytes buy one more second on top of the grace: 1.5 s later a chunk still counts.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx.send(b"end").unwrap();
        });
        assert!(body.frame().await.unwrap().is_ok());
        sender.await.unwrap();
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn bodiless_requests_and_a_zero_rate_are_left_alone() {
        let body = client_body_with_rate(portcullis_core::empty(), 1000, Duration::from_secs(1));
        assert!(body.is_end_stream());
        let (tx, inner) = channel_body();
        let mut body = client_body_with_rate(inner, 0, Duration::from_secs(1));
        tx.send(b"x").unwrap();
        drop(tx);
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.is_none());
    }
}
