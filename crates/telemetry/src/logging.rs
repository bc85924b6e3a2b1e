//! Log setup: a tracing subscriber whose output passes through the [`Redactor`] on a
//! background thread, so request tasks never wait on redaction or on the terminal.

use crate::Redactor;
use portcullis_config::{LogFormat, LoggingConfig};
use std::io::{self, Write};
use tracing_subscriber::{
    fmt, layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Registry,
};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    /// Standard output (servers).
    Stdout,
    /// Standard error (commands that print results on stdout, such as `demo`).
    Stderr,
}

/// Keeps the background writer alive (dropping it flushes pending lines) and allows the level
/// and redaction lists to change on reload.
pub struct LogGuard {
    _writer: crate::writer::WriterGuard,
    filter: reload::Handle<EnvFilter, Registry>,
    redactor: Redactor,
    /// `PORTCULLIS_LOG` was set at start: it keeps overriding the configured level, reloads
    /// included.
    level_from_env: bool,
}

impl LogGuard {
    /// A handle to write out the pending log lines from a task that ends the process at
    /// once (`std::process::exit` drops no guard).
    pub fn closer(&self) -> crate::writer::LogCloser {
        self._writer.closer()
    }

    /// Applies a reloaded `[logging]` section (level and redaction lists; the format is fixed
    /// at start-up).
    pub fn apply(&self, cfg: &LoggingConfig) {
        self.redactor
            .set_extra(&cfg.redact_headers, &cfg.redact_fields);
        if self.level_from_env {
            return;
        }
        match EnvFilter::try_new(&cfg.level) {
            Ok(f) => {
                if let Err(e) = self.filter.reload(f) {
                    tracing::warn!(error = %e, "could not change the log level");
                }
            }
            Err(e) => tracing::warn!(level = %cfg.level, error = %e, "ignoring invalid log level"),
        }
    }
}

/// Installs the global subscriber. `PORTCULLIS_LOG`, when set, overrides the configured level.
/// Fails if the level is not a valid filter or a subscriber is already installed.
pub fn init_logging(cfg: &LoggingConfig, sink: LogSink) -> Result<LogGuard, String> {
    let from_env = std::env::var("PORTCULLIS_LOG").ok();
    let level_from_env = from_env.is_some();
    let level = from_env.unwrap_or_else(|| cfg.level.clone());
    let filter =
        EnvFilter::try_new(&level).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let redactor = Redactor::new(&cfg.redact_headers, &cfg.redact_fields);
    let out: Box<dyn Write + Send> = match sink {
        LogSink::Stdout => Box::new(io::stdout()),
        LogSink::Stderr => Box::new(io::stderr()),
    };
    let (nb, writer) = crate::writer::spawn(out, redactor.clone())
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
    if cfg.format == LogFormat::Json {
        crate::access::set_json_sink(nb.clone());
    }
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_target(true)
                    .with_writer(nb),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(nb),
            )
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogGuard {
        _writer: writer,
        filter: handle,
        redactor,
        level_from_env,
    })
}
