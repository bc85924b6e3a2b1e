//! What the vault holds, read from metadata alone: names, types, consumers, versions,
//! expiry and rotation findings. Needs no key and writes nothing, so `check` can use it on a
//! production database, and the vault's own listing is the same code.

use crate::{SecretInfo, VaultError, VersionInfo};
use portcullis_store::{SecretRecord, Store, VersionRecord};
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A version the data plane would serve at `t`.
pub(crate) fn usable(v: &VersionRecord, t: i64) -> bool {
    v.state == "active" && v.valid_until.is_none_or(|u| u > t)
}

/// One expiry or rotation finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What an operator reads.
    pub message: String,
    /// The vault event it raises: `expired`, `expiring` or `overdue`.
    pub action: &'static str,
    /// The secret.
    pub name: String,
    /// Its current version, if any.
    pub version: Option<i64>,
}

/// Read-only view of the vault's metadata.
pub struct Catalog {
    store: Arc<dyn Store>,
}

impl Catalog {
    /// A view over `store` (which may be opened read-only).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Catalog { store }
    }

    /// Metadata of every secret.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, VaultError> {
        let mut out = Vec::new();
        for s in self.store.vault().secrets().await? {
            out.push(self.info(s).await?);
        }
        Ok(out)
    }

    /// Metadata and versions of one secret; never the value.
    pub async fn show(&self, name: &str) -> Result<SecretInfo, VaultError> {
        let s = self
            .store
            .vault()
            .secret(name)
            .await?
            .ok_or_else(|| VaultError::NotFound(name.into()))?;
        self.info(s).await
    }

    async fn info(&self, s: SecretRecord) -> Result<SecretInfo, VaultError> {
        let t = now();
        let versions = self.store.vault().versions(&s.name).await?;
        let current = versions.iter().find(|v| usable(v, t));
        let rotation_overdue = match (s.max_age_secs, current) {
            (Some(max), Some(v)) => t - v.created_at > max,
            _ => false,
        };
        Ok(SecretInfo {
            current_version: current.map(|v| v.version),
            rotation_overdue,
            versions: versions
                .iter()
                .map(|v| VersionInfo {
                    version: v.version,
                    state: if v.state == "active" && v.valid_until.is_some_and(|u| u <= t) {
                        "expired-grace".into()
                    } else {
                        v.state.clone()
                    },
                    created_at: v.created_at,
                    valid_until: v.valid_until,
                    first_used_at: v.first_used_at,
                })
                .collect(),
            name: s.name,
            secret_type: s.secret_type,
            created_at: s.created_at,
            updated_at: s.updated_at,
            expires_at: s.expires_at,
            max_age_secs: s.max_age_secs,
            consumers: s.consumers,
        })
    }

    /// Secrets that are expired, expire within `within`, or are overdue for rotation.
    pub async fn findings(&self, within: Duration) -> Result<Vec<Finding>, VaultError> {
        let t = now();
        let within = i64::try_from(within.as_secs()).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        for s in self.list().await? {
            let mut found = |message: String, action| {
                out.push(Finding {
                    message,
                    action,
                    name: s.name.clone(),
                    version: s.current_version,
                })
            };
            if let Some(e) = s.expires_at {
                if e <= t {
                    found(
                        format!("secret {:?} has expired and is not served", s.name),
                        "expired",
                    );
                } else if e - t <= within {
                    found(
                        format!("secret {:?} expires in {}h", s.name, (e - t) / 3600),
                        "expiring",
                    );
                }
            }
            if s.rotation_overdue {
                found(
                    format!("secret {:?} is older than its max_age; rotate it", s.name),
                    "overdue",
                );
            }
        }
        Ok(out)
    }
}
