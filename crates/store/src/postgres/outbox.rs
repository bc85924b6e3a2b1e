//! `OutboxStore` for PostgreSQL, where several instances deliver from one outbox.

use super::PgStore;
use crate::{OutboxEvent, OutboxStore, StoreError};
use async_trait::async_trait;
use sqlx::{FromRow, Row};

const COLUMNS: &str = "id, webhook, message_id, event_type, content_type, body, received_at, attempts, next_attempt_at, last_error";

#[async_trait]
impl OutboxStore for PgStore {
    async fn enqueue(&self, e: &OutboxEvent) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO webhook_outbox (webhook, message_id, event_type, content_type, body, received_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (webhook, message_id) DO NOTHING",
        )
        .bind(&e.webhook)
        .bind(&e.message_id)
        .bind(&e.event_type)
        .bind(&e.content_type)
        .bind(&e.body)
        .bind(e.received_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
        token: &str,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        // A worker that dies mid-delivery leaves the event leased; the lease runs out and the
        // event is due again: never lost. SKIP LOCKED lets two instances claim at once without
        // waiting on each other, and the row lock, rechecked after the other's commit, keeps
        // them from leasing one event twice.
        let rows = sqlx::query(&format!(
            "UPDATE webhook_outbox SET lease_until = $2, lease_token = $4 WHERE id IN \
             (SELECT id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= $1 \
              AND (lease_until IS NULL OR lease_until < $1) ORDER BY id LIMIT $3 \
              FOR UPDATE SKIP LOCKED) \
             RETURNING {COLUMNS}"
        ))
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .bind(token)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<OutboxEvent> = rows
            .iter()
            .map(OutboxEvent::from_row)
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn renew(&self, id: i64, token: &str, lease_until: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhook_outbox SET lease_until = $3 WHERE id = $1 AND lease_token = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(token)
        .bind(lease_until)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delivered(&self, id: i64, token: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_outbox WHERE id = $1 AND lease_token = $2")
            .bind(id)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn retry_later(
        &self,
        id: i64,
        token: &str,
        attempts: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE webhook_outbox SET attempts = $3, next_attempt_at = $4, last_error = $5, lease_until = NULL, lease_token = NULL WHERE id = $1 AND lease_token = $2")
            .bind(id)
            .bind(token)
            .bind(attempts)
            .bind(next_attempt_at)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn dead(
        &self,
        id: i64,
        token: &str,
        attempts: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE webhook_outbox SET state = 'dead', attempts = $3, last_error = $4, lease_until = NULL, lease_token = NULL WHERE id = $1 AND lease_token = $2")
            .bind(id)
            .bind(token)
            .bind(attempts)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn dead_letters(&self) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM webhook_outbox WHERE state = 'dead' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(OutboxEvent::from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn replay_dead(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE webhook_outbox SET state = 'pending', attempts = 0, received_at = $2, next_attempt_at = $2 WHERE id = $1 AND state = 'dead'")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn drop_dead(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_outbox WHERE id = $1 AND state = 'dead'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self) -> Result<(), StoreError> {
        // Another instance may be delivering a leased event right now, so a starting
        // instance cannot tell a crashed attempt from a live one: leases run out instead.
        Ok(())
    }

    async fn pending_count(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM webhook_outbox WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }
}
