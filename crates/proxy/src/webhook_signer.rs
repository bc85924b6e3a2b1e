//! The gateway's own webhook signing key (`[webhook_signing]`), read through the vault at each
//! delivery, so rotating it (`portcullis secret rotate`, the admin API) applies to the next
//! forward without a restart. The vault serves the values from memory; the signers are
//! rebuilt only when the set of valid versions changes.

use arc_swap::ArcSwapOption;
use portcullis_vault::Vault;
use portcullis_webhooks::StandardSigner;
use std::sync::Arc;

pub use portcullis_config::WEBHOOK_SIGNING_CONSUMER;

/// Signs forwarded webhooks with every usable version of one vault secret: during a
/// rotation's grace period, with both the new and the previous key, as space-separated
/// signatures (Standard Webhooks allows several), so a backend holding either verifies.
pub struct WebhookSigner {
    vault: Arc<Vault>,
    name: String,
    built: ArcSwapOption<Built>,
}

/// Signers for one set of versions, newest first.
struct Built {
    versions: Vec<i64>,
    signers: Vec<StandardSigner>,
}

impl WebhookSigner {
    /// Reads the secret once: a missing, unbound or malformed one fails here, at start,
    /// instead of at the first delivery.
    pub async fn new(vault: Arc<Vault>, name: &str) -> Result<Self, String> {
        let signer = Self::lazy(vault, name);
        signer.current().await?;
        Ok(signer)
    }

    /// A signer that reads the secret at the first delivery (a configuration reload builds
    /// these; each delivery fails closed while the secret is unusable).
    pub fn lazy(vault: Arc<Vault>, name: &str) -> Self {
        WebhookSigner {
            vault,
            name: name.to_string(),
            built: ArcSwapOption::empty(),
        }
    }

    /// The `webhook-signature` value for `id`, `timestamp` and `body`. Errors (revoked,
    /// expired, not a `whsec_` key) name the problem, never the value.
    pub async fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
        let built = self.current().await?;
        Ok(built
            .signers
            .iter()
            .map(|s| s.sign(id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Signers for the versions valid now, rebuilt only when that set changed.
    async fn current(&self) -> Result<Arc<Built>, String> {
        let values = self
            .vault
            .resolve_all(&self.name, WEBHOOK_SIGNING_CONSUMER)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(built) = self.built.load_full() {
            if built.versions.iter().eq(values.iter().map(|v| &v.version)) {
                return Ok(built);
            }
        }
        let signers = values
            .iter()
            .map(|v| StandardSigner::new(v.expose()).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let built = Arc::new(Built {
            versions: values.iter().map(|v| v.version).collect(),
            signers,
        });
        self.built.store(Some(built.clone()));
        Ok(built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_vault::{Kek, LogEventSink, PutOptions, StaticKeyProvider};
    use portcullis_webhooks::StandardSigner;
    use std::time::Duration;

    const FIRST: &str = "whsec_Zmlyc3Qtc2lnbmluZy1rZXktMTIzNDU2Nzg5MA==";
    const SECOND: &str = "whsec_c2Vjb25kLXNpZ25pbmcta2V5LTEyMzQ1Njc4OTA=";

    #[test]
    fn the_vault_accepts_the_webhook_signing_consumer() {
        assert!(portcullis_vault::check_consumer(WEBHOOK_SIGNING_CONSUMER).is_ok());
    }

    fn sig(secret: &str) -> String {
        StandardSigner::new(secret.as_bytes())
            .map(|s| s.sign("msg_1", 1_700_000_000, b"{}"))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_rotation_with_grace_signs_with_both_keys_newest_first_then_the_new_alone() {
        let store: Arc<dyn portcullis_store::Store> = Arc::new(
            portcullis_store::SqliteStore::memory()
                .await
                .expect("memory store"),
        );
        let vault = Vault::open(
            store,
            Arc::new(StaticKeyProvider(Kek::from_bytes([7; 32]))),
            Arc::new(LogEventSink),
        )
        .await
        .expect("vault");
        let opts = |grace| PutOptions {
            consumers: Some(vec![WEBHOOK_SIGNING_CONSUMER.into()]),
            actor: "test".into(),
            grace,
            ..Default::default()
        };
        vault
            .put("signing", FIRST.as_bytes(), &opts(None))
            .await
            .expect("put");
        let signer = WebhookSigner::new(vault.clone(), "signing")
            .await
            .expect("signer");
        let sign = || signer.sign("msg_1", 1_700_000_000, b"{}");
        assert_eq!(sign().await, Ok(sig(FIRST)));
        vault
            .rotate(
                "signing",
                SECOND.as_bytes(),
                &opts(Some(Duration::from_secs(3600))),
            )
            .await
            .expect("rotate");
        assert_eq!(sign().await, Ok(format!("{} {}", sig(SECOND), sig(FIRST))));
        let old = vault.show("signing").await.expect("show").versions[1].version;
        vault.revoke("signing", old, "test").await.expect("revoke");
        assert_eq!(sign().await, Ok(sig(SECOND)));
        // Every version revoked: no signature at all, never a stale one.
        vault
            .revoke("signing", old + 1, "test")
            .await
            .expect("revoke");
        assert!(sign().await.is_err());
    }
}
