//! Retry schedule, Retry-After, idempotency and the retry budget.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use http::Method;
use portcullis_egress::retry::{may_retry, parse_retry_after, RetryBudget, RetryPolicy};

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 6,
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
    }
}

#[test]
fn ceilings_double_then_cap() {
    let p = policy();
    let want = [100, 200, 400, 800, 1600, 2000, 2000];
    for (n, ms) in want.iter().enumerate() {
        assert_eq!(p.ceiling(n as u32), Duration::from_millis(*ms), "retry {n}");
    }
    assert_eq!(p.ceiling(200), Duration::from_secs(2));
    assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(2));
}

#[test]
fn full_jitter_within_bounds_and_spread() {
    let p = policy();
    let mut rng = fastrand::Rng::with_seed(7);
    for retry in 0..8 {
        let ceiling = p.ceiling(retry);
        let samples: Vec<Duration> = (0..2000).map(|_| p.delay_with(retry, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= ceiling), "retry {retry}");
        // Full jitter: the samples cover the whole range, not just its top.
        let low = samples.iter().filter(|d| **d < ceiling / 4).count();
        let high = samples.iter().filter(|d| **d > ceiling * 3 / 4).count();
        assert!(
            low > 300 && high > 300,
            "retry {retry}: low {low} high {high}"
        );
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!(
            mean > ceiling * 2 / 5 && mean < ceiling * 3 / 5,
            "retry {retry}: mean {mean:?}"
        );
    }
    // The unseeded entry point keeps the same bounds.
    for _ in 0..1000 {
        assert!(p.delay(3) <= p.ceiling(3));
    }
}

#[test]
fn retry_after_is_a_floor_within_the_deadline() {
    let p = policy();
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..500 {
        let d = p
            .next_delay(
                0,
                Some(Duration::from_secs(3)),
                Duration::from_secs(10),
                &mut rng,
            )
            .unwrap();
        assert_eq!(d, Duration::from_secs(3));
        // A short Retry-After does not shorten the jittered wait.
        let d = p
            .next_delay(
                4,
                Some(Duration::from_millis(1)),
                Duration::from_secs(10),
                &mut rng,
            )
            .unwrap();
        assert!(d >= Duration::from_millis(1) && d <= p.ceiling(4));
    }
    // Retry-After beyond the deadline: give up rather than retry early.
    assert_eq!(
        p.next_delay(
            0,
            Some(Duration::from_secs(30)),
            Duration::from_secs(10),
            &mut rng
        ),
        None
    );
    // Attempts used up: 6 attempts = 5 retries (0..=4).
    assert!(p
        .next_delay(4, None, Duration::from_secs(10), &mut rng)
        .is_some());
    assert_eq!(
        p.next_delay(5, None, Duration::from_secs(10), &mut rng),
        None
    );
    let once = RetryPolicy {
        attempts: 1,
        ..policy()
    };
    assert_eq!(
        once.next_delay(0, None, Duration::from_secs(10), &mut rng),
        None
    );
}

#[test]
fn retry_after_parsing() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(90))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("-5", now), None);
    assert_eq!(parse_retry_after("1.5", now), None);
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("", now), None);
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(Duration::from_secs(u64::MAX))
    );
}

#[test]
fn only_idempotent_or_keyed_requests_are_retried() {
    for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        assert!(may_retry(&m, false), "{m}");
    }
    for m in ["POST", "PATCH", "CONNECT", "PROPFIND"] {
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        assert!(
            !may_retry(&m, false),
            "{m} must never be retried without a key"
        );
        assert!(may_retry(&m, true), "{m} with an Idempotency-Key");
    }
}

#[test]
fn budget_limits_retries_to_a_ratio() {
    let budget = RetryBudget::new(0.2, 10);
    // Starts full: ten retries, then none.
    assert_eq!((0..20).filter(|_| budget.try_retry()).count(), 10);
    assert!(!budget.try_retry());
    // 100 requests earn 20 retries, capped at 10 banked.
    for _ in 0..100 {
        budget.on_request();
    }
    assert_eq!(budget.available(), 10);
    assert_eq!((0..20).filter(|_| budget.try_retry()).count(), 10);
    // Steady state: 50 requests interleaved with retry attempts allow exactly 10.
    let mut granted = 0;
    for _ in 0..50 {
        budget.on_request();
        if budget.try_retry() {
            granted += 1;
        }
    }
    assert_eq!(granted, 10);
    assert_eq!(RetryBudget::new(f64::NAN, 5).available(), 5);
    let none = RetryBudget::new(0.0, 0);
    none.on_request();
    assert!(!none.try_retry());
}
