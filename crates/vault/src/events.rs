//! Vault events for the audit trail. They name the secret, version, action and actor, never
//! the value. The audit-trail capability persists them; until then they are logged.

/// Something happened to a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultEvent {
    /// `put`, `rotate`, `revoke`, `destroy`, `generate`, `first_use`, `expiring`, `overdue`,
    /// `rotate_kek`.
    pub action: &'static str,
    /// Secret name (empty for KEK events).
    pub name: String,
    /// Version concerned, when one is.
    pub version: Option<i64>,
    /// Who did it (`cli`, `admin`, `gateway`).
    pub actor: String,
}

/// Receives vault events.
pub trait EventSink: Send + Sync {
    /// Records one event. Must not block for long: it runs on the caller's task.
    fn emit(&self, event: VaultEvent);
}

/// Writes events as structured log lines (target `portcullis::audit`).
pub struct LogEventSink;

impl EventSink for LogEventSink {
    fn emit(&self, e: VaultEvent) {
        tracing::info!(target: "portcullis::audit", action = e.action, secret_name = %e.name, version = e.version, actor = %e.actor, "vault event");
    }
}
