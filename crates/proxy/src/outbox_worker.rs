//! The webhook outbox worker: delivers queued events to their workflow backends, retrying
//! with exponential backoff and full jitter (never sooner than a `Retry-After`), and moves an
//! event to the dead-letter list once its age passes the endpoint's `max_age`.
//!
//! An event is deleted only after its backend answered 2xx, so a crash or restart never loses
//! one. The one window for a second delivery is a crash between the backend's 2xx and that
//! delete; the backend sees the same `webhook-id` both times and can drop the repeat.

use crate::{Gateway, ShutdownSignal};
use bytes::Bytes;
use portcullis_store::{OutboxEvent, Store};
use std::{sync::Arc, time::Duration};

/// How long a claimed event is reserved for the attempt in progress, at least: an event's
/// lease is renewed as its attempt starts, for this or the endpoint's timeout plus a margin,
/// whichever is longer, so it cannot run out while the attempt is live.
const LEASE_SECS: i64 = 120;
const LEASE_MARGIN_SECS: i64 = 30;
const BASE_BACKOFF_SECS: f64 = 1.0;
const MAX_BACKOFF_SECS: f64 = 300.0;
const BATCH: i64 = 16;

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The wait before attempt `attempts + 1`: full jitter over an exponential ceiling.
fn backoff(attempts: i64) -> Duration {
    let exp = i32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let ceiling = (BASE_BACKOFF_SECS * 2f64.powi(exp)).min(MAX_BACKOFF_SECS);
    Duration::from_secs_f64((fastrand::f64() * ceiling).max(0.2))
}

/// Runs until `shutdown` flips. Without a store (never in `serve`) there is nothing to do.
pub async fn run_outbox(gateway: Arc<Gateway>, mut shutdown: ShutdownSignal) {
    let Some(store) = gateway.services().store.clone() else {
        return;
    };
    let wake = gateway.services().outbox_wake.clone();
    // Leases a crash left are ours to end on a store of our own; a shared one keeps them.
    if let Err(e) = store.outbox().release_leases().await {
        tracing::warn!(error = %e, "could not release outbox leases; they expire on their own");
    }
    loop {
        loop {
            let now = unix_now();
            // Random per claim: the outcome of an attempt is recorded only while the event's
            // lease is still this claim's (another instance may have taken it since).
            let token = format!("{:016x}", fastrand::u64(..));
            let batch = match store
                .outbox()
                .claim_due(now, now + LEASE_SECS, BATCH, &token)
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox unavailable; retrying");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            for event in batch {
                if *shutdown.borrow() {
                    // Leased events fall due again after the lease: nothing is lost.
                    return;
                }
                deliver(&gateway, &store, event, &token).await;
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn deliver(gateway: &Gateway, store: &Arc<dyn Store>, e: OutboxEvent, token: &str) {
    let attempts = e.attempts + 1;
    let endpoint = gateway.webhook(&e.webhook);
    // Events late in a batch may have outlived the claim's lease: renew this one's before
    // its attempt, and leave it to whoever claimed it since if that lease is gone.
    let timeout = endpoint.as_ref().map_or(0, |ep| {
        i64::try_from(ep.config().timeout.as_secs()).unwrap_or(i64::MAX / 4)
    });
    let lease = LEASE_SECS.max(timeout.saturating_add(LEASE_MARGIN_SECS));
    match store
        .outbox()
        .renew(e.id, token, unix_now().saturating_add(lease))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(webhook = %e.webhook, message_id = %e.message_id, "outbox lease taken over by another worker; skipping");
            return;
        }
        Err(err) => {
            tracing::warn!(webhook = %e.webhook, error = %err, "could not renew an outbox lease; the event is retried when it runs out");
            return;
        }
    }
    let result = match &endpoint {
        Some(ep) => ep
            .send(
                &e.message_id,
                e.event_type.as_deref(),
                e.content_type.as_deref(),
                Bytes::from(e.body.clone()),
                None,
            )
            .await
            .map_err(|err| err.slug().to_string()),
        None => Err("endpoint not configured".to_string()),
    };
    let (why, retry_after) = match result {
        Ok(sent) if sent.status.is_success() => {
            match store.outbox().delivered(e.id, token).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(webhook = %e.webhook, message_id = %e.message_id, "delivered, but the lease had passed to another worker; it may be delivered again");
                }
                Err(err) => {
                    tracing::warn!(webhook = %e.webhook, error = %err, "delivered, but could not remove the event; it may be delivered again");
                }
            }
            metrics::counter!("portcullis_webhook_outbox_delivered_total", "webhook" => e.webhook.clone()).increment(1);
            return;
        }
        Ok(sent) => (format!("status {}", sent.status.as_u16()), sent.retry_after),
        Err(why) => (why, None),
    };
    let now = unix_now();
    let wait = backoff(e.attempts).max(retry_after.unwrap_or_default());
    let next = now + i64::try_from(wait.as_secs().max(1)).unwrap_or(i64::MAX / 2);
    let max_age = endpoint
        .as_ref()
        .map_or(Duration::from_secs(24 * 3600), |ep| ep.config().max_age);
    let age_at_next = next - e.received_at;
    let outcome = if age_at_next > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) {
        tracing::warn!(webhook = %e.webhook, message_id = %e.message_id, attempts, error = %why, "webhook event moved to the dead-letter list");
        metrics::counter!("portcullis_webhook_dead_total", "webhook" => e.webhook.clone())
            .increment(1);
        store.outbox().dead(e.id, token, attempts, &why).await
    } else {
        tracing::info!(webhook = %e.webhook, message_id = %e.message_id, attempts, error = %why, retry_in_secs = next - now, "webhook delivery failed; will retry");
        store
            .outbox()
            .retry_later(e.id, token, attempts, next, &why)
            .await
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(webhook = %e.webhook, message_id = %e.message_id, "outbox lease passed to another worker; its outcome stands");
        }
        Err(err) => {
            tracing::warn!(webhook = %e.webhook, error = %err, "could not record a failed delivery; the lease will expire and it will be retried");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_its_ceiling() {
        for attempts in 0..40 {
            let ceiling =
                (BASE_BACKOFF_SECS * 2f64.powi(attempts.min(30) as i32)).min(MAX_BACKOFF_SECS);
            for _ in 0..50 {
                let b = backoff(attempts).as_secs_f64();
                assert!(b <= ceiling.max(0.2) + 1e-9, "{attempts}: {b} > {ceiling}");
            }
        }
    }
}
