//! Where egress OAuth access tokens are shared between instances, and the lock that makes a
//! refresh single flight across them.
//!
//! The cache holds opaque bytes: the caller seals each token (AES-256-GCM under a key derived
//! from the integration's own client secret) before it gets here, so neither this crate nor
//! Redis ever sees a token in plaintext. Entries live exactly as long as the caller says
//! (the token's remaining usable life); the refresh lock is `SET NX PX` with an owner value,
//! released only by its owner.

use crate::StateError;
use async_trait::async_trait;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Shared, sealed access tokens and their refresh locks.
#[async_trait]
pub trait TokenCache: Send + Sync {
    /// The sealed token stored under `key`, if there is one that has not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// Stores `sealed` under `key` for `ttl`, replacing what was there.
    async fn put(&self, key: &str, sealed: &[u8], ttl: Duration) -> Result<(), StateError>;
    /// Takes the refresh lock of `key` for `ttl` as `owner`, unless it is held: true when
    /// taken. Of several concurrent callers, at most one gets true.
    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError>;
    /// Releases the refresh lock of `key` if `owner` still holds it (a lock that expired and
    /// was taken by another instance is left alone).
    async fn unlock(&self, key: &str, owner: &str) -> Result<(), StateError>;
}

/// A token cache for one process. A few keys per integration at most, so a plain map;
/// expired entries are dropped whenever something is stored.
#[derive(Default)]
pub struct MemoryTokenCache {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    locks: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryTokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned<T>(_: T) -> StateError {
    StateError::Unavailable("token cache lock poisoned".into())
}

#[async_trait]
impl TokenCache for MemoryTokenCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let map = self.entries.lock().map_err(poisoned)?;
        Ok(map
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone()))
    }

    async fn put(&self, key: &str, sealed: &[u8], ttl: Duration) -> Result<(), StateError> {
        let now = Instant::now();
        let mut map = self.entries.lock().map_err(poisoned)?;
        map.retain(|_, (_, until)| *until > now);
        map.insert(key.to_string(), (sealed.to_vec(), now + ttl));
        Ok(())
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StateError> {
        let now = Instant::now();
        let mut locks = self.locks.lock().map_err(poisoned)?;
        locks.retain(|_, (_, until)| *until > now);
        if locks.contains_key(key) {
            return Ok(false);
        }
        locks.insert(key.to_string(), (owner.to_string(), now + ttl));
        Ok(true)
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<(), StateError> {
        let mut locks = self.locks.lock().map_err(poisoned)?;
        if locks.get(key).is_some_and(|(o, _)| o == owner) {
            locks.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire_and_locks_belong_to_their_owner() {
        let c = MemoryTokenCache::new();
        let long = Duration::from_secs(60);
        assert!(matches!(c.get("crm:1").await, Ok(None)));
        assert!(c.put("crm:1", b"sealed-1", long).await.is_ok());
        assert_eq!(
            c.get("crm:1").await.ok().flatten().as_deref(),
            Some(&b"sealed-1"[..])
        );
        assert!(c.put("crm:1", b"sealed-2", long).await.is_ok());
        assert_eq!(
            c.get("crm:1").await.ok().flatten().as_deref(),
            Some(&b"sealed-2"[..])
        );
        assert!(c.put("short", b"x", Duration::ZERO).await.is_ok());
        assert!(matches!(c.get("short").await, Ok(None)), "expired");

        assert!(matches!(c.try_lock("crm:1", "a", long).await, Ok(true)));
        assert!(matches!(c.try_lock("crm:1", "b", long).await, Ok(false)));
        assert!(c.unlock("crm:1", "b").await.is_ok());
        assert!(
            matches!(c.try_lock("crm:1", "b", long).await, Ok(false)),
            "only the owner releases"
        );
        assert!(c.unlock("crm:1", "a").await.is_ok());
        assert!(matches!(c.try_lock("crm:1", "b", long).await, Ok(true)));
        // An expired lock is free again.
        assert!(matches!(
            c.try_lock("other", "a", Duration::ZERO).await,
            Ok(true)
        ));
        assert!(matches!(c.try_lock("other", "b", long).await, Ok(true)));
    }
}
