//! `/admin/webhooks/dlq`: the webhook dead-letter list over the admin API, mirroring
//! `portcullis webhooks dlq`. Needs the admin token. Event bodies are never returned (they
//! are the senders' data); their size is.

use crate::{
    secrets::{authorize, problem, AdminError, Answer},
    AdminState,
};
use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{delete, get, post},
    Json, Router,
};
use portcullis_store::OutboxEvent;
use serde::Serialize;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/webhooks/dlq", get(list))
        .route("/admin/webhooks/dlq/{id}/replay", post(replay))
        .route("/admin/webhooks/dlq/{id}", delete(drop_event))
        .route("/admin/webhooks/failures", get(failures))
}

/// Failed verifications per endpoint and source address, most first.
async fn failures(State(s): State<AdminState>, headers: HeaderMap) -> Answer {
    authorize(&s, &headers)?;
    let rows: Vec<serde_json::Value> = s
        .gateway
        .services()
        .webhook_failures
        .snapshot()
        .into_iter()
        .map(|f| {
            serde_json::json!({
                "webhook": f.webhook,
                "source": f.source.to_string(),
                "count": f.count,
                "last_seen": f.last_seen,
            })
        })
        .collect();
    Ok(Json(rows).into_response())
}

/// A dead event as shown to operators.
#[derive(Serialize)]
pub struct DeadLetter {
    /// Row id, for replay and drop.
    pub id: i64,
    /// Webhook endpoint id.
    pub webhook: String,
    /// The id the backend sees.
    pub message_id: String,
    /// Event type, when known.
    pub event_type: Option<String>,
    /// Unix seconds.
    pub received_at: i64,
    /// Delivery attempts made.
    pub attempts: i64,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// Body size in bytes.
    pub body_bytes: usize,
}

impl From<&OutboxEvent> for DeadLetter {
    fn from(e: &OutboxEvent) -> Self {
        DeadLetter {
            id: e.id,
            webhook: e.webhook.clone(),
            message_id: e.message_id.clone(),
            event_type: e.event_type.clone(),
            received_at: e.received_at,
            attempts: e.attempts,
            last_error: e.last_error.clone(),
            body_bytes: e.body.len(),
        }
    }
}

fn store_error(e: portcullis_store::StoreError) -> AdminError {
    tracing::warn!(error = %e, "webhook outbox unavailable");
    AdminError::NoVault
}

async fn list(State(s): State<AdminState>, headers: HeaderMap) -> Answer {
    authorize(&s, &headers)?;
    let dead = s.store.outbox().dead_letters().await.map_err(store_error)?;
    Ok(Json(dead.iter().map(DeadLetter::from).collect::<Vec<_>>()).into_response())
}

async fn replay(State(s): State<AdminState>, headers: HeaderMap, Path(id): Path<i64>) -> Answer {
    authorize(&s, &headers)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if s.store
        .outbox()
        .replay_dead(id, now)
        .await
        .map_err(store_error)?
    {
        s.gateway.services().outbox_wake.notify_one();
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok(problem(
            StatusCode::NOT_FOUND,
            "dead-letter-not-found",
            "No such dead-letter event",
            None,
        ))
    }
}

async fn drop_event(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Answer {
    authorize(&s, &headers)?;
    if s.store.outbox().drop_dead(id).await.map_err(store_error)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok(problem(
            StatusCode::NOT_FOUND,
            "dead-letter-not-found",
            "No such dead-letter event",
            None,
        ))
    }
}
