//! Audit events of the egress gateway. Like the vault's events (`portcullis_vault::events`)
//! they are structured log lines on the target `portcullis::audit` until the audit-trail
//! capability persists them: one per egress call, one per OAuth token fetch, one per circuit
//! breaker state change. They name the integration, the client, the method and the allowed
//! path template; never a credential, a token, the concrete path or a query value.

use super::token::Grant;
use http::Method;
use portcullis_core::GatewayError;
use portcullis_egress::breaker::BreakerState;
use std::sync::Arc;

/// What an egress call did, filled in step by step so the event can be written however the
/// call ends.
pub(super) struct CallRecord {
    pub(super) client: Option<Arc<str>>,
    pub(super) method: Method,
    /// The allowed template the path matched (`None` before, or when none did).
    pub(super) template: Option<String>,
    /// Requests the gateway tried to send (retries and a token refetch's repeat included;
    /// one the SSRF guard stopped counts too, one the breaker or rate limit held back does
    /// not).
    pub(super) attempts: u32,
}

impl CallRecord {
    pub(super) fn new(method: Method) -> Self {
        CallRecord {
            client: None,
            method,
            template: None,
            attempts: 0,
        }
    }
}

/// One egress call: `forwarded` (the third party answered; `status` is its status),
/// `refused` (the gateway said no: client, method, path, destination or redirect hop, rate
/// limit, open breaker) or `failed` (no credential, or no usable answer: timeout,
/// connection, a response refused for its shape).
pub(super) fn call(integration: &str, r: &CallRecord, result: Result<u16, &GatewayError>) {
    let (status, outcome, problem) = match result {
        Ok(status) => (status, "forwarded", None),
        Err(
            e @ (GatewayError::CredentialUnavailable(_)
            | GatewayError::BadGateway(_)
            | GatewayError::UpstreamTimeout
            | GatewayError::Internal(_)),
        ) => (e.status().as_u16(), "failed", Some(e.slug())),
        Err(e) => (e.status().as_u16(), "refused", Some(e.slug())),
    };
    // One per call, so written by hand like the access log rather than by tracing's
    // generic formatter (same layout, same level filter).
    if !tracing::enabled!(target: "portcullis::audit", tracing::Level::INFO) {
        return;
    }
    portcullis_telemetry::JsonLine::info("portcullis::audit", "egress call")
        .str("action", "egress_call")
        .str("integration", integration)
        .str("client", r.client.as_deref().unwrap_or("-"))
        .str("method", r.method.as_str())
        .str("path", r.template.as_deref().unwrap_or("-"))
        .u64("status", status.into())
        .u64("attempts", r.attempts.into())
        .str("outcome", outcome)
        .opt_str("problem", problem)
        .emit();
}

/// Why a token was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// None was cached.
    First,
    /// The cached one was near its expiry.
    Expiry,
    /// The third party refused the cached one (401).
    Refused,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::First => "first",
            Trigger::Expiry => "expiry",
            Trigger::Refused => "refused_by_third_party",
        }
    }
}

/// One request to the token endpoint and whether it gave a token.
pub(super) fn token_fetch(integration: &str, grant: Grant, trigger: Trigger, ok: bool) {
    tracing::info!(
        target: "portcullis::audit",
        action = "egress_token_fetch",
        integration,
        grant = grant.as_str(),
        trigger = trigger.as_str(),
        outcome = if ok { "success" } else { "failure" },
        "egress OAuth token fetch"
    );
}

/// A circuit breaker changed state.
pub(super) fn breaker(integration: &str, from: BreakerState, to: BreakerState) {
    tracing::info!(
        target: "portcullis::audit",
        action = "egress_breaker_state",
        integration,
        from = from.as_str(),
        to = to.as_str(),
        "egress circuit breaker state change"
    );
}
