//! Circuit breaker state machine with an injected clock.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_egress::breaker::{Breaker, BreakerConfig, BreakerState, ManualClock};

fn setup() -> (Breaker, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let config = BreakerConfig {
        window: Duration::from_secs(10),
        buckets: 10,
        min_requests: 10,
        failure_ratio: 0.5,
        open_for: Duration::from_secs(30),
        half_open_probes: 2,
    };
    (Breaker::new("crm", config, clock.clone()), clock)
}

fn fail(b: &Breaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().unwrap().failure();
    }
}

fn succeed(b: &Breaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().unwrap().success();
    }
}

#[test]
fn stays_closed_below_min_requests_and_ratio() {
    let (b, _) = setup();
    fail(&b, 9);
    assert_eq!(b.state(), BreakerState::Closed, "9 < min_requests");
    let (b, _) = setup();
    succeed(&b, 11);
    fail(&b, 10);
    assert_eq!(b.state(), BreakerState::Closed, "10/21 < 0.5");
}

#[test]
fn opens_half_opens_and_closes_on_probe_success() {
    let (b, clock) = setup();
    succeed(&b, 5);
    fail(&b, 5);
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.name(), "crm");
    let rejected = b.try_acquire().unwrap_err();
    assert_eq!(rejected.retry_in, Duration::from_secs(30));

    clock.advance(Duration::from_secs(29));
    assert_eq!(
        b.try_acquire().unwrap_err().retry_in,
        Duration::from_secs(1)
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.state(), BreakerState::HalfOpen);

    // Two probes at a time, no more.
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert!(p1.is_probe() && p2.is_probe());
    assert_eq!(b.try_acquire().unwrap_err().retry_in, Duration::ZERO);
    p1.success();
    assert_eq!(b.state(), BreakerState::Closed);
    // The other probe's late outcome belongs to the old state and changes nothing.
    p2.failure();
    assert_eq!(b.state(), BreakerState::Closed);
    // Closed with an empty window: it takes min_requests failures again.
    fail(&b, 9);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn probe_failure_reopens() {
    let (b, clock) = setup();
    fail(&b, 10);
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(30));
    let probe = b.try_acquire().unwrap();
    assert!(probe.is_probe());
    probe.failure();
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(
        b.try_acquire().unwrap_err().retry_in,
        Duration::from_secs(30)
    );
    clock.advance(Duration::from_secs(30));
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[test]
fn abandoned_probe_frees_its_slot() {
    let (b, clock) = setup();
    fail(&b, 10);
    clock.advance(Duration::from_secs(31));
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(p1);
    let p3 = b.try_acquire().unwrap();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    p2.success();
    drop(p3);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn window_forgets_old_outcomes() {
    let (b, clock) = setup();
    fail(&b, 9);
    clock.advance(Duration::from_secs(11));
    // The nine failures fell out of the 10 s window.
    fail(&b, 1);
    succeed(&b, 9);
    assert_eq!(b.state(), BreakerState::Closed);
    // Half the window later the recent outcomes still count: 1 + 5 = 6 failures of 15.
    clock.advance(Duration::from_secs(5));
    fail(&b, 5);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b, 2);
    assert_eq!(b.state(), BreakerState::Closed, "8 of 17");
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open, "9 of 18 >= 0.5");
}

#[test]
fn late_outcome_from_closed_does_not_affect_open() {
    let (b, clock) = setup();
    let slow = b.try_acquire().unwrap();
    fail(&b, 10);
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(30));
    let probe = b.try_acquire().unwrap();
    slow.success();
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen,
        "a stale success must not close"
    );
    probe.success();
    assert_eq!(b.state(), BreakerState::Closed);
}

fn configured(window: Duration, half_open_probes: u32) -> (Breaker, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let config = BreakerConfig {
        window,
        half_open_probes,
        min_requests: 10,
        failure_ratio: 0.5,
        open_for: Duration::from_secs(30),
        ..BreakerConfig::default()
    };
    (Breaker::new("crm", config, clock.clone()), clock)
}

#[test]
fn the_configured_window_length_decides_what_is_remembered() {
    // Nine failures, then one more 20 s later: a 60 s window still holds the nine and opens,
    // a 5 s window has forgotten them and stays closed.
    for (window, opens) in [
        (Duration::from_secs(60), true),
        (Duration::from_secs(5), false),
    ] {
        let (b, clock) = configured(window, 1);
        fail(&b, 9);
        clock.advance(Duration::from_secs(20));
        fail(&b, 1);
        let want = if opens {
            BreakerState::Open
        } else {
            BreakerState::Closed
        };
        assert_eq!(b.state(), want, "window {window:?}");
    }
    // Inside a short window the same failures do count: 9 at t = 0, 1 at t = 4 s of 5 s.
    let (b, clock) = configured(Duration::from_secs(5), 1);
    fail(&b, 9);
    clock.advance(Duration::from_secs(4));
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn the_configured_number_of_half_open_probes_is_admitted_and_no_more() {
    for probes in [1u32, 3, 5] {
        let (b, clock) = configured(Duration::from_secs(10), probes);
        fail(&b, 10);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(30));
        let permits: Vec<_> = (0..probes).map(|_| b.try_acquire().unwrap()).collect();
        assert!(permits.iter().all(|p| p.is_probe()));
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::ZERO,
            "{probes} probes admitted, the next one must wait"
        );
        // A probe's failure reopens at once; the others' late outcomes change nothing.
        let mut permits = permits.into_iter();
        permits.next().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        for p in permits {
            p.success();
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}

#[test]
fn every_state_change_is_reported_to_the_observer() {
    use std::sync::Mutex;
    let seen: Arc<Mutex<Vec<(String, BreakerState, BreakerState)>>> = Arc::default();
    let log = seen.clone();
    let clock = Arc::new(ManualClock::new());
    let b = Breaker::with_observer(
        "crm",
        BreakerConfig {
            min_requests: 2,
            ..BreakerConfig::default()
        },
        clock.clone(),
        Arc::new(move |name, from, to| log.lock().unwrap().push((name.to_string(), from, to))),
    );
    fail(&b, 2);
    clock.advance(Duration::from_secs(30));
    b.try_acquire().unwrap().success();
    use BreakerState::{Closed, HalfOpen, Open};
    let got = seen.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            ("crm".to_string(), Closed, Open),
            ("crm".to_string(), Open, HalfOpen),
            ("crm".to_string(), HalfOpen, Closed),
        ]
    );
}
