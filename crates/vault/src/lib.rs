//! The secrets vault.
//!
//! Every secret version is encrypted with AES-256-GCM under its own random data key (DEK); the
//! DEK is wrapped by a key-encryption key (KEK) from a [`KeyProvider`] and never stored in the
//! clear. Associated data binds each ciphertext to its secret name and version, and each
//! wrapped DEK to its KEK, name and version, so a ciphertext copied onto another row does not
//! decrypt. The store holds only ciphertext, wrapped keys and metadata.
//!
//! The data plane reads secrets through [`Vault::resolve`], which serves decrypted values from
//! an in-memory cache of zeroizing buffers; every write through the vault clears the cache at
//! once, and a background watch of the store's change counter clears it for writes made by
//! other processes (the CLI).

mod catalog;
mod crypto;
mod error;
mod events;
mod generate;
mod model;
mod provider;
mod vault;

pub use catalog::{Catalog, Finding};
pub use crypto::{decrypt, encrypt, Kek, Sealed};
pub use error::VaultError;
pub use events::{EventSink, LogEventSink, VaultEvent};
pub use generate::Generated;
pub use model::{PutOptions, SecretInfo, SecretType, SecretValue, VersionInfo};
pub use provider::StaticKeyProvider;
pub use provider::{
    EnvKeyProvider, FileKeyProvider, KeyProvider, MASTER_KEY_ENV, MASTER_KEY_NEXT_ENV,
};
pub use vault::{check_consumer, RotationProgress, Vault};
