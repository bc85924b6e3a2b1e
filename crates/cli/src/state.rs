//! Opening the gateway's persistent state, shared by `serve` and the commands that manage it.

use crate::InvalidConfig;
use anyhow::Context;
use portcullis_config::Config;
use portcullis_store::Store;
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
/// unsafe master key is an error here, before anything else runs.
pub(crate) async fn open_state(cfg: &Config) -> anyhow::Result<(Arc<dyn Store>, Arc<Vault>)> {
    let store = portcullis_store::open(&cfg.store.url, &cfg.server.data_dir)
        .await
        .context("opening the store")?;
    let vault = Vault::open(
        store.clone(),
        crate::secrets::key_provider(cfg, true),
        Arc::new(LogEventSink),
    )
    .await
    .context("opening the vault")?;
    Ok((store, vault))
}
