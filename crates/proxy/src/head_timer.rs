//! hyper's HTTP/1 header-read timer, one tokio sleep per connection instead of one per request.
//!
//! hyper asks its timer for a fresh sleep each time it starts reading a request head and drops
//! it once the head is in. With `TokioTimer` that is, per request, a boxed tokio `Sleep`
//! registered in the runtime's timer wheel when the connection waits for the next head, and
//! removed from it when the head arrives: a lock of the wheel each way, ~570 instructions per
//! request with the box (callgrind, bench/RESULTS.md, tenth run).
//!
//! Here every sleep hyper asks for on one connection polls that connection's one kept tokio
//! sleep ([`SharedSleepSlot`]): a request's deadline mostly finds the timer already set far
//! enough, and registered with the connection task's waker. The timeout itself is unchanged
//! but for [`SLACK`](portcullis_core::sleep_slot::SLACK): a head not read by its deadline
//! ends the connection, as before, at most that much later.
//!
//! Only for HTTP/1, whose dispatcher has one header-read sleep at a time, polled from the
//! connection's own task. HTTP/2 keeps `TokioTimer`: its keep-alive pings hold sleeps of their
//! own side by side.

use hyper::rt::{Sleep, Timer};
use portcullis_core::sleep_slot::SharedSleepSlot;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// A `hyper::rt::Timer` for one HTTP/1 connection (see the module docs).
#[derive(Clone, Default)]
pub(crate) struct HeadTimer {
    shared: Arc<SharedSleepSlot>,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            shared: self.shared.clone(),
            deadline: deadline.into(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(mut s) => s.deadline = new_deadline.into(),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    // tokio's clock, as `TokioTimer` has it, so deadlines hyper computes and the sleeps that
    // wait for them read the same time (also when a test pauses the clock).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One deadline on the connection's kept sleep.
struct HeadSleep {
    shared: Arc<SharedSleepSlot>,
    deadline: tokio::time::Instant,
}

impl Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_until(self.deadline, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once(s: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        s.as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    fn at(t: &HeadTimer, after: Duration) -> Pin<Box<dyn Sleep>> {
        t.sleep_until(t.now() + after)
    }

    use portcullis_core::sleep_slot::SLACK;

    fn within_slack(waited: Duration, of: Duration) -> bool {
        waited >= of && waited <= of + SLACK
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_ends_at_its_own_deadline_though_an_earlier_one_shared_the_timer() {
        let timer = HeadTimer::default();
        // The first head's sleep is polled, then dropped when its head arrives.
        let mut first = at(&timer, Duration::from_secs(10));
        assert!(poll_once(&mut first).is_pending());
        drop(first);
        tokio::time::advance(Duration::from_secs(5)).await;
        // The next head's deadline is later: the shared timer moves to it.
        let started = tokio::time::Instant::now();
        at(&timer, Duration::from_secs(10)).await;
        assert!(within_slack(started.elapsed(), Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_than_the_shared_timer_holds_still_fires_on_time() {
        let timer = HeadTimer::default();
        let mut long = at(&timer, Duration::from_secs(60));
        assert!(poll_once(&mut long).is_pending());
        drop(long);
        let started = tokio::time::Instant::now();
        at(&timer, Duration::from_secs(2)).await;
        assert!(within_slack(started.elapsed(), Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn reset_moves_the_deadline_of_the_sleep_it_is_given() {
        let timer = HeadTimer::default();
        let mut sleep = at(&timer, Duration::from_secs(3));
        assert!(poll_once(&mut sleep).is_pending());
        let started = tokio::time::Instant::now();
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(7));
        sleep.await;
        assert!(within_slack(started.elapsed(), Duration::from_secs(7)));
    }
}
