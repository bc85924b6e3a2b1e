//! Inbound webhook endpoints: the workflow triggers. Each request goes through, in order: the
//! size limit, signature verification over the exact raw bytes (secrets from the vault, every
//! valid version during a rotation), the replay cache (shared state: memory or Redis), the
//! event-type allowlist and payload schema, and then delivery to the workflow backend with a
//! fresh Standard Webhooks signature made with Portcullis's own secret. Nothing touches the
//! shared state or the store before the signature is verified.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use portcullis_config::{Delivery, WebhookConfig, WebhookProvider};
use portcullis_core::{full, Body, GatewayError, RequestContext};
use portcullis_state::ReplayCache;
use portcullis_store::{OutboxEvent, Store};
use portcullis_vault::Vault;
use portcullis_webhooks::{HmacAlgorithm, HmacScheme, Scheme, SigEncoding, Verifier};
use std::{sync::Arc, time::Duration};
use zeroize::Zeroizing;

/// One configured endpoint, ready to serve.
pub(crate) struct WebhookEndpoint {
    config: Arc<WebhookConfig>,
    scheme: Scheme,
    schema: Option<portcullis_policy::JsonSchema>,
    vault: Option<Arc<Vault>>,
    replay: Arc<dyn ReplayCache>,
    failures: Arc<crate::WebhookFailures>,
    signer: Option<Arc<crate::WebhookSigner>>,
    /// The data plane's pooled transport (it never follows redirects), and the forward
    /// target, split into scheme, authority and path once.
    transport: crate::client::Transport,
    forward: Forward,
    outbox: Option<Outbox>,
    /// The verifier for the secret versions it was built from.
    verifier_cache: arc_swap::ArcSwapOption<(Vec<i64>, Arc<Verifier>)>,
    /// The endpoint id as a metric label, shared rather than copied per event.
    metric_id: metrics::SharedString,
    /// The delivery-time histogram, registered at the first delivery (when the metrics
    /// recorder is certainly installed) and then used without a registry lookup.
    delivery_seconds: std::sync::OnceLock<metrics::Histogram>,
}

/// Where queued events go, and how the worker is woken.
#[derive(Clone)]
pub(crate) struct Outbox {
    /// The store holding the outbox.
    pub store: Arc<dyn Store>,
    /// Woken after each enqueue, so delivery starts at once.
    pub wake: Arc<tokio::sync::Notify>,
}

/// Most of a backend's answer body read (and dropped) after a delivery, so that the pooled
/// connection can be reused; past it the connection is simply not reused.
const DISCARDED_BODY_LIMIT: usize = 64 * 1024;

/// Reads what is left of a backend's answer body (bounded in size and time) and drops it, so
/// the pooled connection can be reused. A body that is not there at once is read in the
/// background: the status is already known, and the sender is not kept waiting for it.
fn drain(body: Body) {
    use http_body::Body as _;
    use std::future::Future as _;
    if body.is_end_stream() {
        return;
    }
    let mut body = body;
    let mut rest = Box::pin(async move {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DISCARDED_BODY_LIMIT {
                break;
            }
        }
    });
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    if rest.as_mut().poll(&mut cx).is_pending() {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DRAIN_DEADLINE, rest).await;
        });
    }
}

/// Where a webhook endpoint delivers: its `forward` URL, split once.
struct Forward {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    path: http::uri::PathAndQuery,
}

/// How long a backend's answer body may take to arrive before its connection is dropped.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

// The forwarded request's own header names, parsed once: a name given as a string is parsed
// and validated again on every insert. The Standard Webhooks names come from
// `portcullis_webhooks`, the request id's from `portcullis_core`.
const PORTCULLIS_WEBHOOK: HeaderName = HeaderName::from_static("x-portcullis-webhook");
const PORTCULLIS_PROVIDER: HeaderName = HeaderName::from_static("x-portcullis-provider");
const PORTCULLIS_EVENT_TYPE: HeaderName = HeaderName::from_static("x-portcullis-event-type");
const REQUEST_ID: HeaderName = portcullis_core::REQUEST_ID_HEADER;

/// What the backend answered one delivery attempt.
pub(crate) struct Sent {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
}

/// The scheme the verifier crate knows for a configured provider.
fn scheme(p: &WebhookProvider) -> Scheme {
    match p {
        WebhookProvider::Standard => Scheme::Standard,
        WebhookProvider::Stripe => Scheme::Stripe,
        WebhookProvider::Github => Scheme::Github,
        WebhookProvider::Slack => Scheme::Slack,
        WebhookProvider::Shopify => Scheme::Shopify,
        WebhookProvider::Hmac(h) => Scheme::Hmac(HmacScheme {
            signature_header: h.signature_header.clone(),
            algorithm: if h.sha512 {
                HmacAlgorithm::Sha512
            } else {
                HmacAlgorithm::Sha256
            },
            encoding: if h.base64 {
                SigEncoding::Base64
            } else {
                SigEncoding::Hex
            },
            prefix: h.prefix.clone(),
            timestamp_header: h.timestamp_header.clone(),
            template: h.template.clone(),
        }),
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn ack(status: StatusCode, what: &'static str) -> Response<Body> {
    let mut res = Response::new(full(format!("{{\"status\":\"{what}\"}}")));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

impl WebhookEndpoint {
    /// Compiles `config`'s schema and prepares its delivery client.
    pub(crate) fn new(
        config: Arc<WebhookConfig>,
        vault: Option<Arc<Vault>>,
        replay: Arc<dyn ReplayCache>,
        failures: Arc<crate::WebhookFailures>,
        signer: Option<Arc<crate::WebhookSigner>>,
        outbox: Option<Outbox>,
        clients: &crate::client::ClientCache,
    ) -> Result<Self, String> {
        let schema = match &config.schema {
            Some(s) => Some(
                portcullis_policy::JsonSchema::compile(s)
                    .map_err(|e| format!("webhook {:?}: schema: {e}", config.id))?,
            ),
            None => None,
        };
        let forward = http::Uri::try_from(config.forward.as_str())
            .ok()
            .and_then(|u| {
                let parts = u.into_parts();
                Some(Forward {
                    scheme: parts.scheme?,
                    authority: parts.authority?,
                    path: parts
                        .path_and_query
                        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                })
            })
            .ok_or_else(|| format!("webhook {:?}: forward URL is not absolute", config.id))?;
        let transport = clients
            .transport(
                &forward.scheme,
                &forward.authority,
                &portcullis_config::UpstreamTls::default(),
                config.timeout.min(Duration::from_secs(10)),
            )
            .map_err(|e| format!("webhook {:?}: delivery client: {e}", config.id))?;
        Ok(WebhookEndpoint {
            metric_id: metrics::SharedString::from(Arc::<str>::from(config.id.as_str())),
            scheme: scheme(&config.provider),
            config,
            schema,
            vault,
            replay,
            failures,
            signer,
            transport,
            forward,
            outbox,
            verifier_cache: arc_swap::ArcSwapOption::empty(),
            delivery_seconds: std::sync::OnceLock::new(),
        })
    }

    /// The endpoint's configuration.
    pub(crate) fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// The endpoint id, for logs and metrics.
    pub(crate) fn id(&self) -> &str {
        &self.config.id
    }

    fn failed(&self, ctx: &RequestContext, reason: &str) -> GatewayError {
        metrics::counter!("portcullis_webhook_rejected_total", "webhook" => self.config.id.clone(), "reason" => reason.to_string()).increment(1);
        self.failures.record(&self.config.id, ctx.client_ip);
        tracing::warn!(
            webhook = %self.config.id,
            client_ip = %ctx.client_ip,
            request_id = %ctx.request_id,
            reason,
            "webhook verification failed"
        );
        GatewayError::WebhookUnverified
    }

    /// The verifier for every valid version of every configured secret (several secrets and
    /// rotation overlaps). The vault is asked on every request, so a revocation or expiry
    /// applies at once; the verifier is rebuilt only when the set of versions changes.
    async fn verifier(&self) -> Result<Arc<Verifier>, GatewayError> {
        let Some(vault) = &self.vault else {
            return Err(GatewayError::CredentialUnavailable(
                "no vault in this process".into(),
            ));
        };
        let consumer = self.config.consumer();
        let mut values = Vec::new();
        let mut versions = Vec::new();
        for r in &self.config.secrets {
            for v in vault
                .resolve_all(&r.name, &consumer)
                .await
                .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))?
            {
                versions.push(v.version);
                values.push(v);
            }
        }
        if let Some(cached) = self.verifier_cache.load_full() {
            if cached.0 == versions {
                return Ok(cached.1.clone());
            }
        }
        let secrets = values
            .iter()
            .map(|v| Zeroizing::new(v.expose().to_vec()))
            .collect();
        let verifier = Arc::new(
            Verifier::new(self.scheme.clone(), secrets, self.config.tolerance)
                .map_err(|e| GatewayError::CredentialUnavailable(Box::new(e)))?,
        );
        self.verifier_cache
            .store(Some(Arc::new((versions, verifier.clone()))));
        Ok(verifier)
    }

    /// Handles one delivery from the sender.
    pub(crate) async fn handle(
        &self,
        req: Request<Body>,
        ctx: &RequestContext,
    ) -> Result<Response<Body>, GatewayError> {
        if req.method() != Method::POST {
            return Err(GatewayError::MethodNotAllowed {
                allow: vec![Method::POST],
            });
        }
        // 1. Size.
        let (parts, body) = req.into_parts();
        let bytes = portcullis_policy::read_limited(body, self.config.max_body).await?;

        // 2. Signature, over the exact bytes received.
        let verifier = self.verifier().await?;
        let verified = match verifier.verify(&parts.headers, &bytes, unix_now()) {
            Ok(v) => v,
            Err(e) => return Err(self.failed(ctx, &e.to_string())),
        };

        // 3. Replays and duplicates: a verified message is forwarded once within the window.
        let key = format!("{}|{}", self.config.id, verified.replay_key);
        match self.replay.remember(&key, self.config.dedup_window).await {
            Ok(true) => {}
            Ok(false) => {
                metrics::counter!("portcullis_webhook_duplicates_total", "webhook" => self.config.id.clone()).increment(1);
                tracing::info!(webhook = %self.config.id, request_id = %ctx.request_id, "duplicate webhook acknowledged, not forwarded");
                return Ok(ack(StatusCode::OK, "duplicate"));
            }
            Err(e) => {
                tracing::warn!(webhook = %self.config.id, error = %e, "replay cache unavailable; refusing the delivery so the sender retries");
                return Err(GatewayError::Unavailable {
                    retry_after: Some(Duration::from_secs(5)),
                });
            }
        }
        match self.deliver(&parts.headers, bytes, &verified, ctx).await {
            Ok(res) if res.status().is_success() || res.status() == StatusCode::ACCEPTED => Ok(res),
            other => {
                // Not accepted after all: the sender's retry must not count as a duplicate.
                if let Err(e) = self.replay.forget(&key).await {
                    tracing::warn!(webhook = %self.config.id, error = %e, "could not forget a failed delivery in the replay cache");
                }
                other
            }
        }
    }

    /// Steps 4 and 5: event types and schema, then the forward or the outbox.
    async fn deliver(
        &self,
        headers: &http::HeaderMap,
        bytes: Bytes,
        verified: &portcullis_webhooks::Verified,
        ctx: &RequestContext,
    ) -> Result<Response<Body>, GatewayError> {
        let event_type = portcullis_webhooks::event_type(&self.scheme, headers, &bytes);
        if !self.config.event_types.is_empty()
            && !event_type
                .as_ref()
                .is_some_and(|t| self.config.event_types.iter().any(|a| a == t))
        {
            metrics::counter!("portcullis_webhook_ignored_total", "webhook" => self.config.id.clone()).increment(1);
            return Ok(ack(StatusCode::ACCEPTED, "ignored"));
        }
        if let Some(schema) = self
            .schema
            .as_ref()
            .filter(|s| !s.accepts_bytes(&bytes, None))
        {
            let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
                GatewayError::Malformed(portcullis_core::MalformedKind::InvalidBody)
            })?;
            if !schema.is_valid(&value) {
                return Err(GatewayError::Invalid {
                    errors: schema.errors(&value),
                });
            }
        }
        // The id the backend sees: the sender's signed id, or one derived from the signed
        // material (never from an unsigned delivery header).
        let id = match &verified.signed_id {
            Some(id) => id.clone(),
            None => format!(
                "msg_{}",
                verified
                    .replay_key
                    .trim_start_matches("h:")
                    .chars()
                    .take(32)
                    .collect::<String>()
            ),
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if self.config.delivery == Delivery::Queued {
            return self.enqueue(id, event_type, content_type, bytes).await;
        }
        let sent = self
            .send(
                &id,
                event_type.as_deref(),
                content_type.as_deref(),
                bytes,
                Some(&ctx.request_id.to_string()),
            )
            .await?;
        // The backend's status goes back to the sender; its body does not (it is the
        // workflow's business, and may say more than the sender should learn).
        let mut answer = ack(
            sent.status,
            if sent.status.is_success() {
                "delivered"
            } else {
                "backend-error"
            },
        );
        if let Some(ra) = sent.retry_after {
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(ra.as_secs()));
        }
        Ok(answer)
    }

    /// Queued delivery: the event is durable before the sender hears 2xx.
    async fn enqueue(
        &self,
        id: String,
        event_type: Option<String>,
        content_type: Option<String>,
        bytes: Bytes,
    ) -> Result<Response<Body>, GatewayError> {
        let Some(outbox) = &self.outbox else {
            return Err(GatewayError::Unavailable {
                retry_after: Some(Duration::from_secs(30)),
            });
        };
        let now = unix_now();
        let event = OutboxEvent {
            id: 0,
            webhook: self.config.id.clone(),
            message_id: id,
            event_type,
            content_type,
            body: bytes.to_vec(),
            received_at: now,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
        };
        match outbox.store.outbox().enqueue(&event).await {
            Ok(_) => {
                metrics::counter!("portcullis_webhook_queued_total", "webhook" => self.config.id.clone()).increment(1);
                outbox.wake.notify_one();
                Ok(ack(StatusCode::ACCEPTED, "queued"))
            }
            Err(e) => {
                tracing::error!(webhook = %self.config.id, error = %e, "could not queue a verified webhook; refusing so the sender retries");
                Err(GatewayError::Unavailable {
                    retry_after: Some(Duration::from_secs(5)),
                })
            }
        }
    }

    /// One delivery attempt to the workflow backend, signed with the gateway's own secret.
    pub(crate) async fn send(
        &self,
        id: &str,
        event_type: Option<&str>,
        content_type: Option<&str>,
        bytes: Bytes,
        request_id: Option<&str>,
    ) -> Result<Sent, GatewayError> {
        // Never forward unsigned: the backend trusts the gateway's signature alone.
        let Some(signer) = &self.signer else {
            tracing::error!(webhook = %self.config.id, "no webhook signing secret configured; refusing");
            return Err(GatewayError::Unavailable {
                retry_after: Some(Duration::from_secs(30)),
            });
        };
        // Read per delivery (from the vault's memory), so a rotated key applies at once; a
        // revoked or expired one stops forwarding rather than signing with a stale key.
        let ts = unix_now();
        let signature = signer.sign(id, ts, &bytes).await.map_err(|e| {
            tracing::error!(webhook = %self.config.id, error = %e, "webhook signing secret unusable; refusing");
            GatewayError::Unavailable {
                retry_after: Some(Duration::from_secs(30)),
            }
        })?;
        let value =
            |v: &str| HeaderValue::from_str(v).map_err(|e| GatewayError::BadGateway(Box::new(e)));
        // Sized for every header below, so the map never grows and rehashes.
        let mut h = HeaderMap::with_capacity(8);
        h.insert(portcullis_webhooks::WEBHOOK_ID, value(id)?);
        h.insert(
            portcullis_webhooks::WEBHOOK_TIMESTAMP,
            HeaderValue::from(ts),
        );
        h.insert(portcullis_webhooks::WEBHOOK_SIGNATURE, value(&signature)?);
        h.insert(PORTCULLIS_WEBHOOK, value(&self.config.id)?);
        h.insert(
            PORTCULLIS_PROVIDER,
            HeaderValue::from_static(self.config_provider()),
        );
        if let Some(r) = request_id {
            h.insert(REQUEST_ID, value(r)?);
        }
        if let Some(t) = event_type {
            h.insert(PORTCULLIS_EVENT_TYPE, value(t)?);
        }
        if let Some(ct) = content_type {
            h.insert(header::CONTENT_TYPE, value(ct)?);
        }
        let mut req = Request::new(full(bytes));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_static("/");
        *req.headers_mut() = h;
        let started = std::time::Instant::now();
        // The deadline covers the backend's answer (its status and headers), as the sender
        // is waiting for it.
        let f = &self.forward;
        let sent = self
            .transport
            .send(req, &f.scheme, &f.authority, f.path.clone());
        let res = match tokio::time::timeout(self.config.timeout, sent).await {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            Ok(Err(failure)) => return Err(GatewayError::BadGateway(failure.error)),
            Ok(Ok(res)) => res,
        };
        let (res, body) = res.into_parts();
        drain(body);
        self.delivery_seconds
            .get_or_init(|| metrics::histogram!("portcullis_webhook_delivery_seconds", "webhook" => self.metric_id.clone()))
            .record(started.elapsed().as_secs_f64());
        let status = res.status;
        metrics::counter!("portcullis_webhook_forwarded_total", "webhook" => self.metric_id.clone(), "status" => crate::observe::status_label(status)).increment(1);
        let retry_after = res
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok(Sent {
            status,
            retry_after,
        })
    }

    fn config_provider(&self) -> &'static str {
        match self.config.provider {
            WebhookProvider::Standard => "standard",
            WebhookProvider::Stripe => "stripe",
            WebhookProvider::Github => "github",
            WebhookProvider::Slack => "slack",
            WebhookProvider::Shopify => "shopify",
            WebhookProvider::Hmac(_) => "hmac",
        }
    }
}
