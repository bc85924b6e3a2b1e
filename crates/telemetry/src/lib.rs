//! Logs and metrics.
//!
//! Logs are structured JSON (tracing) written by a background thread through a [`Redactor`],
//! so the guarantee that credentials never reach a log does not depend on every call site
//! remembering to scrub: whatever is logged, a sensitive header or field name gets its value
//! replaced, and credential-shaped values are masked wherever they appear.

mod access;
mod logging;
mod metrics_export;
mod redact;
mod writer;

pub use access::{log_access, AccessRecord, JsonLine};
pub use logging::{init_logging, LogGuard, LogSink};
pub use metrics_export::{init_metrics, method_label, Metrics};
pub use redact::{Redactor, REDACTED};
pub use writer::LogCloser;
