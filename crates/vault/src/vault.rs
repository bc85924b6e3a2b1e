//! The vault: writes (put, rotate, revoke, destroy, generate), reads for the data plane
//! (`resolve`), and KEK rotation.

use crate::{
    catalog::{usable, Catalog},
    crypto::{self, Kek},
    generate::generate,
    EventSink, KeyProvider, PutOptions, SecretInfo, SecretType, SecretValue, VaultError,
    VaultEvent,
};
use arc_swap::ArcSwap;
use portcullis_store::{KekRecord, SecretRecord, Store, StoreError, VersionRecord, KEK_NOT_ACTIVE};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use subtle::ConstantTimeEq;

const DEFAULT_KEEP: i64 = 5;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A valid name: 1-128 of letters, digits, `.`, `_`, `-`, `/`.
fn check_name(name: &str) -> Result<(), VaultError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::Invalid(format!(
            "secret name {name:?}: use 1-128 letters, digits, '.', '_', '-' or '/'"
        )))
    }
}

/// Refuses a consumer no configuration can name ([`portcullis_config::is_consumer`]): a typo
/// (`rout:a`) would otherwise be stored and only found when the route's requests fail.
pub fn check_consumer(c: &str) -> Result<(), VaultError> {
    if portcullis_config::is_consumer(c) {
        Ok(())
    } else {
        Err(VaultError::Invalid(format!(
            "consumer {c:?}: expected route:ID, webhook:ID, integration:ID or one of {}",
            portcullis_config::GATEWAY_CONSUMERS.join(", ")
        )))
    }
}

struct Keys {
    /// The provider's current key.
    current: Kek,
    /// The provider's next key (a rotation staged or in progress).
    next: Option<Kek>,
    /// The key new data keys are wrapped by: the vault's active one. `current`, except
    /// between a rotation recording the next key active and promoting it in the provider.
    write: Kek,
}

impl Keys {
    fn get(&self, id: &str) -> Option<&Kek> {
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .find(|k| k.id() == id)
    }
}

/// A secret's usable versions, decrypted, as the data plane sees them.
struct Cached {
    consumers: Vec<String>,
    expires_at: Option<i64>,
    /// Newest first, with the end of their grace period.
    values: Vec<(Arc<SecretValue>, Option<i64>)>,
}

/// How far a KEK rotation got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationProgress {
    /// Data keys rewrapped by this call.
    pub rewrapped: usize,
    /// True when every data key is under the new KEK and the old one is retired.
    pub complete: bool,
    /// The KEK now in use for new secrets (the new one once complete).
    pub kek_id: String,
}

/// The secrets vault. Share it as `Arc<Vault>`.
pub struct Vault {
    store: Arc<dyn Store>,
    provider: Arc<dyn KeyProvider>,
    keys: ArcSwap<Keys>,
    cache: ArcSwap<HashMap<String, Arc<Cached>>>,
    epoch: AtomicI64,
    /// Counts cache drops, so a fill that raced one is not kept.
    generation: AtomicU64,
    events: Arc<dyn EventSink>,
}

impl Vault {
    /// Opens the vault: loads the KEK and proves it is the vault's key (key check value),
    /// registering it on first use. A wrong key fails here, never at first decryption.
    pub async fn open(
        store: Arc<dyn Store>,
        provider: Arc<dyn KeyProvider>,
        events: Arc<dyn EventSink>,
    ) -> Result<Arc<Vault>, VaultError> {
        let keys = Self::load_keys(&store, provider.as_ref()).await?;
        let epoch = store.vault().epoch().await?;
        Ok(Arc::new(Vault {
            store,
            provider,
            keys: ArcSwap::from_pointee(keys),
            cache: ArcSwap::from_pointee(HashMap::new()),
            epoch: AtomicI64::new(epoch),
            generation: AtomicU64::new(0),
            events,
        }))
    }

    /// Verifies, without writing anything, that `provider`'s current key is the vault's
    /// active one (a vault with no key registered yet passes). For `check`, which must not
    /// register its own machine's key in a production database.
    pub async fn verify_key(
        store: &Arc<dyn Store>,
        provider: &dyn KeyProvider,
    ) -> Result<(), VaultError> {
        let current = provider.current()?;
        let records = store.vault().keks().await?;
        if records.is_empty() {
            return Ok(());
        }
        let state = |k: &Kek| {
            records
                .iter()
                .find(|r| r.id == k.id() && bool::from(r.kcv.ct_eq(k.kcv())))
                .map(|r| r.state.as_str())
        };
        match state(&current) {
            Some("active" | "next") => Ok(()),
            // Retired, with the next key already active: a rotation in progress.
            Some(_)
                if provider
                    .next()?
                    .is_some_and(|n| state(&n) == Some("active")) =>
            {
                Ok(())
            }
            Some(_) => Err(VaultError::RetiredKey),
            None => Err(VaultError::WrongKey),
        }
    }

    /// [`Vault::verify_key`] for this vault's own provider: fails with
    /// [`VaultError::RetiredKey`] once a KEK rotation run by another process has retired this
    /// process's key (and its key was not replaced here), so readiness can say so.
    pub async fn verify_own_key(&self) -> Result<(), VaultError> {
        Self::verify_key(&self.store, self.provider.as_ref()).await
    }

    async fn load_keys(
        store: &Arc<dyn Store>,
        provider: &dyn KeyProvider,
    ) -> Result<Keys, VaultError> {
        let current = provider.current()?;
        // A next key equal to the current one (NEXT left set after a rotation was promoted)
        // is no next key: "rotating" to it would rewrap every key onto itself forever and
        // retire the vault's only KEK.
        let next = provider.next()?.filter(|n| {
            let same = n.id() == current.id();
            if same {
                tracing::warn!("the next master key is the current one; ignoring it (remove master.key.next or unset PORTCULLIS_MASTER_KEY_NEXT)");
            }
            !same
        });
        let vs = store.vault();
        let records = vs.keks().await?;
        let matches = |k: &Kek, r: &KekRecord| r.id == k.id() && bool::from(r.kcv.ct_eq(k.kcv()));
        // Nor is a key an earlier rotation retired: rotating "to" it would make a key that was
        // taken out of use (perhaps because it leaked) the vault's key again.
        let next = next.filter(|n| {
            let retired = records
                .iter()
                .any(|r| matches(n, r) && r.state == "retired");
            if retired {
                tracing::warn!("the next master key is one this vault retired in an earlier rotation; ignoring it (give a new key as master.key.next or PORTCULLIS_MASTER_KEY_NEXT)");
            }
            !retired
        });
        let mut write = current.clone();
        if records.is_empty() {
            vs.insert_kek(&KekRecord {
                id: current.id().into(),
                kcv: current.kcv().to_vec(),
                state: "active".into(),
                created_at: now(),
            })
            .await?;
        } else {
            match records.iter().find(|r| matches(&current, r)) {
                Some(r) if r.state == "active" => {}
                Some(r) if r.state == "next" => {
                    // A rotation promoted the key file but stopped before recording it.
                    let old: Vec<&KekRecord> =
                        records.iter().filter(|o| o.state == "active").collect();
                    for o in &old {
                        if !vs.versions_wrapped_by(&o.id, 1).await?.is_empty() {
                            return Err(VaultError::KeyProvider(format!(
                                "KEK rotation left data keys under {} but its key is gone",
                                o.id
                            )));
                        }
                    }
                    // Activated before the old one is retired, so a crash between the two
                    // never leaves the vault without an active KEK.
                    vs.set_kek_state(&r.id, "active").await?;
                    for o in old {
                        vs.set_kek_state(&o.id, "retired").await?;
                    }
                }
                Some(_) => {
                    // Retired: a rotation that recorded the next key active but has not
                    // promoted it in the provider yet goes on under it; anything else missed
                    // the rotation.
                    match &next {
                        Some(n) if records.iter().any(|r| matches(n, r) && r.state == "active") => {
                            write = n.clone();
                        }
                        _ => return Err(VaultError::RetiredKey),
                    }
                }
                None => return Err(VaultError::WrongKey),
            }
        }
        if let Some(n) = &next {
            if let Some(r) = records.iter().find(|r| r.id == n.id()) {
                if !matches(n, r) {
                    return Err(VaultError::WrongKey);
                }
            } else {
                vs.insert_kek(&KekRecord {
                    id: n.id().into(),
                    kcv: n.kcv().to_vec(),
                    state: "next".into(),
                    created_at: now(),
                })
                .await?;
            }
        }
        Ok(Keys {
            current,
            next,
            write,
        })
    }

    /// The KEK with `id`, reloading the provider once if a rotation elsewhere introduced it.
    async fn kek(&self, id: &str) -> Result<Kek, VaultError> {
        if let Some(k) = self.keys.load().get(id) {
            return Ok(k.clone());
        }
        let keys = Self::load_keys(&self.store, self.provider.as_ref()).await?;
        let found = keys.get(id).cloned();
        self.keys.store(Arc::new(keys));
        found.ok_or_else(|| {
            VaultError::KeyProvider(format!("no master key with id {id} is available"))
        })
    }

    fn emit(&self, action: &'static str, name: &str, version: Option<i64>, actor: &str) {
        self.events.emit(VaultEvent {
            action,
            name: name.to_string(),
            version,
            actor: actor.to_string(),
        });
    }

    /// Drops every cached value; the next resolve reads the store.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.store(Arc::new(HashMap::new()));
    }

    async fn after_write(&self) {
        // The counter is read before the cache is dropped: read after, it could include a
        // write by another process that a fill begun after the drop has missed, and the watch
        // would then never drop that fill.
        let e = self.store.vault().epoch().await;
        self.invalidate();
        if let Ok(e) = e {
            self.epoch.fetch_max(e, Ordering::SeqCst);
        }
    }

    /// Clears the cache when another process changed the vault. Cheap: one small query.
    pub async fn refresh_if_changed(&self) -> Result<bool, VaultError> {
        let e = self.store.vault().epoch().await?;
        if e != self.epoch.swap(e, Ordering::SeqCst) {
            self.invalidate();
            return Ok(true);
        }
        Ok(false)
    }

    /// Watches the store for writes from other processes every `every`.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let vault = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(v) = vault.upgrade() else { break };
                if let Err(e) = v.refresh_if_changed().await {
                    tracing::warn!(error = %e, "vault change watch failed");
                }
            }
        })
    }

    /// Stores a new version of `name` (creating the secret if needed) and returns its number.
    /// Previous versions are disabled, or kept valid for `opts.grace`.
    pub async fn put(
        &self,
        name: &str,
        value: &[u8],
        opts: &PutOptions,
    ) -> Result<i64, VaultError> {
        check_name(name)?;
        for c in opts.consumers.iter().flatten() {
            check_consumer(c)?;
        }
        let vs = self.store.vault();
        let existing = vs.secret(name).await?;
        let secret_type = match (opts.secret_type, &existing) {
            (Some(t), _) => t,
            (None, Some(e)) => SecretType::parse(&e.secret_type)?,
            (None, None) => SecretType::Opaque,
        };
        secret_type.validate(value)?;
        let t = now();
        let record = SecretRecord {
            name: name.to_string(),
            secret_type: secret_type.as_str().into(),
            created_at: existing.as_ref().map_or(t, |e| e.created_at),
            updated_at: t,
            expires_at: opts
                .expires_in
                .map(|d| t.saturating_add(secs(d)))
                .or(existing.as_ref().and_then(|e| e.expires_at)),
            max_age_secs: opts
                .max_age
                .map(secs)
                .or(existing.as_ref().and_then(|e| e.max_age_secs)),
            consumers: opts
                .consumers
                .clone()
                .or(existing.as_ref().map(|e| e.consumers.clone()))
                .unwrap_or_default(),
            keep_versions: opts
                .keep_versions
                .or(existing.as_ref().map(|e| e.keep_versions))
                .unwrap_or(DEFAULT_KEEP)
                .max(1),
        };
        let supersede = opts.grace.map(|g| t.saturating_add(secs(g)));
        // The settings (consumers, expiry, keep) are written with the version, in one
        // transaction: a refused write changes neither.
        let version = self.add_version(&record, value, t, supersede).await?;
        self.after_write().await;
        let action = if existing.is_some() { "rotate" } else { "put" };
        self.emit(action, name, Some(version), &opts.actor);
        Ok(version)
    }

    /// Encrypts `value` as the secret's next version and stores it. The number is bound into
    /// the ciphertext, so it is chosen first and the store refuses it if another writer took
    /// it meanwhile (or a rotation elsewhere retired this KEK); then it is read again and the
    /// write retried, so concurrent writers all land, one after the other, and never leave
    /// the secret without a usable version.
    async fn add_version(
        &self,
        record: &SecretRecord,
        value: &[u8],
        t: i64,
        supersede: Option<i64>,
    ) -> Result<i64, VaultError> {
        let vs = self.store.vault();
        let name = record.name.as_str();
        // Writers of one secret are rare (rotations); the bound only stops a livelock.
        for attempt in 0..50u32 {
            let version = vs
                .versions(name)
                .await?
                .first()
                .map_or(1, |v| v.version + 1);
            let kek = self.keys.load().write.clone();
            let sealed = crypto::encrypt(&kek, name, version, value)?;
            let row = VersionRecord {
                name: name.to_string(),
                version,
                state: "active".into(),
                created_at: t,
                valid_until: None,
                first_used_at: None,
                kek_id: kek.id().into(),
                wrapped_dek: sealed.wrapped_dek,
                ciphertext: sealed.ciphertext,
            };
            match vs.add_version(record, &row, supersede).await {
                Ok(()) => return Ok(version),
                Err(StoreError::Conflict(why)) if why == KEK_NOT_ACTIVE => {
                    // A rotation by another process: take up the key it made active, or fail
                    // saying this process no longer has the vault's key.
                    let keys = Self::load_keys(&self.store, self.provider.as_ref()).await?;
                    self.keys.store(Arc::new(keys));
                }
                Err(StoreError::Conflict(_)) => {
                    let ceiling = 2u64.pow(attempt.min(6)) + 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..ceiling + 1))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(VaultError::Invalid(
            "concurrent writes to this secret kept winning; try again".into(),
        ))
    }

    /// A new version of an existing secret; the previous stays valid for `opts.grace`.
    pub async fn rotate(
        &self,
        name: &str,
        value: &[u8],
        opts: &PutOptions,
    ) -> Result<i64, VaultError> {
        if self.store.vault().secret(name).await?.is_none() {
            return Err(VaultError::NotFound(name.into()));
        }
        self.put(name, value, opts).await
    }

    /// Generates a strong value server-side and stores it. Returns the version and what must
    /// be shared (printed once), if the type needs sharing.
    pub async fn generate(
        &self,
        name: &str,
        kind: &str,
        opts: &PutOptions,
    ) -> Result<(i64, Option<String>), VaultError> {
        let g = generate(kind)?;
        let mut o = opts.clone();
        o.secret_type = Some(g.secret_type);
        let v = self.put(name, &g.value, &o).await?;
        self.emit("generate", name, Some(v), &opts.actor);
        Ok((v, g.shareable))
    }

    /// Disables a version at once: the next request that would use it fails closed.
    pub async fn revoke(&self, name: &str, version: i64, actor: &str) -> Result<(), VaultError> {
        if !self
            .store
            .vault()
            .set_version_state(name, version, "disabled")
            .await?
        {
            return Err(VaultError::NotFound(format!("{name} version {version}")));
        }
        self.after_write().await;
        self.emit("revoke", name, Some(version), actor);
        Ok(())
    }

    /// Wipes the ciphertext of one version, or of every version.
    pub async fn destroy(
        &self,
        name: &str,
        version: Option<i64>,
        actor: &str,
    ) -> Result<(), VaultError> {
        let vs = self.store.vault();
        let targets: Vec<i64> = match version {
            Some(v) => vec![v],
            None => vs.versions(name).await?.iter().map(|v| v.version).collect(),
        };
        if targets.is_empty() {
            return Err(VaultError::NotFound(name.into()));
        }
        for v in targets {
            if !vs.set_version_state(name, v, "destroyed").await? {
                return Err(VaultError::NotFound(format!("{name} version {v}")));
            }
            self.emit("destroy", name, Some(v), actor);
        }
        self.after_write().await;
        Ok(())
    }

    /// Metadata of every secret.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, VaultError> {
        Catalog::new(self.store.clone()).list().await
    }

    /// Metadata and versions of one secret; never the value.
    pub async fn show(&self, name: &str) -> Result<SecretInfo, VaultError> {
        Catalog::new(self.store.clone()).show(name).await
    }

    /// The newest usable version of `name` for `consumer`. Served from memory after the first
    /// call; fails closed on revocation, expiry or a consumer the secret is not bound to.
    pub async fn resolve(
        &self,
        name: &str,
        consumer: &str,
    ) -> Result<Arc<SecretValue>, VaultError> {
        let all = self.resolve_all(name, consumer).await?;
        all.into_iter()
            .next()
            .ok_or_else(|| VaultError::NotFound(name.into()))
    }

    /// Every version of `name` valid now, newest first: during a rotation grace period, both
    /// the new and the previous one (a webhook verifier accepts either).
    pub async fn resolve_all(
        &self,
        name: &str,
        consumer: &str,
    ) -> Result<Vec<Arc<SecretValue>>, VaultError> {
        let cached = match self.cache.load().get(name) {
            Some(c) => c.clone(),
            None => self.load(name).await?,
        };
        if !cached.consumers.iter().any(|c| c == consumer) {
            return Err(VaultError::NotAllowed {
                name: name.into(),
                consumer: consumer.into(),
            });
        }
        let t = now();
        if cached.expires_at.is_some_and(|e| e <= t) {
            return Err(VaultError::Expired(name.into()));
        }
        let values: Vec<Arc<SecretValue>> = cached
            .values
            .iter()
            .filter(|(_, until)| until.is_none_or(|u| u > t))
            .map(|(v, _)| v.clone())
            .collect();
        if values.is_empty() {
            return Err(VaultError::NotFound(name.into()));
        }
        Ok(values)
    }

    async fn load(&self, name: &str) -> Result<Arc<Cached>, VaultError> {
        // Taken before reading: if the cache is dropped while this read is in flight (a
        // revocation here or noticed from another process), what was read may predate it and
        // serves this call only, never the cache.
        let seen = self.generation.load(Ordering::SeqCst);
        let vs = self.store.vault();
        let secret = vs
            .secret(name)
            .await?
            .ok_or_else(|| VaultError::NotFound(name.into()))?;
        let t = now();
        let mut values = Vec::new();
        for v in vs
            .versions(name)
            .await?
            .into_iter()
            .filter(|v| usable(v, t))
        {
            let kek = self.kek(&v.kek_id).await?;
            let plain = crypto::decrypt(&kek, name, v.version, &v.wrapped_dek, &v.ciphertext)?;
            if v.first_used_at.is_none() && vs.mark_first_use(name, v.version, t).await? {
                self.emit("first_use", name, Some(v.version), "gateway");
            }
            values.push((
                Arc::new(SecretValue::new(plain.to_vec(), v.version)),
                v.valid_until,
            ));
        }
        let cached = Arc::new(Cached {
            consumers: secret.consumers,
            expires_at: secret.expires_at,
            values,
        });
        self.cache.rcu(|m| {
            let mut m = HashMap::clone(m);
            if self.generation.load(Ordering::SeqCst) == seen {
                m.insert(name.to_string(), cached.clone());
            }
            m
        });
        Ok(cached)
    }

    /// Secrets that are expired, expire within `within`, or are overdue for rotation; each is
    /// also emitted as an event for alerting.
    pub async fn findings(&self, within: Duration) -> Result<Vec<String>, VaultError> {
        let found = Catalog::new(self.store.clone()).findings(within).await?;
        Ok(found
            .into_iter()
            .map(|f| {
                self.emit(f.action, &f.name, f.version, "gateway");
                f.message
            })
            .collect())
    }

    /// Moves every data key to a new KEK without touching secret values. Resumable: the new
    /// key is persisted (provider `stage_next`) before the first rewrap, each rewrap is one
    /// atomic compare-and-set, and a later call picks up where an interrupted one stopped.
    /// With `batch`, at most that many keys are rewrapped by this call.
    pub async fn rotate_kek(
        &self,
        batch: Option<usize>,
        actor: &str,
    ) -> Result<RotationProgress, VaultError> {
        let keys = self.keys.load_full();
        let vs = self.store.vault();
        let next = match &keys.next {
            Some(n) => n.clone(),
            None => {
                let n = Kek::generate()?;
                self.provider.stage_next(&n)?;
                vs.insert_kek(&KekRecord {
                    id: n.id().into(),
                    kcv: n.kcv().to_vec(),
                    state: "next".into(),
                    created_at: now(),
                })
                .await?;
                self.keys.store(Arc::new(Keys {
                    current: keys.current.clone(),
                    next: Some(n.clone()),
                    write: keys.write.clone(),
                }));
                n
            }
        };
        let current = keys.current.clone();
        let mut done = 0usize;
        if !self.rewrap_from(&current, &next, batch, &mut done).await? {
            return Ok(RotationProgress {
                rewrapped: done,
                complete: false,
                kek_id: current.id().into(),
            });
        }
        // Recorded first, promoted in the provider last: until the promotion the old key is
        // still on hand, so an interruption anywhere here resumes with the next call (the
        // vault opens with the retired key current and the active next key for writes).
        vs.set_kek_state(next.id(), "active").await?;
        vs.set_kek_state(current.id(), "retired").await?;
        self.keys.store(Arc::new(Keys {
            current: current.clone(),
            next: Some(next.clone()),
            write: next.clone(),
        }));
        // A write by another process that checked the old KEK before it was retired committed
        // under it (the store makes the retirement wait for it): move those keys too. Writes
        // after the retirement are refused by the store, so this sweep is the last one.
        self.rewrap_from(&current, &next, None, &mut done).await?;
        self.provider.promote_next()?;
        self.keys.store(Arc::new(Keys {
            current: next.clone(),
            next: None,
            write: next.clone(),
        }));
        self.after_write().await;
        self.emit("rotate_kek", "", None, actor);
        Ok(RotationProgress {
            rewrapped: done,
            complete: true,
            kek_id: next.id().into(),
        })
    }

    /// Rewraps data keys from `current` to `next` until none is left (true) or `batch` keys
    /// were done by this call (false). Each rewrap is a compare-and-set in the store.
    async fn rewrap_from(
        &self,
        current: &Kek,
        next: &Kek,
        batch: Option<usize>,
        done: &mut usize,
    ) -> Result<bool, VaultError> {
        let vs = self.store.vault();
        loop {
            let rows = vs.versions_wrapped_by(current.id(), 64).await?;
            if rows.is_empty() {
                return Ok(true);
            }
            for r in rows {
                if batch.is_some_and(|b| *done >= b) {
                    return Ok(false);
                }
                let wrapped = crypto::rewrap(current, next, &r.name, r.version, &r.wrapped_dek)?;
                if vs
                    .rewrap(&r.name, r.version, current.id(), next.id(), &wrapped)
                    .await?
                {
                    *done += 1;
                }
            }
        }
    }

    /// The id of the KEK new secrets are encrypted under.
    pub fn kek_id(&self) -> String {
        self.keys.load().write.id().to_string()
    }
}
