//! The gateway's own webhook signing key (`[webhook_signing]`), read through the vault at each
//! delivery, so rotating it (`portcullis secret rotate`, the admin API) applies to the next
//! forward without a restart. The vault serves the value from memory; the signer is rebuilt
//! only when the version changes.

use arc_swap::ArcSwapOption;
use portcullis_vault::Vault;
use portcullis_webhooks::StandardSigner;
use std::sync::Arc;

/// The consumer the signing secret must be bound to.
pub const WEBHOOK_SIGNING_CONSUMER: &str = "gateway:webhook-signing";

/// Signs forwarded webhooks with the newest usable version of one vault secret.
pub struct WebhookSigner {
    vault: Arc<Vault>,
    name: String,
    built: ArcSwapOption<(i64, Arc<StandardSigner>)>,
}

impl WebhookSigner {
    /// Reads the secret once: a missing, unbound or malformed one fails here, at start,
    /// instead of at the first delivery.
    pub async fn new(vault: Arc<Vault>, name: &str) -> Result<Self, String> {
        let signer = WebhookSigner {
            vault,
            name: name.to_string(),
            built: ArcSwapOption::empty(),
        };
        signer.current().await?;
        Ok(signer)
    }

    /// The signer for the secret's newest usable version. Errors (revoked, expired, not a
    /// `whsec_` key) name the problem, never the value.
    pub async fn current(&self) -> Result<Arc<StandardSigner>, String> {
        let value = self
            .vault
            .resolve(&self.name, WEBHOOK_SIGNING_CONSUMER)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(built) = self.built.load().as_ref() {
            if built.0 == value.version {
                return Ok(built.1.clone());
            }
        }
        let signer = Arc::new(StandardSigner::new(value.expose()).map_err(|e| e.to_string())?);
        self.built
            .store(Some(Arc::new((value.version, signer.clone()))));
        Ok(signer)
    }
}
