//! The webhook outbox: verified events persisted before the sender is answered, delivered by
//! a worker, and kept in a dead-letter list when delivery keeps failing past the maximum age.

use crate::{SqliteStore, StoreError};
use async_trait::async_trait;
use sqlx::{FromRow, Row};

/// A verified webhook event waiting for delivery (or dead).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxEvent {
    /// Row id.
    pub id: i64,
    /// The webhook endpoint id.
    pub webhook: String,
    /// The id the backend sees (`webhook-id`); unique per endpoint.
    pub message_id: String,
    /// The event type, when the scheme names one.
    pub event_type: Option<String>,
    /// The sender's Content-Type.
    pub content_type: Option<String>,
    /// The exact body bytes received.
    pub body: Vec<u8>,
    /// Unix seconds.
    pub received_at: i64,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// Unix seconds.
    pub next_attempt_at: i64,
    /// Why the last attempt failed (status or error kind; never a secret).
    pub last_error: Option<String>,
}

/// Outbox storage operations.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Adds an event, due now; false when the endpoint already holds this message id.
    async fn enqueue(&self, e: &OutboxEvent) -> Result<bool, StoreError>;
    /// Pending events due at `now` and not leased, oldest first, at most `limit`; each is
    /// leased to `token` until `lease_until` so no other worker takes it meanwhile. `token`
    /// is the claimer's own (random per claim): the outcome calls below take effect only
    /// while the lease is still that token's.
    async fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
        token: &str,
    ) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Extends `token`'s lease on a pending event as its attempt starts; false when another
    /// worker has claimed it since (the first lease ran out), which then delivers it instead.
    async fn renew(&self, id: i64, token: &str, lease_until: i64) -> Result<bool, StoreError>;
    /// Delivered: removed. False when the lease was no longer `token`'s.
    async fn delivered(&self, id: i64, token: &str) -> Result<bool, StoreError>;
    /// Failed: retried at `next_attempt_at`. False when the lease was no longer `token`'s.
    async fn retry_later(
        &self,
        id: i64,
        token: &str,
        attempts: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<bool, StoreError>;
    /// Failed for good: moved to the dead-letter list. False when the lease was no longer
    /// `token`'s.
    async fn dead(
        &self,
        id: i64,
        token: &str,
        attempts: i64,
        error: &str,
    ) -> Result<bool, StoreError>;
    /// The dead-letter list, oldest first.
    async fn dead_letters(&self) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Puts a dead event back in the queue, due now, with a fresh age; false if no such
    /// dead event.
    async fn replay_dead(&self, id: i64, now: i64) -> Result<bool, StoreError>;
    /// Deletes a dead event; false if no such dead event.
    async fn drop_dead(&self, id: i64) -> Result<bool, StoreError>;
    /// Events still pending.
    async fn pending_count(&self) -> Result<i64, StoreError>;
    /// Ends the leases a crashed predecessor of this process left, at start-up, so its cut
    /// attempts are due again at once. Only a store with one worker process (SQLite) can tell
    /// they are not live; a shared one (PostgreSQL) leaves them to run out.
    async fn release_leases(&self) -> Result<(), StoreError>;
}

const COLUMNS: &str = "id, webhook, message_id, event_type, content_type, body, received_at, attempts, next_attempt_at, last_error";

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn enqueue(&self, e: &OutboxEvent) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO webhook_outbox (webhook, message_id, event_type, content_type, body, received_at, next_attempt_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (webhook, message_id) DO NOTHING",
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
        // A worker that dies mid-delivery leaves the event leased; the lease runs out (or is
        // released at the next start) and the event is due again: never lost.
        let rows = sqlx::query(&format!(
            "UPDATE webhook_outbox SET lease_until = ?2, lease_token = ?4 WHERE id IN \
             (SELECT id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= ?1 \
              AND (lease_until IS NULL OR lease_until < ?1) ORDER BY id LIMIT ?3) \
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
            "UPDATE webhook_outbox SET lease_until = ?3 WHERE id = ?1 AND lease_token = ?2 AND state = 'pending'",
        )
        .bind(id)
        .bind(token)
        .bind(lease_until)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delivered(&self, id: i64, token: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_outbox WHERE id = ?1 AND lease_token = ?2")
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
        let done = sqlx::query("UPDATE webhook_outbox SET attempts = ?3, next_attempt_at = ?4, last_error = ?5, lease_until = NULL, lease_token = NULL WHERE id = ?1 AND lease_token = ?2")
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
        let done = sqlx::query("UPDATE webhook_outbox SET state = 'dead', attempts = ?3, last_error = ?4, lease_until = NULL, lease_token = NULL WHERE id = ?1 AND lease_token = ?2")
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
        let done = sqlx::query("UPDATE webhook_outbox SET state = 'pending', attempts = 0, received_at = ?2, next_attempt_at = ?2 WHERE id = ?1 AND state = 'dead'")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn drop_dead(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhook_outbox WHERE id = ?1 AND state = 'dead'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE webhook_outbox SET lease_until = NULL, lease_token = NULL WHERE lease_until IS NOT NULL")
            .execute(&self.pool)
            .await?;
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
