//! A circuit breaker per integration.
//!
//! Closed: every call goes through and its outcome is counted in a rolling window of
//! `buckets` slices covering `window`. When the window holds at least `min_requests` outcomes
//! and the failure ratio reaches `failure_ratio`, the breaker opens: calls fail at once for
//! `open_for`, which gives the third party room to recover instead of a queue of timeouts.
//! Then it is half-open: at most `half_open_probes` calls at a time go through as probes; the
//! first probe success closes it (with an empty window), a probe failure opens it again.
//!
//! One small mutex guards the state; nothing is awaited while it is held. Outcomes of calls
//! admitted before the last state change are ignored, so a slow call started while closed
//! cannot close a breaker that has since opened. The clock is injectable for tests.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A monotonic clock.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            offset_nanos: AtomicU64::new(0),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.offset_nanos.fetch_add(nanos, Ordering::AcqRel);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.offset_nanos.load(Ordering::Acquire))
    }
}

/// Thresholds of one breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// The rolling window outcomes are counted over.
    pub window: Duration,
    /// How many slices the window is kept in (the window moves one slice at a time).
    pub buckets: u32,
    /// No opening before the window holds this many outcomes.
    pub min_requests: u32,
    /// Opens when failures / outcomes reaches this (in `(0, 1]`; 0 would open on
    /// `min_requests` outcomes whatever they were, so the config should refuse it).
    pub failure_ratio: f64,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Concurrent probes admitted while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            buckets: 10,
            min_requests: 20,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

/// Told of every state change (for the audit trail). Called while the breaker's lock is
/// held, so it must be quick and must not call back into the breaker; a log line is fine.
pub type Observer = Arc<dyn Fn(&str, BreakerState, BreakerState) + Send + Sync>;

/// The state reported to metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// A limited number of probe calls go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// A call refused because the breaker is open (or half-open with all probes out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open, retry in {retry_in:?}")]
pub struct Rejected {
    /// Time until the breaker half-opens (zero when it is half-open already); a hint for
    /// `Retry-After`.
    pub retry_in: Duration,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    tick: u64,
    total: u32,
    failures: u32,
}

#[derive(Debug)]
struct Inner {
    state: State,
    generation: u64,
    buckets: Vec<Bucket>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    config: BreakerConfig,
    bucket_len: Duration,
    epoch: Instant,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    observer: Option<ObserverSlot>,
}

/// The observer, in a wrapper so `Shared` can keep deriving `Debug`.
struct ObserverSlot(Observer);

impl Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// A circuit breaker. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

impl Breaker {
    /// A closed breaker named `name` (the integration id, used as the metrics label).
    pub fn new(name: impl Into<String>, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Self::build(name.into(), config, clock, None)
    }

    /// A closed breaker whose state changes are also reported to `observer` (name, from, to).
    pub fn with_observer(
        name: impl Into<String>,
        config: BreakerConfig,
        clock: Arc<dyn Clock>,
        observer: Observer,
    ) -> Self {
        Self::build(name.into(), config, clock, Some(ObserverSlot(observer)))
    }

    fn build(
        name: String,
        config: BreakerConfig,
        clock: Arc<dyn Clock>,
        observer: Option<ObserverSlot>,
    ) -> Self {
        let buckets = config.buckets.max(1);
        let bucket_len = (config.window / buckets).max(Duration::from_millis(1));
        let epoch = clock.now();
        let breaker = Self {
            shared: Arc::new(Shared {
                name,
                config,
                observer,
                bucket_len,
                epoch,
                clock,
                inner: Mutex::new(Inner {
                    state: State::Closed,
                    generation: 0,
                    buckets: vec![Bucket::default(); buckets as usize],
                }),
            }),
        };
        breaker.shared.publish(BreakerState::Closed);
        breaker
    }

    /// Asks to make a call. The returned [`Permit`] must be told the outcome
    /// ([`Permit::success`], [`Permit::failure`]); dropping it counts nothing.
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let now = self.shared.clock.now();
        let mut inner = self.shared.lock();
        self.shared.refresh(&mut inner, now);
        match inner.state {
            State::Closed => Ok(Permit::new(self, inner.generation, false)),
            State::Open { until } => Err(Rejected {
                retry_in: until.saturating_duration_since(now),
            }),
            State::HalfOpen { ref mut in_flight } => {
                if *in_flight < self.shared.config.half_open_probes.max(1) {
                    *in_flight += 1;
                    Ok(Permit::new(self, inner.generation, true))
                } else {
                    Err(Rejected {
                        retry_in: Duration::ZERO,
                    })
                }
            }
        }
    }

    /// The current state (an open breaker whose time is up reports half-open).
    pub fn state(&self) -> BreakerState {
        let now = self.shared.clock.now();
        let mut inner = self.shared.lock();
        self.shared.refresh(&mut inner, now);
        inner.state.public()
    }

    /// The integration name given at construction.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl State {
    fn public(self) -> BreakerState {
        match self {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent counters; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since / self.bucket_len.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    /// Open past its time becomes half-open.
    fn refresh(&self, inner: &mut Inner, now: Instant) {
        if let State::Open { until } = inner.state {
            if now >= until {
                self.transition(inner, State::HalfOpen { in_flight: 0 });
            }
        }
    }

    fn transition(&self, inner: &mut Inner, to: State) {
        let from = inner.state.public();
        inner.state = to;
        inner.generation += 1;
        for b in &mut inner.buckets {
            *b = Bucket::default();
        }
        tracing::info!(integration = %self.name, state = to.public().as_str(), "circuit breaker");
        self.publish(to.public());
        if let Some(ObserverSlot(observe)) = &self.observer {
            observe(&self.name, from, to.public());
        }
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("portcullis_egress_breaker_state", "integration" => self.name.clone())
            .set(state.as_gauge());
    }

    fn record(&self, generation: u64, probe: bool, outcome: Option<bool>) {
        let now = self.clock.now();
        let mut inner = self.lock();
        if generation != inner.generation {
            return;
        }
        match (inner.state, outcome) {
            (State::Closed, Some(success)) => {
                let tick = self.tick(now);
                let n = inner.buckets.len() as u64;
                let idx = usize::try_from(tick % n).unwrap_or(0);
                let bucket = &mut inner.buckets[idx];
                if bucket.tick != tick {
                    *bucket = Bucket {
                        tick,
                        ..Bucket::default()
                    };
                }
                bucket.total = bucket.total.saturating_add(1);
                if !success {
                    bucket.failures = bucket.failures.saturating_add(1);
                }
                let (total, failures) = inner
                    .buckets
                    .iter()
                    .filter(|b| b.tick + n > tick)
                    .fold((0u64, 0u64), |(t, f), b| {
                        (t + u64::from(b.total), f + u64::from(b.failures))
                    });
                let min = u64::from(self.config.min_requests.max(1));
                if total >= min && failures as f64 >= self.config.failure_ratio * total as f64 {
                    let until = now + self.config.open_for;
                    self.transition(&mut inner, State::Open { until });
                }
            }
            (State::HalfOpen { in_flight }, outcome) if probe => match outcome {
                Some(true) => self.transition(&mut inner, State::Closed),
                Some(false) => {
                    let until = now + self.config.open_for;
                    self.transition(&mut inner, State::Open { until });
                }
                None => {
                    inner.state = State::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                    }
                }
            },
            _ => {}
        }
    }
}

/// Permission for one call; report its outcome.
#[derive(Debug)]
#[must_use = "report the outcome with success() or failure()"]
pub struct Permit {
    shared: Arc<Shared>,
    generation: u64,
    probe: bool,
    done: bool,
}

impl Permit {
    fn new(breaker: &Breaker, generation: u64, probe: bool) -> Self {
        Self {
            shared: breaker.shared.clone(),
            generation,
            probe,
            done: false,
        }
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded (the third party answered, whatever the status, unless the gateway
    /// counts that status as a failure).
    pub fn success(mut self) {
        self.done = true;
        self.shared.record(self.generation, self.probe, Some(true));
    }

    /// The call failed (connection error, timeout, 5xx).
    pub fn failure(mut self) {
        self.done = true;
        self.shared.record(self.generation, self.probe, Some(false));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            // Abandoned (the caller went away): frees a probe slot, counts nothing.
            self.shared.record(self.generation, self.probe, None);
        }
    }
}
