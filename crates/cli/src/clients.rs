//! `portcullis client key issue|list|revoke|rotate`: API keys from the command line. A key is
//! shown once, when it is issued; only its id appears anywhere afterwards.

use anyhow::Context;
use clap::Subcommand;
use portcullis_identity::ApiKeys;
use std::{path::PathBuf, process::ExitCode};

/// Client commands.
#[derive(Subcommand)]
pub(crate) enum ClientCommand {
    /// Manage a client's API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// API key commands.
#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Issue a new key for a client; printed once.
    Issue {
        client: String,
        /// Expire after this long, e.g. "90d".
        #[arg(long)]
        expires: Option<humantime::Duration>,
    },
    /// List a client's keys (ids and dates, never the key).
    List {
        client: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke { key_id: String },
    /// Issue a new key for a client and keep the old ones valid until they are revoked
    /// (rotation overlap); prints the new key once.
    Rotate {
        client: String,
        #[arg(long)]
        expires: Option<humantime::Duration>,
    },
}

pub(crate) async fn run(config: Option<PathBuf>, cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    let cfg = crate::state::load_config(&config)?;
    let _log =
        portcullis_telemetry::init_logging(&cfg.logging, portcullis_telemetry::LogSink::Stderr)
            .map_err(anyhow::Error::msg)?;
    let (store, vault, lock) = crate::state::open_state(&cfg).await?;
    let keys = ApiKeys::open(store, &vault)
        .await
        .context("loading API keys")?;
    crate::state::release(lock).await;
    let known = |c: &str| cfg.clients.iter().any(|k| k.id == c);
    let ClientCommand::Key(cmd) = cmd;
    match cmd {
        KeyCommand::Issue { client, expires } | KeyCommand::Rotate { client, expires } => {
            if !known(&client) {
                anyhow::bail!(
                    "client {client:?} is not declared in the configuration ([[clients]])"
                );
            }
            let issued = keys.issue(&client, expires.map(Into::into)).await?;
            println!("{}", issued.key.as_str());
            eprintln!(
                "issued key {} for {client}; shown once, store it now",
                issued.key_id
            );
        }
        KeyCommand::List { client, json } => {
            let list = keys.list(client.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for k in list {
                    let state = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {}  {state}  created_at={}  last_used_at={}",
                        k.key_id,
                        k.client_id,
                        k.created_at,
                        k.last_used_at.map_or("never".into(), |t| t.to_string())
                    );
                }
            }
        }
        KeyCommand::Revoke { key_id } => {
            keys.revoke(&key_id).await?;
            println!("revoked {key_id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
