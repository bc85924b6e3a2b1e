//! `portcullis webhooks dlq list|replay|drop`: the dead-letter list of queued webhook events.
//! A replayed event goes back to the outbox; a running gateway delivers it within a second.

use clap::Subcommand;
use std::{path::PathBuf, process::ExitCode};

/// Webhook commands.
#[derive(Subcommand)]
pub(crate) enum WebhookCommand {
    /// The dead-letter list.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

/// Dead-letter commands.
#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// Events whose delivery failed past the endpoint's max_age (never their bodies).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Queue a dead event for delivery again.
    Replay { id: i64 },
    /// Delete a dead event.
    Drop { id: i64 },
}

pub(crate) async fn run(config: Option<PathBuf>, cmd: WebhookCommand) -> anyhow::Result<ExitCode> {
    let cfg = crate::state::load_config(&config)?;
    let _log =
        portcullis_telemetry::init_logging(&cfg.logging, portcullis_telemetry::LogSink::Stderr)
            .map_err(anyhow::Error::msg)?;
    let store = portcullis_store::open(&cfg.store.url, &cfg.server.data_dir).await?;
    let outbox = store.outbox();
    let WebhookCommand::Dlq(cmd) = cmd;
    match cmd {
        DlqCommand::List { json } => {
            let dead = outbox.dead_letters().await?;
            if json {
                let rows: Vec<serde_json::Value> = dead
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "id": e.id, "webhook": e.webhook, "message_id": e.message_id,
                            "event_type": e.event_type, "received_at": e.received_at,
                            "attempts": e.attempts, "last_error": e.last_error,
                            "body_bytes": e.body.len(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<6} {:<20} {:<32} {:>8}  last error",
                    "id", "webhook", "message id", "attempts"
                );
                for e in &dead {
                    println!(
                        "{:<6} {:<20} {:<32} {:>8}  {}",
                        e.id,
                        e.webhook,
                        e.message_id,
                        e.attempts,
                        e.last_error.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { id } => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if outbox.replay_dead(id, now).await? {
                eprintln!("event {id} queued for delivery again");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no dead-letter event {id}");
                Ok(ExitCode::from(1))
            }
        }
        DlqCommand::Drop { id } => {
            if outbox.drop_dead(id).await? {
                eprintln!("event {id} deleted");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no dead-letter event {id}");
                Ok(ExitCode::from(1))
            }
        }
    }
}
