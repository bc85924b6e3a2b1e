//! Hot reload: on SIGHUP or when the configuration file changes, validate the new file and
//! swap it in; an invalid one is refused with a log line and the running one stays.

use portcullis_proxy::Gateway;
use portcullis_telemetry::LogGuard;
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::sync::{mpsc, watch};

/// Starts the watcher task. Changes are debounced: editors write files in several steps.
pub(crate) fn spawn(
    path: PathBuf,
    gateway: Arc<Gateway>,
    log: Arc<LogGuard>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let hup_tx = tx.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = hup_tx.send("SIGHUP").await;
        }
    });

    // Watch the directory, not the file: editors replace files by renaming over them.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string());
    let file_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
            {
                let _ = file_tx.try_send("file change");
            }
        }
    })?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)?;

    tokio::spawn(async move {
        let _watcher = watcher;
        let mut last = digest(&path);
        loop {
            let reason = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = shutdown.changed() => break,
            };
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let now = digest(&path);
            if reason != "SIGHUP" && now == last {
                continue;
            }
            last = now;
            reload_once(&path, &gateway, &log, reason);
        }
    });
    Ok(())
}

fn digest(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

fn reload_once(path: &Path, gateway: &Gateway, log: &LogGuard, reason: &str) {
    let loaded = match portcullis_config::load(path) {
        Ok(l) => l,
        Err(e) => {
            metrics::counter!("portcullis_config_reloads_total", "result" => "refused")
                .increment(1);
            for d in &e.diagnostics {
                tracing::error!(trigger = reason, diagnostic = %d, "configuration reload refused; the running configuration stays");
            }
            return;
        }
    };
    match gateway.reload(&loaded.config) {
        Ok(notes) => {
            log.apply(&loaded.config.logging);
            metrics::counter!("portcullis_config_reloads_total", "result" => "ok").increment(1);
            for n in notes {
                tracing::warn!(trigger = reason, "{n}");
            }
            for w in &loaded.warnings {
                tracing::warn!(config = %w, "configuration lint");
            }
            tracing::info!(
                trigger = reason,
                routes = loaded.config.routes.len(),
                "configuration reloaded"
            );
        }
        Err(e) => {
            metrics::counter!("portcullis_config_reloads_total", "result" => "refused")
                .increment(1);
            tracing::error!(trigger = reason, error = %e, "configuration reload refused; the running configuration stays");
        }
    }
}
