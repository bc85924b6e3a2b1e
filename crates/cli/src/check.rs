//! `portcullis check`: everything `serve` would verify before starting, without starting.

use crate::{InvalidConfig, EXIT_CONFIG};
use portcullis_config::Severity;
use std::{path::Path, process::ExitCode};

pub(crate) async fn run(path: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let loaded = portcullis_config::load(path).map_err(InvalidConfig)?;
    // Build the data plane against a throwaway store: this proves certificates, keys and CA
    // files parse, which the schema alone cannot.
    let store = portcullis_store::open("sqlite::memory:", Path::new(".")).await?;
    if let Err(e) = portcullis_proxy::Gateway::new(&loaded.config, store) {
        eprintln!("{}: error: {e}", path.display());
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let warnings = loaded
        .warnings
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    println!(
        "{}: ok ({} route{}, {warnings} warning{})",
        path.display(),
        loaded.config.routes.len(),
        if loaded.config.routes.len() == 1 {
            ""
        } else {
            "s"
        },
        if warnings == 1 { "" } else { "s" }
    );
    Ok(if strict && warnings > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
