//! Persistence for the secrets vault: only ciphertext, wrapped keys and metadata.

use crate::StoreError;
use async_trait::async_trait;
use sqlx::FromRow;

/// [`StoreError::Conflict`] of `add_version` when its KEK is not (or no longer) `active`.
pub const KEK_NOT_ACTIVE: &str = "the master key is not the vault's active one (was it rotated?)";
/// [`StoreError::Conflict`] of `add_version` when another write took the version number.
pub const VERSION_TAKEN: &str = "another write to this secret took the version number";

/// A key-encryption key known to the vault (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KekRecord {
    /// Identifier derived from the key check value.
    pub id: String,
    /// Key check value: HMAC-SHA256 of a fixed label under the KEK.
    pub kcv: Vec<u8>,
    /// `active`, `next` (rotation in progress) or `retired`.
    pub state: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A secret's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// Unique name.
    pub name: String,
    /// Type tag (`opaque`, `bearer_token`, ...).
    pub secret_type: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Not served after this time (Unix seconds).
    pub expires_at: Option<i64>,
    /// Rotation policy: a version older than this is overdue.
    pub max_age_secs: Option<i64>,
    /// Consumers allowed to use the secret (`route:ID`, `webhook:ID`, `integration:ID`).
    pub consumers: Vec<String>,
    /// How many versions with ciphertext to keep.
    pub keep_versions: i64,
}

/// A `vault_secrets` row as stored (consumers one per line), read the same way by every
/// backend.
#[derive(sqlx::FromRow)]
pub(crate) struct SecretRow {
    name: String,
    secret_type: String,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
    max_age_secs: Option<i64>,
    consumers: String,
    keep_versions: i64,
}

/// Reads a `vault_secrets` row of any backend.
pub(crate) fn secret_row<'r, R: sqlx::Row>(r: &'r R) -> Result<SecretRecord, StoreError>
where
    SecretRow: sqlx::FromRow<'r, R>,
{
    let row = SecretRow::from_row(r)?;
    Ok(SecretRecord {
        name: row.name,
        secret_type: row.secret_type,
        created_at: row.created_at,
        updated_at: row.updated_at,
        expires_at: row.expires_at,
        max_age_secs: row.max_age_secs,
        consumers: row
            .consumers
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        keep_versions: row.keep_versions,
    })
}

/// One encrypted version of a secret.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VersionRecord {
    /// Secret name.
    pub name: String,
    /// 1, 2, ...
    pub version: i64,
    /// `active`, `disabled` or `destroyed`.
    pub state: String,
    /// Unix seconds.
    pub created_at: i64,
    /// For a superseded version: valid until this time (rotation grace).
    pub valid_until: Option<i64>,
    /// When the gateway first used this version.
    pub first_used_at: Option<i64>,
    /// The KEK that wraps the data key.
    pub kek_id: String,
    /// Nonce and AES-256-GCM ciphertext of the data key.
    pub wrapped_dek: Vec<u8>,
    /// Nonce and AES-256-GCM ciphertext of the value. Empty once destroyed.
    pub ciphertext: Vec<u8>,
}

/// The vault's storage operations.
#[async_trait]
pub trait VaultStore: Send + Sync {
    /// Every KEK record.
    async fn keks(&self) -> Result<Vec<KekRecord>, StoreError>;
    /// Registers a KEK (no-op if the id exists).
    async fn insert_kek(&self, kek: &KekRecord) -> Result<(), StoreError>;
    /// Changes a KEK's state.
    async fn set_kek_state(&self, id: &str, state: &str) -> Result<(), StoreError>;

    /// One secret's metadata.
    async fn secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError>;
    /// Every secret's metadata, by name.
    async fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError>;

    /// Writes `secret`'s settings (creating it if new) and adds `v` as version `v.version`, in
    /// one transaction. `v.version` must be the secret's next number, with its data
    /// key wrapped by an `active` KEK; otherwise nothing changes and the error is
    /// [`StoreError::Conflict`] (another writer took the number, or a rotation retired the
    /// KEK). The caller encrypts for the number first, since the number is bound into the
    /// ciphertext. When `supersede_until` is set, the previously active versions stay active
    /// until then (rotation grace); otherwise they are disabled. Pruning beyond
    /// `keep_versions` happens in the same transaction.
    async fn add_version(
        &self,
        secret: &SecretRecord,
        v: &VersionRecord,
        supersede_until: Option<i64>,
    ) -> Result<(), StoreError>;
    /// All versions of a secret, newest first.
    async fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError>;
    /// Sets a version's state; `destroyed` also wipes its ciphertext and wrapped key.
    async fn set_version_state(
        &self,
        name: &str,
        version: i64,
        state: &str,
    ) -> Result<bool, StoreError>;
    /// Records first use; true when this call was the first.
    async fn mark_first_use(&self, name: &str, version: i64, at: i64) -> Result<bool, StoreError>;
    /// Versions whose data key is wrapped by `kek_id`, up to `limit`.
    async fn versions_wrapped_by(
        &self,
        kek_id: &str,
        limit: i64,
    ) -> Result<Vec<VersionRecord>, StoreError>;
    /// Replaces a wrapped data key if it is still wrapped by `from_kek` (compare-and-set, so
    /// two rotations cannot interleave badly). True when the row changed.
    async fn rewrap(
        &self,
        name: &str,
        version: i64,
        from_kek: &str,
        to_kek: &str,
        wrapped: &[u8],
    ) -> Result<bool, StoreError>;

    /// The vault's change counter.
    async fn epoch(&self) -> Result<i64, StoreError>;
}
