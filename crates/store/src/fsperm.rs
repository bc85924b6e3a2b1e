//! Owner-only files and directories. State holds secrets (later: the vault), so the data
//! directory is 0700 and its files 0600 from the moment they exist; wider modes found on an
//! existing path are narrowed.

use crate::StoreError;
use std::{
    fs, os::unix::fs::DirBuilderExt, os::unix::fs::OpenOptionsExt, os::unix::fs::PermissionsExt,
    path::Path,
};

fn fs_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Filesystem {
        path: path.display().to_string(),
        source,
    }
}

/// Creates `dir` (and parents) with mode 0700, or narrows an existing one to 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        narrow(dir, 0o700)
    } else {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fs_err(dir))
    }
}

/// Creates `file` empty with mode 0600 if missing, or narrows an existing one to 0600.
pub fn create_private_file(file: &Path) -> Result<(), StoreError> {
    if file.exists() {
        return narrow(file, 0o600);
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map(drop)
        .map_err(fs_err(file))
}

fn narrow(path: &Path, mode: u32) -> Result<(), StoreError> {
    let meta = fs::metadata(path).map_err(fs_err(path))?;
    let current = meta.permissions().mode() & 0o777;
    if current & !mode != 0 {
        tracing::warn!(path = %path.display(), from = format!("{current:o}"), to = format!("{mode:o}"), "narrowing permissions of gateway state");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(fs_err(path))?;
    }
    Ok(())
}
