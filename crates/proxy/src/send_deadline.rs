//! `server.send_timeout`: a client connection whose writes make no progress for that long is
//! closed.
//!
//! A client that stops reading its response fills the socket's buffers; hyper's write then
//! waits, and with it the response body, which is not polled again, so the route's timeouts
//! (checked as the body is read) never fire. The connection and a route's concurrency slot were
//! held for as long as the client kept the socket open. Here the connection's socket fails the
//! write with `TimedOut` once a write has waited `send_timeout`, hyper ends the connection,
//! and everything the request held is dropped.
//!
//! The timer exists only while a write waits: a connection whose writes go through, or that
//! waits on its upstream rather than on its client, never arms it.

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

pin_project_lite::pin_project! {
    /// A client socket whose writes fail after waiting `limit`.
    pub(crate) struct SendDeadline<T> {
        #[pin]
        io: T,
        limit: Duration,
        // Kept across stalls, reset when the next one begins.
        sleep: Option<Pin<Box<Sleep>>>,
        waiting: bool,
        // Bytes written, for an HTTP/2 connection's idle and stall watch (`drain::Idle`).
        written: Option<Arc<AtomicU64>>,
    }
}

impl<T> SendDeadline<T> {
    pub(crate) fn new(io: T, limit: Duration) -> Self {
        SendDeadline {
            io,
            limit,
            sleep: None,
            waiting: false,
            written: None,
        }
    }

    /// Stops counting bytes written (an HTTP/1 connection, known once TLS has negotiated it).
    pub(crate) fn stop_counting(&mut self) {
        self.written = None;
    }

    /// The same, counting the bytes written in `written`.
    pub(crate) fn counting(io: T, limit: Duration, written: Arc<AtomicU64>) -> Self {
        SendDeadline {
            written: Some(written),
            ..Self::new(io, limit)
        }
    }
}

/// Adds a write's bytes to the connection's count, when it keeps one.
fn count(result: &Poll<io::Result<usize>>, written: &Option<Arc<AtomicU64>>) {
    if let (Poll::Ready(Ok(n)), Some(w)) = (result, written) {
        w.fetch_add(*n as u64, Ordering::Relaxed);
    }
}

/// What a write that returned `result` means under the deadline: progress disarms it, a wait
/// arms it (or fails once it has passed).
fn judge<R>(
    result: Poll<io::Result<R>>,
    cx: &mut Context<'_>,
    limit: Duration,
    sleep: &mut Option<Pin<Box<Sleep>>>,
    waiting: &mut bool,
) -> Poll<io::Result<R>> {
    if result.is_ready() {
        *waiting = false;
        return result;
    }
    let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    if !*waiting {
        *waiting = true;
        timer.as_mut().reset(Instant::now() + limit);
    }
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => {
            metrics::counter!("portcullis_connections_closed_total", "reason" => "send_timeout")
                .increment(1);
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading (server.send_timeout)",
            )))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl<T: AsyncRead> AsyncRead for SendDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for SendDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write(cx, buf);
        count(&result, this.written);
        judge(result, cx, *this.limit, this.sleep, this.waiting)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write_vectored(cx, bufs);
        count(&result, this.written);
        judge(result, cx, *this.limit, this.sleep, this.waiting)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let result = this.io.poll_flush(cx);
        judge(result, cx, *this.limit, this.sleep, this.waiting)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let result = this.io.poll_shutdown(cx);
        judge(result, cx, *this.limit, this.sleep, this.waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails() {
        // A pipe with a small buffer that nobody reads: the writes fill it, then wait.
        let (client, mut server) = tokio::io::duplex(1024);
        let mut io = SendDeadline::new(client, Duration::from_secs(30));
        let chunk = [7u8; 512];
        io.write_all(&chunk).await.expect("room in the buffer");
        // The reader takes some, so a later wait starts afresh.
        let mut sink = [0u8; 512];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut sink)
            .await
            .expect("read");
        let started = Instant::now();
        let err = io
            .write_all(&[7u8; 4096])
            .await
            .expect_err("the write waited past the limit");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Paused time: exactly the limit passed, not more (the wait began at the stall).
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(server);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = SendDeadline::new(client, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 64];
            while total < 4096 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                    .await
                    .expect("read");
            }
        });
        // 4 KiB through a 64-byte pipe at 64 bytes per 20 s: each wait is shorter than the
        // limit, though the whole write takes far longer.
        io.write_all(&[1u8; 4096]).await.expect("never cut");
        reader.await.expect("reader");
    }
}
