//! The master key file: 64 hex characters, readable by the node's user only.

use std::io::Write;
use std::path::Path;

use veil_crypto::MasterKey;

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("cannot read the master key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the master key file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("the master key file {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "the master key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen { path: String, mode: u32 },
    #[error(
        "the master key file {path} is missing but the metadata store already holds data sealed with a key; \
         restore the key file (or point VEIL_MASTER_KEY_FILE at it)"
    )]
    Missing { path: String },
}

/// Reads the key if the file exists.
pub(crate) fn load(path: &Path) -> Result<Option<MasterKey>, MasterKeyError> {
    let shown = || path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MasterKeyError::Read {
                path: shown(),
                source,
            });
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| MasterKeyError::Read {
                path: shown(),
                source,
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(MasterKeyError::TooOpen {
                path: shown(),
                mode,
            });
        }
    }
    let key = MasterKey::from_hex(&text).map_err(|e| MasterKeyError::Invalid {
        path: shown(),
        reason: e.to_string(),
    })?;
    Ok(Some(key))
}

/// Writes a new key file with mode 0600, refusing to overwrite an existing one.
pub(crate) fn create(path: &Path, key: &MasterKey) -> Result<(), MasterKeyError> {
    let err = |source| MasterKeyError::Create {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(format!("{}\n", key.to_hex()).as_bytes())
        .map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_and_refuse_open_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        assert!(load(&path).expect("missing is fine").is_none());
        let key = MasterKey::generate();
        create(&path, &key).expect("create");
        let loaded = load(&path).expect("load").expect("present");
        assert_eq!(loaded.to_hex(), key.to_hex());
        assert!(create(&path, &key).is_err(), "never overwrites");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(load(&path), Err(MasterKeyError::TooOpen { .. })));
        }
    }
}
