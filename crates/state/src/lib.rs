//! Shared state: where counters live that several requests, or several Portcullis instances,
//! must agree on. Today that is rate-limit state, in memory for one instance ([`MemoryLimiter`])
//! or in Redis for several ([`RedisLimiter`]); webhook replay caches ([`ReplayCache`]); and
//! sealed egress OAuth access tokens with their refresh locks ([`TokenCache`]); and
//! authentication failures counted across instances ([`FailureCounter`]).
//!
//! Both limiters implement GCRA (the generic cell rate algorithm): one "theoretical arrival
//! time" per key, equivalent to a token bucket of `limit + burst` refilled at `limit` per
//! `period`. A decision covers every limit of a request at once and is all or nothing, so a
//! request refused by one limit consumes nothing from the others.

#![forbid(unsafe_code)]

mod failures;
mod memory;
mod redis_limiter;
mod replay;
mod token_cache;

pub use failures::FailureCounter;
pub use memory::MemoryLimiter;
pub use redis_limiter::{RedisLimiter, RedisOptions};
pub use replay::{MemoryReplayCache, ReplayCache};
pub use token_cache::{MemoryTokenCache, TokenCache};

use async_trait::async_trait;
use std::time::Duration;

/// One rate: `limit` requests per `period`, with `burst` more allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub limit: u64,
    /// The period.
    pub period: Duration,
    /// Extra requests admitted at once beyond `limit`.
    pub burst: u64,
}

impl Rate {
    /// How many requests may pass at once from a full bucket.
    pub fn capacity(&self) -> u64 {
        self.limit.saturating_add(self.burst).max(1)
    }

    /// The same rate with `limit` and `burst` divided by `n` (at least 1 each way of the
    /// limit), for one of `n` instances that must share the rate without talking.
    pub fn divided(&self, n: u32) -> Rate {
        let n = u64::from(n.max(1));
        Rate {
            limit: (self.limit / n).max(1),
            period: self.period,
            burst: self.burst / n,
        }
    }
}

/// One limit to decide for a request: the state key and its rate.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// Which counter (route, limit index and what it counts by).
    pub key: &'a str,
    /// The rate that counter enforces.
    pub rate: Rate,
}

/// The outcome of one limit for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// This limit alone would admit the request. The request was admitted (and recorded)
    /// only if every limit of the check said so.
    pub allowed: bool,
    /// Requests still allowed right now after this one (0 when refused).
    pub remaining: u64,
    /// Admitted: until the allowance is full again. Refused: until a request may pass.
    pub wait: Duration,
}

/// Why the shared state could not answer. The caller chooses what that means for the request
/// (refuse, or decide locally); the state never guesses.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The shared store is unreachable, timed out or answered something unusable.
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
}

/// The error of a limiter decision.
pub type LimiterError = StateError;

/// A place rate-limit state lives.
#[async_trait]
pub trait Limiter: Send + Sync {
    /// Decides every check of one request at once: the request is admitted only when every
    /// check admits it, and only then does each counter record it. Returns one decision per
    /// check, in order.
    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, LimiterError>;

    /// The same decision made in place, by a limiter whose state is in this process and
    /// needs no I/O; `None` from one that must ask elsewhere, whose caller then awaits
    /// [`Limiter::check`]. It spares the rate-limit policy a boxed future per request.
    fn check_now(&self, _checks: &[Check<'_>]) -> Option<Vec<Decision>> {
        None
    }
}

/// True when every decision admits.
pub fn all_allowed(decisions: &[Decision]) -> bool {
    decisions.iter().all(|d| d.allowed)
}
