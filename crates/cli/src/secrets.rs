//! `portcullis secret ...` and `portcullis vault ...`: the vault from the command line. Values
//! come from standard input or a file, never from arguments (which end up in shell history and
//! `ps`), and no command prints a value except the one-time output of `generate` for types
//! that must be shared.

use anyhow::Context;
use clap::Subcommand;
use portcullis_config::{Config, VaultKeyProvider};
use portcullis_vault::{
    EnvKeyProvider, FileKeyProvider, KeyProvider, PutOptions, SecretInfo, SecretType, Vault,
};
use std::{io::Read, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};
use zeroize::Zeroizing;

/// Secret commands.
#[derive(Subcommand)]
pub(crate) enum SecretCommand {
    /// Store a new version of a secret; the value is read from stdin or --from-file.
    Put {
        name: String,
        #[command(flatten)]
        opts: PutArgs,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// List secrets (metadata only).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one secret's metadata and versions (never the value).
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Store a new version of an existing secret, keeping the previous one valid for --grace.
    Rotate {
        name: String,
        #[command(flatten)]
        opts: PutArgs,
        /// Keep the previous version valid this long (rotation overlap), e.g. "1h".
        #[arg(long)]
        grace: Option<humantime::Duration>,
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Disable a version at once; requests that would use it fail closed.
    Revoke {
        name: String,
        #[arg(long)]
        version: i64,
    },
    /// Wipe the ciphertext of a version, or of every version.
    Destroy {
        name: String,
        #[arg(long)]
        version: Option<i64>,
    },
    /// Create a strong value server-side: webhook_signing (prints the secret once to share
    /// with the sender), ed25519 (prints the public key), random (prints nothing).
    Generate {
        name: String,
        /// webhook_signing, ed25519 or random.
        #[arg(long = "type")]
        kind: String,
        /// Who may use it: route:ID, webhook:ID, integration:ID, or gateway:webhook-signing
        /// for `[webhook_signing]` (repeatable). Replaces the list; kept when omitted.
        #[arg(long = "consumer")]
        consumers: Vec<String>,
        /// Expires after this long, e.g. "90d".
        #[arg(long)]
        expires: Option<humantime::Duration>,
        /// Keep the previous version valid this long (rotation overlap), e.g. "1h".
        #[arg(long)]
        grace: Option<humantime::Duration>,
    },
}

/// Options shared by writes.
#[derive(clap::Args)]
pub(crate) struct PutArgs {
    /// opaque, bearer_token, basic_credentials, oauth2_client, webhook_signing, hmac_key, ed25519_key_pair.
    #[arg(long = "type")]
    secret_type: Option<String>,
    /// Who may use it: route:ID, webhook:ID, integration:ID, or gateway:webhook-signing for
    /// `[webhook_signing]` (repeatable). Replaces the list.
    #[arg(long = "consumer")]
    consumers: Vec<String>,
    /// Expires after this long, e.g. "90d".
    #[arg(long)]
    expires: Option<humantime::Duration>,
    /// Rotation policy: flag versions older than this, e.g. "30d".
    #[arg(long)]
    max_age: Option<humantime::Duration>,
    /// Versions to keep with ciphertext (default 5).
    #[arg(long)]
    keep: Option<i64>,
}

impl PutArgs {
    fn options(&self, grace: Option<Duration>) -> anyhow::Result<PutOptions> {
        Ok(PutOptions {
            secret_type: self
                .secret_type
                .as_deref()
                .map(SecretType::parse)
                .transpose()?,
            expires_in: self.expires.map(Into::into),
            max_age: self.max_age.map(Into::into),
            consumers: (!self.consumers.is_empty()).then(|| self.consumers.clone()),
            keep_versions: self.keep,
            grace,
            actor: "cli".into(),
        })
    }
}

/// Vault maintenance commands.
#[derive(Subcommand)]
pub(crate) enum VaultCommand {
    /// Generate a new master key and rewrap every data key under it (resumable).
    RotateKek {
        /// Rewrap at most this many keys in this run.
        #[arg(long)]
        batch: Option<usize>,
    },
}

/// The configured key provider. Only `serve` creates a missing key file.
pub(crate) fn key_provider(cfg: &Config, create: bool) -> Arc<dyn KeyProvider> {
    match &cfg.vault.key_provider {
        VaultKeyProvider::File(p) => Arc::new(FileKeyProvider::new(p.clone(), create)),
        VaultKeyProvider::Env => Arc::new(EnvKeyProvider),
    }
}

/// Opens the vault for a CLI command. Vault events (the audit record of what this command
/// did) are logged to stderr, so stdout stays the command's output.
async fn open(
    config: &Option<PathBuf>,
) -> anyhow::Result<(Arc<Vault>, portcullis_telemetry::LogGuard)> {
    let cfg = crate::state::load_config(config)?;
    let log =
        portcullis_telemetry::init_logging(&cfg.logging, portcullis_telemetry::LogSink::Stderr)
            .map_err(anyhow::Error::msg)?;
    let (_, vault, lock) = crate::state::open_state(&cfg).await?;
    crate::state::release(lock).await;
    Ok((vault, log))
}

fn read_value(from_file: &Option<PathBuf>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    match from_file {
        Some(p) => buf.extend_from_slice(&Zeroizing::new(
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )),
        None => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the value from stdin")?;
        }
    }
    // `echo value | portcullis secret put` adds a newline that is not part of the secret.
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(buf)
}

fn print_info(s: &SecretInfo) {
    let current = s
        .current_version
        .map_or("none".to_string(), |v| v.to_string());
    println!(
        "{}  type={}  current={current}  consumers={}",
        s.name,
        s.secret_type,
        s.consumers.join(",")
    );
    if let Some(e) = s.expires_at {
        println!("  expires_at={e}");
    }
    if s.rotation_overdue {
        println!(
            "  rotation overdue (max_age {}s)",
            s.max_age_secs.unwrap_or_default()
        );
    }
    for v in &s.versions {
        let until = v
            .valid_until
            .map(|u| format!(" valid_until={u}"))
            .unwrap_or_default();
        println!(
            "  v{}  {}  created_at={}{until}",
            v.version, v.state, v.created_at
        );
    }
}

/// Warns (the write still happens: the route may be added next) about consumers that
/// nothing in this configuration is, which is most often a typo in an id.
fn warn_undeclared(cfg: &Config, consumers: &[String]) {
    let declared = |c: &str| {
        portcullis_config::GATEWAY_CONSUMERS.contains(&c)
            || cfg.routes.iter().any(|r| r.consumer() == c)
            || cfg.webhooks.iter().any(|w| w.consumer() == c)
            || cfg.integrations.iter().any(|i| i.consumer() == c)
    };
    for c in consumers.iter().filter(|c| !declared(c)) {
        eprintln!("warning: consumer {c:?} is not declared in this configuration (no route, webhook or integration with that id); the secret is stored, but nothing here can use it yet");
    }
}

pub(crate) async fn run_secret(
    config: Option<PathBuf>,
    cmd: SecretCommand,
) -> anyhow::Result<ExitCode> {
    let cfg = crate::state::load_config(&config)?;
    let (vault, _log) = open(&config).await?;
    match cmd {
        SecretCommand::Put {
            name,
            opts,
            from_file,
        } => {
            warn_undeclared(&cfg, &opts.consumers);
            let value = read_value(&from_file)?;
            let v = vault.put(&name, &value, &opts.options(None)?).await?;
            println!("stored {name} version {v}");
        }
        SecretCommand::Rotate {
            name,
            opts,
            grace,
            from_file,
        } => {
            warn_undeclared(&cfg, &opts.consumers);
            let value = read_value(&from_file)?;
            let v = vault
                .rotate(&name, &value, &opts.options(grace.map(Into::into))?)
                .await?;
            println!("stored {name} version {v}");
        }
        SecretCommand::List { json } => {
            let all = vault.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                all.iter().for_each(print_info);
            }
        }
        SecretCommand::Show { name, json } => {
            let s = vault.show(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_info(&s);
            }
        }
        SecretCommand::Revoke { name, version } => {
            vault.revoke(&name, version, "cli").await?;
            println!("revoked {name} version {version}");
        }
        SecretCommand::Destroy { name, version } => {
            vault.destroy(&name, version, "cli").await?;
            println!(
                "destroyed {name}{}",
                version.map(|v| format!(" version {v}")).unwrap_or_default()
            );
        }
        SecretCommand::Generate {
            name,
            kind,
            consumers,
            expires,
            grace,
        } => {
            warn_undeclared(&cfg, &consumers);
            let opts = PutOptions {
                consumers: (!consumers.is_empty()).then_some(consumers),
                expires_in: expires.map(Into::into),
                grace: grace.map(Into::into),
                actor: "cli".into(),
                ..Default::default()
            };
            let (v, share) = vault.generate(&name, &kind, &opts).await?;
            println!("stored {name} version {v}");
            if let Some(s) = share {
                println!("{s}");
                eprintln!("(shown once; it is not stored anywhere you can read it back)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run_vault(
    config: Option<PathBuf>,
    cmd: VaultCommand,
) -> anyhow::Result<ExitCode> {
    let cfg = crate::state::load_config(&config)?;
    let (vault, _log) = open(&config).await?;
    match cmd {
        VaultCommand::RotateKek { batch } => {
            let p = vault.rotate_kek(batch, "cli").await?;
            if p.complete {
                println!(
                    "master key rotated: {} data keys rewrapped; now using key {}",
                    p.rewrapped, p.kek_id
                );
                // The old key is gone from this machine: say where the new one is and what
                // the other instances need.
                if let VaultKeyProvider::File(path) = &cfg.vault.key_provider {
                    println!(
                        "{} now holds the new key: back it up, and copy it to every other instance sharing this store (until then their /readyz answers 503)",
                        path.display()
                    );
                }
            } else {
                println!(
                    "rotation in progress: {} data keys rewrapped this run; run again to continue",
                    p.rewrapped
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
