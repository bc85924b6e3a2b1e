//! The `portcullis` binary: command-line parsing and exit codes. Everything else lives in the
//! library crates; errors become `anyhow` only here, at the edge.

mod check;
mod clients;
mod demo;
mod inventory;
mod reload;
mod secrets;
mod serve;
mod state;
mod upstream;
mod webhooks;

use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

/// jemalloc instead of the system allocator: the data plane allocates and frees ~40 small
/// buffers per request, and jemalloc's thread caches serve them in fewer instructions
/// (callgrind: 48.2k per no-policy request against 52.0k with glibc's malloc and 49.3k with
/// mimalloc, whose Rust binding sends every allocation down its aligned path; see
/// bench/RESULTS.md), while bounding fragmentation in a long-running process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for an invalid configuration (what `check` and `serve` return for one).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A security-first gateway for automated workflows",
    long_about = "Portcullis sits between automation and the APIs it touches: it authenticates, limits, \
                  validates and forwards inbound calls and webhooks, and guards outbound calls."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config it starts safely with no routes.
    Serve {
        /// The configuration file (TOML).
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate and lint a configuration file; exits 2 when it has errors.
    Check {
        /// The configuration file (TOML).
        config: PathBuf,
        /// Treat warnings as errors (exit 1 when there are any).
        #[arg(long)]
        strict: bool,
    },
    /// Run a self-contained demo: an example upstream and a gateway in front of it.
    Demo(demo::DemoArgs),
    /// List declared routes and the undeclared endpoints clients have tried.
    Inventory {
        /// The configuration file (TOML); the defaults when omitted.
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage secrets in the vault.
    Secret {
        /// The configuration file (TOML); the defaults when omitted.
        #[arg(short, long, env = "PORTCULLIS_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: secrets::SecretCommand,
    },
    /// Manage clients' API keys.
    Client {
        /// The configuration file (TOML); the defaults when omitted.
        #[arg(short, long, env = "PORTCULLIS_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: clients::ClientCommand,
    },
    /// Webhook triggers: the dead-letter list of queued events.
    Webhooks {
        /// The configuration file (TOML); the defaults when omitted.
        #[arg(short, long, env = "PORTCULLIS_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: webhooks::WebhookCommand,
    },
    /// Vault maintenance (master key rotation).
    Vault {
        /// The configuration file (TOML); the defaults when omitted.
        #[arg(short, long, env = "PORTCULLIS_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: secrets::VaultCommand,
    },
    /// Print the version.
    Version,
    /// Run the example upstream on its own (used by the demo and the benchmarks).
    #[command(hide = true)]
    Upstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: std::net::SocketAddr,
    },
}

/// An invalid configuration; reported with its diagnostics and exit code 2.
#[derive(Debug)]
pub(crate) struct InvalidConfig(pub portcullis_config::ConfigError);

impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for InvalidConfig {}

/// A configuration that parses but names something that does not load: a certificate, key,
/// CA or schema file the data plane or a JWT issuer needs. Exit code 2 as well: it is the
/// file's fault, and nothing was started.
#[derive(Debug)]
pub(crate) struct UnusableConfig(pub String);

impl std::fmt::Display for UnusableConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for UnusableConfig {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve::run(config).await,
            Command::Check { config, strict } => check::run(&config, strict).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Inventory { config, json } => inventory::run(config, json).await,
            Command::Secret { config, command } => secrets::run_secret(config, command).await,
            Command::Client { config, command } => clients::run(config, command).await,
            Command::Webhooks { config, command } => webhooks::run(config, command).await,
            Command::Vault { config, command } => secrets::run_vault(config, command).await,
            Command::Version => {
                println!("portcullis {}", env!("CARGO_PKG_VERSION"));
                Ok(ExitCode::SUCCESS)
            }
            Command::Upstream { listen } => upstream::run(listen).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) if e.is::<InvalidConfig>() || e.is::<UnusableConfig>() => {
            eprintln!("{e}");
            eprintln!("error: the configuration is invalid; nothing was started");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: errors that already print their
/// source (`#[error("database error: {0}")]`) would otherwise repeat it down the chain.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_errors_causes_are_each_said_once() {
        #[derive(Debug)]
        struct Wrapping(std::io::Error);
        impl std::fmt::Display for Wrapping {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "database error: {}", self.0)
            }
        }
        impl std::error::Error for Wrapping {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = anyhow::Error::new(Wrapping(io)).context("opening the store");
        assert_eq!(
            super::one_line(&e),
            "opening the store: database error: refused"
        );
    }

    /// clap checks the whole command tree (unique flags, valid defaults) only when asked.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
