//! `QuotaStore` for PostgreSQL.

use super::PgStore;
use crate::{QuotaCharge, QuotaStore, StoreError};
use async_trait::async_trait;
use sqlx::Row;

#[async_trait]
impl QuotaStore for PgStore {
    async fn charge(&self, charges: &[QuotaCharge]) -> Result<Result<Vec<u64>, usize>, StoreError> {
        // Each upsert locks its counter's row until commit. Two instances charging the same
        // counters must take those locks in one order, or each could wait for the other.
        let mut order: Vec<usize> = (0..charges.len()).collect();
        order.sort_by(|&a, &b| {
            (&charges[a].key, &charges[a].window).cmp(&(&charges[b].key, &charges[b].window))
        });
        let mut tx = self.pool.begin().await?;
        let mut used = vec![0u64; charges.len()];
        for i in order {
            let c = &charges[i];
            let limit = i64::try_from(c.limit).unwrap_or(i64::MAX);
            // As in SQLite, the WHERE on the update makes "count and compare" one statement.
            let row = sqlx::query(
                "INSERT INTO quota_usage (key, \"window\", used) VALUES ($1, $2, 1) \
                 ON CONFLICT (key, \"window\") DO UPDATE SET used = quota_usage.used + 1 \
                 WHERE quota_usage.used < $3 RETURNING used",
            )
            .bind(&c.key)
            .bind(&c.window)
            .bind(limit)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(r) => used[i] = u64::try_from(r.try_get::<i64, _>("used")?).unwrap_or(0),
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
        let row = sqlx::query("SELECT used FROM quota_usage WHERE key = $1 AND \"window\" = $2")
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
        sqlx::query("DELETE FROM quota_usage WHERE NOT (\"window\" = ANY($1))")
            .bind(keep)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
