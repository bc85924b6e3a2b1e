//! OAuth 2.0 access tokens for an integration (client-credentials and refresh-token grants).
//!
//! A token is fetched once for all concurrent callers of this process (the slot's lock makes
//! the refresh single flight) and reused until a minute (or a tenth of its life, whichever is
//! less) before it expires. A token the third party refuses (401) is named as `stale`: it is
//! replaced unless another caller replaced it already.

use portcullis_config::{CredentialPlacement, IntegrationConfig};
use portcullis_core::GatewayError;
use portcullis_vault::Vault;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Which grant the integration uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    ClientCredentials,
    RefreshToken,
}

impl Grant {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::RefreshToken => "refresh_token",
        }
    }
}

/// A token and the instant it stops being used (before its real expiry).
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) token: Zeroizing<String>,
    pub(crate) usable_until: Instant,
}

impl Cached {
    fn usable(&self) -> bool {
        Instant::now() < self.usable_until
    }

    /// Whether this is the token the third party refused. Constant time: tokens are secrets.
    pub(crate) fn is(&self, stale: Option<&str>) -> bool {
        stale.is_some_and(|s| bool::from(s.as_bytes().ct_eq(self.token.as_bytes())))
    }
}

/// Where an integration's access tokens come from.
pub(crate) struct TokenSource {
    config: Arc<IntegrationConfig>,
    grant: Grant,
    token_url: url::Url,
    scopes: Vec<String>,
    vault: Option<Arc<Vault>>,
    /// The guarded client: the token endpoint is an egress destination like any other.
    http: reqwest::Client,
    /// This process's token; its lock makes refreshes single flight in the process.
    local: tokio::sync::Mutex<Option<Cached>>,
}

impl TokenSource {
    /// A source for `config`'s OAuth credential, or `None` when it has no OAuth credential.
    pub(crate) fn new(
        config: &Arc<IntegrationConfig>,
        vault: Option<Arc<Vault>>,
        http: reqwest::Client,
    ) -> Option<Self> {
        let (grant, token_url, scopes) = match config.credential.as_ref().map(|c| &c.placement) {
            Some(CredentialPlacement::OAuth2ClientCredentials { token_url, scopes }) => {
                (Grant::ClientCredentials, token_url, scopes)
            }
            Some(CredentialPlacement::OAuth2RefreshToken { token_url, scopes }) => {
                (Grant::RefreshToken, token_url, scopes)
            }
            _ => return None,
        };
        Some(TokenSource {
            config: config.clone(),
            grant,
            token_url: token_url.clone(),
            scopes: scopes.clone(),
            vault,
            http,
            local: tokio::sync::Mutex::new(None),
        })
    }

    /// An access token: the cached one while it is usable and not `stale`, else a fresh one.
    pub(crate) async fn token(
        &self,
        stale: Option<&str>,
    ) -> Result<Zeroizing<String>, GatewayError> {
        let mut slot = self.local.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.usable() && !c.is(stale) {
                return Ok(c.token.clone());
            }
        }
        match self.fetch().await {
            Ok(c) => {
                let token = c.token.clone();
                *slot = Some(c);
                Ok(token)
            }
            Err(e) => {
                *slot = None;
                Err(e)
            }
        }
    }

    /// Asks the token endpoint for a new token.
    async fn fetch(&self) -> Result<Cached, GatewayError> {
        use oauth2::{
            basic::BasicClient, ClientId, ClientSecret, RefreshToken, Scope, TokenResponse,
            TokenUrl,
        };
        let id = self.config.id.as_str();
        let (Some(vault), Some(cred)) = (&self.vault, &self.config.credential) else {
            return Err(GatewayError::CredentialUnavailable(
                "no vault in this process".into(),
            ));
        };
        let secret = vault
            .resolve(&cred.secret, &self.config.consumer())
            .await
            .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))?;
        let field = |name: &str| {
            secret
                .field(name)
                .map(|v| String::from_utf8_lossy(v.expose()).into_owned())
                .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))
        };
        let token_uri = TokenUrl::new(self.token_url.to_string())
            .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))?;
        let client = BasicClient::new(ClientId::new(field("client_id")?))
            .set_client_secret(ClientSecret::new(field("client_secret")?))
            .set_token_uri(token_uri);
        let started = Instant::now();
        let scopes = self.scopes.iter().map(|s| Scope::new(s.clone()));
        let answer = match self.grant {
            Grant::RefreshToken => {
                client
                    .exchange_refresh_token(&RefreshToken::new(field("refresh_token")?))
                    .add_scopes(scopes)
                    .request_async(&self.http)
                    .await
            }
            Grant::ClientCredentials => {
                client
                    .exchange_client_credentials()
                    .add_scopes(scopes)
                    .request_async(&self.http)
                    .await
            }
        };
        let tok = match answer {
            Ok(t) => t,
            Err(e) => {
                // The cause is logged (the token endpoint's error code, never a secret); the
                // workflow gets 503 credential-unavailable.
                metrics::counter!("portcullis_egress_token_failures_total", "integration" => id.to_string()).increment(1);
                tracing::error!(integration = %id, error = %e, "OAuth token request failed");
                return Err(GatewayError::CredentialUnavailable(
                    "the OAuth token request failed".into(),
                ));
            }
        };
        let life = tok.expires_in().unwrap_or(Duration::from_secs(300));
        let margin = (life / 10).min(Duration::from_secs(60));
        let access = Zeroizing::new(tok.access_token().secret().clone());
        // A rotated refresh token replaces the old one in the vault, or the next refresh
        // would present a token the issuer has already retired.
        if let (Grant::RefreshToken, Some(next)) = (self.grant, tok.refresh_token()) {
            let stored = serde_json::json!({
                "client_id": field("client_id")?,
                "client_secret": field("client_secret")?,
                "refresh_token": next.secret(),
            });
            let bytes = Zeroizing::new(stored.to_string().into_bytes());
            if let Err(e) = vault
                .put(
                    &cred.secret,
                    &bytes,
                    &portcullis_vault::PutOptions::default(),
                )
                .await
            {
                tracing::error!(integration = %id, error = %e, "could not store the rotated refresh token; the next refresh may fail");
            }
        }
        metrics::counter!("portcullis_egress_token_refreshes_total", "integration" => id.to_string()).increment(1);
        Ok(Cached {
            token: access,
            usable_until: started + life.saturating_sub(margin),
        })
    }
}
