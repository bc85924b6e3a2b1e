//! Server-side generation of strong values, so a secret that must exist never has to pass
//! through a terminal or a chat window on its way in.

use crate::{crypto::random, SecretType, VaultError};
use base64::{engine::general_purpose::STANDARD, Engine};
use zeroize::Zeroizing;

/// A generated value and, for types that must be shared with someone else, what to share.
pub struct Generated {
    pub(crate) value: Zeroizing<Vec<u8>>,
    /// Shown once: the signing secret a webhook sender needs, or an Ed25519 public key.
    pub shareable: Option<String>,
    /// The type stored.
    pub secret_type: SecretType,
}

/// Makes a value of `kind`: `webhook_signing`, `ed25519` or `random`.
pub(crate) fn generate(kind: &str) -> Result<Generated, VaultError> {
    match kind {
        "webhook_signing" => {
            let mut b = Zeroizing::new([0u8; 32]);
            random(b.as_mut())?;
            let s = Zeroizing::new(format!("whsec_{}", STANDARD.encode(b.as_ref())));
            Ok(Generated {
                value: Zeroizing::new(s.as_bytes().to_vec()),
                shareable: Some(s.to_string()),
                secret_type: SecretType::WebhookSigning,
            })
        }
        "ed25519" => {
            let mut seed = Zeroizing::new([0u8; 32]);
            random(seed.as_mut())?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let public = STANDARD.encode(key.verifying_key().as_bytes());
            let json = Zeroizing::new(serde_json::json!({ "private_key": STANDARD.encode(seed.as_ref()), "public_key": public }).to_string());
            Ok(Generated {
                value: Zeroizing::new(json.as_bytes().to_vec()),
                shareable: Some(format!("whpk_{public}")),
                secret_type: SecretType::Ed25519KeyPair,
            })
        }
        "random" => {
            let mut b = Zeroizing::new([0u8; 32]);
            random(b.as_mut())?;
            Ok(Generated {
                value: Zeroizing::new(STANDARD.encode(b.as_ref()).into_bytes()),
                shareable: None,
                secret_type: SecretType::Opaque,
            })
        }
        other => Err(VaultError::Invalid(format!(
            "cannot generate {other:?}; expected webhook_signing, ed25519 or random"
        ))),
    }
}
