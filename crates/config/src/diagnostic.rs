//! Diagnostics that point at a place in the configuration file.

use std::fmt;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The configuration cannot run.
    Error,
    /// The configuration runs, but something in it is risky or probably unintended.
    Warning,
}

/// One finding about the configuration, with its location when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file the finding is about.
    pub file: String,
    /// 1-based line, when the finding has a place in the file.
    pub line: Option<usize>,
    /// 1-based column, when the finding has a place in the file.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {level}: {}", self.file, self.message),
            _ => write!(f, "{}: {level}: {}", self.file, self.message),
        }
    }
}

/// Turns a byte offset into a 1-based (line, column) pair; columns count characters.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The configuration could not be used. Carries every error found (not just the first) and
/// the warnings collected before it stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// All findings; at least one has [`Severity::Error`].
    pub diagnostics: Vec<Diagnostic>,
}

/// Every finding, warnings included: an operator fixing the errors sees the risky settings
/// in the same round, not only once the file is valid.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for d in &self.diagnostics {
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The configuration file could not be read (or is not UTF-8).
    pub fn io(file: &str, err: &std::io::Error) -> Self {
        Self::single(
            file,
            None,
            format!("cannot read the configuration file: {err}"),
        )
    }

    pub(crate) fn syntax(file: &str, text: &str, err: &toml::de::Error) -> Self {
        let place = err.span().map(|s| line_col(text, s.start));
        // toml's own message embeds a source excerpt; the first line of `message()` is the cause.
        let message = err.message().trim().to_string();
        Self::single(file, place, message)
    }

    fn single(file: &str, place: Option<(usize, usize)>, message: String) -> Self {
        ConfigError {
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                file: file.to_string(),
                line: place.map(|p| p.0),
                column: place.map(|p| p.1),
                message,
            }],
        }
    }
}
