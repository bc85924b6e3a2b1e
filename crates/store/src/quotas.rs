//! Persistence for request quotas: a count per counter and calendar window, charged
//! atomically so concurrent requests (and, on a shared database, several instances) never
//! pass a quota between them.

use crate::{SqliteStore, StoreError};
use async_trait::async_trait;
use sqlx::Row;

/// One quota counter to charge for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCharge {
    /// The counter, such as `c:billing` or `cr:orders:billing`.
    pub key: String,
    /// The calendar window, such as `d:2026-11-23` or `m:2026-11`.
    pub window: String,
    /// Most requests in the window.
    pub limit: u64,
}

/// Quota storage operations.
#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// Adds one request to every counter if none is at its limit, and returns each counter's
    /// new count; otherwise changes nothing and returns `Err(i)` naming a full counter.
    async fn charge(&self, charges: &[QuotaCharge]) -> Result<Result<Vec<u64>, usize>, StoreError>;
    /// The count of one counter in one window (0 when unused).
    async fn quota_used(&self, key: &str, window: &str) -> Result<u64, StoreError>;
    /// Deletes counts of windows other than `keep` (the current day and month).
    async fn prune_quotas(&self, keep: &[String]) -> Result<(), StoreError>;
}

#[async_trait]
impl QuotaStore for SqliteStore {
    async fn charge(&self, charges: &[QuotaCharge]) -> Result<Result<Vec<u64>, usize>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut used = Vec::with_capacity(charges.len());
        for (i, c) in charges.iter().enumerate() {
            let limit = i64::try_from(c.limit).unwrap_or(i64::MAX);
            // The WHERE on the upsert's update makes "count and compare" one statement: a
            // full counter returns no row and is left as it was.
            let row = sqlx::query(
                "INSERT INTO quota_usage (key, window, used) VALUES (?1, ?2, 1) \
                 ON CONFLICT (key, window) DO UPDATE SET used = used + 1 WHERE used < ?3 \
                 RETURNING used",
            )
            .bind(&c.key)
            .bind(&c.window)
            .bind(limit)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(r) => used.push(u64::try_from(r.try_get::<i64, _>("used")?).unwrap_or(0)),
                None => {
                    tx.rollback().await?;
                    return Ok(Err(i));
                }
            }
        }
        tx.commit().await?;
        Ok(Ok(used))
    }

    async fn quota_used(&self, key: &str, window: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT used FROM quota_usage WHERE key = ?1 AND window = ?2")
            .bind(key)
            .bind(window)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => u64::try_from(r.try_get::<i64, _>("used")?).unwrap_or(0),
            None => 0,
        })
    }

    async fn prune_quotas(&self, keep: &[String]) -> Result<(), StoreError> {
        let mut q = String::from("DELETE FROM quota_usage WHERE window NOT IN (");
        for i in 0..keep.len() {
            if i > 0 {
                q.push_str(", ");
            }
            q.push_str(&format!("?{}", i + 1));
        }
        q.push(')');
        let mut query = sqlx::query(&q);
        for k in keep {
            query = query.bind(k);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }
}
