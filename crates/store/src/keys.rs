//! Persistence for API keys: ids, owners, lifetimes and a keyed hash; never the key.

use crate::{SqliteStore, StoreError};
use async_trait::async_trait;
use sqlx::{FromRow, Row};

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKeyRecord {
    /// Public key id (the middle part of `pcl_<id>_<secret>`).
    pub key_id: String,
    /// Owning client.
    pub client_id: String,
    /// HMAC-SHA256 of the secret part under the pepper.
    pub hash: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub revoked_at: Option<i64>,
    /// Unix seconds, updated at most about once a minute.
    pub last_used_at: Option<i64>,
}

/// API key storage operations.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Adds a key.
    async fn insert_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError>;
    /// Every key (the gateway caches them all; unknown ids never reach the database).
    async fn all_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks a key revoked; true if it existed and was not already revoked.
    async fn revoke_key(&self, key_id: &str, at: i64) -> Result<bool, StoreError>;
    /// Records use.
    async fn touch_key(&self, key_id: &str, at: i64) -> Result<(), StoreError>;
    /// The change counter for keys.
    async fn keys_epoch(&self) -> Result<i64, StoreError>;
    /// Records a revoked access token id until its expiry (bumping the tokens' counter).
    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<(), StoreError>;
    /// The change counter for token revocations.
    async fn tokens_epoch(&self) -> Result<i64, StoreError>;
    /// Revoked token ids that have not expired yet.
    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StoreError>;
}

async fn bump<'e, E: sqlx::Executor<'e, Database = sqlx::Sqlite>>(
    db: E,
    counter: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE change_counters SET epoch = epoch + 1 WHERE name = ?1")
        .bind(counter)
        .execute(db)
        .await?;
    Ok(())
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn insert_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO api_keys (key_id, client_id, hash, created_at, expires_at, revoked_at, last_used_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
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
            "UPDATE api_keys SET revoked_at = ?2 WHERE key_id = ?1 AND revoked_at IS NULL",
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
        sqlx::query("UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE key_id = ?1")
            .bind(key_id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        bump(&mut *tx, "revoked_tokens").await?;
        Ok(tx.commit().await?)
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < ?1")
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
