//! Opening the gateway's persistent state, shared by `serve` and the commands that manage it.

use crate::InvalidConfig;
use anyhow::Context;
use portcullis_config::Config;
use portcullis_store::{BootstrapLock, Store};
use portcullis_vault::{LogEventSink, Vault};
use std::{path::PathBuf, sync::Arc};

/// The configuration file, or the built-in defaults when none is given.
pub(crate) fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => portcullis_config::load(p).map_err(InvalidConfig)?.config,
        None => portcullis_config::zero_config(),
    })
}

/// Opens the store and the vault (creating the master key file on first use). A wrong or
/// unsafe master key is an error here, before anything else runs. The returned start-up lock
/// is held: the caller creates any other shared key it needs (API-key pepper, OAuth signing
/// key), then calls [`release`], so instances starting together on a new database create each
/// shared key once.
pub(crate) async fn open_state(
    cfg: &Config,
) -> anyhow::Result<(Arc<dyn Store>, Arc<Vault>, BootstrapLock)> {
    let store = portcullis_store::open(&cfg.store.url, &cfg.server.data_dir)
        .await
        .context("opening the store")?;
    let lock = store
        .bootstrap_lock()
        .await
        .context("waiting for another instance's start-up")?;
    // A vault that exists already was made with some key: a key file missing here is not
    // created (it could only be the wrong key, left behind with a "back it up" warning).
    let registered = !store
        .vault()
        .keks()
        .await
        .context("opening the vault")?
        .is_empty();
    if let portcullis_config::VaultKeyProvider::File(path) = &cfg.vault.key_provider {
        if !path.exists() && registered {
            anyhow::bail!(
                "opening the vault: the master key file {} does not exist, and the vault in this store was created with a key; copy that key file here (or use key_provider = \"env\" with the same key)",
                path.display()
            );
        }
    }
    // Only a new vault may create its key file; later reloads of the provider never make up
    // a key for an existing one.
    let vault = Vault::open(
        store.clone(),
        crate::secrets::key_provider(cfg, !registered),
        Arc::new(LogEventSink),
    )
    .await
    .context("opening the vault")?;
    Ok((store, vault, lock))
}

/// Ends the start-up lock. A failure is not fatal: the lock's connection is closed instead,
/// which ends it too.
pub(crate) async fn release(lock: BootstrapLock) {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not release the start-up lock; its connection was closed instead");
    }
}
