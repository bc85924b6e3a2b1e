//! `ApiKeyStore` for PostgreSQL. Writes bump the `api_keys` change counter, which the other
//! instances poll to reload their key caches.

use super::PgStore;
use crate::{ApiKeyRecord, ApiKeyStore, StoreError};
use async_trait::async_trait;
use sqlx::{FromRow, Row};

async fn bump<'e, E: sqlx::Executor<'e, Database = sqlx::Postgres>>(
    db: E,
    counter: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE change_counters SET epoch = epoch + 1 WHERE name = $1")
        .bind(counter)
        .execute(db)
        .await?;
    Ok(())
}

#[async_trait]
impl ApiKeyStore for PgStore {
    async fn insert_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO api_keys (key_id, client_id, hash, created_at, expires_at, revoked_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&k.key_id)
            .bind(&k.client_id)
            .bind(&k.hash)
            .bind(k.created_at)
            .bind(k.expires_at)
            .bind(k.revoked_at)
            .bind(k.last_used_at)
            .execute(&mut *tx)
            .await?;
        bump(&mut *tx, "api_keys").await?;
        Ok(tx.commit().await?)
    }

    async fn all_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT key_id, client_id, hash, created_at, expires_at, revoked_at, last_used_at FROM api_keys ORDER BY client_id, created_at")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(ApiKeyRecord::from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn revoke_key(&self, key_id: &str, at: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .bind(at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        bump(&self.pool, "api_keys").await?;
        Ok(n > 0)
    }

    async fn touch_key(&self, key_id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = GREATEST(last_used_at, $2) WHERE key_id = $1",
        )
        .bind(key_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        bump(&mut *tx, "revoked_tokens").await?;
        Ok(tx.commit().await?)
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query("SELECT jti FROM revoked_tokens")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("jti")?)).collect()
    }

    async fn keys_epoch(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT epoch FROM change_counters WHERE name = 'api_keys'")
                .fetch_one(&self.pool)
                .await?
                .try_get("epoch")?,
        )
    }

    async fn tokens_epoch(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT epoch FROM change_counters WHERE name = 'revoked_tokens'")
                .fetch_one(&self.pool)
                .await?
                .try_get("epoch")?,
        )
    }
}
