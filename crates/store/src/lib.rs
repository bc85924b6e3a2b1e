//! Persistence behind the [`Store`] trait.
//!
//! Callers hold an `Arc<dyn Store>` and never see SQL or a driver type. Two implementations,
//! chosen by URL in [`open`]: embedded SQLite (one instance, zero setup) and PostgreSQL
//! (several instances sharing one database). Each concern gets its own small group of methods
//! (inventory, vault, API keys, quotas, outbox), implemented once per backend.

mod bootstrap;
mod fsperm;
mod keys;
mod outbox;
mod postgres;
mod quotas;
mod sqlite;
mod sqlite_vault;
#[cfg(feature = "testing")]
pub mod testing;
mod vault;

use async_trait::async_trait;
use std::{path::Path, sync::Arc};

pub use bootstrap::BootstrapLock;
pub use fsperm::{create_private_dir, create_private_file};
pub use keys::{ApiKeyRecord, ApiKeyStore};
pub use outbox::{OutboxEvent, OutboxStore};
pub use postgres::PgStore;
pub use quotas::{QuotaCharge, QuotaStore};
pub use sqlite::SqliteStore;
pub use vault::{
    KekRecord, SecretRecord, VaultStore, VersionRecord, KEK_NOT_ACTIVE, VERSION_TAKEN,
};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names a backend this build does not have.
    #[error("unsupported store URL (expected sqlite://PATH, sqlite::memory: or postgres://...)")]
    UnsupportedUrl,
    /// Preparing the data directory or database file failed.
    #[error("cannot prepare {path}: {source}")]
    Filesystem {
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Schema migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database server did not answer in time.
    #[error("the database server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// Another process holds what this one waited for.
    #[error("the store is busy: {0}")]
    Busy(String),
    /// A write lost to a concurrent one and changed nothing; reading again and retrying is
    /// safe.
    #[error("a concurrent write won: {0}")]
    Conflict(&'static str),
    /// The database refused or failed an operation.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Most undeclared endpoint shapes the store keeps; hits on new shapes beyond it are counted
/// under [`OVERFLOW_SHAPE`] of their method.
pub const MAX_UNDECLARED_SHAPES: i64 = 10_000;
/// The shape that counts undeclared hits beyond the bounds (in memory and in the store).
pub const OVERFLOW_SHAPE: &str = "(other)";

/// Hits on one undeclared endpoint shape, batched in memory before they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndeclaredHit {
    /// Request method.
    pub method: String,
    /// Normalised path shape, such as `/api/users/{id}`.
    pub shape: String,
    /// How many requests in this batch.
    pub hits: u64,
    /// First hit in this batch, Unix seconds.
    pub first_seen: i64,
    /// Last hit in this batch, Unix seconds.
    pub last_seen: i64,
}

/// Everything the gateway persists. Implementations must be safe to share across tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip used by readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Adds a batch of undeclared-endpoint hits to the running totals.
    async fn record_undeclared(&self, batch: &[UndeclaredHit]) -> Result<(), StoreError>;

    /// Running totals of undeclared endpoints, most hit first.
    async fn undeclared(&self) -> Result<Vec<UndeclaredHit>, StoreError>;

    /// Serialises start-up among instances sharing this store (see [`BootstrapLock`]).
    /// Hold it from opening the vault until the shared keys exist, then release it.
    async fn bootstrap_lock(&self) -> Result<BootstrapLock, StoreError>;

    /// The secrets vault's tables.
    fn vault(&self) -> &dyn VaultStore;

    /// API keys.
    fn keys(&self) -> &dyn ApiKeyStore;

    /// Request quota counters.
    fn quotas(&self) -> &dyn QuotaStore;

    /// The webhook outbox and dead-letter list.
    fn outbox(&self) -> &dyn OutboxStore;
}

/// Whether `url` names a database shared by several instances (PostgreSQL), rather than a
/// store of this process's own.
pub fn is_shared_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store named by `url`, creating and migrating it as needed. `data_dir` is created
/// 0700 first (it holds the master key and admin token whatever the backend); a SQLite file
/// inside it is created 0600.
pub async fn open(url: &str, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    if url == "sqlite::memory:" {
        return Ok(Arc::new(SqliteStore::memory().await?));
    }
    if is_shared_url(url) {
        create_private_dir(data_dir)?;
        return Ok(Arc::new(PgStore::connect(url).await?));
    }
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Err(StoreError::UnsupportedUrl);
    };
    create_private_dir(data_dir)?;
    let path = Path::new(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    Ok(Arc::new(SqliteStore::open(path).await?))
}
