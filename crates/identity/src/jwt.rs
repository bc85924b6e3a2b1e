//! JWT bearer tokens from trusted issuers. Per issuer: an algorithm allowlist (never `none`,
//! never HMAC, so a public key can never be used as an HMAC secret), required `iss`, `aud` and
//! `exp`, `nbf` checked, a small leeway. Keys come from PEM files or the issuer's JWKS,
//! fetched over verified TLS, refreshed periodically and refetched on an unknown `kid` at most
//! once per refresh interval. Header `jku`, `x5u` and `jwk` are never followed: keys come only
//! from configuration.

use arc_swap::ArcSwap;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, Validation};
use portcullis_config::JwtIssuerConfig;
use portcullis_core::TokenClaims;
use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Instant,
};

/// Why a token was refused. Callers answer every variant the same way (401).
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Malformed, unsigned, wrong algorithm, bad signature, expired, wrong issuer or audience.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The issuer's keys could not be loaded.
    #[error("issuer keys unavailable: {0}")]
    Keys(String),
}

/// What a verified token says about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    /// The client id from the configured claim.
    pub client_id: String,
    /// Scopes from `scope` (space-separated) or `scp` (array).
    pub scopes: Vec<String>,
    /// The token's top-level claims that are text, numbers or booleans, as text.
    pub claims: TokenClaims,
}

/// The scalar top-level claims of a verified token, as text (objects and arrays left out).
pub fn scalar_claims(claims: &serde_json::Value) -> TokenClaims {
    let map = claims
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect();
    Arc::new(map)
}

struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
}

struct Issuer {
    cfg: JwtIssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<Vec<Arc<KeyEntry>>>,
    static_keys: Vec<Arc<KeyEntry>>,
    last_fetch: Mutex<Option<Instant>>,
    http: Option<reqwest::Client>,
}

/// Verifies tokens from the configured issuers.
pub struct JwtVerifier {
    issuers: Vec<Arc<Issuer>>,
    /// Tokens already verified, by SHA-256 of the token, until their `exp`. Signature checks
    /// cost tens of microseconds; workflows reuse one token for many calls.
    verified: Mutex<HashMap<[u8; 32], (JwtClaims, i64)>>,
}

/// Most verified tokens remembered; the cache is emptied when it is full.
const MAX_CACHED_TOKENS: usize = 10_000;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn pem_key(path: &std::path::Path) -> Result<DecodingKey, JwtError> {
    let pem =
        std::fs::read(path).map_err(|e| JwtError::Keys(format!("{}: {e}", path.display())))?;
    DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            JwtError::Keys(format!(
                "{}: not an RSA, EC or Ed25519 public key in PEM",
                path.display()
            ))
        })
}

/// An issuer's algorithms, static keys and JWKS client (with its CA), from its config.
type Loaded = (Vec<Algorithm>, Vec<Arc<KeyEntry>>, Option<reqwest::Client>);

fn load(cfg: &JwtIssuerConfig) -> Result<Loaded, JwtError> {
    let algorithms = cfg
        .algorithms
        .iter()
        .map(|a| {
            Algorithm::from_str(a).map_err(|_| JwtError::Keys(format!("unknown algorithm {a}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let static_keys = cfg
        .public_keys
        .iter()
        .map(|(kid, p)| {
            Ok(Arc::new(KeyEntry {
                kid: kid.clone(),
                key: pem_key(p)?,
            }))
        })
        .collect::<Result<Vec<_>, JwtError>>()?;
    let http = cfg
        .jwks_url
        .as_ref()
        .map(|_| http_client(cfg))
        .transpose()?;
    Ok((algorithms, static_keys, http))
}

fn http_client(cfg: &JwtIssuerConfig) -> Result<reqwest::Client, JwtError> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .min_tls_version(reqwest::tls::Version::TLS_1_2);
    if let Some(ca) = &cfg.jwks_ca {
        let pem =
            std::fs::read(ca).map_err(|e| JwtError::Keys(format!("{}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| JwtError::Keys(format!("{}: {e}", ca.display())))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| JwtError::Keys(e.to_string()))
}

impl Issuer {
    async fn fetch(&self) -> Result<(), JwtError> {
        let (Some(url), Some(http)) = (&self.cfg.jwks_url, &self.http) else {
            return Ok(());
        };
        if let Ok(mut g) = self.last_fetch.lock() {
            *g = Some(Instant::now());
        }
        let res = http
            .get(url)
            .send()
            .await
            .map_err(|e| JwtError::Keys(format!("fetching JWKS: {e}")))?;
        if !res.status().is_success() {
            return Err(JwtError::Keys(format!(
                "JWKS endpoint answered {}",
                res.status()
            )));
        }
        let bytes = res
            .bytes()
            .await
            .map_err(|e| JwtError::Keys(e.to_string()))?;
        if bytes.len() > 1024 * 1024 {
            return Err(JwtError::Keys("JWKS larger than 1 MiB".into()));
        }
        let set: JwkSet = serde_json::from_slice(&bytes)
            .map_err(|e| JwtError::Keys(format!("JWKS is not valid: {e}")))?;
        let mut keys = self.static_keys.clone();
        for jwk in &set.keys {
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.push(Arc::new(KeyEntry {
                    kid: jwk.common.key_id.clone(),
                    key,
                }));
            }
        }
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    fn may_refetch(&self) -> bool {
        self.cfg.jwks_url.is_some()
            && self
                .last_fetch
                .lock()
                .map(|g| g.is_none_or(|t| t.elapsed() >= self.cfg.jwks_refetch_after))
                .unwrap_or(false)
    }

    fn find(&self, kid: Option<&str>) -> Option<Arc<KeyEntry>> {
        let keys = self.keys.load();
        match kid {
            Some(k) => keys.iter().find(|e| e.kid.as_deref() == Some(k)).cloned(),
            None if keys.len() == 1 => keys.first().cloned(),
            None => None,
        }
    }
}

/// Reads `iss` from the unverified payload, only to choose which issuer's rules to apply;
/// the full verification checks it again.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

impl JwtVerifier {
    /// Loads static keys and fetches each JWKS once. A JWKS that cannot be fetched now is
    /// retried on use; tokens from that issuer fail until it can.
    pub async fn new(cfgs: &[JwtIssuerConfig]) -> Result<Arc<JwtVerifier>, JwtError> {
        let mut issuers = Vec::new();
        for cfg in cfgs {
            let (algorithms, static_keys, http) = load(cfg)?;
            let issuer = Arc::new(Issuer {
                cfg: cfg.clone(),
                algorithms,
                keys: ArcSwap::from_pointee(static_keys.clone()),
                static_keys,
                last_fetch: Mutex::new(None),
                http,
            });
            if let Err(e) = issuer.fetch().await {
                tracing::warn!(issuer = %cfg.issuer, error = %e, "could not fetch the issuer's JWKS; will retry on use");
                if let Ok(mut g) = issuer.last_fetch.lock() {
                    *g = None;
                }
            }
            issuers.push(issuer);
        }
        Ok(Arc::new(JwtVerifier {
            issuers,
            verified: Mutex::new(HashMap::new()),
        }))
    }

    /// Loads what [`JwtVerifier::new`] loads from files (static keys, the JWKS CA) without
    /// fetching anything: what `check` and start-up verify before anything else happens.
    pub fn check_files(cfgs: &[JwtIssuerConfig]) -> Result<(), JwtError> {
        for cfg in cfgs {
            load(cfg).map_err(|e| match e {
                JwtError::Keys(why) => JwtError::Keys(format!("issuer {:?}: {why}", cfg.issuer)),
                other => other,
            })?;
        }
        Ok(())
    }

    /// Refreshes every JWKS (call periodically).
    pub async fn refresh(&self) {
        for i in &self.issuers {
            if let Err(e) = i.fetch().await {
                tracing::warn!(issuer = %i.cfg.issuer, error = %e, "JWKS refresh failed; keeping the previous keys");
            }
        }
    }

    /// True when any issuer has a JWKS to refresh.
    pub fn has_jwks(&self) -> bool {
        self.issuers.iter().any(|i| i.cfg.jwks_url.is_some())
    }

    /// Verifies `token` and returns the caller's claims.
    pub async fn verify(&self, token: &str) -> Result<JwtClaims, JwtError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some((claims, exp)) = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(&digest).cloned())
        {
            if exp > now {
                return Ok(claims);
            }
        }
        let (claims, exp) = self.verify_uncached(token).await?;
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= MAX_CACHED_TOKENS {
                m.retain(|_, (_, e)| *e > now);
                if m.len() >= MAX_CACHED_TOKENS {
                    m.clear();
                }
            }
            m.insert(digest, (claims.clone(), exp));
        }
        Ok(claims)
    }

    async fn verify_uncached(&self, token: &str) -> Result<(JwtClaims, i64), JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtError::Invalid("malformed header or unsupported algorithm"))?;
        let iss = unverified_issuer(token).ok_or(JwtError::Invalid("no issuer"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.cfg.issuer == iss)
            .ok_or(JwtError::Invalid("unknown issuer"))?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(JwtError::Invalid("algorithm not allowed for this issuer"));
        }
        let kid = header.kid.as_deref();
        let entry = match issuer.find(kid) {
            Some(e) => e,
            None if issuer.may_refetch() => {
                issuer.fetch().await?;
                issuer
                    .find(kid)
                    .ok_or(JwtError::Invalid("unknown key id"))?
            }
            None => return Err(JwtError::Invalid("unknown key id")),
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_issuer(&[&issuer.cfg.issuer]);
        v.set_audience(&issuer.cfg.audiences);
        v.leeway = issuer.cfg.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &entry.key, &v)
            .map_err(|_| JwtError::Invalid("signature or claims rejected"))?;
        let claims = data.claims;
        let client_id = claims
            .get(&issuer.cfg.client_claim)
            .or_else(|| claims.get("client_id"))
            .and_then(|c| c.as_str())
            .ok_or(JwtError::Invalid("no client claim"))?
            .to_string();
        let mut scopes: Vec<String> = match (claims.get("scope"), claims.get("scp")) {
            (Some(serde_json::Value::String(s)), _) => {
                s.split_whitespace().map(str::to_string).collect()
            }
            (_, Some(serde_json::Value::Array(a))) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            (_, Some(serde_json::Value::String(s))) => {
                s.split_whitespace().map(str::to_string).collect()
            }
            _ => Vec::new(),
        };
        let mut seen = HashSet::new();
        scopes.retain(|s| seen.insert(s.clone()));
        // `exp` is required and was validated; the leeway is not extended by the cache.
        let exp = claims.get("exp").and_then(|e| e.as_i64()).unwrap_or(0);
        Ok((
            JwtClaims {
                client_id,
                scopes,
                claims: scalar_claims(&claims),
            },
            exp,
        ))
    }
}
