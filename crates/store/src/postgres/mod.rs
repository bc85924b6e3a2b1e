//! The PostgreSQL backend: one database shared by several gateway instances.
//!
//! The SQL follows the SQLite backend's statement for statement, with the changes sharing
//! needs: writes that SQLite serialises by its single writer take a row or advisory lock here
//! (quota charges lock their counters in one order, version numbers lock the secret, the
//! undeclared-shape bound locks the table), and the outbox claims with `SKIP LOCKED` so two
//! instances never lease one event.

mod keys;
mod outbox;
mod quotas;
mod vault;

use crate::{Store, StoreError, UndeclaredHit};
use async_trait::async_trait;
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    Connection, PgConnection, PgPool, Row,
};
use std::{str::FromStr, time::Duration};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock that serialises writers of `undeclared_endpoints`, so the bound on its
/// rows holds across instances. Any fixed number unique to this purpose.
const UNDECLARED_LOCK: i64 = 0x7063_6c5f_756e_6463; // "pcl_undc"

/// How long opening the store waits for the server before giving up (and the gateway with it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// No statement may hold a connection longer than this; a stuck lock or a dead server ends
/// in an error, not a hung request.
const STATEMENT_TIMEOUT: &str = "10s";

/// A store in a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`, libpq's URL form,
    /// `sslmode` included; the password may come from `PGPASSWORD`) and migrates it. Several
    /// instances may start at once: sqlx's migrator takes an advisory lock.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)?
            .application_name("portcullis")
            .options([
                ("statement_timeout", STATEMENT_TIMEOUT),
                // The migrator's `CREATE TABLE IF NOT EXISTS` notices ("already exists")
                // would otherwise be logged on every start and every CLI command.
                ("client_min_messages", "warning"),
            ]);
        let pool = Self::pool(opts, 8).await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool })
    }

    /// Connects without migrating, in sessions the server keeps read-only: for `check`, which
    /// must be able to look at a production database and cannot change it by mistake. A
    /// database not yet migrated gives errors on the first read.
    pub async fn connect_read_only(url: &str) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)?
            .application_name("portcullis check")
            .options([
                ("statement_timeout", STATEMENT_TIMEOUT),
                ("default_transaction_read_only", "on"),
            ]);
        Ok(PgStore {
            pool: Self::pool(opts, 2).await?,
        })
    }

    async fn pool(opts: PgConnectOptions, max: u32) -> Result<PgPool, StoreError> {
        // One connection first, alone: the pool would report any failure as a bare "timed
        // out", where this says why (refused, unknown host, authentication, TLS).
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
            .await
            .map_err(|_| StoreError::Timeout(CONNECT_TIMEOUT))??;
        probe.close().await?;
        Ok(PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn bootstrap_lock(&self) -> Result<crate::BootstrapLock, StoreError> {
        crate::BootstrapLock::postgres(&self.pool, crate::bootstrap::BOOTSTRAP_WAIT).await
    }

    async fn record_undeclared(&self, batch: &[UndeclaredHit]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(UNDECLARED_LOCK)
            .execute(&mut *tx)
            .await?;
        let mut stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM undeclared_endpoints")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        for h in batch {
            let hits = i64::try_from(h.hits).unwrap_or(i64::MAX);
            let updated = sqlx::query(
                "UPDATE undeclared_endpoints SET hits = hits + $3,
                   first_seen = LEAST(first_seen, $4), last_seen = GREATEST(last_seen, $5)
                 WHERE method = $1 AND shape = $2",
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
            // As in SQLite: new shapes past the bound count under the overflow shape.
            let shape = if stored < crate::MAX_UNDECLARED_SHAPES {
                stored += 1;
                h.shape.as_str()
            } else {
                crate::OVERFLOW_SHAPE
            };
            sqlx::query(
                "INSERT INTO undeclared_endpoints (method, shape, hits, first_seen, last_seen)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (method, shape) DO UPDATE SET
                   hits = undeclared_endpoints.hits + excluded.hits,
                   first_seen = LEAST(undeclared_endpoints.first_seen, excluded.first_seen),
                   last_seen = GREATEST(undeclared_endpoints.last_seen, excluded.last_seen)",
            )
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
             ORDER BY hits DESC, method COLLATE \"C\", shape COLLATE \"C\"",
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
