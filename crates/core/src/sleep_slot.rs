//! One tokio sleep kept for deadline after deadline, for the timers the data plane sets on
//! every request of a connection (hyper's header-read timeout, the upstream exchange's).
//!
//! A fresh tokio `Sleep` per request costs, each time, a registration in the runtime's timer
//! wheel when first polled and a removal when dropped, each under the wheel's lock: ~500
//! instructions per timer per request (callgrind, `bench/RESULTS.md`, tenth run). A kept one:
//! - moving it to a later deadline only changes a number in the registered timer (tokio's
//!   `extend_expiration`, no lock), and it is moved only when the new deadline is past the
//!   one it holds (or more than [`SLACK`] before it), to that deadline plus `SLACK`: a timer
//!   here fires up to `SLACK` late, never early, and under load most requests find it
//!   already set far enough;
//! - polling it again from the task that polled it last, before it fires, is a waker
//!   comparison: the timer already holds that task's waker.
//!
//! When the wheel reaches a deadline the timer has been moved past, it files the timer again
//! without waking anybody. A timer left set after its request ended wakes its task once,
//! for nothing, when it fires.

use std::{
    future::Future,
    pin::Pin,
    sync::{Mutex, PoisonError},
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// How late a timer kept in a [`SleepSlot`] may fire, at most.
pub const SLACK: Duration = Duration::from_millis(50);

/// A kept tokio sleep and the waker it was last polled with (see the module docs).
#[derive(Debug)]
pub struct SleepSlot {
    sleep: Pin<Box<Sleep>>,
    polled_by: Option<Waker>,
}

impl SleepSlot {
    /// A slot set to `deadline`. Needs a running tokio runtime with time enabled.
    pub fn new(deadline: Instant) -> Self {
        SleepSlot {
            sleep: Box::pin(tokio::time::sleep_until(deadline + SLACK)),
            polled_by: None,
        }
    }

    /// Ready once `deadline` has passed (up to [`SLACK`] later); otherwise the current task
    /// is woken when it does. One deadline at a time: each call may move the timer.
    pub fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let set = self.sleep.deadline();
        if set < deadline || set > deadline + SLACK {
            self.sleep.as_mut().reset(deadline + SLACK);
            // A timer moved earlier may have been taken out of the wheel: poll it afresh.
            self.polled_by = None;
        }
        if let Some(w) = &self.polled_by {
            if w.will_wake(cx.waker()) && !self.sleep.is_elapsed() {
                return Poll::Pending;
            }
        }
        // Outside tokio's task budget: with the budget spent, `Sleep::poll` answers `Pending`
        // without giving the timer this waker (it only asks to be polled again), and the
        // shortcut above would then wait on a timer nobody will fire for this task.
        // (`tokio::time::timeout_at` polls its delay unconstrained for the same reason.)
        let mut unconstrained = tokio::task::coop::unconstrained(self.sleep.as_mut());
        match Pin::new(&mut unconstrained).poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                self.polled_by = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A [`SleepSlot`] one user at a time can borrow: the connection's, for its requests'
/// upstream exchanges. Empty until first used (a runtime is needed to make the sleep).
#[derive(Debug, Default)]
pub struct SharedSleepSlot(Mutex<Option<SleepSlot>>);

impl SharedSleepSlot {
    /// The kept slot if nobody holds it (an HTTP/2 connection's concurrent requests: the
    /// first takes it, the others make their own), else a new one.
    pub fn take(&self, deadline: Instant) -> SleepSlot {
        self.lock()
            .take()
            .unwrap_or_else(|| SleepSlot::new(deadline))
    }

    /// Keeps `slot` for the next user, unless another one was kept meanwhile.
    pub fn put(&self, slot: SleepSlot) {
        let mut kept = self.lock();
        if kept.is_none() {
            *kept = Some(slot);
        }
    }

    /// Polls the kept slot in place, for a user that is alone with it: hyper's HTTP/1
    /// header-read timer, one at a time and from the connection's own task.
    pub fn poll_until(&self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        self.lock()
            .get_or_insert_with(|| SleepSlot::new(deadline))
            .poll_until(deadline, cx)
    }

    /// `fut`'s output, or [`TimedOut`] once `until` has passed: `tokio::time::timeout_at`
    /// on the kept slot (or, while another holds it, a new one).
    pub fn timeout<F: Future>(&self, until: Instant, fut: F) -> Timeout<'_, F> {
        Timeout {
            fut,
            lease: Lease {
                shared: self,
                slot: Some(self.take(until)),
            },
            until,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SleepSlot>> {
        // A panic while held cannot leave the slot half-changed: use it as it is.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pin_project_lite::pin_project! {
    /// The future of [`SharedSleepSlot::timeout`]: a named type rather than an `async fn`, so
    /// the wrapped future is built in place instead of moved once more.
    pub struct Timeout<'a, F> {
        #[pin]
        fut: F,
        lease: Lease<'a>,
        until: Instant,
    }
}

impl<F: Future> Future for Timeout<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match &mut this.lease.slot {
            Some(slot) => slot.poll_until(*this.until, cx).map(|()| Err(TimedOut)),
            None => Poll::Ready(Err(TimedOut)),
        }
    }
}

/// The deadline of [`SharedSleepSlot::timeout`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// A slot borrowed for one [`SharedSleepSlot::timeout`]; given back however that ends
/// (done, timed out, or dropped when the request is cancelled).
struct Lease<'a> {
    shared: &'a SharedSleepSlot,
    slot: Option<SleepSlot>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.shared.put(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn until(slot: &mut SleepSlot, deadline: Instant) {
        poll_fn(|cx| slot.poll_until(deadline, cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn fires_after_its_deadline_and_at_most_the_slack_later() {
        let start = Instant::now();
        let mut slot = SleepSlot::new(start + Duration::from_secs(5));
        until(&mut slot, start + Duration::from_secs(5)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
        assert!(waited <= Duration::from_secs(5) + SLACK, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_moves_the_timer_and_an_earlier_one_still_fires_on_time() {
        let start = Instant::now();
        let mut slot = SleepSlot::new(start + Duration::from_secs(60));
        // Polled once for a minute (a previous request), then used for two seconds.
        assert!(futures_poll(&mut slot, start + Duration::from_secs(60)).is_pending());
        until(&mut slot, start + Duration::from_secs(2)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(2) && waited <= Duration::from_secs(2) + SLACK);
        // And then for ten seconds more.
        let mid = Instant::now();
        until(&mut slot, mid + Duration::from_secs(10)).await;
        let waited = mid.elapsed();
        assert!(waited >= Duration::from_secs(10) && waited <= Duration::from_secs(10) + SLACK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_within_the_slack_of_the_set_one_keeps_it_and_still_waits() {
        let start = Instant::now();
        let mut slot = SleepSlot::new(start + Duration::from_secs(1));
        assert!(futures_poll(&mut slot, start + Duration::from_secs(1)).is_pending());
        tokio::time::advance(Duration::from_millis(10)).await;
        // 10 ms later, the next request's deadline is inside the slack: no move, and the
        // timer holds this task's waker, so the poll is answered without tokio.
        let next = start + Duration::from_millis(1010);
        until(&mut slot, next).await;
        assert!(Instant::now() >= next);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_slot_goes_to_one_taker_at_a_time() {
        let shared = SharedSleepSlot::default();
        let now = Instant::now();
        let secs = |n| now + Duration::from_secs(n);
        let first = shared.take(secs(1));
        // While the first is out, a second taker gets a new slot, set to its own deadline.
        let second = shared.take(secs(2));
        assert_eq!(second.sleep.deadline(), secs(2) + SLACK);
        shared.put(first);
        // The first was kept meanwhile: the second is not kept over it.
        shared.put(second);
        assert_eq!(shared.take(secs(3)).sleep.deadline(), secs(1) + SLACK);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_answers_the_future_in_time_and_gives_the_slot_back_either_way() {
        let shared = SharedSleepSlot::default();
        let now = Instant::now();
        let quick = shared
            .timeout(now + Duration::from_secs(5), async { 7 })
            .await;
        assert_eq!(quick, Ok(7));
        assert!(shared.lock().is_some(), "kept after an answer");
        let slow = shared
            .timeout(now + Duration::from_secs(5), std::future::pending::<()>())
            .await;
        assert_eq!(slow, Err(TimedOut));
        let waited = now.elapsed();
        assert!(waited >= Duration::from_secs(5) && waited <= Duration::from_secs(5) + SLACK);
        assert!(shared.lock().is_some(), "kept after a timeout");
        // Cancelled mid-wait (the client went away): given back too.
        let cancelled = tokio::time::timeout(
            Duration::from_secs(1),
            shared.timeout(
                Instant::now() + Duration::from_secs(30),
                std::future::pending::<()>(),
            ),
        )
        .await;
        assert!(cancelled.is_err());
        assert!(shared.lock().is_some(), "kept after a cancel");
    }

    /// Spends the task's whole coop budget on its first poll (as a busy upstream exchange
    /// can), then stays pending without asking to be woken.
    fn spends_the_budget() -> impl Future<Output = ()> {
        let mut first = true;
        std::future::poll_fn(move |cx| {
            if std::mem::take(&mut first) {
                let mut spend = Box::pin(tokio::task::coop::consume_budget());
                while spend.as_mut().poll(cx).is_ready() {
                    spend = Box::pin(tokio::task::coop::consume_budget());
                }
            }
            Poll::Pending
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_fires_though_the_future_spent_the_task_budget_first() {
        let shared = SharedSleepSlot::default();
        let now = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            shared.timeout(now + Duration::from_secs(1), spends_the_budget()),
        )
        .await;
        assert_eq!(out, Ok(Err(TimedOut)), "the kept timer never fired");
        let waited = now.elapsed();
        assert!(waited >= Duration::from_secs(1) && waited <= Duration::from_secs(1) + SLACK);
    }

    fn futures_poll(slot: &mut SleepSlot, deadline: Instant) -> Poll<()> {
        let waker = Waker::noop();
        slot.poll_until(deadline, &mut Context::from_waker(waker))
    }
}
