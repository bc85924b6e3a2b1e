//! `portcullis serve`: load the configuration, open the store, bind the listeners, run until
//! SIGTERM or SIGINT, then drain.

use crate::{reload, InvalidConfig};
use anyhow::Context;
use portcullis_admin::{serve_admin, AdminLimits, AdminState};
use portcullis_config::Config;
use portcullis_identity::ApiKeys;
use portcullis_proxy::{Gateway, Services};
use portcullis_telemetry::{init_logging, init_metrics, LogGuard, LogSink};
use portcullis_vault::Vault;
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// A started gateway.
pub(crate) struct Running {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The admin listener stops last, so readiness answers 503 (and metrics can be scraped)
    /// while the data plane drains.
    admin_shutdown: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    log: Arc<LogGuard>,
}

pub(crate) async fn run(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (cfg, warnings) = match &config {
        Some(path) => {
            let loaded = portcullis_config::load(path).map_err(InvalidConfig)?;
            crate::check::files_load(&loaded.config, &path.display().to_string()).await?;
            (loaded.config, loaded.warnings)
        }
        None => (portcullis_config::zero_config(), Vec::new()),
    };
    let running = start(cfg, config.clone(), LogSink::Stdout).await?;
    for w in &warnings {
        tracing::warn!(config = %w, "configuration lint");
    }
    if config.is_none() {
        tracing::info!(
            "no configuration given: serving no routes. Declare [[routes]] in a TOML file and run \
             `portcullis serve --config FILE` (try `portcullis demo` for a working example)"
        );
    }
    running.wait_for_signal().await;
    Ok(ExitCode::SUCCESS)
}

/// Opens the store, binds both listeners and starts serving. `source` is watched for changes.
pub(crate) async fn start(
    cfg: Config,
    source: Option<PathBuf>,
    sink: LogSink,
) -> anyhow::Result<Running> {
    let log = Arc::new(init_logging(&cfg.logging, sink).map_err(anyhow::Error::msg)?);
    let metrics = init_metrics();
    // The vault opens before anything listens: a wrong or unsafe master key stops start-up.
    let (store, vault, bootstrap) = crate::state::open_state(&cfg).await?;
    let api_keys = ApiKeys::open(store.clone(), &vault)
        .await
        .context("loading API keys")?;
    let mut services = Services::none(&cfg);
    let mut background = Vec::new();
    if let Some(o) = &cfg.auth.oauth2 {
        let issuer = portcullis_identity::TokenIssuer::open(
            o.clone(),
            vault.clone(),
            api_keys.clone(),
            store.clone(),
        )
        .await
        .context("preparing the OAuth token issuer")?;
        background.push(issuer.spawn_watch(Duration::from_secs(1)));
        services.oauth = Some(issuer);
    }
    // Every shared key exists now; the next instance starting on this database reads them.
    // Nothing slow (Redis, JWKS fetches) runs while the lock is held: instances wait for it
    // in turn.
    crate::state::release(bootstrap).await;
    if let portcullis_config::SharedBackend::Redis(url) = &cfg.shared_state.backend {
        // Lazy: the gateway starts while Redis is down, and each route applies its
        // shared_state_failure choice until Redis answers.
        let redis = portcullis_state::RedisLimiter::new(&portcullis_state::RedisOptions {
            url: url.clone(),
            key_prefix: cfg.shared_state.key_prefix.clone(),
            timeout: cfg.shared_state.timeout,
        })
        .map_err(|e| anyhow::anyhow!("shared_state: {e}"))?;
        if let Err(e) = redis.ping().await {
            tracing::warn!(error = %e, "shared state (Redis) not reachable at start; rate limits follow each route's shared_state_failure choice until it is");
        }
        let redis = Arc::new(redis);
        services.limits.shared = redis.clone();
        services.replay = redis.clone();
        // Authentication failures are counted across the instances too; the lock-out check
        // stays in memory.
        let bf = cfg.auth.brute_force;
        services.brute_force = Arc::new(
            portcullis_identity::BruteForce::new(bf.max_failures, bf.window, bf.cooldown)
                .with_shared(redis.clone()),
        );
        // Egress OAuth tokens are shared (sealed) only through Redis; the in-memory state
        // keeps them per process as before.
        services.egress_tokens = Some(redis);
    }
    services.vault = Some(vault.clone());
    services.store = Some(store.clone());
    services.api_keys = Some(api_keys.clone());
    let jwt = portcullis_identity::JwtVerifier::new(&cfg.auth.jwt)
        .await
        .context("loading JWT issuers")?;
    services.jwt = Some(jwt.clone());
    if let Some(r) = &cfg.webhook_signing {
        // Fail closed at start: without its own signing secret the gateway would forward
        // webhooks the backend cannot verify. Read again at each delivery, so a rotation
        // applies without a restart.
        portcullis_proxy::WebhookSigner::new(vault.clone(), &r.name)
            .await
            .map_err(|e| anyhow::anyhow!("webhook_signing.secret {r}: {e}"))?;
    }
    let gateway = Gateway::new(&cfg, store.clone(), services)?;
    let data = TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding the data-plane listener {}", cfg.server.listen))?;
    let admin = TcpListener::bind(cfg.server.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {}", cfg.server.admin_listen))?;
    let data_addr = data.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let (shutdown, signal) = watch::channel(false);

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(portcullis_proxy::serve(
        data,
        gateway.clone(),
        signal.clone(),
    )));
    // Queued webhook events: delivered from the store, including those left by a crash.
    tasks.push(tokio::spawn(portcullis_proxy::run_outbox(
        gateway.clone(),
        signal.clone(),
    )));
    let token = admin_token(&cfg.server.data_dir).context("preparing the admin token")?;
    let state = AdminState {
        gateway: gateway.clone(),
        store,
        metrics,
        token: Arc::new(token),
        unready: Arc::default(),
    };
    let (admin_shutdown, admin_signal) = watch::channel(false);
    let limits = AdminLimits {
        header_read_timeout: cfg.server.header_read_timeout,
        shutdown_grace: cfg.server.shutdown_grace,
    };
    let admin_task = tokio::spawn(async move {
        if let Err(e) = serve_admin(admin, state, admin_signal, limits).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    tasks.push(tokio::spawn(flush_inventory(
        gateway.clone(),
        signal.clone(),
    )));
    // Writes made by other processes (the CLI) reach this process's cache within a second.
    let vault_watch = vault.spawn_watch(Duration::from_secs(1));
    let keys_watch = api_keys.spawn_watch(Duration::from_secs(1));
    let refresh_every = cfg
        .auth
        .jwt
        .iter()
        .map(|j| j.jwks_refresh)
        .min()
        .unwrap_or(Duration::from_secs(300));
    let jwks_refresh = tokio::spawn(async move {
        let mut tick = tokio::time::interval(refresh_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if jwt.has_jwks() {
                jwt.refresh().await;
            }
        }
    });
    let vault_report = tokio::spawn(report_vault_findings(
        vault.clone(),
        cfg.vault.expiry_warning,
    ));
    if let Some(path) = source {
        reload::spawn(path, gateway.clone(), log.clone(), signal.clone())?;
    }
    tracing::info!(
        listen = %data_addr,
        admin = %admin_addr,
        tls = cfg.server.tls.is_some(),
        routes = cfg.routes.len(),
        version = env!("CARGO_PKG_VERSION"),
        "portcullis started"
    );
    Ok(Running {
        background: {
            background.extend([vault_watch, vault_report, keys_watch, jwks_refresh]);
            background
        },
        data_addr,
        admin_addr,
        gateway,
        shutdown,
        tasks,
        admin_shutdown,
        admin_task,
        log,
    })
}

impl Running {
    /// Waits for SIGTERM or SIGINT, then stops accepting and drains. A second signal during
    /// the drain ends the process at once (exit 1), as operators expect of a second Ctrl-C.
    pub(crate) async fn wait_for_signal(self) {
        wait_for_stop_signal().await;
        let log = self.log.closer();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            eprintln!("portcullis: second stop signal: exiting without waiting for the drain");
            tracing::warn!("second stop signal: exiting without waiting for the drain");
            // exit() runs no destructor: write out the log lines still queued (access lines
            // of the requests that did finish, this warning) first.
            log.close();
            std::process::exit(1);
        });
        self.stop().await;
    }

    /// Stops accepting, drains in-flight requests (up to the grace period) and flushes state;
    /// the admin listener last.
    pub(crate) async fn stop(self) {
        tracing::info!("shutting down");
        self.gateway.set_draining();
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.admin_shutdown.send(true);
        let _ = self.admin_task.await;
        for t in self.background {
            t.abort();
        }
        tracing::info!("stopped");
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process could not stop cleanly; fall back to Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The admin API token in `<data_dir>/admin.token` (0600), created on first start. Whoever can
/// read the data directory can administer the gateway, the same trust as the master key file.
fn admin_token(data_dir: &std::path::Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let path = data_dir.join("admin.token");
    if !path.exists() {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::getrandom(raw.as_mut()).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let token =
            zeroize::Zeroizing::new(raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        portcullis_store::create_private_file(&path)?;
        std::fs::write(&path, token.as_bytes())?;
        tracing::info!(path = %path.display(), "created the admin API token");
    } else {
        portcullis_store::create_private_file(&path)?;
    }
    Ok(zeroize::Zeroizing::new(
        std::fs::read_to_string(&path)?.trim().to_string(),
    ))
}

/// Logs expired, soon-expiring and overdue secrets at start and then every hour.
async fn report_vault_findings(vault: Arc<Vault>, within: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match vault.findings(within).await {
            Ok(found) => found
                .iter()
                .for_each(|f| tracing::warn!(target: "portcullis::vault", "{f}")),
            Err(e) => tracing::warn!(error = %e, "could not check secrets for expiry"),
        }
    }
}

/// Writes undeclared-endpoint counts to the store every few seconds, and once more at stop.
async fn flush_inventory(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if let Err(e) = gateway.inventory().flush().await {
            tracing::warn!(error = %e, "could not write the undeclared-endpoint inventory");
        }
    }
    if let Err(e) = gateway.inventory().flush().await {
        tracing::warn!(error = %e, "could not write the undeclared-endpoint inventory at shutdown");
    }
}
