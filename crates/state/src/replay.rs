//! Replay caches: remember accepted messages (webhook deliveries) for a window, so a replay or
//! a duplicate delivery is recognised, in memory for one instance or in Redis for several.

use crate::StateError;
use async_trait::async_trait;
use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Remembers message keys for a while.
#[async_trait]
pub trait ReplayCache: Send + Sync {
    /// Records `key` for `ttl` unless it is already recorded; true when this is its first
    /// appearance. Atomic: of two concurrent callers with one key, exactly one gets true.
    async fn remember(&self, key: &str, ttl: Duration) -> Result<bool, StateError>;
    /// Forgets `key`: its message was not accepted after all (forwarding failed), so the
    /// sender's retry must not count as a duplicate.
    async fn forget(&self, key: &str) -> Result<(), StateError>;
}

const SHARDS: usize = 16;

/// Keys and the instant each stops counting.
type Shard = Mutex<HashMap<Box<str>, Instant>>;

/// The in-memory replay cache, bounded: when full of live entries it refuses new ones
/// (an error, so the caller fails closed) rather than forgetting live ones, which would let
/// replays through.
pub struct MemoryReplayCache {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    max_per_shard: usize,
}

impl Default for MemoryReplayCache {
    fn default() -> Self {
        Self::with_max_keys(1 << 20)
    }
}

impl MemoryReplayCache {
    /// A cache of at most about `max_keys` live keys.
    pub fn with_max_keys(max_keys: usize) -> Self {
        MemoryReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            max_per_shard: (max_keys / SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}

#[async_trait]
impl ReplayCache for MemoryReplayCache {
    async fn remember(&self, key: &str, ttl: Duration) -> Result<bool, StateError> {
        let now = Instant::now();
        let mut map = self
            .shard(key)
            .lock()
            .map_err(|_| StateError::Unavailable("replay cache lock poisoned".into()))?;
        if let Some(until) = map.get(key) {
            if *until > now {
                return Ok(false);
            }
        }
        if map.len() >= self.max_per_shard {
            map.retain(|_, until| *until > now);
            if map.len() >= self.max_per_shard {
                return Err(StateError::Unavailable("replay cache full".into()));
            }
        }
        map.insert(Box::from(key), now + ttl);
        Ok(true)
    }

    async fn forget(&self, key: &str) -> Result<(), StateError> {
        if let Ok(mut map) = self.shard(key).lock() {
            map.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_appearance_only_then_forgotten_or_expired() {
        let c = MemoryReplayCache::default();
        let long = Duration::from_secs(60);
        assert!(matches!(c.remember("a", long).await, Ok(true)));
        assert!(matches!(c.remember("a", long).await, Ok(false)));
        assert!(matches!(c.remember("b", long).await, Ok(true)));
        assert!(c.forget("a").await.is_ok());
        assert!(matches!(c.remember("a", long).await, Ok(true)));
        assert!(matches!(
            c.remember("short", Duration::ZERO).await,
            Ok(true)
        ));
        assert!(
            matches!(c.remember("short", long).await, Ok(true)),
            "expired entries do not count"
        );
    }

    #[tokio::test]
    async fn a_full_cache_refuses_instead_of_forgetting_live_keys() {
        let c = MemoryReplayCache::with_max_keys(SHARDS);
        let long = Duration::from_secs(60);
        let mut accepted = Vec::new();
        let mut refused = 0;
        for i in 0..(SHARDS * 4) {
            let k = format!("k{i}");
            match c.remember(&k, long).await {
                Ok(true) => accepted.push(k),
                Ok(false) => panic!("new key reported as seen"),
                Err(_) => refused += 1,
            }
        }
        assert!(refused > 0);
        // Every key that was accepted is still remembered.
        for k in &accepted {
            assert!(
                matches!(c.remember(k, long).await, Ok(false)),
                "{k} forgotten"
            );
        }
    }
}
