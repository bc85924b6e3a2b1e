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

/// Watches an HTTP/2 connection every `period` for two things.
///
/// - *Idle*: no request running, none begun and nothing written to the socket (`written`,
///   counted by `SendDeadline`) for a whole period, so it closes between one and two periods
///   after it fell idle; a response still draining from h2's buffers to a slow reader keeps
///   it open. The close is graceful, HTTP/2's two-step GOAWAY; a client that does not take
///   part in it is dropped once another period passes with nothing written.
/// - *Stalled*: one response has handed out a piece (at most 16 KiB, see `server.rs`) and has
///   not been asked for the next for `send_timeout`: its client is not opening its
///   flow-control window. The connection is dropped, and with it what its requests hold
///   (concurrency slots). Each stream is judged by itself, so other busy streams on the same
///   connection do not hide a stalled one. A socket the client does not read at all is caught
///   by `SendDeadline` itself; a zero window leaves the socket writable, so only this sees it.
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
}

/// Requests begun and running on one connection, and when each response began to wait on
/// its client.
#[derive(Default)]
pub(crate) struct Streams {
    begun: AtomicU64,
    running: AtomicU64,
    waiting: Mutex<Waiting>,
}

/// Per running request, when its response handed out a piece it has not been asked to follow
/// yet (`None`: not waiting on the client); slots are reused.
#[derive(Default)]
struct Waiting {
    since: Vec<Option<tokio::time::Instant>>,
    free: Vec<usize>,
}

impl Streams {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request from now until the guard is dropped (with its response body).
    pub(crate) fn enter(self: &Arc<Self>) -> StreamGuard {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::AcqRel);
        let mut w = self.waiting();
        let slot = match w.free.pop() {
            Some(i) => i,
            None => {
                w.since.push(None);
                w.since.len() - 1
            }
        };
        drop(w);
        StreamGuard {
            streams: self.clone(),
            slot,
            waiting: false,
        }
    }

    /// How long the response that has waited longest on its client has waited.
    fn longest_wait(&self, now: tokio::time::Instant) -> Option<Duration> {
        let w = self.waiting();
        w.since
            .iter()
            .flatten()
            .min()
            .map(|&t| now.duration_since(t))
    }
}

/// One running request of a connection watched by [`Idle`].
pub(crate) struct StreamGuard {
    streams: Arc<Streams>,
    slot: usize,
    waiting: bool,
}

impl StreamGuard {
    /// The response body is asked for its next piece.
    pub(crate) fn polled(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.set(None);
        }
    }

    /// The response body handed out a piece; until it is asked again, it waits on the client.
    pub(crate) fn handed(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.set(Some(tokio::time::Instant::now()));
        }
    }

    fn set(&self, since: Option<tokio::time::Instant>) {
        if let Some(s) = self.streams.waiting().since.get_mut(self.slot) {
            *s = since;
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut w = self.streams.waiting();
        if let Some(s) = w.since.get_mut(self.slot) {
            *s = None;
        }
        w.free.push(self.slot);
        drop(w);
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
        let idle = begun == self.seen && running == 0 && written == self.written_seen;
        self.seen = begun;
        self.written_seen = written;
        self.tick.as_mut().reset(now + self.period);
        // Registers the waker for the next tick.
        let _ = self.tick.as_mut().poll(cx);
        if idle {
            return Verdict::Idle;
        }
        if self
            .streams
            .longest_wait(now)
            .is_some_and(|w| w >= self.send_timeout)
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

    /// A watch checking every second, with `send_timeout` seconds, and its byte count.
    fn watch(send_timeout: u64) -> (Idle, Arc<AtomicU64>) {
        let written = Arc::new(AtomicU64::new(0));
        let idle = Idle::new(
            Duration::from_secs(1),
            Duration::from_secs(send_timeout),
            written.clone(),
        );
        (idle, written)
    }

    /// Runs the watch's check once, as the connection's poll would.
    async fn verdict(idle: &mut Idle) -> Verdict {
        std::future::poll_fn(|cx| Poll::Ready(idle.check(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_with_nothing_to_do_is_idle_after_a_period() {
        let (mut idle, _) = watch(3);
        assert_eq!(verdict(&mut idle).await, Verdict::Busy, "no tick due yet");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(verdict(&mut idle).await, Verdict::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_steady_reader_is_never_stalled_and_a_stopped_one_is() {
        let (mut idle, written) = watch(3);
        let streams = idle.streams();
        let mut download = streams.enter();
        // A client that opens its window for one 16 KiB piece every 2 s: each piece is
        // drawn within send_timeout of the last.
        for _ in 0..10 {
            download.polled();
            download.handed();
            for _ in 0..4 {
                tokio::time::advance(Duration::from_millis(500)).await;
                assert_eq!(verdict(&mut idle).await, Verdict::Busy);
            }
            written.fetch_add(16 * 1024, Ordering::Relaxed);
        }
        // It stops opening its window: the piece it was handed stays there.
        download.polled();
        download.handed();
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
    async fn a_stalled_stream_is_found_beside_busy_ones() {
        let (mut idle, written) = watch(3);
        let streams = idle.streams();
        let mut stalled = streams.enter();
        stalled.polled();
        stalled.handed();
        // Another stream on the connection keeps drawing and sending, and new requests come.
        let mut stalled_at = None;
        for i in 0..20 {
            let mut busy = streams.enter();
            busy.polled();
            busy.handed();
            written.fetch_add(1024, Ordering::Relaxed);
            tokio::time::advance(Duration::from_millis(500)).await;
            busy.polled();
            drop(busy);
            if verdict(&mut idle).await == Verdict::Stalled {
                stalled_at = Some(i);
                break;
            }
        }
        let at = stalled_at.expect("the stalled stream was hidden by the busy ones");
        assert!(at >= 5, "stalled after {} ms", (at + 1) * 500);
        drop(stalled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_on_its_upstream_is_neither_idle_nor_stalled() {
        let (mut idle, _) = watch(2);
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
