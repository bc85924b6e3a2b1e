//! Vault errors. Messages never contain secret material.

use portcullis_store::StoreError;

/// What can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The master key could not be loaded (missing, unreadable, malformed, unsafe permissions).
    #[error("master key: {0}")]
    KeyProvider(String),
    /// No master key is given here at all (no key file, the variable unset): a machine that
    /// only checks a configuration may rightly have none, unlike one with a malformed key.
    #[error("master key: {0}")]
    KeyAbsent(String),
    /// The master key is not the one this vault was created with.
    #[error("the master key does not match this vault (key check value mismatch): it is not the key this vault was created with")]
    WrongKey,
    /// The master key is one a KEK rotation retired: this process missed the rotation.
    #[error(
        "this master key was retired by a KEK rotation; give this process the vault's new key"
    )]
    RetiredKey,
    /// Decryption failed: the ciphertext was altered, moved to another row, or the key is wrong.
    #[error(
        "secret {name:?} version {version} could not be decrypted (tampered, moved or wrong key)"
    )]
    Decrypt {
        /// Secret name.
        name: String,
        /// Version.
        version: i64,
    },
    /// No such secret, or no usable version of it.
    #[error("secret {0:?} has no usable version")]
    NotFound(String),
    /// The secret exists but is past its expiry.
    #[error("secret {0:?} has expired")]
    Expired(String),
    /// The consumer is not allowed to use the secret.
    #[error("consumer {consumer:?} may not use secret {name:?}")]
    NotAllowed {
        /// Secret name.
        name: String,
        /// Who asked.
        consumer: String,
    },
    /// The value does not fit the secret's type, or a field is missing.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A name or argument is not acceptable.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
