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

/// Closes an HTTP/2 connection that stays idle, no request running and none begun, for a
/// whole `period` (checked every `period`, so it closes between one and two periods after it
/// fell idle). The close is graceful, HTTP/2's two-step GOAWAY; a client that does not take
/// part in it (it never answers the PING of the first step) is dropped once another period
/// passes with nothing running. The connection's service counts its requests in
/// [`Idle::streams`].
pub(crate) struct Idle {
    tick: Pin<Box<Sleep>>,
    period: Duration,
    streams: Arc<Streams>,
    seen: u64,
}

/// Requests begun and requests running on one connection.
#[derive(Default)]
pub(crate) struct Streams {
    begun: AtomicU64,
    running: AtomicU64,
}

impl Streams {
    /// Counts a request from now until the guard is dropped (with its response body).
    pub(crate) fn enter(self: &Arc<Self>) -> StreamGuard {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }
}

/// One running request of a connection watched by [`Idle`].
pub(crate) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Idle {
    /// An idle check every `period`, from now.
    pub(crate) fn new(period: Duration) -> Idle {
        Idle {
            tick: Box::pin(tokio::time::sleep(period)),
            period,
            streams: Arc::default(),
            seen: 0,
        }
    }

    /// What the connection's service counts its requests in.
    pub(crate) fn streams(&self) -> Arc<Streams> {
        self.streams.clone()
    }

    /// True once a tick finds nothing running and nothing begun since the last one; the
    /// next tick is then a period away.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.tick.as_mut().poll(cx).is_ready() {
            let begun = self.streams.begun.load(Ordering::Relaxed);
            let idle = begun == self.seen && self.streams.running.load(Ordering::Acquire) == 0;
            self.seen = begun;
            let next = self.tick.deadline() + self.period;
            self.tick.as_mut().reset(next);
            if idle {
                return true;
            }
        }
        false
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
            let idle = this.idle.as_mut().is_some_and(|i| i.expired(cx));
            if idle || this.registration.inner.draining.load(Ordering::SeqCst) {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
            }
        } else if this.idle.as_mut().is_some_and(|i| i.expired(cx)) {
            // Closing, and still open a period later with nothing running: the client is not
            // finishing the close, so the connection ends here.
            return Poll::Ready(Ok(()));
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
