//! Hot reload: on SIGHUP or when the configuration file changes, validate the new file and
//! swap it in; an invalid one is refused with a log line and the running one stays.
//!
//! A change is read only once the file has settled: the same content twice, [`SETTLE`]
//! apart. A file written in place (`cat >`, scp) is empty or cut short for a moment, and a
//! cut-short TOML file is often still a valid configuration, with fewer routes or a route
//! without its `auth` line: swapped in, it served requests unauthenticated. Writing the new
//! file elsewhere and renaming it over the old one is atomic and always safe.
//!
//! Changes are noticed through the directory's events (editors replace files by renaming over
//! them), through the events of the directory a symlinked file really lives in, and by a
//! comparison of the content every [`POLL`], which catches what events miss: a Kubernetes
//! ConfigMap swaps a `..data` symlink, not the file.
//!
//! The data plane's certificate, key and client CA are files of their own: a renewal
//! (certbot, cert-manager) rewrites them and leaves the configuration alone. They are
//! compared every [`POLL`] as well, and a change to one settles and reloads like a change to
//! the configuration file.

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

/// How long a changed file must stay the same before it is read as the new configuration.
const SETTLE: Duration = Duration::from_millis(500);
/// How often the file's content is compared with the running one's, events or not.
const POLL: Duration = Duration::from_secs(5);
/// Longest a file may keep changing before the reload waits for the next change instead.
const MAX_SETTLING: Duration = Duration::from_secs(30);

/// Starts the watcher task.
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

    // Watch the directory, not the file: editors replace files by renaming over them. Any
    // event there may be a change (a `..data` symlink swapped); the content decides.
    let parent = |p: &Path| {
        p.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let mut dirs = vec![parent(&path)];
    if let Ok(real) = std::fs::canonicalize(&path) {
        let real_dir = parent(&real);
        if std::fs::canonicalize(&dirs[0]).ok().as_ref() != Some(&real_dir) {
            dirs.push(real_dir);
        }
    }
    let file_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|ev| !ev.kind.is_access()) {
            let _ = file_tx.try_send("file change");
        }
    })?;
    for dir in &dirs {
        notify::Watcher::watch(&mut watcher, dir, notify::RecursiveMode::NonRecursive)?;
    }

    tokio::spawn(async move {
        let _watcher = watcher;
        let deps = dependencies(&gateway.config());
        let first = read(&path, &deps);
        let mut w = Watched {
            last: digest(&first),
            loaded_deps: first.deps,
            deps,
            path,
            gateway,
            log,
        };
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reason = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = poll.tick() => "file change",
                _ = shutdown.changed() => break,
            };
            if reason == "SIGHUP" {
                // Asked for: what is there now.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
                w.reload(&w.read(), reason);
                continue;
            }
            if digest(&w.read()) == w.last {
                continue;
            }
            let (settled, hup) = settle(&w.path, &w.deps, &mut rx).await;
            let Some(snapshot) = settled else {
                if hup {
                    // Asked for: what is there now, settled or not, as any SIGHUP.
                    w.reload(&w.read(), "SIGHUP");
                    continue;
                }
                tracing::warn!(
                    path = %w.path.display(),
                    "the configuration (or its certificate files) kept changing for 30 s; not \
                     reloaded until it settles"
                );
                continue;
            };
            // A SIGHUP that came while the files settled is still honoured.
            if digest(&snapshot) == w.last && !hup {
                continue;
            }
            w.reload(&snapshot, if hup { "SIGHUP" } else { reason });
        }
    });
    Ok(())
}

/// What the watcher knows of the files between changes.
struct Watched {
    path: PathBuf,
    gateway: Arc<Gateway>,
    log: Arc<LogGuard>,
    /// The files the running configuration reads besides itself.
    deps: Vec<PathBuf>,
    /// The digest of what was last loaded (or refused), which the next change is judged by.
    last: u64,
    /// The certificate files as the running generation loaded them.
    loaded_deps: Vec<Content>,
}

impl Watched {
    fn read(&self) -> Snapshot {
        read(&self.path, &self.deps)
    }

    /// Reloads from `snapshot` and moves the watch on to what was loaded.
    fn reload(&mut self, snapshot: &Snapshot, reason: &str) {
        let loaded = apply(
            &self.path,
            snapshot,
            &self.deps,
            &self.gateway,
            &self.log,
            reason,
            &mut self.loaded_deps,
        );
        let deps = std::mem::take(&mut self.deps);
        (self.deps, self.last) = after_reload(deps, snapshot, loaded);
    }
}

/// Files the running configuration reads besides itself, which are read again on reload:
/// the data plane's TLS certificate and key, and its client CA.
fn dependencies(cfg: &portcullis_config::Config) -> Vec<PathBuf> {
    let s = &cfg.server;
    let tls = s.tls.iter().flat_map(|t| [t.cert.clone(), t.key.clone()]);
    tls.chain(s.client_ca.clone()).collect()
}

/// Waits until the files read the same twice [`SETTLE`] apart, and returns what they held
/// then (`None` if still changing after [`MAX_SETTLING`]), and whether a SIGHUP came
/// meanwhile. The configuration returned is what is validated and loaded: the file is not
/// read again.
async fn settle(
    path: &Path,
    deps: &[PathBuf],
    rx: &mut mpsc::Receiver<&'static str>,
) -> (Option<Snapshot>, bool) {
    let started = tokio::time::Instant::now();
    let mut seen = read(path, deps);
    let mut hup = false;
    while started.elapsed() < MAX_SETTLING {
        tokio::time::sleep(SETTLE).await;
        while let Ok(r) = rx.try_recv() {
            hup |= r == "SIGHUP";
        }
        let now = read(path, deps);
        if now == seen {
            return (Some(now), hup);
        }
        seen = now;
    }
    (None, hup)
}

/// A file's bytes, or why it could not be read (comparable, unlike `io::Error`).
type Content = Result<Vec<u8>, std::io::ErrorKind>;

/// The configuration file and the files it reads, as read at one moment.
#[derive(PartialEq, Hash)]
struct Snapshot {
    config: Content,
    deps: Vec<Content>,
}

fn read(path: &Path, deps: &[PathBuf]) -> Snapshot {
    Snapshot {
        config: read_one(path),
        deps: read_deps(deps),
    }
}

fn read_deps(deps: &[PathBuf]) -> Vec<Content> {
    deps.iter().map(|d| read_one(d)).collect()
}

fn read_one(path: &Path) -> Content {
    std::fs::read(path).map_err(|e| e.kind())
}

fn digest(s: &Snapshot) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// After a reload: the files the configuration now in force reads (it may name other ones),
/// and the digest the next change is judged against: that of what was loaded, so a change
/// made since is still seen. `loaded` is what [`apply`] swapped in, if anything.
fn after_reload(
    deps: Vec<PathBuf>,
    snapshot: &Snapshot,
    loaded: Option<Loaded>,
) -> (Vec<PathBuf>, u64) {
    match loaded {
        Some((paths, contents)) => {
            let last = Snapshot {
                config: snapshot.config.clone(),
                deps: contents,
            };
            (paths, digest(&last))
        }
        None => (deps, digest(snapshot)),
    }
}

/// The dependency files of a configuration that was swapped in, and their content as read
/// just before the swap (so a change that lands after it is judged a change).
type Loaded = (Vec<PathBuf>, Vec<Content>);

/// Reloads from `snapshot` (`deps`: the files it read beside the configuration). When its
/// configuration is refused but the certificate files changed, the running configuration is
/// rebuilt with the new certificates: a renewal must not wait for someone to fix an
/// unrelated edit (the old certificate may be about to expire).
fn apply(
    path: &Path,
    snapshot: &Snapshot,
    deps: &[PathBuf],
    gateway: &Gateway,
    log: &LogGuard,
    reason: &str,
    loaded_deps: &mut Vec<Content>,
) -> Option<Loaded> {
    if let Some(loaded) = reload_once(path, snapshot.config.clone(), gateway, log, reason) {
        loaded_deps.clone_from(&loaded.1);
        return Some(loaded);
    }
    if snapshot.deps == *loaded_deps {
        return None;
    }
    match gateway.reload(&gateway.config()) {
        Ok(_) => {
            *loaded_deps = snapshot.deps.clone();
            tracing::warn!(
                trigger = reason,
                "certificate files changed: loaded with the running configuration, since the \
                 configuration file was refused"
            );
            Some((deps.to_vec(), snapshot.deps.clone()))
        }
        Err(e) => {
            tracing::error!(trigger = reason, error = %e, "certificate files changed but do not load; the running ones stay");
            None
        }
    }
}

/// Validates `content` (the file as last read) and swaps it in, or refuses it and keeps the
/// running configuration. When swapped in: the new configuration's dependency files and
/// their content, read just before the swap.
fn reload_once(
    path: &Path,
    content: Content,
    gateway: &Gateway,
    log: &LogGuard,
    reason: &str,
) -> Option<Loaded> {
    let file = path.display().to_string();
    let loaded = match content.map(String::from_utf8) {
        Ok(Ok(text)) => portcullis_config::load_text(path, &text),
        Ok(Err(_)) => Err(portcullis_config::ConfigError::io(
            &file,
            &std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8"),
        )),
        Err(kind) => Err(portcullis_config::ConfigError::io(&file, &kind.into())),
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            metrics::counter!("portcullis_config_reloads_total", "result" => "refused")
                .increment(1);
            // The errors say why it was refused; the file's warnings are only lint.
            for d in &e.diagnostics {
                match d.severity {
                    portcullis_config::Severity::Error => {
                        tracing::error!(trigger = reason, diagnostic = %d, "configuration reload refused; the running configuration stays")
                    }
                    portcullis_config::Severity::Warning => {
                        tracing::warn!(config = %d, "configuration lint")
                    }
                }
            }
            return None;
        }
    };
    let deps = dependencies(&loaded.config);
    let contents = read_deps(&deps);
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
            Some((deps, contents))
        }
        Err(e) => {
            metrics::counter!("portcullis_config_reloads_total", "result" => "refused")
                .increment(1);
            tracing::error!(trigger = reason, error = %e, "configuration reload refused; the running configuration stays");
            None
        }
    }
}
