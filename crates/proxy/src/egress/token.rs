//! OAuth 2.0 access tokens for an integration (client-credentials and refresh-token grants).
//!
//! A token is reused until a minute (or a tenth of its life, whichever is less) before it
//! expires. In one process the slot's lock makes a refresh single flight: concurrent callers
//! wait for the one fetch and use its token. With a shared token cache (Redis), instances
//! share tokens too: a process whose own slot is empty or expired first looks in the shared
//! cache, and only the instance holding the refresh lock asks the token endpoint; the others
//! poll the cache for its token and fetch themselves only if it has not delivered when the
//! lock would expire. Tokens are sealed (`seal.rs`) before they reach the cache.
//!
//! A token the third party refuses (401) is named as `stale`: it is replaced unless another
//! caller, here or on another instance, has replaced it already (the shared entry is opened
//! and compared with the stale token in constant time).
//!
//! With the refresh-token grant, an issuer that rotates refresh tokens retires each one as it
//! is used. Every instance has its own vault, so a rotation is also shared (sealed under a
//! key of its own) and the next refresh, on whichever instance, presents the newest; the
//! vault's copy only if the issuer refuses the shared one as a grant.
//!
//! When the shared cache is unreachable the process fetches and caches on its own, as it
//! would without Redis, rather than failing the call: the token endpoint is still reachable,
//! and the cost is at most one extra token per instance. It is logged once per outage and
//! counted in `portcullis_egress_token_cache_fallbacks_total`.

use super::{
    audit::{self, Trigger},
    seal::TokenSeal,
};
use portcullis_config::{CredentialPlacement, IntegrationConfig};
use portcullis_core::GatewayError;
use portcullis_state::{StateError, TokenCache};
use portcullis_vault::Vault;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// How often an instance waiting for another's refresh looks in the shared cache.
const POLL: Duration = Duration::from_millis(25);
/// The longest an instance holds the refresh lock, and so the longest the others wait for it
/// before fetching themselves (a crashed holder delays them at most this long; a token
/// endpoint slower than this may see a second request).
const MAX_LOCK: Duration = Duration::from_secs(10);

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
    /// Tokens shared with other instances (Redis), when there are any.
    shared: Option<Arc<dyn TokenCache>>,
    /// True while the shared cache is unreachable (logged once per outage).
    shared_down: AtomicBool,
    lock_ttl: Duration,
}

impl TokenSource {
    /// A source for `config`'s OAuth credential, or `None` when it has no OAuth credential.
    pub(crate) fn new(
        config: &Arc<IntegrationConfig>,
        vault: Option<Arc<Vault>>,
        http: reqwest::Client,
        shared: Option<Arc<dyn TokenCache>>,
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
            lock_ttl: config.timeout.clamp(Duration::from_secs(1), MAX_LOCK),
            config: config.clone(),
            grant,
            token_url: token_url.clone(),
            scopes: scopes.clone(),
            vault,
            http,
            local: tokio::sync::Mutex::new(None),
            shared,
            shared_down: AtomicBool::new(false),
        })
    }

    /// An access token: the cached one while it is usable and not `stale`, else one from the
    /// shared cache, else a fresh one.
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
        let trigger = match (stale, slot.is_some()) {
            (Some(_), _) => Trigger::Refused,
            (None, true) => Trigger::Expiry,
            (None, false) => Trigger::First,
        };
        let got = match &self.shared {
            Some(shared) => self.via_shared(shared.as_ref(), stale, trigger).await,
            None => self.fetch(trigger).await,
        };
        match got {
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

    /// A token through the shared cache: one there that is usable and not `stale`, or one
    /// fetched under the refresh lock (or without it once the holder is overdue) and stored
    /// there for the others.
    async fn via_shared(
        &self,
        shared: &dyn TokenCache,
        stale: Option<&str>,
        trigger: Trigger,
    ) -> Result<Cached, GatewayError> {
        let Some(seal) = self.seal().await? else {
            return self.fetch(trigger).await;
        };
        let key = format!("{}:{}", self.config.id, seal.key_id());
        let owner = owner_id();
        let overdue = Instant::now() + self.lock_ttl;
        loop {
            match self.read_shared(shared, &key, &seal, stale).await {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => {}
                Err(e) => return self.fall_back(e, trigger).await,
            }
            match shared.try_lock(&key, &owner, self.lock_ttl).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return self.fall_back(e, trigger).await,
            }
            if Instant::now() >= overdue {
                // The holder has not delivered in the lock's whole lifetime: fetch ourselves.
                let c = self.fetch(trigger).await?;
                self.store_shared(shared, &key, &seal, &c).await;
                return Ok(c);
            }
            tokio::time::sleep(POLL).await;
        }
        // Holding the lock. Another instance may have stored a token between our look and the
        // lock; look once more before asking the endpoint.
        let got = match self.read_shared(shared, &key, &seal, stale).await {
            Ok(Some(c)) => Ok(c),
            _ => match self.fetch(trigger).await {
                Ok(c) => {
                    self.store_shared(shared, &key, &seal, &c).await;
                    Ok(c)
                }
                Err(e) => Err(e),
            },
        };
        // A failed unlock is harmless: the lock expires by itself.
        let _ = shared.unlock(&key, &owner).await;
        got
    }

    /// The seal for this integration's tokens, keyed by its client secret (read from the
    /// vault each time, so a rotated secret takes effect with the vault).
    async fn seal(&self) -> Result<Option<TokenSeal>, GatewayError> {
        let secret = self.resolve().await?;
        let client_secret = secret
            .field("client_secret")
            .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))?;
        Ok(TokenSeal::new(
            &self.config.id,
            self.token_url.as_str(),
            client_secret.expose(),
        ))
    }

    /// The shared token, if there is one that opens, is usable and is not `stale`. An entry
    /// that does not open (another secret, tampered) is a miss.
    async fn read_shared(
        &self,
        shared: &dyn TokenCache,
        key: &str,
        seal: &TokenSeal,
        stale: Option<&str>,
    ) -> Result<Option<Cached>, StateError> {
        let entry = shared.get(key).await?;
        self.shared_up();
        let Some((token, until_ms)) = entry.and_then(|e| seal.open(&e)) else {
            return Ok(None);
        };
        let left = Duration::from_millis(until_ms.saturating_sub(unix_ms()));
        let c = Cached {
            token,
            usable_until: Instant::now() + left,
        };
        Ok((!left.is_zero() && !c.is(stale)).then_some(c))
    }

    /// Stores a fresh token for the other instances, for its remaining usable life. A
    /// failure only costs the others a fetch of their own.
    async fn store_shared(&self, shared: &dyn TokenCache, key: &str, seal: &TokenSeal, c: &Cached) {
        let left = c.usable_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let until_ms =
            unix_ms().saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
        let Some(sealed) = seal.seal(&c.token, until_ms) else {
            return;
        };
        match shared.put(key, &sealed, left).await {
            Ok(()) => self.shared_up(),
            Err(e) => self.shared_failed(&e),
        }
    }

    /// The shared cache failed: this process fetches and caches on its own.
    async fn fall_back(&self, e: StateError, trigger: Trigger) -> Result<Cached, GatewayError> {
        self.shared_failed(&e);
        self.fetch(trigger).await
    }

    fn shared_failed(&self, e: &StateError) {
        let id = self.config.id.as_str();
        metrics::counter!("portcullis_egress_token_cache_fallbacks_total", "integration" => id.to_string()).increment(1);
        if !self.shared_down.swap(true, Ordering::AcqRel) {
            tracing::warn!(integration = %id, error = %e, "shared token cache unreachable: OAuth tokens are fetched and cached per instance until it is back");
        }
    }

    fn shared_up(&self) {
        if self.shared_down.swap(false, Ordering::AcqRel) {
            tracing::info!(integration = %self.config.id, "shared token cache reachable again");
        }
    }

    /// The integration's vault secret (a JSON object with the client's credentials).
    async fn resolve(&self) -> Result<Arc<portcullis_vault::SecretValue>, GatewayError> {
        let (Some(vault), Some(cred)) = (&self.vault, &self.config.credential) else {
            return Err(GatewayError::CredentialUnavailable(
                "no vault in this process".into(),
            ));
        };
        vault
            .resolve(&cred.secret, &self.config.consumer())
            .await
            .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))
    }

    /// Asks the token endpoint for a new token (and writes a rotated refresh token back).
    async fn fetch(&self, trigger: Trigger) -> Result<Cached, GatewayError> {
        let got = self.request_token().await;
        audit::token_fetch(&self.config.id, self.grant, trigger, got.is_ok());
        got
    }

    async fn request_token(&self) -> Result<Cached, GatewayError> {
        use oauth2::{
            basic::BasicClient, ClientId, ClientSecret, RefreshToken, Scope, TokenResponse,
            TokenUrl,
        };
        let id = self.config.id.as_str();
        let secret = self.resolve().await?;
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
        let scopes: Vec<Scope> = self.scopes.iter().map(|s| Scope::new(s.clone())).collect();
        let answer = match self.grant {
            Grant::RefreshToken => {
                let exchange = async |rt: &str| {
                    let rt = RefreshToken::new(rt.to_string());
                    client
                        .exchange_refresh_token(&rt)
                        .add_scopes(scopes.clone())
                        .request_async(&self.http)
                        .await
                };
                let from_vault = Zeroizing::new(field("refresh_token")?);
                // Another instance may have rotated the refresh token since this vault's copy
                // was written: the newest rotation is in the shared cache. It is presented
                // first; only if the issuer refuses it as a grant (an operator put a new
                // token in the vault, say) is the vault's own presented. An older token is
                // never presented after a newer one worked, which issuers that detect
                // refresh-token reuse would punish by revoking the whole chain.
                let newer = self
                    .shared_refresh_token(&secret)
                    .await
                    .filter(|t| !bool::from(t.as_bytes().ct_eq(from_vault.as_bytes())));
                let first = match &newer {
                    Some(rt) => match exchange(rt).await {
                        Err(oauth2::RequestTokenError::ServerResponse(r))
                            if *r.error()
                                == oauth2::basic::BasicErrorResponseType::InvalidGrant =>
                        {
                            tracing::warn!(integration = %id, "the shared rotated refresh token was refused as a grant; presenting the vault's");
                            None
                        }
                        other => Some(other),
                    },
                    None => None,
                };
                match first {
                    Some(answer) => answer,
                    None => exchange(&from_vault).await,
                }
            }
            Grant::ClientCredentials => {
                client
                    .exchange_client_credentials()
                    .add_scopes(scopes.clone())
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
        if let (Grant::RefreshToken, Some(next), Some(vault), Some(cred)) = (
            self.grant,
            tok.refresh_token(),
            &self.vault,
            &self.config.credential,
        ) {
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
            self.store_shared_refresh_token(&secret, next.secret())
                .await;
        }
        metrics::counter!("portcullis_egress_token_refreshes_total", "integration" => id.to_string()).increment(1);
        Ok(Cached {
            token: access,
            usable_until: started + life.saturating_sub(margin),
        })
    }
}

/// How long a rotated refresh token is kept in the shared cache: longer than any sensible
/// access-token life, so the next refresh finds it; every rotation writes it anew.
const SHARED_REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl TokenSource {
    /// The seal and shared-cache key of this integration's rotated refresh token: a key of
    /// its own (the purpose is in the derivation and the associated data), so an access-token
    /// entry can never be opened as a refresh token or the other way round.
    fn refresh_seal(&self, secret: &portcullis_vault::SecretValue) -> Option<(TokenSeal, String)> {
        let client_secret = secret.field("client_secret").ok()?;
        let seal = TokenSeal::new(
            &format!("{}\0refresh-token", self.config.id),
            self.token_url.as_str(),
            client_secret.expose(),
        )?;
        let key = format!("{}:{}:refresh", self.config.id, seal.key_id());
        Some((seal, key))
    }

    /// The newest rotated refresh token another instance (or this one) shared, if any.
    async fn shared_refresh_token(
        &self,
        secret: &portcullis_vault::SecretValue,
    ) -> Option<Zeroizing<String>> {
        let shared = self.shared.as_ref()?;
        let (seal, key) = self.refresh_seal(secret)?;
        match shared.get(&key).await {
            Ok(entry) => seal.open(&entry?).map(|(token, _)| token),
            Err(e) => {
                self.shared_failed(&e);
                None
            }
        }
    }

    /// Shares a rotated refresh token with the other instances, whose vaults still hold the
    /// one before it.
    async fn store_shared_refresh_token(
        &self,
        secret: &portcullis_vault::SecretValue,
        token: &str,
    ) {
        let (Some(shared), Some((seal, key))) = (self.shared.as_ref(), self.refresh_seal(secret))
        else {
            return;
        };
        let until = unix_ms()
            .saturating_add(u64::try_from(SHARED_REFRESH_TTL.as_millis()).unwrap_or(u64::MAX));
        let Some(sealed) = seal.seal(token, until) else {
            return;
        };
        if let Err(e) = shared.put(&key, &sealed, SHARED_REFRESH_TTL).await {
            self.shared_failed(&e);
        }
    }
}

/// Milliseconds since the Unix epoch: the shared cache's clock, common to every instance
/// (up to their clock skew, which only moves a refresh earlier or later by that much).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A random value naming this lock holder, so only it releases the lock.
fn owner_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::getrandom(&mut b).is_err() {
        // Without randomness the id is still unique enough within the lock's lifetime.
        return format!("{}-{}", std::process::id(), fastrand::u64(..));
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
