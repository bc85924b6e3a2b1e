//! Failed webhook verifications counted per endpoint and source address, for operators and
//! alerting: a sender whose secret rotated, or someone probing an endpoint, shows up here.
//! Kept in memory and bounded; metrics carry only the endpoint (an address label would be
//! unbounded).

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

/// Most (endpoint, address) pairs kept; the least recently seen goes first.
const MAX_ENTRIES: usize = 10_000;

/// One (endpoint, source) pair's failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    /// The webhook endpoint id.
    pub webhook: String,
    /// The sender's address (the client IP, after trusted proxies).
    pub source: IpAddr,
    /// Failures since the process started (or since the pair was last evicted).
    pub count: u64,
    /// Unix seconds of the last failure.
    pub last_seen: i64,
}

/// The process-wide failure counts.
#[derive(Default)]
pub struct WebhookFailures {
    counts: Mutex<HashMap<(String, IpAddr), (u64, i64)>>,
}

impl WebhookFailures {
    /// Counts one failure.
    pub fn record(&self, webhook: &str, source: IpAddr) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Ok(mut map) = self.counts.lock() else {
            return;
        };
        let key = (webhook.to_string(), source);
        if !map.contains_key(&key) && map.len() >= MAX_ENTRIES {
            if let Some(oldest) = map.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        let e = map.entry(key).or_insert((0, now));
        e.0 += 1;
        e.1 = now;
    }

    /// Every pair, most failures first.
    pub fn snapshot(&self) -> Vec<FailureCount> {
        let Ok(map) = self.counts.lock() else {
            return Vec::new();
        };
        let mut out: Vec<FailureCount> = map
            .iter()
            .map(|((webhook, source), (count, last_seen))| FailureCount {
                webhook: webhook.clone(),
                source: *source,
                count: *count,
                last_seen: *last_seen,
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.webhook.cmp(&b.webhook)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_endpoint_and_source_most_first() {
        let f = WebhookFailures::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        f.record("stripe", a);
        f.record("stripe", b);
        f.record("stripe", b);
        f.record("github", b);
        let s = f.snapshot();
        assert_eq!(
            (s[0].webhook.as_str(), s[0].source, s[0].count),
            ("stripe", b, 2)
        );
        assert_eq!(s.len(), 3);
    }
}
