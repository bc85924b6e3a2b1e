//! The admin listener (axum): liveness, readiness, Prometheus metrics and the endpoint
//! inventory. It binds loopback by default and runs apart from the data plane, so a flood on
//! the data plane does not blind the operator. Admin credentials arrive with the admin-API
//! work; until then, exposing it beyond loopback takes `dangerous_expose_admin`.

mod secrets;
mod webhooks;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use portcullis_core::{problem_response, GatewayError, RequestId};
use portcullis_proxy::{Gateway, ShutdownSignal};
use portcullis_store::Store;
use portcullis_telemetry::Metrics;
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The running gateway.
    pub gateway: Arc<Gateway>,
    /// The store, for readiness.
    pub store: Arc<dyn Store>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Bearer token required by the vault endpoints.
    pub token: Arc<zeroize::Zeroizing<String>>,
    /// Whether the last readiness probe failed: the log says when readiness is lost and
    /// when it comes back, not once per probe.
    pub unready: Arc<std::sync::atomic::AtomicBool>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/inventory", get(inventory))
        .route("/admin/integrations", get(integrations))
        .merge(secrets::routes())
        .merge(webhooks::routes())
        .fallback(not_found)
        .layer(axum::middleware::map_response(errors_as_problems))
        .with_state(state)
}

/// axum refuses some requests itself, before a handler runs: a body that is not JSON or
/// lacks a JSON content type, a field of the wrong type, a path segment that is not a
/// number, a method the path does not have. Its answers are plain text. This turns every
/// error response that is not already problem+json into one, so the admin API has one error
/// format, as the data plane does. axum's text is dropped, not moved into `detail`: serde's
/// messages quote the offending value, which on `PUT /admin/secrets/...` can be the secret.
async fn errors_as_problems(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
    {
        return res;
    }
    let (slug, title, detail) = match status {
        StatusCode::BAD_REQUEST => (
            "malformed-request",
            "Malformed request",
            "The request's path, query or JSON body could not be read.",
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "Method not allowed on this path",
            "See the Allow header for the methods this path has.",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body-too-large",
            "Request body too large",
            "The request body is larger than the admin API accepts.",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "Unsupported content type",
            "Send the body as application/json.",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => (
            "invalid-body",
            "Request body does not have the expected fields",
            "The JSON body is missing a field, has an unknown one, or a value of the wrong type.",
        ),
        s if s.is_server_error() => ("internal-error", "Internal error", "The request failed."),
        _ => (
            "request-refused",
            "Request refused",
            "The request was refused.",
        ),
    };
    let mut out = secrets::problem(status, slug, title, Some(detail.to_string()));
    if let Some(allow) = res.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// How the admin listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Longest wait for a request head (and for an idle keep-alive connection's next one):
    /// the data plane's `header_read_timeout`.
    pub header_read_timeout: Duration,
    /// How long requests in progress get to finish once `shutdown` flips.
    pub shutdown_grace: Duration,
}

/// Serves the admin API over HTTP/1.1 until `shutdown` flips, then gives requests in progress
/// up to `limits.shutdown_grace` and returns. Served with hyper directly rather than
/// `axum::serve`, which has no header-read timeout and no deadline on its graceful shutdown: a
/// connection that sent half a request head held the listener, and with it the process's
/// exit, for as long as the client cared to wait.
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: ShutdownSignal,
    limits: AdminLimits,
) -> std::io::Result<()> {
    let app = router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin requests still open after the shutdown grace; closing them");
    }
    Ok(())
}

fn problem(err: GatewayError) -> Response {
    let (parts, body) = problem_response(&err, &RequestId::generate()).into_parts();
    Response::from_parts(parts, axum::body::Body::new(body))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long readiness waits for the store's answers.
const READY_WAIT: std::time::Duration = std::time::Duration::from_millis(800);

/// Ready when the store answers, this instance's master key is still the vault's (a KEK
/// rotation run elsewhere retires it, and the instance could then neither read rewrapped
/// secrets nor write new ones), and the gateway is not draining: a load balancer stops
/// sending new traffic as soon as shutdown begins.
async fn readyz(State(s): State<AdminState>) -> Response {
    if s.gateway.is_draining() {
        return problem(GatewayError::Unavailable { retry_after: None });
    }
    let checks = async {
        s.store.ping().await.map_err(|e| e.to_string())?;
        if let Some(v) = s.gateway.vault() {
            v.verify_own_key().await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    };
    // Bounded: a database that stopped answering must not hold the probe past its own
    // timeout (Kubernetes' default is 1 s), or the answer would be the prober's, not ours.
    use std::sync::atomic::Ordering;
    let why = match tokio::time::timeout(READY_WAIT, checks).await {
        Ok(Ok(())) => {
            if s.unready.swap(false, Ordering::AcqRel) {
                tracing::info!("readiness: ready again");
            }
            return Json(serde_json::json!({ "status": "ready" })).into_response();
        }
        Ok(Err(e)) => e,
        Err(_) => format!("the store did not answer within {READY_WAIT:?}"),
    };
    if s.unready.swap(true, Ordering::AcqRel) {
        tracing::debug!(error = %why, "readiness: still not ready");
    } else {
        tracing::warn!(error = %why, "readiness: not ready");
    }
    problem(GatewayError::Unavailable { retry_after: None })
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn inventory(State(s): State<AdminState>) -> Response {
    match s.gateway.inventory_report().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => problem(GatewayError::Internal(Box::new(e))),
    }
}

/// Egress integrations and their circuit-breaker state.
async fn integrations(State(s): State<AdminState>) -> Response {
    let list: Vec<serde_json::Value> = s
        .gateway
        .integration_states()
        .into_iter()
        .map(|(id, state, healthy)| {
            serde_json::json!({ "id": id, "circuit_breaker": state, "primary_healthy": healthy })
        })
        .collect();
    Json(list).into_response()
}

async fn not_found() -> Response {
    problem(GatewayError::NotFound)
}
