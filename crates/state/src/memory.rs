//! The in-memory limiter: one theoretical arrival time (TAT) per key in sharded maps, so
//! unrelated keys rarely meet on a lock, with bounded memory.
//!
//! When a shard is full, keys whose bucket has refilled go first (they carry no state), then
//! those that owe the fewest requests (how far the TAT runs ahead of now, in the key's own
//! emission intervals), and among equals the least recently asked about. Not simply the ones
//! nearest to a full bucket: limits of different rates share the maps, and an exhausted
//! 10-a-second key's TAT is nearer than a 1-an-hour key's used once, so spraying slow-limit
//! keys used to evict, and so reset, the fast limits a flood was being refused by. A spray of
//! keys used once each owes one request per key, so it can only push out keys that owe as
//! little; an exhausted limit, asked about or not, owes more and stays.

use crate::{Check, Decision, Limiter, LimiterError, Rate};
use async_trait::async_trait;
use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

const SHARDS: usize = 64;
/// Most keys tracked per shard (about a million in all) before keys are evicted.
const MAX_KEYS_PER_SHARD: usize = 16_384;

/// A fast keyed hash with a per-process random seed: keys are attacker-influenced (IPs,
/// header values), so the seed must not be guessable from outside.
type Hasher = foldhash::fast::RandomState;
type Shard = Mutex<HashMap<Box<str>, Entry, Hasher>>;

/// One key's state: its TAT, when it was last decided (admitted or refused), both in
/// nanoseconds since the limiter's epoch, and its rate's emission interval.
#[derive(Clone, Copy)]
struct Entry {
    tat: u64,
    seen: u64,
    interval: u64,
}

impl Entry {
    /// Eviction order, lowest first: requests owed, then last use.
    fn rank(&self, now: u64) -> (u64, u64) {
        let owed = self.tat.saturating_sub(now).div_ceil(self.interval.max(1));
        (owed, self.seen)
    }
}

/// Rate-limit state for one instance, in memory.
pub struct MemoryLimiter {
    epoch: Instant,
    shards: Box<[Shard]>,
    hasher: Hasher,
    max_per_shard: usize,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        MemoryLimiter::with_max_keys(SHARDS * MAX_KEYS_PER_SHARD)
    }
}

/// GCRA parameters in nanoseconds: the emission interval and the window (interval times
/// capacity) a key's TAT may run ahead of now.
///
/// The window is capped at a quarter of the clock's range: a saturated window would hold
/// every TAT and admit everything. Config refuses rates anywhere near the cap (ten years to
/// refill); past it, a rate admits fewer requests than configured, never more.
fn params(rate: &Rate) -> (u64, u64) {
    let interval = u64::try_from((rate.period.as_nanos() / u128::from(rate.limit.max(1))).max(1))
        .unwrap_or(u64::MAX);
    (
        interval,
        interval.saturating_mul(rate.capacity()).min(u64::MAX / 4),
    )
}

fn decide(tat: Option<u64>, now: u64, rate: &Rate) -> (Decision, u64) {
    let (interval, window) = params(rate);
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(interval);
    let used = new_tat - now;
    if used > window {
        let d = Decision {
            allowed: false,
            remaining: 0,
            wait: Duration::from_nanos(used - window),
        };
        return (d, tat);
    }
    let d = Decision {
        allowed: true,
        remaining: (window - used) / interval,
        wait: Duration::from_nanos(used),
    };
    (d, new_tat)
}

impl MemoryLimiter {
    /// The process-wide limiter, shared across config generations so a reload does not reset
    /// anyone's allowance.
    pub fn shared() -> Arc<MemoryLimiter> {
        static SHARED: OnceLock<Arc<MemoryLimiter>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(MemoryLimiter::default()))
            .clone()
    }

    /// A limiter holding at most about `max_keys` keys.
    pub fn with_max_keys(max_keys: usize) -> Self {
        MemoryLimiter {
            epoch: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Hasher::default())))
                .collect(),
            hasher: Hasher::default(),
            max_per_shard: (max_keys / SHARDS).max(1),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Decides synchronously; see [`Limiter::check`]. A poisoned shard lock (a panic while
    /// holding it, which the code never does on purpose) refuses: fail closed.
    pub fn decide(&self, checks: &[Check<'_>]) -> Vec<Decision> {
        let now = self.now();
        if let [one] = checks {
            let Ok(mut map) = self.shards[self.shard_of(one.key)].lock() else {
                return vec![refused()];
            };
            let entry = map.get_mut(one.key);
            let (d, tat) = decide(entry.as_ref().map(|e| e.tat), now, &one.rate);
            match entry {
                Some(e) => {
                    e.seen = now;
                    e.tat = tat;
                }
                None if d.allowed => {
                    let interval = params(&one.rate).0;
                    store(&mut map, one.key, tat, interval, now, self.max_per_shard)
                }
                None => {}
            }
            return vec![d];
        }
        // Several limits: lock every shard involved, in index order so two requests never
        // wait on each other crosswise, then decide all before recording any.
        let idx: Vec<usize> = checks.iter().map(|c| self.shard_of(c.key)).collect();
        let mut order = idx.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, _>)> = Vec::with_capacity(order.len());
        for i in order {
            let Ok(g) = self.shards[i].lock() else {
                return checks.iter().map(|_| refused()).collect();
            };
            guards.push((i, g));
        }
        // Position of each check's shard among the guards.
        let slots: Vec<usize> = idx
            .iter()
            .map(|i| guards.iter().position(|(s, _)| s == i).unwrap_or(0))
            .collect();
        let mut decisions = Vec::with_capacity(checks.len());
        let mut tats = Vec::with_capacity(checks.len());
        for (c, &at) in checks.iter().zip(&slots) {
            let entry = guards[at].1.get_mut(c.key);
            let (d, tat) = decide(entry.as_ref().map(|e| e.tat), now, &c.rate);
            if let Some(e) = entry {
                e.seen = now;
            }
            decisions.push(d);
            tats.push(tat);
        }
        if crate::all_allowed(&decisions) {
            for ((c, &at), tat) in checks.iter().zip(&slots).zip(tats) {
                let interval = params(&c.rate).0;
                store(
                    &mut guards[at].1,
                    c.key,
                    tat,
                    interval,
                    now,
                    self.max_per_shard,
                );
            }
        }
        decisions
    }
}

fn refused() -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        wait: Duration::from_secs(1),
    }
}

fn store(
    map: &mut HashMap<Box<str>, Entry, Hasher>,
    key: &str,
    tat: u64,
    interval: u64,
    now: u64,
    max: usize,
) {
    let entry = Entry {
        tat,
        seen: now,
        interval,
    };
    if let Some(e) = map.get_mut(key) {
        *e = entry;
        return;
    }
    if map.len() >= max {
        // Keys whose bucket is full again carry no state worth keeping.
        map.retain(|_, e| e.tat > now);
        if map.len() >= max {
            // Still full of active keys (a key-spraying flood): drop the eighth of them that
            // owe least, least recently asked about first (see the module's doc). Memory
            // stays bounded and no new key is refused for want of room. An eighth at once,
            // not one key: each eviction scans the whole shard under its lock, and one per new
            // key made every request of a flood of fresh keys cost a scan of ~16k entries.
            // Now the next eighth of new keys find room without any scan.
            let mut ranks: Vec<(u64, u64)> = map.values().map(|e| e.rank(now)).collect();
            let nth = (max / 8).min(ranks.len() - 1);
            let (_, cut, _) = ranks.select_nth_unstable(nth);
            let cut = *cut;
            // Exactly `nth + 1` keys: those below the cut, then as many at it as are needed
            // (many keys can share one rank; dropping all of them could empty the shard).
            let mut at_cut = nth + 1 - ranks.iter().filter(|&&r| r < cut).count();
            map.retain(|_, e| {
                let r = e.rank(now);
                if r < cut {
                    false
                } else if r == cut && at_cut > 0 {
                    at_cut -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
    map.insert(Box::from(key), entry);
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, LimiterError> {
        Ok(self.decide(checks))
    }

    fn check_now(&self, checks: &[Check<'_>]) -> Option<Vec<Decision>> {
        Some(self.decide(checks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(limit: u64, secs: u64, burst: u64) -> Rate {
        Rate {
            limit,
            period: Duration::from_secs(secs),
            burst,
        }
    }

    /// An emission interval longer than any TAT in these tests: every active key owes one
    /// request, so last use alone orders them.
    const SAME_DEBT: u64 = 1 << 40;

    fn one<'a>(key: &'a str, r: Rate) -> [Check<'a>; 1] {
        [Check { key, rate: r }]
    }

    #[test]
    fn admits_exactly_limit_plus_burst_at_once() {
        let m = MemoryLimiter::default();
        let r = rate(100, 60, 20);
        let admitted = (0..200)
            .filter(|_| m.decide(&one("k", r))[0].allowed)
            .count();
        assert_eq!(admitted, 120);
        let other = (0..10)
            .filter(|_| m.decide(&one("other", r))[0].allowed)
            .count();
        assert_eq!(other, 10, "keys are independent");
    }

    #[test]
    fn a_rate_too_long_for_the_clock_refuses_rather_than_admits_everything() {
        // 1 per 600 years: the emission interval alone passes u64 nanoseconds. The saturated
        // window used to hold every TAT, so every request passed.
        let m = MemoryLimiter::default();
        let r = rate(1, 600 * 365 * 86_400, 0);
        let admitted = (0..50)
            .filter(|_| m.decide(&one("k", r))[0].allowed)
            .count();
        assert!(admitted <= 1, "admitted {admitted}");
        // 1 per year with a burst of 600: the window saturates, the cap keeps it finite.
        let r = rate(1, 365 * 86_400, 600);
        let admitted = (0..1000)
            .filter(|_| m.decide(&one("j", r))[0].allowed)
            .count();
        assert!(admitted <= 601, "admitted {admitted}");
        assert!(!m.decide(&one("j", r))[0].allowed);
    }

    #[test]
    fn remaining_counts_down_and_refusal_says_when() {
        let m = MemoryLimiter::default();
        let r = rate(3, 60, 0);
        let rem: Vec<u64> = (0..3)
            .map(|_| m.decide(&one("k", r))[0].remaining)
            .collect();
        assert_eq!(rem, vec![2, 1, 0]);
        let refused = m.decide(&one("k", r))[0];
        assert!(!refused.allowed);
        // One request is allowed again after one emission interval (20 s), less the time
        // that has already passed.
        assert!(refused.wait <= Duration::from_secs(20) && refused.wait > Duration::from_secs(19));
    }

    #[test]
    fn refused_requests_consume_nothing() {
        let m = MemoryLimiter::default();
        let r = rate(2, 3600, 0);
        assert!(m.decide(&one("k", r))[0].allowed);
        assert!(m.decide(&one("k", r))[0].allowed);
        let first_wait = m.decide(&one("k", r))[0].wait;
        for _ in 0..1000 {
            assert!(!m.decide(&one("k", r))[0].allowed);
        }
        // Hammering while refused did not push the next admission further out.
        assert!(m.decide(&one("k", r))[0].wait <= first_wait);
    }

    #[test]
    fn several_limits_are_all_or_nothing() {
        let m = MemoryLimiter::default();
        let wide = rate(100, 60, 0);
        let narrow = rate(2, 60, 0);
        let checks = [
            Check {
                key: "wide",
                rate: wide,
            },
            Check {
                key: "narrow",
                rate: narrow,
            },
        ];
        let admitted = (0..10)
            .filter(|_| crate::all_allowed(&m.decide(&checks)))
            .count();
        assert_eq!(admitted, 2);
        // The wide limit counted only the two admitted requests, not the eight refused.
        let d = m.decide(&one("wide", wide))[0];
        assert!(d.allowed);
        assert_eq!(d.remaining, 100 - 3);
    }

    #[test]
    fn exact_under_threads() {
        let m = Arc::new(MemoryLimiter::default());
        let r = rate(100, 60, 0);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| m.decide(&one("shared", r))[0].allowed)
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn memory_is_bounded_under_key_spraying() {
        let m = MemoryLimiter::with_max_keys(SHARDS * 8);
        let r = rate(1, 3600, 0);
        for i in 0..(SHARDS * 8 * 4) {
            let key = format!("ip:{i}");
            assert!(
                m.decide(&one(&key, r))[0].allowed,
                "a new key is never refused"
            );
        }
        let total: usize = m
            .shards
            .iter()
            .map(|s| s.lock().map(|g| g.len()).unwrap_or(0))
            .sum();
        assert!(total <= SHARDS * 8, "{total} keys held");
    }

    #[test]
    fn a_shard_full_of_active_keys_evicts_an_eighth_least_recently_asked_about_at_once() {
        let mut map = HashMap::with_hasher(Hasher::default());
        let max = 64;
        // Key i last asked about at time i, each with a long way to a full bucket, and the
        // oldest holding the most state: the eviction order must not follow the TATs.
        for i in 0..max as u64 {
            store(&mut map, &format!("k{i}"), 1_000_000 - i, SAME_DEBT, i, max);
        }
        assert_eq!(map.len(), max);
        store(&mut map, "new", 5_000, SAME_DEBT, 100, max);
        // The nine asked about longest ago (k0-k8) went; the rest and the new key stay.
        assert_eq!(map.len(), max - 9 + 1);
        assert!(!map.contains_key("k0") && !map.contains_key("k8"));
        assert!(map.contains_key("k9") && map.contains_key("k63") && map.contains_key("new"));
        // The next new keys find room without evicting anything.
        for i in 0..8 {
            store(&mut map, &format!("later{i}"), 6_000, SAME_DEBT, 101, max);
        }
        assert_eq!(map.len(), max);
        assert!(map.contains_key("k9"));
    }

    #[test]
    fn refilled_keys_go_before_any_active_one() {
        let mut map = HashMap::with_hasher(Hasher::default());
        let max = 64;
        for i in 0..max as u64 {
            // Even keys refilled by time 500 (TAT 400), odd ones still active.
            let tat = if i % 2 == 0 { 400 } else { 10_000 };
            store(&mut map, &format!("k{i}"), tat, SAME_DEBT, i, max);
        }
        store(&mut map, "new", 10_000, SAME_DEBT, 500, max);
        assert_eq!(map.len(), max / 2 + 1);
        assert!((0..max)
            .filter(|i| i % 2 == 1)
            .all(|i| map.contains_key(&*format!("k{i}"))));
    }

    #[test]
    fn keys_that_share_one_value_are_evicted_only_as_far_as_needed() {
        let mut map = HashMap::with_hasher(Hasher::default());
        let max = 64;
        for i in 0..max {
            store(&mut map, &format!("k{i}"), 1_000, SAME_DEBT, 0, max);
        }
        store(&mut map, "new", 1_000, SAME_DEBT, 0, max);
        assert_eq!(map.len(), max - 9 + 1);
    }

    #[test]
    fn spraying_keys_of_a_slower_limit_does_not_reset_a_fast_limit_being_refused() {
        // A flood on a fast limit, refused, while the same attacker fills the table with
        // keys of a slow limit (one request per value of a header, say). Evicting by the
        // nearest TAT dropped the exhausted fast key first and admitted its flood again.
        let m = MemoryLimiter::with_max_keys(SHARDS * 8);
        let fast = rate(10, 1, 0);
        let slow = rate(1, 3600, 0);
        let admitted = (0..10)
            .filter(|_| m.decide(&one("fast", fast))[0].allowed)
            .count();
        assert_eq!(admitted, 10);
        let mut readmitted = 0;
        for i in 0..(SHARDS * 8 * 2) {
            let key = format!("h:{i}");
            assert!(m.decide(&one(&key, slow))[0].allowed);
            readmitted += usize::from(m.decide(&one("fast", fast))[0].allowed);
        }
        // The loop takes far less than the 100 ms a fast-limit request needs to refill on
        // a debug build too, but allow the odd one a slow machine lets through in time.
        assert!(readmitted <= 2, "readmitted {readmitted}");
    }

    #[test]
    fn a_spray_of_keys_used_once_cannot_push_out_an_exhausted_limit_nobody_asks_about() {
        // A 5-an-hour limit used up, then left alone; then a spray of fresh keys of a
        // 1-an-hour limit, each used once. By last use alone the exhausted key went first and
        // its allowance came back; it owes five requests, the spray one each.
        let m = MemoryLimiter::with_max_keys(SHARDS * 8);
        let five = rate(5, 3600, 0);
        let admitted = (0..5)
            .filter(|_| m.decide(&one("account", five))[0].allowed)
            .count();
        assert_eq!(admitted, 5);
        let slow = rate(1, 3600, 0);
        for i in 0..(SHARDS * 8 * 4) {
            assert!(m.decide(&one(&format!("h:{i}"), slow))[0].allowed);
        }
        assert!(
            !m.decide(&one("account", five))[0].allowed,
            "the limit was reset"
        );
    }

    #[test]
    fn divided_rate_never_reaches_zero() {
        let r = rate(10, 60, 5);
        assert_eq!(r.divided(3), rate(3, 60, 1));
        assert_eq!(rate(1, 60, 0).divided(4).limit, 1);
    }
}
