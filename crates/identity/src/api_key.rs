//! API keys.

use arc_swap::ArcSwap;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use portcullis_store::{ApiKeyRecord, Store, StoreError};
use portcullis_vault::{PutOptions, Vault, VaultError};
use serde::Serialize;
use sha2::Sha256;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Every Portcullis key starts with this, so secret scanners can recognise a leaked one.
pub const KEY_PREFIX: &str = "pcl_";
const PEPPER_SECRET: &str = "portcullis.api-key-pepper";
pub(crate) const PEPPER_CONSUMER: &str = "gateway:api-keys";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// API key errors. Verification failures are deliberately coarse: callers get one answer.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a key, unknown id, wrong secret, expired or revoked.
    #[error("invalid API key")]
    Invalid,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault failed (the pepper).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Bad arguments.
    #[error("{0}")]
    Request(String),
}

/// A key just issued: the only time its full value exists outside the caller.
pub struct IssuedKey {
    /// The key id.
    pub key_id: String,
    /// The full key, `pcl_<id>_<secret>`.
    pub key: Zeroizing<String>,
}

/// A verified key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key id.
    pub key_id: Arc<str>,
    /// The owning client.
    pub client_id: Arc<str>,
}

/// Key metadata for listings.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key id.
    pub key_id: String,
    /// Client.
    pub client_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub revoked_at: Option<i64>,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
}

struct Entry {
    client_id: Arc<str>,
    key_id: Arc<str>,
    hash: Vec<u8>,
    expires_at: Option<i64>,
    revoked: bool,
    /// When this process last verified the key (Unix seconds, 0 for not yet), and the latest
    /// such time written to the store. Atomics in the entry rather than one locked map of
    /// touched keys: every API-key request took that lock, from every core.
    last_used: AtomicI64,
    flushed: AtomicI64,
}

/// A 256-entry table of `test` for every byte, built at compile time (a `const fn` cannot
/// call a closure, so the test is spliced in).
macro_rules! byte_table {
    (|$b:ident| $test:expr) => {{
        let mut table = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $b = i as u8;
            table[i] = $test;
            i += 1;
        }
        table
    }};
}

/// Splits `pcl_<id>_<secret>`. The id is hex; the secret may contain `_`.
pub fn parse_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 16 && id.bytes().all(|b| HEX[usize::from(b)]);
    let secret_ok =
        (32..=128).contains(&secret.len()) && secret.bytes().all(|b| SECRET_CHAR[usize::from(b)]);
    (id_ok && secret_ok).then_some((id, secret))
}

/// Whether each byte is a hex digit. A table lookup per byte: the chained character tests
/// were ~1.7k instructions per request for one key (bench/RESULTS.md, issue 5).
const HEX: [bool; 256] = byte_table!(|b| b.is_ascii_hexdigit());
/// Whether each byte may appear in a key's secret (base64url).
const SECRET_CHAR: [bool; 256] =
    byte_table!(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');

/// The API key service. Verification is synchronous and served from memory: every key is
/// cached (ids, owners, hashes), so an unknown id never costs a database query.
pub struct ApiKeys {
    store: Arc<dyn Store>,
    /// HMAC-SHA256 already keyed with the pepper: the two pad blocks are compressed once
    /// here and each hash clones this state, so a verification runs three SHA-256
    /// compressions instead of five (bench/RESULTS.md, issue 5). The keyed state is as sensitive as the
    /// pepper and, like it, lives as long as the service; the `hmac` crate cannot zeroize
    /// it, and the per-request HMAC it replaces held the same state unzeroized on the stack.
    mac: Hmac<Sha256>,
    cache: ArcSwap<HashMap<String, Arc<Entry>>>,
    epoch: AtomicI64,
    /// When the last reload for a failed verification started (see
    /// [`ApiKeys::verify_fresh`]); the lock makes concurrent failures share one reload.
    miss_reload: tokio::sync::Mutex<Option<Instant>>,
}

/// Least time between reloads that failed verifications trigger: a flood of guesses costs
/// the database a few small queries a second, not one per request.
const MISS_RELOAD_GAP: Duration = Duration::from_millis(200);

impl ApiKeys {
    /// Loads every key and the pepper (created in the vault on first use).
    pub async fn open(store: Arc<dyn Store>, vault: &Vault) -> Result<Arc<ApiKeys>, KeyError> {
        let pepper = match vault.resolve(PEPPER_SECRET, PEPPER_CONSUMER).await {
            Ok(v) => Zeroizing::new(v.expose().to_vec()),
            Err(VaultError::NotFound(_)) => {
                let opts = PutOptions {
                    consumers: Some(vec![PEPPER_CONSUMER.into()]),
                    actor: "gateway".into(),
                    ..Default::default()
                };
                vault.generate(PEPPER_SECRET, "random", &opts).await?;
                Zeroizing::new(
                    vault
                        .resolve(PEPPER_SECRET, PEPPER_CONSUMER)
                        .await?
                        .expose()
                        .to_vec(),
                )
            }
            Err(e) => return Err(e.into()),
        };
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&pepper)
            .map_err(|_| KeyError::Request("the API key pepper is unusable".into()))?;
        drop(pepper);
        let keys = Arc::new(ApiKeys {
            store,
            mac,
            cache: ArcSwap::from_pointee(HashMap::new()),
            epoch: AtomicI64::new(0),
            miss_reload: tokio::sync::Mutex::new(None),
        });
        keys.reload().await?;
        Ok(keys)
    }

    /// On the stack: verification compares it in place, with no allocation per request.
    fn hash(&self, key_id: &str, secret: &str) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(key_id.as_bytes());
        m.update(b":");
        m.update(secret.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Re-reads every key from the store.
    pub async fn reload(&self) -> Result<(), KeyError> {
        let epoch = self.store.keys().keys_epoch().await?;
        // Last-used times not yet written carry over to the reloaded entries.
        let old = self.cache.load_full();
        let map = self
            .store
            .keys()
            .all_keys()
            .await?
            .into_iter()
            .map(|k| {
                let (last_used, flushed) = old.get(&k.key_id).map_or((0, 0), |o| {
                    (
                        o.last_used.load(Ordering::Relaxed),
                        o.flushed.load(Ordering::Relaxed),
                    )
                });
                let e = Entry {
                    client_id: Arc::from(k.client_id.as_str()),
                    key_id: Arc::from(k.key_id.as_str()),
                    hash: k.hash,
                    expires_at: k.expires_at,
                    revoked: k.revoked_at.is_some(),
                    last_used: AtomicI64::new(last_used),
                    flushed: AtomicI64::new(flushed),
                };
                (k.key_id, Arc::new(e))
            })
            .collect();
        self.cache.store(Arc::new(map));
        self.epoch.store(epoch, Ordering::SeqCst);
        Ok(())
    }

    /// Reloads when another process changed the keys.
    pub async fn refresh_if_changed(&self) -> Result<bool, KeyError> {
        if self.store.keys().keys_epoch().await? != self.epoch.load(Ordering::SeqCst) {
            self.reload().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes the last-used time of every key verified since the previous write. A failed
    /// write is tried again next time.
    async fn write_last_used(&self) {
        let cache = self.cache.load_full();
        for e in cache.values() {
            let used = e.last_used.load(Ordering::Relaxed);
            if used > e.flushed.load(Ordering::Relaxed)
                && self.store.keys().touch_key(&e.key_id, used).await.is_ok()
            {
                e.flushed.fetch_max(used, Ordering::Relaxed);
            }
        }
    }

    /// Polls for changes from other processes and writes last-used times.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let keys = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(k) = keys.upgrade() else { break };
                if let Err(e) = k.refresh_if_changed().await {
                    tracing::warn!(error = %e, "API key change watch failed");
                }
                k.write_last_used().await;
            }
        })
    }

    /// [`ApiKeys::verify_parts`], and on a failure once more after a reload of the keys that
    /// began after this call: a key issued through another instance a moment ago is accepted
    /// at its first use here, instead of drawing 401s (and the brute-force lockout) until the
    /// next poll. Every failure waits for that reload, known id or not, so the wait does not
    /// tell which key ids exist. Reloads are shared by concurrent failures and start at most
    /// every 200 ms: guessing costs the database a few small queries a second, and each wrong
    /// guess a short wait.
    pub async fn verify_fresh(&self, id: &str, secret: &str) -> Result<Verified, KeyError> {
        match self.verify_parts(id, secret) {
            Err(KeyError::Invalid) => {
                self.reload_after_miss().await;
                self.verify_parts(id, secret)
            }
            other => other,
        }
    }

    /// [`ApiKeys::verify_fresh`] for a whole presented key.
    pub async fn verify_key_fresh(&self, presented: &str) -> Result<Verified, KeyError> {
        let (id, secret) = parse_key(presented).ok_or(KeyError::Invalid)?;
        self.verify_fresh(id, secret).await
    }

    async fn reload_after_miss(&self) {
        let asked = Instant::now();
        let mut last = self.miss_reload.lock().await;
        if let Some(started) = *last {
            // A reload that began after this call has finished meanwhile: it saw every key
            // committed before the call.
            if started >= asked {
                return;
            }
            let since = started.elapsed();
            if since < MISS_RELOAD_GAP {
                tokio::time::sleep(MISS_RELOAD_GAP - since).await;
            }
        }
        let started = Instant::now();
        if let Err(e) = self.refresh_if_changed().await {
            tracing::warn!(error = %e, "API key reload after a failed verification failed");
        }
        *last = Some(started);
    }

    /// Verifies a presented key. Every failure is the same `KeyError::Invalid`; the hash
    /// comparison is constant-time.
    pub fn verify(&self, presented: &str) -> Result<Verified, KeyError> {
        let (id, secret) = parse_key(presented).ok_or(KeyError::Invalid)?;
        self.verify_parts(id, secret)
    }

    /// [`ApiKeys::verify`] for a key already split by [`parse_key`] (the authentication
    /// policy splits it once, for the lockout check and this).
    pub fn verify_parts(&self, id: &str, secret: &str) -> Result<Verified, KeyError> {
        let cache = self.cache.load();
        let Some(entry) = cache.get(id) else {
            // Spend the same work as a known id, so timing does not reveal which ids exist.
            let _ = self.hash(id, secret);
            return Err(KeyError::Invalid);
        };
        let computed = self.hash(id, secret);
        let matches = bool::from(computed[..].ct_eq(&entry.hash[..]));
        let t = now();
        if !matches || entry.revoked || entry.expires_at.is_some_and(|e| e <= t) {
            return Err(KeyError::Invalid);
        }
        entry.last_used.fetch_max(t, Ordering::Relaxed);
        Ok(Verified {
            key_id: entry.key_id.clone(),
            client_id: entry.client_id.clone(),
        })
    }

    /// True when `id` is a key id this process holds (revoked or expired ones included): the
    /// lockout shares failures of such ids across instances, not of made-up ones, which
    /// would let anyone create shared counters at will. Used after the refusal is sent, so it
    /// adds nothing to the refusal's timing.
    pub fn knows(&self, id: &str) -> bool {
        self.cache.load().contains_key(id)
    }

    /// The key id part of a presented key, when it is well-formed (for lockout accounting).
    pub fn key_id_of(presented: &str) -> Option<&str> {
        parse_key(presented).map(|(id, _)| id)
    }

    /// Issues a key for `client_id`. The full key is returned once and never stored.
    pub async fn issue(
        &self,
        client_id: &str,
        expires_in: Option<Duration>,
    ) -> Result<IssuedKey, KeyError> {
        if client_id.is_empty() {
            return Err(KeyError::Request("a client id is required".into()));
        }
        let mut id_bytes = [0u8; 8];
        let mut secret_bytes = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut id_bytes)
            .map_err(|e| KeyError::Request(format!("no randomness: {e}")))?;
        getrandom::getrandom(secret_bytes.as_mut())
            .map_err(|e| KeyError::Request(format!("no randomness: {e}")))?;
        let key_id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let secret = Zeroizing::new(URL_SAFE_NO_PAD.encode(secret_bytes.as_ref()));
        let t = now();
        let record = ApiKeyRecord {
            key_id: key_id.clone(),
            client_id: client_id.to_string(),
            hash: self.hash(&key_id, &secret).to_vec(),
            created_at: t,
            expires_at: expires_in
                .map(|d| t.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
            revoked_at: None,
            last_used_at: None,
        };
        self.store.keys().insert_key(&record).await?;
        self.reload().await?;
        tracing::info!(target: "portcullis::audit", action = "api_key_issued", client = client_id, key_id = %key_id, "API key issued");
        Ok(IssuedKey {
            key: Zeroizing::new(format!("{KEY_PREFIX}{key_id}_{}", secret.as_str())),
            key_id,
        })
    }

    /// Revokes a key; effective for this process at once, for others within a watch interval.
    pub async fn revoke(&self, key_id: &str) -> Result<(), KeyError> {
        if !self.store.keys().revoke_key(key_id, now()).await? {
            return Err(KeyError::Request(format!("no active key {key_id:?}")));
        }
        self.reload().await?;
        tracing::info!(target: "portcullis::audit", action = "api_key_revoked", key_id, "API key revoked");
        Ok(())
    }

    /// Keys of one client (or all), without hashes.
    pub async fn list(&self, client_id: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
        Ok(self
            .store
            .keys()
            .all_keys()
            .await?
            .into_iter()
            .filter(|k| client_id.is_none_or(|c| c == k.client_id))
            .map(|k| KeyInfo {
                key_id: k.key_id,
                client_id: k.client_id,
                created_at: k.created_at,
                expires_at: k.expires_at,
                revoked_at: k.revoked_at,
                last_used_at: k.last_used_at,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_vault::{Kek, LogEventSink, StaticKeyProvider};
    use proptest::prelude::*;

    /// A store and a vault in memory, as one gateway process has them.
    async fn memory_vault() -> (Arc<dyn Store>, Arc<Vault>) {
        let store: Arc<dyn Store> = Arc::new(
            portcullis_store::SqliteStore::memory()
                .await
                .expect("store"),
        );
        let vault = Vault::open(
            store.clone(),
            Arc::new(StaticKeyProvider(Kek::from_bytes([9; 32]))),
            Arc::new(LogEventSink),
        )
        .await
        .expect("vault");
        (store, vault)
    }

    /// A key issued through another instance a moment ago is accepted at its first use
    /// here: nothing polls in this test, so only the reload on a miss can have loaded it.
    #[tokio::test]
    async fn a_key_issued_elsewhere_is_accepted_at_its_first_use() {
        let (store, vault) = memory_vault().await;
        let here = ApiKeys::open(store.clone(), &vault).await.expect("keys");
        let there = ApiKeys::open(store.clone(), &vault).await.expect("keys");
        let issued = there.issue("client-a", None).await.expect("issue");
        assert!(here.verify(&issued.key).is_err(), "not loaded yet");
        let v = here.verify_key_fresh(&issued.key).await.expect("found");
        assert_eq!(v.client_id.as_ref(), "client-a");
        // After the reload, a wrong secret for a known id and an unknown id are still refused.
        let (id, _) = parse_key(&issued.key).expect("well-formed");
        assert!(here.verify_fresh(id, "wrong").await.is_err());
        assert!(here.verify_fresh("0000000000000000", "x").await.is_err());
    }

    /// The keyed HMAC kept in `ApiKeys` gives exactly HMAC-SHA256(pepper, "id:secret"), the
    /// hash stored for every key ever issued, and cloning it per hash leaves no state behind.
    #[tokio::test]
    async fn stored_hash_is_the_peppered_hmac_and_verification_repeats() {
        let (store, vault) = memory_vault().await;
        let keys = ApiKeys::open(store.clone(), &vault).await.expect("keys");
        let issued = keys.issue("client-a", None).await.expect("issue");
        let (id, secret) = parse_key(&issued.key).expect("well-formed");

        let pepper = vault
            .resolve(PEPPER_SECRET, PEPPER_CONSUMER)
            .await
            .expect("pepper");
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(pepper.expose()).expect("any length");
        m.update(format!("{id}:{secret}").as_bytes());
        let expected = m.finalize().into_bytes().to_vec();
        let stored = store.keys().all_keys().await.expect("keys");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].hash, expected);

        let wrong = format!("{KEY_PREFIX}{id}_{}", "B".repeat(secret.len()));
        for _ in 0..3 {
            assert_eq!(
                keys.verify(&issued.key).expect("valid").client_id.as_ref(),
                "client-a"
            );
            assert!(matches!(keys.verify(&wrong), Err(KeyError::Invalid)));
        }
    }

    #[test]
    fn key_format_is_strict() {
        let secret = "A".repeat(43);
        assert!(parse_key(&format!("pcl_0123456789abcdef_{secret}")).is_some());
        assert!(parse_key(&format!("pcl_0123456789abcdef_ab_cd-{secret}")).is_some());
        for bad in [
            "",
            "pcl_",
            "pcl_zz_secret",
            &format!("xyz_0123456789abcdef_{secret}"),
            &format!("pcl_0123456789abcde_{secret}"),
            "pcl_0123456789abcdef_short",
            &format!("pcl_0123456789abcdeg_{secret}"),
            &format!("pcl_0123456789abcdef_{secret}+"),
            &format!("pcl_0123456789abcdef_{secret}\u{e9}"),
        ] {
            assert!(parse_key(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_byte_tables_are_the_character_classes() {
        for b in 0..=255u8 {
            assert_eq!(HEX[usize::from(b)], b.is_ascii_hexdigit(), "{b}");
            let secret = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
            assert_eq!(SECRET_CHAR[usize::from(b)], secret, "{b}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in any::<String>()) {
            let _ = parse_key(&s);
        }
    }
}
