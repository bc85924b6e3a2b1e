//! One access-log line and the request metrics for every data-plane request.

use http::{Method, StatusCode};
use portcullis_core::{ErrorInfo, RequestContext};
use std::time::Duration;

/// What the access log and metrics record about a finished request head.
pub(crate) struct Outcome<'a> {
    pub ctx: &'a RequestContext,
    pub method: &'a Method,
    pub path: &'a str,
    pub route: &'a str,
    pub status: StatusCode,
    pub error: Option<&'a ErrorInfo>,
    pub elapsed: Duration,
}

pub(crate) fn record(o: &Outcome<'_>, access_log: bool) {
    let method = portcullis_telemetry::method_label(o.method);
    metrics::counter!(
        "portcullis_http_requests_total",
        "route" => o.route.to_string(),
        "method" => method,
        "status" => o.status.as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("portcullis_http_request_duration_seconds", "route" => o.route.to_string())
        .record(o.elapsed.as_secs_f64());

    if !access_log {
        return;
    }
    // The query string is left out on purpose: it is where tokens and personal data leak.
    tracing::info!(
        target: "portcullis::access",
        request_id = %o.ctx.request_id,
        client_ip = %o.ctx.client_ip,
        method,
        path = o.path,
        route = o.route,
        status = o.status.as_u16(),
        duration_ms = o.elapsed.as_secs_f64() * 1000.0,
        error = o.error.map(|e| e.slug),
        cause = o.error.and_then(|e| e.cause.as_deref()),
    );
}
