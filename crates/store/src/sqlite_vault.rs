//! `VaultStore` for SQLite.

use crate::{
    vault::{secret_row, KekRecord, SecretRecord, VaultStore, VersionRecord},
    SqliteStore, StoreError,
};
use async_trait::async_trait;
use sqlx::{FromRow, Row, Sqlite, Transaction};

async fn bump(tx: &mut Transaction<'_, Sqlite>) -> Result<(), StoreError> {
    sqlx::query("UPDATE vault_meta SET epoch = epoch + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const VERSION_COLUMNS: &str =
    "name, version, state, created_at, valid_until, first_used_at, kek_id, wrapped_dek, ciphertext";

/// Creates or updates a secret's row, inside `add_version`'s transaction.
async fn write_secret(
    tx: &mut Transaction<'_, Sqlite>,
    s: &SecretRecord,
) -> Result<(), StoreError> {
    sqlx::query(
            "INSERT INTO vault_secrets (name, secret_type, created_at, updated_at, expires_at, max_age_secs, consumers, keep_versions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (name) DO UPDATE SET secret_type = excluded.secret_type, updated_at = excluded.updated_at,
               expires_at = excluded.expires_at, max_age_secs = excluded.max_age_secs,
               consumers = excluded.consumers, keep_versions = excluded.keep_versions",
        )
        .bind(&s.name)
        .bind(&s.secret_type)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.expires_at)
        .bind(s.max_age_secs)
        .bind(s.consumers.join("\n"))
        .bind(s.keep_versions)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait]
impl VaultStore for SqliteStore {
    async fn keks(&self) -> Result<Vec<KekRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, kcv, state, created_at FROM vault_keks ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(KekRecord::from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn insert_kek(&self, k: &KekRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO vault_keks (id, kcv, state, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING")
            .bind(&k.id)
            .bind(&k.kcv)
            .bind(&k.state)
            .bind(k.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_kek_state(&self, id: &str, state: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE vault_keks SET state = ?2 WHERE id = ?1")
            .bind(id)
            .bind(state)
            .execute(&mut *tx)
            .await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM vault_secrets WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(secret_row).transpose()
    }

    async fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM vault_secrets ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(secret_row).collect()
    }

    async fn add_version(
        &self,
        secret: &SecretRecord,
        v: &VersionRecord,
        supersede_until: Option<i64>,
    ) -> Result<(), StoreError> {
        // IMMEDIATE: the write lock from the first read, so the checks below hold until commit.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // The settings land with the version, in one transaction: a refused write changes
        // neither, and the pruning below uses the new `keep_versions`.
        write_secret(&mut tx, secret).await?;
        let kek: Option<String> = sqlx::query_scalar("SELECT state FROM vault_keks WHERE id = ?1")
            .bind(&v.kek_id)
            .fetch_optional(&mut *tx)
            .await?;
        if kek.as_deref() != Some("active") {
            return Err(StoreError::Conflict(crate::vault::KEK_NOT_ACTIVE));
        }
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) + 1 AS n FROM vault_versions WHERE name = ?1",
        )
        .bind(&v.name)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if next != v.version {
            return Err(StoreError::Conflict(crate::vault::VERSION_TAKEN));
        }
        match supersede_until {
            Some(until) => {
                sqlx::query("UPDATE vault_versions SET valid_until = ?2 WHERE name = ?1 AND state = 'active' AND (valid_until IS NULL OR valid_until > ?2)")
                    .bind(&v.name)
                    .bind(until)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query("UPDATE vault_versions SET state = 'disabled' WHERE name = ?1 AND state = 'active'")
                    .bind(&v.name)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(&format!("INSERT INTO vault_versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"))
            .bind(&v.name)
            .bind(next)
            .bind(&v.state)
            .bind(v.created_at)
            .bind(v.valid_until)
            .bind(v.first_used_at)
            .bind(&v.kek_id)
            .bind(&v.wrapped_dek)
            .bind(&v.ciphertext)
            .execute(&mut *tx)
            .await?;
        // Keep the newest `keep_versions` with ciphertext; older ones are wiped, not just hidden.
        sqlx::query(
            "UPDATE vault_versions SET state = 'destroyed', ciphertext = x'', wrapped_dek = x''
             WHERE name = ?1 AND version <= ?2 - (SELECT keep_versions FROM vault_secrets WHERE name = ?1)",
        )
        .bind(&v.name)
        .bind(next)
        .execute(&mut *tx)
        .await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM vault_versions WHERE name = ?1 ORDER BY version DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(VersionRecord::from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn set_version_state(
        &self,
        name: &str,
        version: i64,
        state: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = if state == "destroyed" {
            "UPDATE vault_versions SET state = ?3, ciphertext = x'', wrapped_dek = x'' WHERE name = ?1 AND version = ?2"
        } else {
            "UPDATE vault_versions SET state = ?3 WHERE name = ?1 AND version = ?2 AND state != 'destroyed'"
        };
        let n = sqlx::query(sql)
            .bind(name)
            .bind(version)
            .bind(state)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        bump(&mut tx).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn mark_first_use(&self, name: &str, version: i64, at: i64) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE vault_versions SET first_used_at = ?3 WHERE name = ?1 AND version = ?2 AND first_used_at IS NULL")
            .bind(name)
            .bind(version)
            .bind(at)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn versions_wrapped_by(
        &self,
        kek_id: &str,
        limit: i64,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM vault_versions WHERE kek_id = ?1 AND state != 'destroyed' ORDER BY name, version LIMIT ?2"
        ))
        .bind(kek_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(VersionRecord::from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn rewrap(
        &self,
        name: &str,
        version: i64,
        from_kek: &str,
        to_kek: &str,
        wrapped: &[u8],
    ) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE vault_versions SET kek_id = ?4, wrapped_dek = ?5 WHERE name = ?1 AND version = ?2 AND kek_id = ?3 AND state != 'destroyed'")
            .bind(name)
            .bind(version)
            .bind(from_kek)
            .bind(to_kek)
            .bind(wrapped)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn epoch(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT epoch FROM vault_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("epoch")?)
    }
}
