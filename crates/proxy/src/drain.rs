//! Graceful drain of the data plane's connections.
//!
//! hyper-util's `GracefulShutdown` has every connection wait on one shared `watch` channel,
//! and a waiting `Notified` takes that channel's lock on every poll: several times per
//! request, on every worker thread, for the same lock (about 470 instructions of the
//! no-policy route's budget, and a cache line that bounces between the cores; see
//! `bench/RESULTS.md`). Here a connection's poll reads one flag and refreshes its own waker,
//! neither shared with another connection; the shared lock is taken when a connection opens
//! and closes, and once at shutdown.
//!
//! The same wrapper closes idle HTTP/2 connections ([`Idle`]): hyper closes an idle HTTP/1
//! connection when no request head arrives within `header_read_timeout`, but has no idle
//! timeout for HTTP/2, whose pings only check that the client is alive. A client that opened
//! connections and never sent a request on them held them, and their slots under
//! `server.max_connections`, for ever: fifty such sockets shut every other client out.

use futures_util::task::AtomicWaker;
use hyper_util::server::graceful::GracefulConnection;
use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{sync::Notify, time::Sleep};

/// The open connections, and the switch that tells them to finish.
#[derive(Default)]
pub(crate) struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    next_id: AtomicU64,
    /// The open connections' wakers, by connection.
    open: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
    /// Told when the last connection closes during a drain.
    all_closed: Notify,
}

impl Inner {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, Arc<AtomicWaker>>> {
        // The map stays whole whatever panicked while holding it.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drain {
    /// Counts a connection from now on: the drain waits for it. Taken when the connection
    /// is accepted, so one still in its TLS handshake is waited for too.
    pub(crate) fn register(&self) -> Registration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.inner.open().insert(id, waker.clone());
        Registration {
            id,
            waker,
            inner: self.inner.clone(),
        }
    }

    /// How many connections are open.
    pub(crate) fn count(&self) -> usize {
        self.inner.open().len()
    }

    /// Tells every connection to finish its in-flight requests and close, then waits until
    /// all have closed.
    pub(crate) async fn shutdown(self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Arc<AtomicWaker>> = self.inner.open().values().cloned().collect();
        for w in wakers {
            w.wake();
        }
        loop {
            let closed = self.inner.all_closed.notified();
            tokio::pin!(closed);
            // Registered before the check, so a close between the two still wakes this.
            closed.as_mut().enable();
            if self.inner.open().is_empty() {
                return;
            }
            closed.await;
        }
    }
}

/// One counted connection; dropping it (the connection ended, or never got going) stops
/// the count.
pub(crate) struct Registration {
    id: u64,
    waker: Arc<AtomicWaker>,
    inner: Arc<Inner>,
}

impl Registration {
    /// `conn`, shut down gracefully once the drain begins.
    pub(crate) fn watch<C: GracefulConnection>(self, conn: C) -> Watched<C> {
        Watched {
            conn,
            registration: self,
            shutting_down: false,
            idle: None,
        }
    }

    /// `conn`, shut down gracefully once the drain begins or once `idle` sees no new request
    /// for a whole period.
    pub(crate) fn watch_idle<C: GracefulConnection>(self, conn: C, idle: Idle) -> Watched<C> {
        Watched {
            idle: Some(idle),
            ..self.watch(conn)
        }
    }
}

/// Watches an HTTP/2 connection every `period` for two things, both judged by whether bytes
/// went out on its socket (`written`, counted by `SendDeadline`), not by how its response
/// bodies are drawn: hyper draws a body a whole buffered chunk at a time, so a slow but steady
/// reader can go long between draws while bytes keep flowing.
///
/// - *Idle*: no request running, none begun and nothing written for a whole period (so it
///   closes between one and two periods after it fell idle; a response still draining from
///   h2's buffers to a slow reader keeps it open). The close is graceful, HTTP/2's two-step
///   GOAWAY; a client that does not take part in it is dropped once another period passes
///   with nothing written.
/// - *Stalled*: a response has handed out a frame that the client has not let out (a
///   flow-control window it never opens), and nothing was written to the socket for
///   `send_timeout`. The connection is dropped, and with it what its requests hold
///   (concurrency slots). A socket the client does not read is caught by `SendDeadline`
///   itself; a zero window leaves the socket writable, so only this sees it. (A client that
///   keeps other streams busy on the same connection keeps it alive: progress is counted per
///   connection.)
///
/// The connection's service counts its requests in [`Idle::streams`].
pub(crate) struct Idle {
    tick: Pin<Box<Sleep>>,
    period: Duration,
    send_timeout: Duration,
    streams: Arc<Streams>,
    written: Arc<AtomicU64>,
    seen: u64,
    written_seen: u64,
    stalled_since: Option<tokio::time::Instant>,
}

/// Requests begun and running on one connection, and responses waiting on the client.
#[derive(Default)]
pub(crate) struct Streams {
    begun: AtomicU64,
    running: AtomicU64,
    /// Response bodies that handed out a frame and have not been asked for the next yet.
    waiting: AtomicU64,
}

impl Streams {
    /// Counts a request from now until the guard is dropped (with its response body).
    pub(crate) fn enter(self: &Arc<Self>) -> StreamGuard {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::AcqRel);
        StreamGuard {
            streams: self.clone(),
            waiting: false,
        }
    }
}

/// One running request of a connection watched by [`Idle`].
pub(crate) struct StreamGuard {
    streams: Arc<Streams>,
    waiting: bool,
}

impl StreamGuard {
    /// The response body is asked for its next frame.
    pub(crate) fn polled(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.streams.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The response body handed out a frame; until it is asked again, it waits on the client.
    pub(crate) fn handed(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.streams.waiting.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.waiting {
            self.streams.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        self.streams.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a tick of [`Idle`] found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Busy,
    Idle,
    Stalled,
}

impl Idle {
    /// Checks every `period`, from now; `written` counts the bytes the connection's socket
    /// has sent.
    pub(crate) fn new(period: Duration, send_timeout: Duration, written: Arc<AtomicU64>) -> Idle {
        Idle {
            tick: Box::pin(tokio::time::sleep(period)),
            period,
            send_timeout,
            streams: Arc::default(),
            written,
            seen: 0,
            written_seen: 0,
            stalled_since: None,
        }
    }

    /// What the connection's service counts its requests in.
    pub(crate) fn streams(&self) -> Arc<Streams> {
        self.streams.clone()
    }

    /// The verdict of the tick that is due, if one is; the next tick is then a period from
    /// now (a task that was starved past several ticks judges once, not once per tick).
    fn check(&mut self, cx: &mut Context<'_>) -> Verdict {
        if self.tick.as_mut().poll(cx).is_pending() {
            return Verdict::Busy;
        }
        let now = tokio::time::Instant::now();
        let begun = self.streams.begun.load(Ordering::Relaxed);
        let running = self.streams.running.load(Ordering::Acquire);
        let written = self.written.load(Ordering::Relaxed);
        let quiet = written == self.written_seen;
        let idle = begun == self.seen && running == 0 && quiet;
        let stuck = self.streams.waiting.load(Ordering::Acquire) > 0 && quiet;
        self.seen = begun;
        self.written_seen = written;
        // A quiet period ending now began a period ago.
        self.stalled_since = if stuck {
            Some(self.stalled_since.unwrap_or(now - self.period))
        } else {
            None
        };
        self.tick.as_mut().reset(now + self.period);
        // Registers the waker for the next tick.
        let _ = self.tick.as_mut().poll(cx);
        if idle {
            return Verdict::Idle;
        }
        if self
            .stalled_since
            .is_some_and(|since| now.duration_since(since) >= self.send_timeout)
        {
            return Verdict::Stalled;
        }
        Verdict::Busy
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.inner.open();
        open.remove(&self.id);
        if open.is_empty() && self.inner.draining.load(Ordering::SeqCst) {
            self.inner.all_closed.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that starts its graceful shutdown when the drain begins.
    pub(crate) struct Watched<C> {
        #[pin]
        conn: C,
        registration: Registration,
        shutting_down: bool,
        idle: Option<Idle>,
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = Result<(), C::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shutting_down {
            // The waker first, then the flag: a drain that begins in between wakes this
            // task, which then sees the flag (the order `AtomicWaker` is made for).
            this.registration.waker.register(cx.waker());
            let verdict = this.idle.as_mut().map_or(Verdict::Busy, |i| i.check(cx));
            if verdict == Verdict::Stalled {
                closed("h2_stalled");
                return Poll::Ready(Ok(()));
            }
            if verdict == Verdict::Idle {
                closed("h2_idle");
            }
            if verdict == Verdict::Idle || this.registration.inner.draining.load(Ordering::SeqCst) {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
            }
        } else if this
            .idle
            .as_mut()
            .is_some_and(|i| i.check(cx) != Verdict::Busy)
        {
            // Closing, and still open a period later with nothing running and nothing sent
            // (or with a stalled response): the client is not finishing the close, so the
            // connection ends here.
            closed("h2_close_unfinished");
            return Poll::Ready(Ok(()));
        }
        this.conn.poll(cx)
    }
}

/// Counts a connection the gateway closed on its own account.
fn closed(reason: &'static str) {
    metrics::counter!("portcullis_connections_closed_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the watch's check once, as the connection's poll would.
    async fn verdict(idle: &mut Idle) -> Verdict {
        std::future::poll_fn(|cx| Poll::Ready(idle.check(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_with_nothing_to_do_is_idle_after_a_period() {
        let written = Arc::new(AtomicU64::new(0));
        let mut idle = Idle::new(Duration::from_secs(1), Duration::from_secs(3), written);
        assert_eq!(verdict(&mut idle).await, Verdict::Busy, "no tick due yet");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(verdict(&mut idle).await, Verdict::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_steady_reader_is_never_stalled_and_a_stopped_one_is() {
        let written = Arc::new(AtomicU64::new(0));
        let mut idle = Idle::new(
            Duration::from_secs(1),
            Duration::from_secs(3),
            written.clone(),
        );
        let streams = idle.streams();
        let mut download = streams.enter();
        // A body that handed out one big chunk and is not asked again for a long while,
        // while h2 sends it out a little at a time: bytes keep going out.
        download.handed();
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(500)).await;
            written.fetch_add(16 * 1024, Ordering::Relaxed);
            assert_eq!(verdict(&mut idle).await, Verdict::Busy);
        }
        // The client stops opening its window: nothing more goes out.
        let mut last = Verdict::Busy;
        let mut waited = Duration::ZERO;
        while last == Verdict::Busy && waited < Duration::from_secs(10) {
            tokio::time::advance(Duration::from_millis(500)).await;
            waited += Duration::from_millis(500);
            last = verdict(&mut idle).await;
        }
        assert_eq!(last, Verdict::Stalled);
        assert!(waited >= Duration::from_secs(3), "stalled after {waited:?}");
        drop(download);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_on_its_upstream_is_neither_idle_nor_stalled() {
        let written = Arc::new(AtomicU64::new(0));
        let mut idle = Idle::new(Duration::from_secs(1), Duration::from_secs(2), written);
        let streams = idle.streams();
        let mut long_poll = streams.enter();
        // Asked for a frame, which has not come: the wait is on the upstream.
        long_poll.polled();
        for _ in 0..30 {
            tokio::time::advance(Duration::from_millis(500)).await;
            assert_eq!(verdict(&mut idle).await, Verdict::Busy);
        }
        // Done, and the response's last bytes went out: idle a period later.
        drop(long_poll);
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert_eq!(verdict(&mut idle).await, Verdict::Idle);
    }

    #[tokio::test]
    async fn shutdown_waits_for_every_registration_and_counts_them() {
        let drain = Drain::default();
        let a = drain.register();
        let b = drain.register();
        assert_eq!(drain.count(), 2);
        drop(a);
        assert_eq!(drain.count(), 1);
        let done = tokio::spawn(drain.shutdown());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!done.is_finished(), "returned with a connection still open");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("shutdown returns once the last connection closes")
            .expect("no panic");
    }

    #[tokio::test]
    async fn shutdown_with_nothing_open_returns_at_once() {
        tokio::time::timeout(Duration::from_secs(5), Drain::default().shutdown())
            .await
            .expect("returns");
    }
}
