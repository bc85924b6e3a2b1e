//! `portcullis inventory`: declared routes from the configuration and the undeclared
//! endpoints recorded in the store (what the running gateway flushed there).

use std::{path::PathBuf, process::ExitCode};

pub(crate) async fn run(config: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = crate::state::load_config(&config)?;
    let store = portcullis_store::open(&cfg.store.url, &cfg.server.data_dir).await?;
    let gateway =
        portcullis_proxy::Gateway::new(&cfg, store, portcullis_proxy::Services::none(&cfg))?;
    let report = gateway.inventory_report().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Declared routes ({}):", report.declared.len());
    for r in &report.declared {
        let sunset = r
            .sunset
            .as_deref()
            .map(|s| format!("  [sunset {s}]"))
            .unwrap_or_default();
        println!(
            "  {:<20} {:<16} {:<40} -> {}{sunset}",
            r.id,
            r.methods.join(","),
            r.path,
            r.upstream
        );
    }
    println!();
    println!("Undeclared endpoints ({}):", report.undeclared.len());
    if report.undeclared.is_empty() {
        println!("  none seen");
    }
    for u in &report.undeclared {
        println!("  {:>8}  {:<7} {}", u.hits, u.method, u.shape);
    }
    Ok(ExitCode::SUCCESS)
}
