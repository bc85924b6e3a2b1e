//! When to retry an egress call, and how long to wait.
//!
//! Exponential backoff with full jitter (the wait is uniform in `[0, min(max, base * 2^n)]`,
//! which spreads retries of many callers instead of synchronising them), `Retry-After` honoured
//! as a floor, a deadline that no wait may overrun, retries only for requests that are safe to
//! repeat, and a [`RetryBudget`] so that retries cannot multiply load on a failing third party.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};

/// The retry schedule of one integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first (`1` disables retries).
    pub attempts: u32,
    /// The ceiling of the first retry's wait; it doubles per retry.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the wait before retry number `retry` (0 for the first retry):
    /// `min(max, base * 2^retry)`, without overflow.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The wait before retry number `retry`: uniform in `[0, ceiling(retry)]` (full jitter).
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, &mut fastrand::Rng::new())
    }

    /// [`delay`](Self::delay) with a given random source (seeded in tests).
    pub fn delay_with(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=ceiling))
    }

    /// The wait before retry number `retry`, or `None` when there must be no retry: the
    /// attempts are used up, or the wait (the jittered delay, raised to `retry_after` when
    /// the server sent one) would not fit in `remaining`, the time left before the call's
    /// deadline. A `Retry-After` longer than the deadline means giving up rather than retrying
    /// early.
    pub fn next_delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        remaining: Duration,
        rng: &mut fastrand::Rng,
    ) -> Option<Duration> {
        if retry.saturating_add(1) >= self.attempts {
            return None;
        }
        let wait = self
            .delay_with(retry, rng)
            .max(retry_after.unwrap_or(Duration::ZERO));
        (wait <= remaining).then_some(wait)
    }
}

/// Whether a request may be sent again: idempotent methods (RFC 9110: `GET`, `HEAD`,
/// `OPTIONS`, `PUT`, `DELETE`, `TRACE`), or any method when the request carries an
/// `Idempotency-Key`, which makes the third party deduplicate it.
pub fn may_retry(method: &Method, has_idempotency_key: bool) -> bool {
    has_idempotency_key
        || matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        )
}

/// Whether a response status is worth a retry: 408, 429, 502, 503, 504. Other 5xx statuses
/// usually repeat; 4xx statuses are the caller's problem.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504)
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (a date in the past is zero).
/// Returns `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly large numbers saturate; the deadline check turns them into "no retry".
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A retry budget: a token bucket where every request deposits `ratio` of a token and every
/// retry withdraws one, so that over time retries are at most `ratio` of requests (0.2: one
/// retry per five requests). The bucket holds at most `max_tokens`, which bounds a burst of
/// retries, and starts full so that a quiet integration can still retry its first failures.
/// Lock-free (one atomic, in thousandths of a token).
#[derive(Debug)]
pub struct RetryBudget {
    milli_tokens: AtomicU64,
    deposit: u64,
    cap: u64,
}

impl RetryBudget {
    /// A budget allowing retries for `ratio` (clamped to `0..=1`) of requests, with at most
    /// `max_tokens` retries banked.
    pub fn new(ratio: f64, max_tokens: u32) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let cap = u64::from(max_tokens) * 1000;
        Self {
            milli_tokens: AtomicU64::new(cap),
            // In 0..=1000 after the clamp, so the cast is exact enough and cannot overflow.
            deposit: (ratio * 1000.0).round() as u64,
            cap,
        }
    }

    /// Records a first attempt (not a retry): deposits `ratio` of a token.
    pub fn on_request(&self) {
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(self.deposit).min(self.cap))
            });
    }

    /// Takes one token for a retry; `false` means the budget is spent and the call must fail
    /// now instead of retrying.
    pub fn try_retry(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1000))
            .is_ok()
    }

    /// Retries currently available (whole tokens), for metrics.
    pub fn available(&self) -> u64 {
        self.milli_tokens.load(Ordering::Acquire) / 1000
    }
}
