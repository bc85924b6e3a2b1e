//! Egress: workflows call third-party APIs through the gateway at
//! `/egress/<integration>/<path>`. Each integration is a policy chain (authentication of the
//! workflow) in front of [`EgressTerminal`], which checks that the client may use the
//! integration and that the method and path are allowed, builds the destination from the
//! configured base URL only (SSRF guard: `portcullis-egress`), adds the credential from the
//! vault, and hands back the response with cookies and configured headers stripped and any
//! echo of the credential replaced. The workflow never holds the third party's secret.

use async_trait::async_trait;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use portcullis_config::{CredentialPlacement, IntegrationConfig};
use portcullis_core::{full, Body, GatewayError, Identity};
use portcullis_egress::{
    breaker::{Breaker, BreakerConfig, SystemClock},
    join_destination,
    retry::{may_retry, parse_retry_after, retryable_status, RetryBudget, RetryPolicy},
    ClientOptions, EgressError, GuardedClient, Policy, SystemLookup, Timeouts,
};
use portcullis_policy::Terminal;
use portcullis_vault::Vault;
use std::sync::Arc;
use zeroize::Zeroizing;

/// What replaces an echoed credential in a response.
const REDACTED: &[u8] = b"[REDACTED]";

/// Request headers a workflow may pass on to the third party; everything else (its own
/// credentials above all) stays behind.
const PASSED_REQUEST_HEADERS: &[header::HeaderName] = &[
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
];

/// Response headers never handed to the workflow.
const DROPPED_RESPONSE_HEADERS: &[header::HeaderName] = &[
    header::SET_COOKIE,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
];

/// The terminal of an integration's chain.
pub(crate) struct EgressTerminal {
    config: Arc<IntegrationConfig>,
    client: GuardedClient,
    policy: Arc<Policy>,
    vault: Option<Arc<Vault>>,
    /// Allowed path templates, with their template text (for the log) and methods.
    allowed: matchit::Router<(String, Vec<Method>)>,
    prefix: String,
    retry: RetryPolicy,
    budget: RetryBudget,
    breaker: Breaker,
    response_schema: Option<jsonschema::Validator>,
    limits: Option<portcullis_policy::LimitStore>,
    /// The OAuth access token and when it stops being used; the lock makes refreshes single
    /// flight (concurrent callers wait for the one refresh and then use its token).
    token: tokio::sync::Mutex<Option<(Zeroizing<String>, std::time::Instant)>>,
    /// False while the primary base URL fails its health check (calls go to the fallback).
    primary_healthy: std::sync::atomic::AtomicBool,
}

impl EgressTerminal {
    /// Prepares the guarded client and the allowlist for `config`.
    pub(crate) fn new(
        config: Arc<IntegrationConfig>,
        vault: Option<Arc<Vault>>,
        limits: Option<portcullis_policy::LimitStore>,
    ) -> Result<Self, String> {
        let policy = Arc::new(Policy {
            allow_cidrs: config.dangerous_allow_cidrs.clone(),
            ..Policy::default()
        });
        // Following redirects: reqwest drops `Authorization` on a hop to another origin by
        // itself; a credential in any other header or in the query could leak, so those
        // integrations follow only same-origin hops.
        let header_credential = matches!(
            config.credential.as_ref().map(|c| &c.placement),
            Some(CredentialPlacement::Header(_) | CredentialPlacement::Query(_))
        );
        // A private CA: trusted beside the webpki roots, by the plain and the pinned client.
        let mut roots_der = Vec::new();
        let mut extra_roots = Vec::new();
        if let Some(path) = &config.ca {
            use rustls_pki_types::pem::PemObject;
            let pem = std::fs::read(path)
                .map_err(|e| format!("integration {:?}: ca {}: {e}", config.id, path.display()))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    format!("integration {:?}: ca {}: {e}", config.id, path.display())
                })?;
                extra_roots.push(
                    reqwest::Certificate::from_der(cert.as_ref())
                        .map_err(|e| format!("integration {:?}: ca: {e}", config.id))?,
                );
                roots_der.push(cert.into_owned());
            }
        }
        let options = ClientOptions {
            extra_roots,
            roots_der,
            pins: config.pin_sha256.clone(),
            timeouts: Timeouts {
                connect: config.connect_timeout,
                read: config.timeout,
                total: config.timeout,
            },
            redirects: if config.follow_redirects == 0 {
                portcullis_egress::Redirects::None
            } else {
                portcullis_egress::Redirects::Follow {
                    max_hops: config.follow_redirects as usize,
                    same_origin_only: header_credential,
                }
            },
            ..ClientOptions::default()
        };
        let client = GuardedClient::new(policy.clone(), Arc::new(SystemLookup), &options)
            .map_err(|e| format!("integration {:?}: client: {e}", config.id))?;
        let mut allowed: matchit::Router<(String, Vec<Method>)> = matchit::Router::new();
        // Several entries may share a template; their methods are merged.
        let mut by_path: Vec<(String, Vec<Method>)> = Vec::new();
        for (methods, path) in &config.allow {
            match by_path.iter_mut().find(|(p, _)| p == path) {
                Some((_, m)) => m.extend(methods.iter().cloned()),
                None => by_path.push((path.clone(), methods.clone())),
            }
        }
        for (path, methods) in by_path {
            allowed
                .insert(path.clone(), (path.clone(), methods))
                .map_err(|e| format!("integration {:?}: allow path {path:?}: {e}", config.id))?;
        }
        let (attempts, base, max) = config.retry;
        let (failure_ratio, min_requests, open_for) = config.breaker;
        let breaker = Breaker::new(
            config.id.clone(),
            BreakerConfig {
                failure_ratio,
                min_requests,
                open_for,
                ..BreakerConfig::default()
            },
            Arc::new(SystemClock),
        );
        let response_schema = match &config.response_schema {
            Some(s) => Some(
                jsonschema::draft202012::new(s)
                    .map_err(|e| format!("integration {:?}: response_schema: {e}", config.id))?,
            ),
            None => None,
        };
        Ok(EgressTerminal {
            primary_healthy: std::sync::atomic::AtomicBool::new(true),
            token: tokio::sync::Mutex::new(None),
            limits,
            response_schema,
            retry: RetryPolicy {
                attempts,
                base,
                max,
            },
            // Retries may add at most a fifth to the calls a third party sees.
            budget: RetryBudget::new(0.2, 20),
            breaker,
            prefix: format!("/egress/{}", config.id),
            config,
            client,
            policy,
            vault,
            allowed,
        })
    }

    /// Waits for the integration's outbound allowance (up to `max_wait`), or refuses with 429.
    /// Decided in the shared state, so every instance stays inside one third-party quota; if
    /// the shared state cannot decide, each instance uses its share locally.
    async fn outbound_allowance(&self) -> Result<(), GatewayError> {
        let (Some((limit, max_wait)), Some(store)) = (&self.config.rate_limit, &self.limits) else {
            return Ok(());
        };
        let key = format!("egress|{}", self.config.id);
        let rate = portcullis_state::Rate {
            limit: limit.limit,
            period: limit.period,
            burst: limit.burst,
        };
        let waited_until = std::time::Instant::now() + *max_wait;
        loop {
            let check = [portcullis_state::Check { key: &key, rate }];
            let d = match store.shared.check(&check).await {
                Ok(d) => d[0],
                Err(_) => {
                    let local = [portcullis_state::Check {
                        key: &key,
                        rate: rate.divided(store.instances),
                    }];
                    store.local.decide(&local)[0]
                }
            };
            if d.allowed {
                return Ok(());
            }
            let now = std::time::Instant::now();
            if now + d.wait > waited_until {
                metrics::counter!("portcullis_egress_rate_limited_total", "integration" => self.config.id.clone()).increment(1);
                return Err(GatewayError::TooManyRequests {
                    retry_after: d.wait.max(std::time::Duration::from_secs(1)),
                });
            }
            tokio::time::sleep(d.wait).await;
        }
    }

    /// An access token from the client-credentials grant: the cached one while it has more
    /// than a minute (or a tenth of its life) left, else a fresh one, fetched once for all
    /// concurrent callers. `stale` names a token the third party just refused (401): it is
    /// replaced unless another caller replaced it already.
    async fn access_token(
        &self,
        token_url: &url::Url,
        scopes: &[String],
        stale: Option<&str>,
    ) -> Result<Zeroizing<String>, GatewayError> {
        use oauth2::{
            basic::BasicClient, ClientId, ClientSecret, RefreshToken, Scope, TokenResponse,
            TokenUrl,
        };
        let mut slot = self.token.lock().await;
        if let Some((tok, until)) = slot.as_ref() {
            if std::time::Instant::now() < *until && stale != Some(tok.as_str()) {
                return Ok(tok.clone());
            }
        }
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
        let token_uri = TokenUrl::new(token_url.to_string())
            .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))?;
        let client = BasicClient::new(ClientId::new(field("client_id")?))
            .set_client_secret(ClientSecret::new(field("client_secret")?))
            .set_token_uri(token_uri);
        let started = std::time::Instant::now();
        let refresh = matches!(
            cred.placement,
            CredentialPlacement::OAuth2RefreshToken { .. }
        );
        let answer = if refresh {
            client
                .exchange_refresh_token(&RefreshToken::new(field("refresh_token")?))
                .add_scopes(scopes.iter().map(|s| Scope::new(s.clone())))
                .request_async(self.client.inner())
                .await
        } else {
            client
                .exchange_client_credentials()
                .add_scopes(scopes.iter().map(|s| Scope::new(s.clone())))
                .request_async(self.client.inner())
                .await
        };
        let tok = match answer {
            Ok(t) => t,
            Err(e) => {
                // The cause is logged (the token endpoint's error code, never a secret); the
                // workflow gets 503 credential-unavailable.
                metrics::counter!("portcullis_egress_token_failures_total", "integration" => self.config.id.clone()).increment(1);
                tracing::error!(integration = %self.config.id, error = %e, "OAuth token request failed");
                *slot = None;
                return Err(GatewayError::CredentialUnavailable(
                    "the OAuth token request failed".into(),
                ));
            }
        };
        let life = tok
            .expires_in()
            .unwrap_or(std::time::Duration::from_secs(300));
        let margin = (life / 10).min(std::time::Duration::from_secs(60));
        let access = Zeroizing::new(tok.access_token().secret().clone());
        // A rotated refresh token replaces the old one in the vault, or the next refresh
        // would present a token the issuer has already retired.
        if let (true, Some(next)) = (refresh, tok.refresh_token()) {
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
                tracing::error!(integration = %self.config.id, error = %e, "could not store the rotated refresh token; the next refresh may fail");
            }
        }
        *slot = Some((access.clone(), started + life.saturating_sub(margin)));
        metrics::counter!("portcullis_egress_token_refreshes_total", "integration" => self.config.id.clone()).increment(1);
        Ok(access)
    }

    /// Starts the primary's active health check, when one is configured. The task holds only
    /// a weak reference: it ends when a reload drops this terminal.
    pub(crate) fn start_health_check(self: &Arc<Self>) {
        let Some((path, interval, unhealthy_after)) = self.config.health_check.clone() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            let mut failures = 0u32;
            loop {
                tokio::time::sleep(interval).await;
                let Some(t) = weak.upgrade() else { return };
                let ok = match join_destination(&t.config.base_url, &path, &t.policy) {
                    Ok((url, _)) => {
                        let req = reqwest::Request::new(Method::GET, url);
                        matches!(t.client.execute(req).await, Ok(r) if r.status().is_success())
                    }
                    Err(_) => false,
                };
                failures = if ok { 0 } else { failures.saturating_add(1) };
                let healthy = failures < unhealthy_after;
                let was = t
                    .primary_healthy
                    .swap(healthy, std::sync::atomic::Ordering::AcqRel);
                metrics::gauge!("portcullis_egress_primary_healthy", "integration" => t.config.id.clone())
                    .set(if healthy { 1.0 } else { 0.0 });
                if was != healthy {
                    if healthy {
                        tracing::info!(integration = %t.config.id, "primary base URL healthy again");
                    } else {
                        tracing::warn!(integration = %t.config.id, fallback = t.config.fallback_base_url.is_some(), "primary base URL failed its health check");
                    }
                }
            }
        });
    }

    /// Whether the primary base URL passes its health check.
    pub(crate) fn primary_healthy(&self) -> bool {
        self.primary_healthy
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The circuit breaker's state, for the admin API.
    pub(crate) fn breaker_state(&self) -> &'static str {
        self.breaker.state().as_str()
    }

    fn check_response(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), GatewayError> {
        let id = self.config.id.as_str();
        let bad = |why: &'static str| {
            metrics::counter!("portcullis_egress_bad_responses_total", "integration" => id.to_string(), "reason" => why).increment(1);
            tracing::warn!(
                integration = id,
                reason = why,
                "third-party response refused"
            );
            GatewayError::BadGateway(why.into())
        };
        if !self.config.response_content_types.is_empty() {
            let media = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            if !self.config.response_content_types.contains(&media) {
                return Err(bad("content type not allowed"));
            }
        }
        if let Some(schema) = &self.response_schema {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|_| bad("response is not JSON"))?;
            if !schema.is_valid(&value) {
                return Err(bad("response does not match the schema"));
            }
        }
        Ok(())
    }

    async fn secret(&self) -> Result<Option<Zeroizing<Vec<u8>>>, GatewayError> {
        let Some(cred) = &self.config.credential else {
            return Ok(None);
        };
        let Some(vault) = &self.vault else {
            return Err(GatewayError::CredentialUnavailable(
                "no vault in this process".into(),
            ));
        };
        let v = vault
            .resolve(&cred.secret, &self.config.consumer())
            .await
            .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))?;
        Ok(Some(Zeroizing::new(v.expose().to_vec())))
    }
}

fn refuse(id: &str, why: &str) -> GatewayError {
    metrics::counter!("portcullis_egress_refused_total", "integration" => id.to_string(), "reason" => why.to_string()).increment(1);
    tracing::warn!(integration = id, reason = why, "egress request refused");
    GatewayError::Forbidden
}

/// Replaces every occurrence of each needle in `hay`.
fn scrub(hay: &[u8], needles: &[&[u8]]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for n in needles.iter().filter(|n| n.len() >= 4) {
        let src = out.as_deref().unwrap_or(hay);
        if memchr::memmem::find(src, n).is_none() {
            continue;
        }
        let mut next = Vec::with_capacity(src.len());
        let mut last = 0;
        for at in memchr::memmem::find_iter(src, n) {
            if at < last {
                continue;
            }
            next.extend_from_slice(&src[last..at]);
            next.extend_from_slice(REDACTED);
            last = at + n.len();
        }
        next.extend_from_slice(&src[last..]);
        out = Some(next);
    }
    out
}

#[async_trait]
impl Terminal for EgressTerminal {
    async fn call(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let id = self.config.id.as_str();
        let client = req
            .extensions()
            .get::<Identity>()
            .map(|i| i.client_id.clone())
            .ok_or(GatewayError::Unauthorized { presented: false })?;
        if !self.config.clients.iter().any(|c| c.as_str() == &*client) {
            return Err(refuse(id, "client not allowed"));
        }
        let path = req.uri().path();
        let rest = path.strip_prefix(self.prefix.as_str()).unwrap_or("");
        let rest = if rest.is_empty() { "/" } else { rest };
        let template = match self.allowed.at(rest) {
            Ok(m) if m.value.1.contains(req.method()) => m.value.0.clone(),
            _ => return Err(refuse(id, "method and path not allowed")),
        };
        let pq = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        let base = match &self.config.fallback_base_url {
            Some(fallback) if !self.primary_healthy() => fallback,
            _ => &self.config.base_url,
        };
        let (mut url, _) =
            join_destination(base, &pq, &self.policy).map_err(|r| refuse(id, r.kind()))?;
        let secret = self.secret().await?;
        let method = req.method().clone();
        let mut headers = HeaderMap::new();
        for name in PASSED_REQUEST_HEADERS {
            for v in req.headers().get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        if let Some(v) = req.headers().get("idempotency-key") {
            headers.insert("idempotency-key", v.clone());
        }
        let mut needles: Vec<Vec<u8>> = Vec::new();
        if let (Some(cred), Some(secret)) = (&self.config.credential, &secret) {
            needles.push(secret.to_vec());
            let value = |s: String| {
                HeaderValue::from_str(&s).map_err(|_| {
                    GatewayError::CredentialUnavailable(
                        "credential is not a valid header value".into(),
                    )
                })
            };
            let text = String::from_utf8_lossy(secret).into_owned();
            match &cred.placement {
                CredentialPlacement::Bearer => {
                    let mut v = value(format!("Bearer {text}"))?;
                    v.set_sensitive(true);
                    headers.insert(header::AUTHORIZATION, v);
                }
                CredentialPlacement::Header(h) => {
                    let mut v = value(text)?;
                    v.set_sensitive(true);
                    headers.insert(h.clone(), v);
                }
                CredentialPlacement::Basic => {
                    let encoded = B64.encode(secret.as_slice());
                    needles.push(encoded.clone().into_bytes());
                    let mut v = value(format!("Basic {encoded}"))?;
                    v.set_sensitive(true);
                    headers.insert(header::AUTHORIZATION, v);
                }
                CredentialPlacement::Query(p) => {
                    url.query_pairs_mut().append_pair(p, &text);
                }
                CredentialPlacement::OAuth2ClientCredentials { .. }
                | CredentialPlacement::OAuth2RefreshToken { .. } => {}
            }
        }
        // OAuth: the access token is the credential the third party sees.
        let oauth = match self.config.credential.as_ref().map(|c| &c.placement) {
            Some(
                CredentialPlacement::OAuth2ClientCredentials { token_url, scopes }
                | CredentialPlacement::OAuth2RefreshToken { token_url, scopes },
            ) => Some((token_url.clone(), scopes.clone())),
            _ => None,
        };
        let mut token: Option<Zeroizing<String>> = None;
        if let Some((token_url, scopes)) = &oauth {
            let t = self.access_token(token_url, scopes, None).await?;
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.as_str())).map_err(|_| {
                GatewayError::CredentialUnavailable("token is not a valid header value".into())
            })?;
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
            needles.push(t.as_bytes().to_vec());
            token = Some(t);
        }
        let mut refetched = false;
        let body = portcullis_policy::read_limited(req.into_body(), self.config.max_body).await?;
        let retryable = may_retry(&method, headers.contains_key("idempotency-key"));
        let started = std::time::Instant::now();
        let deadline = started + self.config.timeout;
        let mut rng = fastrand::Rng::new();
        self.budget.on_request();
        let mut retry: u32 = 0;
        let res = loop {
            // Every attempt, retries included, is a call the third party counts.
            self.outbound_allowance().await?;
            let permit = self.breaker.try_acquire().map_err(|r| {
                metrics::counter!("portcullis_egress_refused_total", "integration" => id.to_string(), "reason" => "circuit open").increment(1);
                GatewayError::Unavailable {
                    retry_after: Some(r.retry_in.max(std::time::Duration::from_secs(1))),
                }
            })?;
            metrics::gauge!("portcullis_egress_breaker_state", "integration" => id.to_string())
                .set(self.breaker.state().as_gauge());
            let mut out = reqwest::Request::new(method.clone(), url.clone());
            *out.headers_mut() = headers.clone();
            if !body.is_empty() {
                *out.body_mut() = Some(reqwest::Body::from(body.clone()));
            }
            let (retry_after, failure) = match self.client.execute(out).await {
                // A token the third party refuses is replaced once, and the call made again.
                Ok(res)
                    if res.status() == http::StatusCode::UNAUTHORIZED
                        && !refetched
                        && oauth.is_some() =>
                {
                    permit.success();
                    refetched = true;
                    if let (Some((token_url, scopes)), Some(old)) = (&oauth, &token) {
                        let fresh = self
                            .access_token(token_url, scopes, Some(old.as_str()))
                            .await?;
                        let mut v = HeaderValue::from_str(&format!("Bearer {}", fresh.as_str()))
                            .map_err(|_| {
                                GatewayError::CredentialUnavailable(
                                    "token is not a valid header value".into(),
                                )
                            })?;
                        v.set_sensitive(true);
                        headers.insert(header::AUTHORIZATION, v);
                        needles.push(fresh.as_bytes().to_vec());
                        token = Some(fresh);
                    }
                    continue;
                }
                Ok(res) if !retryable_status(res.status()) => {
                    if res.status().is_server_error() {
                        permit.failure();
                    } else {
                        permit.success();
                    }
                    break res;
                }
                Ok(res) => {
                    permit.failure();
                    let ra = res
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                    (ra, Ok(res))
                }
                // A refused destination is not the third party's failure: it counts nothing.
                Err(EgressError::Refused(r)) => return Err(refuse(id, r.kind())),
                Err(EgressError::Http(e)) => {
                    permit.failure();
                    (None, Err(e))
                }
            };
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let wait = if retryable {
                self.retry
                    .next_delay(retry, retry_after, remaining, &mut rng)
            } else {
                None
            };
            match (wait, failure) {
                (Some(wait), _) if self.budget.try_retry() => {
                    metrics::counter!("portcullis_egress_retries_total", "integration" => id.to_string()).increment(1);
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                (_, Ok(res)) => break res,
                (_, Err(e)) if e.is_timeout() => return Err(GatewayError::UpstreamTimeout),
                (_, Err(e)) => return Err(GatewayError::BadGateway(Box::new(e))),
            }
        };
        let status = res.status();
        let mut back = HeaderMap::new();
        for (name, v) in res.headers() {
            if DROPPED_RESPONSE_HEADERS.contains(name)
                || self.config.strip_response_headers.contains(name)
            {
                continue;
            }
            back.append(name.clone(), v.clone());
        }
        // The response is untrusted input: bounded, and never allowed to carry the credential
        // back to the workflow.
        let mut res = res;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| GatewayError::BadGateway(Box::new(e)))?
        {
            if (buf.len() + chunk.len()) as u64 > self.config.max_response {
                return Err(GatewayError::BadGateway(
                    "third-party response larger than max_response".into(),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        // Third-party data is untrusted input: the declared content types and schema hold, or
        // the workflow gets 502 and never sees the body.
        if status.is_success() {
            self.check_response(&back, &buf)?;
            if let Some(f) = &self.config.response_filter {
                // Minimization cannot be skipped: a body it cannot parse is refused.
                let mut v: serde_json::Value = serde_json::from_slice(&buf).map_err(|_| {
                    GatewayError::BadGateway("response to minimize is not JSON".into())
                })?;
                portcullis_policy::minimize(
                    &mut v,
                    f.allow.as_deref(),
                    &f.deny,
                    &f.mask,
                    if f.mask_hash {
                        portcullis_policy::MaskStyle::Hash
                    } else {
                        portcullis_policy::MaskStyle::Last4
                    },
                );
                buf = v.to_string().into_bytes();
            }
        }
        let needles: Vec<&[u8]> = needles.iter().map(|n| n.as_slice()).collect();
        let mut scrubbed = 0u64;
        if let Some(clean) = scrub(&buf, &needles) {
            buf = clean;
            scrubbed += 1;
        }
        for v in back.values_mut() {
            if let Some(clean) = scrub(v.as_bytes(), &needles) {
                *v = HeaderValue::from_bytes(&clean)
                    .unwrap_or(HeaderValue::from_static("[REDACTED]"));
                scrubbed += 1;
            }
        }
        if scrubbed > 0 {
            metrics::counter!("portcullis_egress_credential_echoes_total", "integration" => id.to_string()).increment(scrubbed);
            tracing::warn!(
                integration = id,
                "the third party echoed the credential; replaced before the workflow saw it"
            );
        }
        tracing::info!(target: "portcullis::egress", integration = id, client = %client, method = %method, path = %template, status = status.as_u16(), attempts = retry + 1, duration_ms = started.elapsed().as_secs_f64() * 1000.0, "egress call");
        metrics::counter!("portcullis_egress_calls_total", "integration" => id.to_string(), "status" => status.as_u16().to_string()).increment(1);
        let mut response = Response::new(full(Bytes::from(buf)));
        *response.status_mut() = status;
        *response.headers_mut() = back;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn every_echo_is_replaced() {
        let out = scrub(b"a SECRETxyz b SECRETxyz", &[b"SECRETxyz"]).unwrap_or_default();
        assert_eq!(out, b"a [REDACTED] b [REDACTED]".to_vec());
        assert!(scrub(b"nothing here", &[b"SECRETxyz"]).is_none());
    }
}
