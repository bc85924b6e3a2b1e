//! Where the key-encryption key comes from. The trait is the seam for a KMS or an external
//! vault's transit engine: a provider only has to produce the current KEK and, during a
//! rotation, the next one.

use crate::{Kek, VaultError};
use base64::{engine::general_purpose::STANDARD, Engine};
use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};
use zeroize::Zeroizing;

/// Environment variable holding the master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "PORTCULLIS_MASTER_KEY";
/// Environment variable holding the next master key during a rotation.
pub const MASTER_KEY_NEXT_ENV: &str = "PORTCULLIS_MASTER_KEY_NEXT";

/// A source of key-encryption keys.
pub trait KeyProvider: Send + Sync {
    /// Short name for messages (`file`, `env`).
    fn name(&self) -> &'static str;
    /// The KEK in use.
    fn current(&self) -> Result<Kek, VaultError>;
    /// The KEK a rotation is moving to, while one is in progress.
    fn next(&self) -> Result<Option<Kek>, VaultError>;
    /// Makes `kek` the next key (persisted before any data key is rewrapped with it).
    fn stage_next(&self, kek: &Kek) -> Result<(), VaultError>;
    /// After every data key is rewrapped: the next key becomes the current one.
    fn promote_next(&self) -> Result<(), VaultError>;
}

fn decode_key(text: &str, what: &str) -> Result<Kek, VaultError> {
    let raw = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| VaultError::KeyProvider(format!("{what} is not base64")))?,
    );
    let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
        VaultError::KeyProvider(format!(
            "{what} must be 32 bytes (base64), got {}",
            raw.len()
        ))
    })?;
    Ok(Kek::from_bytes(bytes))
}

fn encode_key(kek: &Kek) -> Zeroizing<String> {
    Zeroizing::new(format!("{}\n", STANDARD.encode(kek.bytes())))
}

/// The KEK in a file, base64, mode 0600. Created on first start when allowed; refused when its
/// permissions let anyone but the owner read it.
pub struct FileKeyProvider {
    path: PathBuf,
    /// Cleared by the first read or creation: a key file that disappears later (a readiness
    /// probe, a reload after a rotation elsewhere) is an error, never replaced by a new key.
    create_if_missing: AtomicBool,
}

impl FileKeyProvider {
    /// A provider for `path`. With `create_if_missing`, a missing file gets a new random key.
    pub fn new(path: impl Into<PathBuf>, create_if_missing: bool) -> Self {
        FileKeyProvider {
            path: path.into(),
            create_if_missing: AtomicBool::new(create_if_missing),
        }
    }

    fn next_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".next");
        PathBuf::from(p)
    }

    fn read(path: &Path) -> Result<Kek, VaultError> {
        let meta = fs::metadata(path).map_err(|e| {
            let m = format!("{}: {e}", path.display());
            if e.kind() == std::io::ErrorKind::NotFound {
                VaultError::KeyAbsent(m)
            } else {
                VaultError::KeyProvider(m)
            }
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(VaultError::KeyProvider(format!(
                "{} has mode {mode:o}; a master key file must be readable by its owner only (chmod 600)",
                path.display()
            )));
        }
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .map_err(|e| VaultError::KeyProvider(format!("{}: {e}", path.display())))?,
        );
        decode_key(&text, &path.display().to_string())
    }

    fn write_new(path: &Path, kek: &Kek) -> Result<(), VaultError> {
        let err = |e: std::io::Error| VaultError::KeyProvider(format!("{}: {e}", path.display()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(encode_key(kek).as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    }
}

impl KeyProvider for FileKeyProvider {
    fn name(&self) -> &'static str {
        "file"
    }

    fn current(&self) -> Result<Kek, VaultError> {
        if !self.path.exists() && self.create_if_missing.swap(false, Ordering::AcqRel) {
            let kek = Kek::generate()?;
            Self::write_new(&self.path, &kek)?;
            tracing::warn!(
                path = %self.path.display(),
                "created a new master key. Back it up somewhere safe: without it every secret in this vault is lost"
            );
            return Ok(kek);
        }
        let kek = Self::read(&self.path)?;
        self.create_if_missing.store(false, Ordering::Release);
        Ok(kek)
    }

    fn next(&self) -> Result<Option<Kek>, VaultError> {
        let p = self.next_path();
        if p.exists() {
            Self::read(&p).map(Some)
        } else {
            Ok(None)
        }
    }

    fn stage_next(&self, kek: &Kek) -> Result<(), VaultError> {
        Self::write_new(&self.next_path(), kek)
    }

    fn promote_next(&self) -> Result<(), VaultError> {
        fs::rename(self.next_path(), &self.path)
            .map_err(|e| VaultError::KeyProvider(format!("promoting the new master key: {e}")))
    }
}

/// The KEK from `PORTCULLIS_MASTER_KEY` (and the next one from `PORTCULLIS_MASTER_KEY_NEXT`).
pub struct EnvKeyProvider;

impl KeyProvider for EnvKeyProvider {
    fn name(&self) -> &'static str {
        "env"
    }

    fn current(&self) -> Result<Kek, VaultError> {
        // Set but empty counts as not given: CI systems define a secret's variable empty where
        // the secret is withheld (pull requests from forks).
        let v = match std::env::var(MASTER_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => Zeroizing::new(v),
            Ok(_) | Err(std::env::VarError::NotPresent) => {
                return Err(VaultError::KeyAbsent(format!(
                    "{MASTER_KEY_ENV} is not set (or is empty)"
                )))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(VaultError::KeyProvider(format!(
                    "{MASTER_KEY_ENV} is not base64"
                )))
            }
        };
        decode_key(&v, MASTER_KEY_ENV)
    }

    fn next(&self) -> Result<Option<Kek>, VaultError> {
        match std::env::var(MASTER_KEY_NEXT_ENV) {
            Ok(v) => decode_key(&Zeroizing::new(v), MASTER_KEY_NEXT_ENV).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn stage_next(&self, _kek: &Kek) -> Result<(), VaultError> {
        Err(VaultError::KeyProvider(format!(
            "the env provider cannot store a new key: set {MASTER_KEY_NEXT_ENV} to a new key (base64 of 32 random bytes) and run the rotation again"
        )))
    }

    fn promote_next(&self) -> Result<(), VaultError> {
        tracing::warn!("rotation complete: replace {MASTER_KEY_ENV} with the value of {MASTER_KEY_NEXT_ENV}, then unset {MASTER_KEY_NEXT_ENV}");
        Ok(())
    }
}

/// A KEK held in memory, with no rotation: for tests and benchmarks. No configuration
/// selects it.
pub struct StaticKeyProvider(pub Kek);

impl KeyProvider for StaticKeyProvider {
    fn name(&self) -> &'static str {
        "static"
    }

    fn current(&self) -> Result<Kek, VaultError> {
        Ok(self.0.clone())
    }

    fn next(&self) -> Result<Option<Kek>, VaultError> {
        Ok(None)
    }

    fn stage_next(&self, _kek: &Kek) -> Result<(), VaultError> {
        Err(VaultError::KeyProvider(
            "a static key cannot be rotated".into(),
        ))
    }

    fn promote_next(&self) -> Result<(), VaultError> {
        Err(VaultError::KeyProvider(
            "a static key cannot be rotated".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_key_is_created_private_and_wide_modes_are_refused() -> Result<(), VaultError> {
        let dir = tempfile::tempdir().map_err(|e| VaultError::KeyProvider(e.to_string()))?;
        let path = dir.path().join("master.key");
        let p = FileKeyProvider::new(&path, true);
        let k1 = p.current()?;
        let mode = fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        assert_eq!(p.current()?.id(), k1.id());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .map_err(|e| VaultError::KeyProvider(e.to_string()))?;
        let err = p
            .current()
            .map(|_| ())
            .expect_err("0644 must be refused")
            .to_string();
        assert!(err.contains("644") && err.contains("chmod 600"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_file_is_an_error_without_create() {
        let p = FileKeyProvider::new("/nonexistent/master.key", false);
        assert!(p.current().is_err());
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(decode_key("not base64!", "k").is_err());
        assert!(decode_key(&STANDARD.encode([1u8; 16]), "k").is_err());
        assert!(decode_key(&STANDARD.encode([1u8; 32]), "k").is_ok());
    }
}
