//! Egress: workflows call third-party APIs through the gateway at
//! `/egress/<integration>/<path>`. Each integration is a policy chain (authentication of the
//! workflow) in front of [`EgressTerminal`], which checks that the client may use the
//! integration and that the method and path are allowed, builds the destination from the
//! configured base URL only (SSRF guard: `portcullis-egress`), adds the credential from the
//! vault, and hands back the response with cookies and configured headers stripped and any
//! echo of the credential replaced. The workflow never holds the third party's secret.
//!
//! [`EgressTerminal::call`] reads as its steps: who calls ([`EgressTerminal::caller`]), what
//! ([`EgressTerminal::template`]), where ([`EgressTerminal::destination`]), with which
//! credential ([`EgressTerminal::credential`], OAuth tokens in `token.rs`), the attempts
//! ([`EgressTerminal::send`]), and what comes back (`response.rs`).

mod audit;
mod response;
mod seal;
mod token;

use async_trait::async_trait;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use portcullis_config::{BreakerSettings, CredentialPlacement, IntegrationConfig};
use portcullis_core::{full, Body, GatewayError, Identity};
use portcullis_egress::{
    breaker::{Breaker, BreakerConfig, SystemClock},
    join_destination,
    retry::{may_retry, parse_retry_after, retryable_status, RetryBudget, RetryPolicy},
    ClientOptions, EgressError, GuardedClient, Policy, SystemLookup, Timeouts,
};
use portcullis_policy::Terminal;
use portcullis_vault::Vault;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use zeroize::Zeroizing;

/// Request headers a workflow may pass on to the third party; everything else (its own
/// credentials above all) stays behind.
const PASSED_REQUEST_HEADERS: &[header::HeaderName] = &[
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
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
    response_schema: Option<portcullis_policy::JsonSchema>,
    limits: Option<portcullis_policy::LimitStore>,
    /// OAuth access tokens, when the credential is an OAuth grant.
    tokens: Option<token::TokenSource>,
    /// False while the primary base URL fails its health check (calls go to the fallback).
    primary_healthy: AtomicBool,
}

/// One call on its way out: what is sent, and every form of the credential it carries (so
/// that an echo of any of them can be replaced in the response).
struct Outbound {
    method: Method,
    url: url::Url,
    headers: HeaderMap,
    needles: Vec<Zeroizing<Vec<u8>>>,
    /// The OAuth access token in `Authorization`, when there is one.
    token: Option<Zeroizing<String>>,
}

impl EgressTerminal {
    /// Prepares the guarded client and the allowlist for `config`.
    pub(crate) fn new(
        config: Arc<IntegrationConfig>,
        vault: Option<Arc<Vault>>,
        limits: Option<portcullis_policy::LimitStore>,
        shared_tokens: Option<Arc<dyn portcullis_state::TokenCache>>,
    ) -> Result<Self, String> {
        let policy = Arc::new(Policy {
            allow_cidrs: config.dangerous_allow_cidrs.clone(),
            ..Policy::default()
        });
        let client = guarded_client(&config, policy.clone())?;
        let allowed = allowlist(&config)?;
        let (attempts, base, max) = config.retry;
        let breaker = Breaker::with_observer(
            config.id.clone(),
            breaker_config(&config.breaker),
            Arc::new(SystemClock),
            Arc::new(audit::breaker),
        );
        let response_schema = match &config.response_schema {
            Some(s) => Some(
                portcullis_policy::JsonSchema::compile(s)
                    .map_err(|e| format!("integration {:?}: response_schema: {e}", config.id))?,
            ),
            None => None,
        };
        Ok(EgressTerminal {
            primary_healthy: AtomicBool::new(true),
            tokens: token::TokenSource::new(
                &config,
                vault.clone(),
                client.inner().clone(),
                shared_tokens,
            ),
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
                let was = t.primary_healthy.swap(healthy, Ordering::AcqRel);
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
        self.primary_healthy.load(Ordering::Acquire)
    }

    /// The circuit breaker's state, for the admin API.
    pub(crate) fn breaker_state(&self) -> &'static str {
        self.breaker.state().as_str()
    }

    /// Step 1: the authenticated workflow, which must be one of the integration's clients.
    fn caller(&self, req: &Request<Body>) -> Result<Arc<str>, GatewayError> {
        let client = req
            .extensions()
            .get::<Identity>()
            .map(|i| i.client_id.clone())
            .ok_or(GatewayError::Unauthorized { presented: false })?;
        if !self.config.clients.iter().any(|c| c.as_str() == &*client) {
            return Err(refuse(&self.config.id, "client not allowed"));
        }
        Ok(client)
    }

    /// Step 2: the allowed path template the request matches with its method.
    fn template(&self, req: &Request<Body>) -> Result<String, GatewayError> {
        match self.allowed.at(self.rest(req.uri())) {
            Ok(m) if m.value.1.contains(req.method()) => Ok(m.value.0.clone()),
            _ => Err(refuse(&self.config.id, "method and path not allowed")),
        }
    }

    /// The path after `/egress/<id>`, `/` when there is none.
    fn rest<'a>(&self, uri: &'a http::Uri) -> &'a str {
        let rest = uri.path().strip_prefix(self.prefix.as_str()).unwrap_or("");
        if rest.is_empty() {
            "/"
        } else {
            rest
        }
    }

    /// Step 3: the destination, from the base URL (the fallback while the primary is
    /// unhealthy) and the caller's path and query, checked as written.
    fn destination(&self, uri: &http::Uri) -> Result<url::Url, GatewayError> {
        let rest = self.rest(uri);
        let pq = match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        let base = match &self.config.fallback_base_url {
            Some(fallback) if !self.primary_healthy() => fallback,
            _ => &self.config.base_url,
        };
        let (url, _) = join_destination(base, &pq, &self.policy)
            .map_err(|r| refuse_destination(&self.config.id, r.kind()))?;
        Ok(url)
    }

    /// Step 4: the credential, placed where the integration says (a vault secret as is, or an
    /// OAuth access token).
    async fn credential(&self, out: &mut Outbound) -> Result<(), GatewayError> {
        let Some(cred) = &self.config.credential else {
            return Ok(());
        };
        // Resolved on every call, OAuth included: a revoked or unbound secret stops calls at
        // once, even while an access token is cached.
        let secret = self.secret().await?;
        out.needles.push(secret.clone());
        if self.tokens.is_some() {
            return self.use_token(out, None).await;
        }
        let text = String::from_utf8_lossy(&secret).into_owned();
        match &cred.placement {
            CredentialPlacement::Bearer => {
                out.headers
                    .insert(header::AUTHORIZATION, sensitive(format!("Bearer {text}"))?);
            }
            CredentialPlacement::Header(h) => {
                out.headers.insert(h.clone(), sensitive(text)?);
            }
            CredentialPlacement::Basic => {
                let encoded = B64.encode(secret.as_slice());
                out.needles
                    .push(Zeroizing::new(encoded.clone().into_bytes()));
                out.headers.insert(
                    header::AUTHORIZATION,
                    sensitive(format!("Basic {encoded}"))?,
                );
            }
            CredentialPlacement::Query(p) => {
                out.url.query_pairs_mut().append_pair(p, &text);
            }
            CredentialPlacement::OAuth2ClientCredentials { .. }
            | CredentialPlacement::OAuth2RefreshToken { .. } => {}
        }
        Ok(())
    }

    /// Puts an access token (a fresh one when `stale` names the refused one) in
    /// `Authorization`.
    async fn use_token(&self, out: &mut Outbound, stale: Option<&str>) -> Result<(), GatewayError> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let t = tokens.token(stale).await?;
        let v = HeaderValue::from_str(&format!("Bearer {}", t.as_str())).map_err(|_| {
            GatewayError::CredentialUnavailable("token is not a valid header value".into())
        });
        let mut v = v?;
        v.set_sensitive(true);
        out.headers.insert(header::AUTHORIZATION, v);
        out.needles.push(Zeroizing::new(t.as_bytes().to_vec()));
        out.token = Some(t);
        Ok(())
    }

    /// The integration's vault secret as stored.
    async fn secret(&self) -> Result<Zeroizing<Vec<u8>>, GatewayError> {
        let (Some(cred), Some(vault)) = (&self.config.credential, &self.vault) else {
            return Err(GatewayError::CredentialUnavailable(
                "no vault in this process".into(),
            ));
        };
        let v = vault
            .resolve(&cred.secret, &self.config.consumer())
            .await
            .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))?;
        Ok(Zeroizing::new(v.expose().to_vec()))
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
        let waited_until = Instant::now() + *max_wait;
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
            let now = Instant::now();
            if now + d.wait > waited_until {
                metrics::counter!("portcullis_egress_rate_limited_total", "integration" => self.config.id.clone()).increment(1);
                return Err(GatewayError::TooManyRequests {
                    retry_after: d.wait.max(Duration::from_secs(1)),
                });
            }
            tokio::time::sleep(d.wait).await;
        }
    }

    /// Step 5: the attempts. Every attempt passes the outbound rate limit and the circuit
    /// breaker; idempotent calls are retried with backoff inside the deadline and the retry
    /// budget; a refused OAuth token is replaced once. `attempts` counts the requests handed
    /// to the client (retries and the token refetch's repeat included).
    async fn send(
        &self,
        out: &mut Outbound,
        body: Bytes,
        attempts: &mut u32,
    ) -> Result<reqwest::Response, GatewayError> {
        let id = self.config.id.as_str();
        let retryable = may_retry(&out.method, out.headers.contains_key("idempotency-key"));
        let deadline = Instant::now() + self.config.timeout;
        let mut rng = fastrand::Rng::new();
        let mut refetched = false;
        let mut retry: u32 = 0;
        self.budget.on_request();
        loop {
            // Every attempt, retries included, is a call the third party counts.
            self.outbound_allowance().await?;
            let permit = self.breaker.try_acquire().map_err(|r| {
                metrics::counter!("portcullis_egress_refused_total", "integration" => id.to_string(), "reason" => "circuit open").increment(1);
                GatewayError::Unavailable {
                    retry_after: Some(r.retry_in.max(Duration::from_secs(1))),
                }
            })?;
            metrics::gauge!("portcullis_egress_breaker_state", "integration" => id.to_string())
                .set(self.breaker.state().as_gauge());
            let mut req = reqwest::Request::new(out.method.clone(), out.url.clone());
            *req.headers_mut() = out.headers.clone();
            if !body.is_empty() {
                *req.body_mut() = Some(reqwest::Body::from(body.clone()));
            }
            *attempts += 1;
            let (retry_after, failure) = match self.client.execute(req).await {
                // A token the third party refuses is replaced once, and the call made again.
                Ok(res)
                    if res.status() == http::StatusCode::UNAUTHORIZED
                        && !refetched
                        && self.tokens.is_some() =>
                {
                    permit.success();
                    refetched = true;
                    if let Some(old) = out.token.clone() {
                        self.use_token(out, Some(old.as_str())).await?;
                    }
                    continue;
                }
                Ok(res) if !retryable_status(res.status()) => {
                    if res.status().is_server_error() {
                        permit.failure();
                    } else {
                        permit.success();
                    }
                    return Ok(res);
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
                Err(EgressError::Refused(r)) => return Err(refuse_destination(id, r.kind())),
                Err(EgressError::Http(e)) => {
                    permit.failure();
                    (None, Err(e))
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
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
                (_, Ok(res)) => return Ok(res),
                (_, Err(e)) if e.is_timeout() => return Err(GatewayError::UpstreamTimeout),
                (_, Err(e)) => return Err(GatewayError::BadGateway(Box::new(e))),
            }
        }
    }
}

/// The integration's client: SSRF guard, private CA and pins, timeouts and redirect policy.
fn guarded_client(
    config: &IntegrationConfig,
    policy: Arc<Policy>,
) -> Result<GuardedClient, String> {
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
            let cert = cert
                .map_err(|e| format!("integration {:?}: ca {}: {e}", config.id, path.display()))?;
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
    GuardedClient::new(policy, Arc::new(SystemLookup), &options)
        .map_err(|e| format!("integration {:?}: client: {e}", config.id))
}

/// The breaker's thresholds from the integration's settings (the window's slice count is
/// not a setting: ten slices make the window move smoothly enough at any length).
fn breaker_config(s: &BreakerSettings) -> BreakerConfig {
    BreakerConfig {
        window: s.window,
        min_requests: s.min_requests,
        failure_ratio: s.failure_ratio,
        open_for: s.open_for,
        half_open_probes: s.half_open_probes,
        ..BreakerConfig::default()
    }
}

/// The allowed (template → methods) router. Several entries may share a template; their
/// methods are merged.
fn allowlist(config: &IntegrationConfig) -> Result<matchit::Router<(String, Vec<Method>)>, String> {
    let mut allowed = matchit::Router::new();
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
    Ok(allowed)
}

/// The request headers passed on: a fixed list, and an `Idempotency-Key`.
fn passed_headers(from: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in PASSED_REQUEST_HEADERS {
        for v in from.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    if let Some(v) = from.get("idempotency-key") {
        headers.insert("idempotency-key", v.clone());
    }
    headers
}

/// A header value holding a credential: marked sensitive (never printed by `Debug`, never
/// indexed by HPACK).
fn sensitive(text: String) -> Result<HeaderValue, GatewayError> {
    let mut v = HeaderValue::from_str(&text).map_err(|_| {
        GatewayError::CredentialUnavailable("credential is not a valid header value".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// A request the integration does not allow (client, method, path): 403 `forbidden`.
fn refuse(id: &str, why: &str) -> GatewayError {
    count_refusal(id, why);
    GatewayError::Forbidden
}

/// A destination the SSRF guard refuses: 403 `destination-refused`, the reason (a stable
/// kind, never an address) in the log and the metric label only.
fn refuse_destination(id: &str, why: &str) -> GatewayError {
    count_refusal(id, why);
    GatewayError::DestinationRefused
}

fn count_refusal(id: &str, why: &str) {
    metrics::counter!("portcullis_egress_refused_total", "integration" => id.to_string(), "reason" => why.to_string()).increment(1);
    tracing::warn!(integration = id, reason = why, "egress request refused");
}

#[async_trait]
impl Terminal for EgressTerminal {
    /// Runs the steps and writes the call's audit event, however it ends.
    async fn call(
        &self,
        req: Request<Body>,
        _ctx: &portcullis_core::RequestContext,
    ) -> Result<Response<Body>, GatewayError> {
        let mut record = audit::CallRecord::new(req.method().clone());
        let result = self.steps(req, &mut record).await;
        audit::call(
            &self.config.id,
            &record,
            result.as_ref().map(|r| r.status().as_u16()),
        );
        result
    }
}

impl EgressTerminal {
    async fn steps(
        &self,
        req: Request<Body>,
        record: &mut audit::CallRecord,
    ) -> Result<Response<Body>, GatewayError> {
        let id = self.config.id.as_str();
        let client = self.caller(&req)?;
        record.client = Some(client.clone());
        let template = self.template(&req)?;
        record.template = Some(template.clone());
        let mut out = Outbound {
            url: self.destination(req.uri())?,
            method: req.method().clone(),
            headers: passed_headers(req.headers()),
            needles: Vec::new(),
            token: None,
        };
        self.credential(&mut out).await?;
        let body = portcullis_policy::read_limited(req.into_body(), self.config.max_body).await?;
        let started = Instant::now();
        let res = self.send(&mut out, body, &mut record.attempts).await?;
        let (status, headers, body) = self.answer(res, &out.needles).await?;
        if tracing::enabled!(target: "portcullis::egress", tracing::Level::INFO) {
            portcullis_telemetry::JsonLine::info("portcullis::egress", "egress call")
                .str("integration", id)
                .str("client", &client)
                .str("method", out.method.as_str())
                .str("path", &template)
                .u64("status", status.as_u16().into())
                .u64("attempts", record.attempts.into())
                .millis("duration_ms", started.elapsed())
                .emit();
        }
        metrics::counter!("portcullis_egress_calls_total", "integration" => id.to_string(), "status" => status.as_u16().to_string()).increment(1);
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::breaker_config;
    use portcullis_egress::breaker::{Breaker, BreakerState, ManualClock};
    use std::{sync::Arc, time::Duration};

    /// The breaker an integration's configuration text produces, on a manual clock.
    fn breaker_from(table: &str) -> (Breaker, Arc<ManualClock>) {
        let text = format!(
            "[[clients]]\nid = \"wf\"\n[[integrations]]\nid = \"crm\"\nbase_url = \"https://api.example\"\n\
             allow = [{{ methods = [\"GET\"], path = \"/x\" }}]\nclients = [\"wf\"]\ncircuit_breaker = {table}\n"
        );
        let loaded = match portcullis_config::parse(&text, "test.toml", std::path::Path::new(".")) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let clock = Arc::new(ManualClock::new());
        let b = Breaker::new(
            "crm",
            breaker_config(&loaded.config.integrations[0].breaker),
            clock.clone(),
        );
        (b, clock)
    }

    fn fail(b: &Breaker, n: usize) {
        for _ in 0..n {
            if let Ok(p) = b.try_acquire() {
                p.failure();
            }
        }
    }

    #[test]
    fn the_configured_window_and_probe_count_reach_the_breaker() {
        // window = "1m": failures 40 s apart still count together (the default 30 s would
        // have forgotten the first), and three probes go out while half-open.
        let (b, clock) = breaker_from(
            "{ window = \"1m\", half_open_probes = 3, min_requests = 2, open_for = \"10s\" }",
        );
        fail(&b, 1);
        clock.advance(Duration::from_secs(40));
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(10));
        let probes: Vec<_> = (0..3).filter_map(|_| b.try_acquire().ok()).collect();
        assert_eq!(probes.len(), 3);
        assert!(
            b.try_acquire().is_err(),
            "a fourth probe while three are out"
        );

        // The same failures with window = "20s": the first is forgotten, it stays closed.
        let (b, clock) = breaker_from("{ window = \"20s\", min_requests = 2 }");
        fail(&b, 1);
        clock.advance(Duration::from_secs(40));
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Closed);

        // Defaults: one probe at a time.
        let (b, clock) = breaker_from("{ min_requests = 1 }");
        fail(&b, 1);
        clock.advance(Duration::from_secs(30));
        let first = b.try_acquire();
        assert!(first.is_ok());
        assert!(b.try_acquire().is_err());
    }
}
