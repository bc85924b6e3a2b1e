//! Graceful drain of the data plane's connections.
//!
//! hyper-util's `GracefulShutdown` has every connection wait on one shared `watch` channel,
//! and a waiting `Notified` takes that channel's lock on every poll: several times per
//! request, on every worker thread, for the same lock (about 470 instructions of the
//! no-policy route's budget, and a cache line that bounces between the cores; see
//! `bench/RESULTS.md`). Here a connection's poll reads one flag and refreshes its own waker,
//! neither shared with another connection; the shared lock is taken when a connection opens
//! and closes, and once at shutdown.

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
};
use tokio::sync::Notify;

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
        }
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
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.shutting_down {
            // The waker first, then the flag: a drain that begins in between wakes this
            // task, which then sees the flag (the order `AtomicWaker` is made for).
            this.registration.waker.register(cx.waker());
            if this.registration.inner.draining.load(Ordering::SeqCst) {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
