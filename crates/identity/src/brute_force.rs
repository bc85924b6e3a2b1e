//! Brute-force lockout: authentication failures are counted per source IP and per key id in a
//! fixed window; past the threshold the source is refused for a cool-down period (an address
//! for every request; a key id, by the authentication policy, for attempts that do not verify,
//! so whoever saw a public key id cannot shut its owner out). Memory is bounded: at most
//! `MAX_TRACKED` sources of each kind are tracked.
//!
//! With a shared counter (Redis, for several instances), each failure is also counted there,
//! after the refusal is sent: a source over the threshold in the shared count is locked out
//! by each instance at its next failure there. So spreading guesses over `n` instances buys
//! at most `n - 1` more than against one, instead of `n` times as many. The lock-out check
//! itself stays in memory: an authenticated request never waits for Redis because of it.
//!
//! What reaches Redis is bounded, since every count is a key there: key ids only when they
//! are ids of real keys (made-up ids are counted locally), and at most
//! `SHARED_PER_SECOND` counts a second per instance (beyond, locally, and counted in
//! `portcullis_auth_failures_unshared_total`). So the counters in Redis number at most about
//! `instances × SHARED_PER_SECOND × window`.

use portcullis_core::text::client_source;
use portcullis_state::FailureCounter;
use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

const MAX_TRACKED: usize = 100_000;
/// Shared counts in flight at most; past it (Redis slow under a flood of failures) a failure
/// is counted locally only, rather than piling up tasks.
const MAX_SHARED_IN_FLIGHT: usize = 1024;
/// Failures counted in the shared state per second per instance, at most.
const SHARED_PER_SECOND: u32 = 1000;

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

struct Tracker<K> {
    map: Mutex<HashMap<K, Window>>,
    /// The latest `locked_until` ever set, in nanoseconds since the tracker's `base`: while
    /// the clock is past it no source can be locked out, and `locked` answers without
    /// taking the lock. So an authenticated request touches no shared lock unless some
    /// lockout is running (measured: every API-key request locked both maps before).
    horizon: AtomicU64,
    base: Instant,
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    fn new() -> Self {
        Tracker {
            map: Mutex::new(HashMap::new()),
            horizon: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn locked<Q>(&self, k: &Q, now: Instant) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Acquire pairs with the release in `fail`: a lockout whose horizon this sees is
        // also in the map when it is read below.
        if self.nanos(now) >= self.horizon.load(Ordering::Acquire) {
            return None;
        }
        // Fail closed: a poisoned map (a thread panicked holding it) is still read.
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(k)
            .and_then(|w| w.locked_until)
            .filter(|u| *u > now)
            .map(|u| u - now)
    }

    fn fail(&self, k: &K, now: Instant, max: u32, window: Duration, cooldown: Duration) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return false;
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(k) {
            map.retain(|_, w| {
                w.locked_until.is_some_and(|u| u > now) || now.duration_since(w.started) < window
            });
            if map.len() >= MAX_TRACKED {
                return false;
            }
        }
        let w = map.entry(k.clone()).or_insert(Window {
            started: now,
            failures: 0,
            locked_until: None,
        });
        if now.duration_since(w.started) >= window {
            *w = Window {
                started: now,
                failures: 0,
                locked_until: None,
            };
        }
        w.failures += 1;
        if w.failures > max {
            let until = now + cooldown;
            w.locked_until = Some(until);
            self.horizon.fetch_max(self.nanos(until), Ordering::Release);
            return true;
        }
        false
    }

    /// Locks `k` out until `until` (or later, if it already is): the shared count said so.
    fn lock(&self, k: K, now: Instant, until: Instant, window: Duration) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&k) {
            // As in `fail`: counts still running are kept, not only lock-outs.
            map.retain(|_, w| {
                w.locked_until.is_some_and(|u| u > now) || now.duration_since(w.started) < window
            });
            if map.len() >= MAX_TRACKED {
                return;
            }
        }
        let w = map.entry(k).or_insert(Window {
            started: now,
            failures: 0,
            locked_until: None,
        });
        w.locked_until = Some(w.locked_until.map_or(until, |u| u.max(until)));
        self.horizon.fetch_max(self.nanos(until), Ordering::Release);
    }
}

/// The longest lock-out the tracker keeps, whatever it is given (the config allows 7 days).
const MAX_COOLDOWN: Duration = Duration::from_secs(30 * 86_400);

/// Tracks authentication failures and refuses locked-out sources.
pub struct BruteForce {
    max_failures: u32,
    window: Duration,
    cooldown: Duration,
    ips: Arc<Tracker<IpAddr>>,
    keys: Arc<Tracker<String>>,
    shared: Option<Arc<dyn FailureCounter>>,
    in_flight: Arc<AtomicUsize>,
    /// The second (since `base`) that `shared_this_second` counts, and that count.
    shared_second: AtomicU64,
    shared_this_second: std::sync::atomic::AtomicU32,
    base: Instant,
}

impl BruteForce {
    /// `max_failures` within `window` lock a source for `cooldown`. The config bounds both;
    /// the cool-down is capped here too, because `now + cooldown` must not overflow.
    pub fn new(max_failures: u32, window: Duration, cooldown: Duration) -> Self {
        BruteForce {
            max_failures,
            window,
            cooldown: cooldown.min(MAX_COOLDOWN),
            ips: Arc::new(Tracker::new()),
            keys: Arc::new(Tracker::new()),
            shared: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
            shared_second: AtomicU64::new(0),
            shared_this_second: std::sync::atomic::AtomicU32::new(0),
            base: Instant::now(),
        }
    }

    /// Also counts every failure in `shared`, the count all instances see.
    pub fn with_shared(mut self, shared: Arc<dyn FailureCounter>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// How long the source must still wait, if it is locked out.
    pub fn locked(&self, ip: IpAddr, key_id: Option<&str>) -> Option<Duration> {
        let now = Instant::now();
        let by_ip = self.ips.locked(&client_source(ip), now);
        let by_key = key_id.and_then(|k| self.keys.locked(k, now));
        by_ip.max(by_key)
    }

    /// How long key id `key_id` alone must still wait, if it is locked out.
    pub fn locked_key(&self, key_id: &str) -> Option<Duration> {
        self.keys.locked(key_id, Instant::now())
    }

    /// Counts a failure; true when it just caused a lockout. `key_known`: `key_id` is the id
    /// of a real key (see the module's doc: only those are counted in the shared state).
    pub fn fail(&self, ip: IpAddr, key_id: Option<&str>, key_known: bool) -> bool {
        let now = Instant::now();
        let a = self.ips.fail(
            &client_source(ip),
            now,
            self.max_failures,
            self.window,
            self.cooldown,
        );
        let b = key_id.is_some_and(|k| {
            self.keys.fail(
                &k.to_string(),
                now,
                self.max_failures,
                self.window,
                self.cooldown,
            )
        });
        self.count_shared(ip, key_id.filter(|_| key_known));
        a || b
    }

    /// True while this second's budget of shared counts lasts (a fixed one-second window:
    /// exact enough for a bound on Redis's memory).
    fn shared_budget(&self) -> bool {
        let second = self.base.elapsed().as_secs();
        let seen = self.shared_second.load(Ordering::Acquire);
        if seen != second
            && self
                .shared_second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.shared_this_second.store(0, Ordering::Release);
        }
        self.shared_this_second.fetch_add(1, Ordering::AcqRel) < SHARED_PER_SECOND
    }

    /// Counts the failure in the shared counter in the background (the refusal does not
    /// wait for it), and applies the lock-out it answers locally. When the counter cannot
    /// answer, the local count alone applies, as without one.
    fn count_shared(&self, ip: IpAddr, key_id: Option<&str>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.shared_budget() {
            metrics::counter!("portcullis_auth_failures_unshared_total").increment(1);
            return;
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_SHARED_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("portcullis_auth_failures_unshared_total").increment(1);
            return;
        }
        let (ips, keys, in_flight) = (self.ips.clone(), self.keys.clone(), self.in_flight.clone());
        let (max, window, cooldown) = (self.max_failures, self.window, self.cooldown);
        let source = client_source(ip);
        let key_id = key_id.map(str::to_string);
        rt.spawn(async move {
            let count = |key: String| {
                let shared = shared.clone();
                async move {
                    match shared.count_failure(&key, max, window, cooldown).await {
                        Ok(left) => left,
                        Err(e) => {
                            tracing::debug!(error = %e, "authentication failure not counted in the shared state");
                            None
                        }
                    }
                }
            };
            if let Some(left) = count(format!("ip:{source}")).await {
                let now = Instant::now();
                ips.lock(source, now, now + left.min(MAX_COOLDOWN), window);
            }
            if let Some(id) = key_id {
                if let Some(left) = count(format!("key:{id}")).await {
                    let now = Instant::now();
                    keys.lock(id, now, now + left.min(MAX_COOLDOWN), window);
                }
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_the_threshold_then_unlocks() {
        let bf = BruteForce::new(3, Duration::from_secs(60), Duration::from_millis(50));
        let ip = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..3 {
            assert!(!bf.fail(ip, None, false));
        }
        assert!(bf.locked(ip, None).is_none());
        assert!(bf.fail(ip, None, false));
        assert!(bf.locked(ip, None).is_some());
        assert!(bf.locked(IpAddr::from([192, 0, 2, 2]), None).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(bf.locked(ip, None).is_none());
    }

    #[test]
    fn an_ipv6_source_is_its_64_so_fresh_addresses_do_not_escape_a_lockout() {
        let bf = BruteForce::new(2, Duration::from_secs(60), Duration::from_secs(60));
        let v6 = |last: u16, net: u16| IpAddr::from([0x2001, 0xdb8, 1, net, 0, 0, 0, last]);
        for i in 1..=3 {
            bf.fail(v6(i, 2), None, false);
        }
        assert!(bf.locked(v6(9_999, 2), None).is_some(), "the same /64");
        assert!(bf.locked(v6(1, 3), None).is_none(), "another /64");
        // IPv4 stays per address.
        for _ in 0..3 {
            bf.fail(IpAddr::from([192, 0, 2, 1]), None, false);
        }
        assert!(bf.locked(IpAddr::from([192, 0, 2, 2]), None).is_none());
    }

    #[test]
    fn a_lockout_is_found_whatever_the_horizon_of_earlier_ones() {
        // The first lockout expires; the horizon it left behind must neither hide the
        // second (set later, by another key) nor keep the expired one locked.
        let bf = BruteForce::new(0, Duration::from_secs(60), Duration::from_millis(30));
        assert!(bf
            .locked(IpAddr::from([192, 0, 2, 1]), Some("k1"))
            .is_none());
        bf.fail(IpAddr::from([192, 0, 2, 1]), Some("k1"), false);
        std::thread::sleep(Duration::from_millis(40));
        assert!(bf
            .locked(IpAddr::from([192, 0, 2, 9]), Some("k1"))
            .is_none());
        bf.fail(IpAddr::from([192, 0, 2, 2]), Some("k2"), false);
        assert!(bf
            .locked(IpAddr::from([192, 0, 2, 9]), Some("k2"))
            .is_some());
        assert!(bf.locked(IpAddr::from([192, 0, 2, 2]), None).is_some());
        assert!(bf
            .locked(IpAddr::from([192, 0, 2, 1]), Some("k1"))
            .is_none());
    }

    #[test]
    fn key_ids_are_tracked_across_addresses() {
        let bf = BruteForce::new(2, Duration::from_secs(60), Duration::from_secs(60));
        for i in 0..3u8 {
            bf.fail(IpAddr::from([198, 51, 100, i]), Some("abcd"), false);
        }
        assert!(bf
            .locked(IpAddr::from([203, 0, 113, 9]), Some("abcd"))
            .is_some());
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;
    use portcullis_state::StateError;

    /// Records what reaches the shared state; never locks. (What the counter does with them
    /// is tested against a real Redis in portcullis-state.)
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl FailureCounter for Recorder {
        async fn count_failure(
            &self,
            key: &str,
            _max: u32,
            _window: Duration,
            _cooldown: Duration,
        ) -> Result<Option<Duration>, StateError> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(key.to_string());
            Ok(None)
        }
    }

    fn guard(rec: &Arc<Recorder>) -> BruteForce {
        BruteForce::new(1_000_000, Duration::from_secs(60), Duration::from_secs(60))
            .with_shared(rec.clone())
    }

    #[tokio::test]
    async fn only_real_key_ids_reach_the_shared_state() {
        let rec = Arc::new(Recorder::default());
        let bf = guard(&rec);
        let ip = IpAddr::from([192, 0, 2, 7]);
        bf.fail(ip, Some("madeup0000000000"), false);
        bf.fail(ip, Some("real000000000000"), true);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let seen = rec.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            seen,
            ["ip:192.0.2.7", "ip:192.0.2.7", "key:real000000000000"],
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn the_shared_counts_of_one_instance_are_bounded_per_second() {
        let rec = Arc::new(Recorder::default());
        let bf = guard(&rec);
        for i in 0..2_500u32 {
            bf.fail(IpAddr::from(i.to_be_bytes()), None, false);
            // Each count completes before the next failure: only the budget can hold one back.
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let n = rec.0.lock().unwrap_or_else(|e| e.into_inner()).len();
        // The loop takes well under two seconds, so at most two seconds' budgets.
        assert!(n >= 1 && n <= 2 * SHARED_PER_SECOND as usize, "{n}");
    }
}
