//! Portcullis as an OAuth 2.0 token issuer: the client credentials grant (RFC 6749 section
//! 4.4) for declared clients, whose client secret is one of their API keys. Tokens are
//! short-lived JWTs signed with an Ed25519 key held in the vault; the public keys of every
//! valid version are published as a JWKS, so rotating the signing key with a grace period
//! keeps tokens signed by the previous key verifiable until they expire. Revocation (RFC 7009)
//! and introspection (RFC 7662) are supported.

use crate::{ApiKeys, JwtClaims};
use base64::{engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ed25519_dalek::{Signer, SigningKey};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_config::{ClientConfig, OAuth2Config};
use portcullis_store::{Store, StoreError};
use portcullis_vault::{PutOptions, SecretValue, Vault, VaultError};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use zeroize::Zeroizing;

const SIGNING_SECRET: &str = "portcullis.oauth-signing-key";
pub(crate) const SIGNING_CONSUMER: &str = "gateway:oauth";
/// Clock skew allowed on `exp`; a revocation is kept this much longer than the token's expiry.
const LEEWAY_SECS: u64 = 5;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// RFC 6749 section 5.2 errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OAuthError {
    /// Unknown client, wrong secret, disabled client.
    #[error("invalid_client")]
    InvalidClient,
    /// Missing or malformed parameters.
    #[error("invalid_request")]
    InvalidRequest,
    /// Only `client_credentials` is supported.
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// None of the requested scopes may be granted.
    #[error("invalid_scope")]
    InvalidScope,
    /// The signing key is unavailable.
    #[error("server_error")]
    ServerError,
}

impl OAuthError {
    /// The `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidClient => "invalid_client",
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::ServerError => "server_error",
        }
    }
}

/// Issues, verifies, revokes and introspects access tokens.
pub struct TokenIssuer {
    cfg: OAuth2Config,
    vault: Arc<Vault>,
    keys: Arc<ApiKeys>,
    store: Arc<dyn Store>,
    revoked: Mutex<Revoked>,
    /// The store's token-revocation counter when `revoked` was last read.
    epoch: AtomicI64,
}

/// Revoked token ids this process knows of.
#[derive(Default)]
struct Revoked {
    /// As last read from the store.
    stored: HashSet<String>,
    /// Revoked here and not yet seen in a read of the store (just written, or the write
    /// failed): kept in this process until then, or until expiry.
    local: HashMap<String, i64>,
}

impl Revoked {
    fn contains(&self, jti: &str) -> bool {
        self.stored.contains(jti) || self.local.contains_key(jti)
    }
}

fn signing_key(v: &SecretValue) -> Option<SigningKey> {
    let seed = Zeroizing::new(
        STANDARD
            .decode(v.field("private_key").ok()?.expose())
            .ok()?,
    );
    let seed: [u8; 32] = seed.as_slice().try_into().ok()?;
    Some(SigningKey::from_bytes(&seed))
}

impl TokenIssuer {
    /// Prepares the issuer: creates the signing key in the vault on first use and loads the
    /// revoked token ids.
    pub async fn open(
        cfg: OAuth2Config,
        vault: Arc<Vault>,
        keys: Arc<ApiKeys>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<TokenIssuer>, VaultError> {
        if let Err(VaultError::NotFound(_)) = vault.resolve(SIGNING_SECRET, SIGNING_CONSUMER).await
        {
            let opts = PutOptions {
                consumers: Some(vec![SIGNING_CONSUMER.into()]),
                actor: "gateway".into(),
                ..Default::default()
            };
            vault.generate(SIGNING_SECRET, "ed25519", &opts).await?;
        }
        let issuer = Arc::new(TokenIssuer {
            cfg,
            vault,
            keys,
            store,
            revoked: Mutex::new(Revoked::default()),
            epoch: AtomicI64::new(0),
        });
        issuer.reload_revoked().await?;
        Ok(issuer)
    }

    /// Re-reads the revoked token ids from the store.
    async fn reload_revoked(&self) -> Result<(), StoreError> {
        let epoch = self.store.keys().tokens_epoch().await?;
        let t = now();
        let stored: HashSet<String> = self
            .store
            .keys()
            .revoked_tokens(t)
            .await?
            .into_iter()
            .collect();
        if let Ok(mut r) = self.revoked.lock() {
            // A revocation made here keeps its local entry until a read of the store has
            // it: a reload that started before its write would otherwise drop it.
            r.local
                .retain(|jti, exp| *exp >= t && !stored.contains(jti));
            r.stored = stored;
        }
        self.epoch.store(epoch, Ordering::SeqCst);
        Ok(())
    }

    /// Reloads the revoked token ids when another process revoked one. Cheap: one small query.
    pub async fn refresh_if_changed(&self) -> Result<bool, StoreError> {
        if self.store.keys().tokens_epoch().await? != self.epoch.load(Ordering::SeqCst) {
            self.reload_revoked().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Polls for revocations by other instances every `every`, so a token revoked on one is
    /// refused by all within about that time.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let issuer = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(i) = issuer.upgrade() else { break };
                if let Err(e) = i.refresh_if_changed().await {
                    tracing::warn!(error = %e, "token revocation watch failed");
                }
            }
        })
    }

    /// Checks a client's credentials: the secret must be a valid API key of that client (one
    /// issued through another instance a moment ago included).
    pub async fn authenticate_client(
        &self,
        client: &ClientConfig,
        secret: &str,
    ) -> Result<(), OAuthError> {
        match self.keys.verify_key_fresh(secret).await {
            Ok(v) if client.enabled && *v.client_id == *client.id => Ok(()),
            _ => Err(OAuthError::InvalidClient),
        }
    }

    /// Issues a token for `client`: scopes are the requested ones the client may hold (all of
    /// its scopes when none are requested). Returns the RFC 6749 token response.
    pub async fn issue(
        &self,
        client: &ClientConfig,
        requested: Option<&str>,
    ) -> Result<serde_json::Value, OAuthError> {
        let scopes: Vec<String> = match requested.map(str::split_whitespace) {
            Some(req) => {
                let req: Vec<&str> = req.collect();
                let granted: Vec<String> = req
                    .iter()
                    .filter(|s| client.scopes.iter().any(|c| c == *s))
                    .map(|s| s.to_string())
                    .collect();
                if granted.is_empty() && !req.is_empty() {
                    return Err(OAuthError::InvalidScope);
                }
                granted
            }
            None => client.scopes.clone(),
        };
        let versions = self
            .vault
            .resolve_all(SIGNING_SECRET, SIGNING_CONSUMER)
            .await
            .map_err(|_| OAuthError::ServerError)?;
        let newest = versions.first().ok_or(OAuthError::ServerError)?;
        let key = signing_key(newest).ok_or(OAuthError::ServerError)?;
        let iat = now();
        let ttl = i64::try_from(self.cfg.token_ttl.as_secs()).unwrap_or(600);
        let mut jti = [0u8; 16];
        getrandom::getrandom(&mut jti).map_err(|_| OAuthError::ServerError)?;
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": format!("v{}", newest.version) });
        let claims = serde_json::json!({
            "iss": self.cfg.issuer, "aud": self.cfg.audience, "sub": client.id, "client_id": client.id,
            "azp": client.id, "scope": scopes.join(" "), "iat": iat, "exp": iat + ttl,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key.sign(signing_input.as_bytes());
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        tracing::info!(target: "portcullis::audit", action = "oauth_token_issued", client = %client.id, scope = %scopes.join(" "), "access token issued");
        Ok(
            serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": ttl, "scope": scopes.join(" ") }),
        )
    }

    /// Signs a short-lived (60 s) assertion of a verified caller for an upstream: it can check
    /// the signature against `/.well-known/jwks.json` instead of trusting plain headers.
    pub async fn assert_identity(
        &self,
        client_id: &str,
        scopes: &[String],
        audience: &str,
        request_id: &str,
    ) -> Option<String> {
        let versions = self
            .vault
            .resolve_all(SIGNING_SECRET, SIGNING_CONSUMER)
            .await
            .ok()?;
        let newest = versions.first()?;
        let key = signing_key(newest)?;
        let iat = now();
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": format!("v{}", newest.version) });
        let claims = serde_json::json!({
            "iss": self.cfg.issuer, "aud": audience, "sub": client_id, "scope": scopes.join(" "),
            "iat": iat, "exp": iat + 60, "request_id": request_id,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key.sign(input.as_bytes());
        Some(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        ))
    }

    /// The public keys of every valid signing-key version, as a JWKS.
    pub async fn jwks(&self) -> serde_json::Value {
        let versions = self
            .vault
            .resolve_all(SIGNING_SECRET, SIGNING_CONSUMER)
            .await
            .unwrap_or_default();
        let keys: Vec<serde_json::Value> = versions
            .iter()
            .filter_map(|v| {
                let public = STANDARD.decode(v.field("public_key").ok()?.expose()).ok()?;
                Some(serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": format!("v{}", v.version), "x": URL_SAFE_NO_PAD.encode(public) }))
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    async fn decode(&self, token: &str) -> Option<serde_json::Value> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::EdDSA {
            return None;
        }
        let kid = header.kid?;
        let versions = self
            .vault
            .resolve_all(SIGNING_SECRET, SIGNING_CONSUMER)
            .await
            .ok()?;
        let v = versions.iter().find(|v| format!("v{}", v.version) == kid)?;
        let public = STANDARD.decode(v.field("public_key").ok()?.expose()).ok()?;
        let key = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(public)).ok()?;
        let mut val = Validation::new(Algorithm::EdDSA);
        val.set_issuer(&[&self.cfg.issuer]);
        val.set_audience(&[&self.cfg.audience]);
        val.leeway = LEEWAY_SECS;
        val.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &val)
            .ok()?
            .claims;
        let jti = claims.get("jti")?.as_str()?;
        if self.revoked.lock().ok()?.contains(jti) {
            return None;
        }
        Some(claims)
    }

    /// Verifies a token this gateway issued (signature, issuer, audience, expiry, revocation).
    pub async fn verify(&self, token: &str) -> Option<JwtClaims> {
        let claims = self.decode(token).await?;
        Some(JwtClaims {
            client_id: claims.get("client_id")?.as_str()?.to_string(),
            scopes: claims
                .get("scope")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            claims: crate::jwt::scalar_claims(&claims),
        })
    }

    /// RFC 7009: revokes `token` if it is valid and was issued to `caller`. Unknown or foreign
    /// tokens are ignored (the endpoint answers 200 either way).
    pub async fn revoke(&self, token: &str, caller: &str) {
        let Some(claims) = self.decode(token).await else {
            return;
        };
        let (Some(jti), Some(owner), Some(exp)) = (
            claims.get("jti").and_then(|j| j.as_str()),
            claims.get("client_id").and_then(|c| c.as_str()),
            claims.get("exp").and_then(|e| e.as_i64()),
        ) else {
            return;
        };
        if owner != caller {
            return;
        }
        // Kept while the token still verifies: until its expiry plus the leeway.
        let exp = exp.saturating_add(LEEWAY_SECS as i64);
        if let Ok(mut r) = self.revoked.lock() {
            r.local.insert(jti.to_string(), exp);
        }
        if let Err(e) = self.store.keys().revoke_token(jti, exp).await {
            tracing::error!(error = %e, "could not persist a token revocation; it holds in this instance only, until restart");
        }
        tracing::info!(target: "portcullis::audit", action = "oauth_token_revoked", client = caller, "access token revoked");
    }

    /// RFC 7662 introspection response for `token`.
    pub async fn introspect(&self, token: &str) -> serde_json::Value {
        match self.decode(token).await {
            Some(c) => serde_json::json!({
                "active": true, "scope": c.get("scope"), "client_id": c.get("client_id"), "sub": c.get("sub"),
                "exp": c.get("exp"), "iat": c.get("iat"), "iss": c.get("iss"), "aud": c.get("aud"), "token_type": "Bearer",
            }),
            None => serde_json::json!({ "active": false }),
        }
    }
}
