//! The embedded SQLite backend: zero setup, one file, WAL mode.

use crate::{create_private_file, Store, StoreError, UndeclaredHit};
use async_trait::async_trait;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Row, SqlitePool,
};
use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A store in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// The database file, beside which the start-up lock between processes on it (`serve`
    /// and the CLI) is kept. None for an in-memory database, which no other process opens.
    path: Option<PathBuf>,
}

impl SqliteStore {
    /// Opens (creating 0600 if needed) and migrates the database at `path`. SQLite gives its
    /// WAL and shared-memory files the database file's mode, so they are 0600 too.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        // Creating and migrating a new file is the first thing two processes starting on it
        // together would race on: they take turns.
        let creating = crate::BootstrapLock::beside(path, crate::bootstrap::BOOTSTRAP_WAIT).await?;
        create_private_file(path)?;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        creating.release().await?;
        Ok(SqliteStore {
            pool,
            path: Some(path.to_path_buf()),
        })
    }

    /// A private in-memory database, for tests and throwaway runs.
    pub async fn memory() -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?;
        // One connection: every in-memory connection would otherwise be its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool, path: None })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn bootstrap_lock(&self) -> Result<crate::BootstrapLock, StoreError> {
        // `serve` and a CLI command (`client key issue`) may both be the first to open a new
        // file: they take turns through a file lock beside it.
        match &self.path {
            Some(p) => crate::BootstrapLock::beside(p, crate::bootstrap::BOOTSTRAP_WAIT).await,
            None => Ok(crate::BootstrapLock::uncontended()),
        }
    }

    async fn record_undeclared(&self, batch: &[UndeclaredHit]) -> Result<(), StoreError> {
        const UPSERT: &str =
            "INSERT INTO undeclared_endpoints (method, shape, hits, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (method, shape) DO UPDATE SET
               hits = hits + excluded.hits,
               first_seen = MIN(first_seen, excluded.first_seen),
               last_seen = MAX(last_seen, excluded.last_seen)";
        let mut tx = self.pool.begin().await?;
        let mut stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM undeclared_endpoints")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        for h in batch {
            let hits = i64::try_from(h.hits).unwrap_or(i64::MAX);
            let updated = sqlx::query(
                "UPDATE undeclared_endpoints SET hits = hits + ?3,
                   first_seen = MIN(first_seen, ?4), last_seen = MAX(last_seen, ?5)
                 WHERE method = ?1 AND shape = ?2",
            )
            .bind(&h.method)
            .bind(&h.shape)
            .bind(hits)
            .bind(h.first_seen)
            .bind(h.last_seen)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated > 0 {
                continue;
            }
            // A new shape: stored while there is room, otherwise counted under the overflow
            // shape of its method, so a scanner's random paths cannot grow the table (and
            // every inventory report) without bound.
            let shape = if stored < crate::MAX_UNDECLARED_SHAPES {
                stored += 1;
                h.shape.as_str()
            } else {
                crate::OVERFLOW_SHAPE
            };
            sqlx::query(UPSERT)
                .bind(&h.method)
                .bind(shape)
                .bind(hits)
                .bind(h.first_seen)
                .bind(h.last_seen)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn undeclared(&self) -> Result<Vec<UndeclaredHit>, StoreError> {
        let rows = sqlx::query(
            "SELECT method, shape, hits, first_seen, last_seen FROM undeclared_endpoints
             ORDER BY hits DESC, method, shape",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(UndeclaredHit {
                    method: r.try_get("method")?,
                    shape: r.try_get("shape")?,
                    hits: u64::try_from(r.try_get::<i64, _>("hits")?).unwrap_or(0),
                    first_seen: r.try_get("first_seen")?,
                    last_seen: r.try_get("last_seen")?,
                })
            })
            .collect()
    }

    fn vault(&self) -> &dyn crate::VaultStore {
        self
    }

    fn keys(&self) -> &dyn crate::ApiKeyStore {
        self
    }

    fn quotas(&self) -> &dyn crate::QuotaStore {
        self
    }

    fn outbox(&self) -> &dyn crate::OutboxStore {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hit(method: &str, shape: &str, hits: u64, t: i64) -> UndeclaredHit {
        UndeclaredHit {
            method: method.into(),
            shape: shape.into(),
            hits,
            first_seen: t,
            last_seen: t,
        }
    }

    #[tokio::test]
    async fn new_shapes_past_the_bound_are_counted_as_other() -> Result<(), StoreError> {
        let s = SqliteStore::memory().await?;
        let max = crate::MAX_UNDECLARED_SHAPES as usize;
        let spray: Vec<UndeclaredHit> = (0..max + 50)
            .map(|i| hit("GET", &format!("/scan/x{i}"), 1, 5))
            .collect();
        s.record_undeclared(&spray[..max - 10]).await?;
        s.record_undeclared(&spray[max - 10..]).await?;
        // A shape stored before the bound keeps counting.
        s.record_undeclared(&[hit("GET", "/scan/x0", 4, 6)]).await?;
        let all = s.undeclared().await?;
        assert_eq!(all.len(), max + 1, "the stored shapes and one overflow row");
        let other = all
            .iter()
            .find(|h| h.shape == crate::OVERFLOW_SHAPE)
            .expect("overflow row");
        assert_eq!((other.method.as_str(), other.hits), ("GET", 50));
        let first = all.iter().find(|h| h.shape == "/scan/x0").expect("x0");
        assert_eq!(first.hits, 5);
        Ok(())
    }

    #[tokio::test]
    async fn files_are_private() -> Result<(), StoreError> {
        let tmp = tempfile::tempdir().map_err(|e| StoreError::Filesystem {
            path: "tmp".into(),
            source: e,
        })?;
        let dir = tmp.path().join("state");
        let store = crate::open(&format!("sqlite://{}", dir.join("p.db").display()), &dir).await?;
        store.record_undeclared(&[hit("GET", "/x", 1, 1)]).await?;
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&dir), 0o700);
        for f in ["p.db", "p.db-wal", "p.db-shm"] {
            let p = dir.join(f);
            assert!(p.exists(), "{f} missing");
            assert_eq!(mode(&p), 0o600, "{f}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn wide_permissions_on_existing_state_are_narrowed() -> Result<(), StoreError> {
        let tmp = tempfile::tempdir().map_err(|e| StoreError::Filesystem {
            path: "tmp".into(),
            source: e,
        })?;
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).map_err(|e| StoreError::Filesystem {
            path: "d".into(),
            source: e,
        })?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| {
            StoreError::Filesystem {
                path: "d".into(),
                source: e,
            }
        })?;
        crate::open(&format!("sqlite://{}", dir.join("p.db").display()), &dir).await?;
        assert_eq!(
            std::fs::metadata(&dir)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0),
            0o700
        );
        Ok(())
    }
}
