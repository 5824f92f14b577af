//! Model files: sealed whole with AES-256-GCM under a per-model data key wrapped by the
//! master key (models are small and read whole, so an envelope is the simple right tool).

use std::path::PathBuf;

use veil_crypto::{DataKey, WrappedKey, blob};

use crate::Storage;

fn label(file_id: &str) -> String {
    format!("model:{file_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("model file error: {0}")]
    Io(String),
    #[error("the model file cannot be decrypted")]
    Crypto,
}

/// A stored model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModel {
    pub file_id: String,
    pub wrapped_key: WrappedKey,
}

/// Writes `bytes` to a temp file beside `path` (named by `id`), syncs it, renames it into
/// place and syncs the directory: once this returns, a crash cannot leave the record that
/// follows pointing at a file that is missing or short.
fn write_atomically(path: &std::path::Path, id: &str, bytes: &[u8]) -> Result<(), ModelFileError> {
    use std::io::Write as _;
    let io = |e: std::io::Error| ModelFileError::Io(e.to_string());
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(io)?;
    let tmp = dir.join(format!(".tmp-{id}"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    crate::sync_dir(&dir).map_err(io)
}

impl Storage {
    fn model_path(&self, file_id: &str) -> PathBuf {
        self.dir
            .join("models")
            .join(format!("{file_id}.onnx.sealed"))
    }

    /// Seals and writes a model file (temp file, then rename).
    pub async fn store_model(&self, bytes: Vec<u8>) -> Result<StoredModel, ModelFileError> {
        let file_id = hex::encode(veil_crypto::random::bytes::<16>());
        let key = DataKey::generate();
        let wrapped_key = self.master.wrap(&key, &label(&file_id));
        let path = self.model_path(&file_id);
        let id = file_id.clone();
        tokio::task::spawn_blocking(move || {
            write_atomically(&path, &id, &blob::seal(&key, &label(&id), &bytes))
        })
        .await
        .map_err(|e| ModelFileError::Io(e.to_string()))??;
        Ok(StoredModel {
            file_id,
            wrapped_key,
        })
    }

    /// Reads and opens a model file.
    pub async fn load_model(
        &self,
        file_id: &str,
        wrapped_key: &WrappedKey,
    ) -> Result<Vec<u8>, ModelFileError> {
        if !Self::valid_id(file_id) {
            return Err(ModelFileError::Io("invalid file id".into()));
        }
        let key = self
            .master
            .unwrap_key(wrapped_key, &label(file_id))
            .map_err(|_| ModelFileError::Crypto)?;
        let path = self.model_path(file_id);
        let id = file_id.to_string();
        tokio::task::spawn_blocking(move || {
            let sealed = std::fs::read(&path).map_err(|e| ModelFileError::Io(e.to_string()))?;
            blob::open(&key, &label(&id), &sealed).map_err(|_| ModelFileError::Crypto)
        })
        .await
        .map_err(|e| ModelFileError::Io(e.to_string()))?
    }

    pub fn remove_model(&self, file_id: &str) -> std::io::Result<()> {
        if !Self::valid_id(file_id) {
            return Err(std::io::Error::other("invalid file id"));
        }
        match std::fs::remove_file(self.model_path(file_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// TFHE evaluation keys: public material (derived from a client key, useless for decryption),
/// stored as plain files named by their id, written through a temp file and renamed.
impl Storage {
    fn evaluation_key_path(&self, id: &str) -> Option<PathBuf> {
        let hex = id.strip_prefix("ek_")?;
        Self::valid_id(hex).then(|| self.dir.join("fhe-keys").join(format!("{id}.key")))
    }

    /// Writes an evaluation key under a new random id (`ek_` and 32 hex digits).
    pub async fn store_evaluation_key(
        &self,
        bytes: bytes::Bytes,
    ) -> Result<String, ModelFileError> {
        let id = format!("ek_{}", hex::encode(veil_crypto::random::bytes::<16>()));
        let path = self
            .evaluation_key_path(&id)
            .ok_or_else(|| ModelFileError::Io("invalid key id".into()))?;
        let tmp_id = id.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &tmp_id, &bytes))
            .await
            .map_err(|e| ModelFileError::Io(e.to_string()))??;
        Ok(id)
    }

    pub async fn load_evaluation_key(&self, id: &str) -> Result<Vec<u8>, ModelFileError> {
        let path = self
            .evaluation_key_path(id)
            .ok_or_else(|| ModelFileError::Io("invalid key id".into()))?;
        tokio::task::spawn_blocking(move || {
            std::fs::read(&path).map_err(|e| ModelFileError::Io(e.to_string()))
        })
        .await
        .map_err(|e| ModelFileError::Io(e.to_string()))?
    }

    pub fn remove_evaluation_key(&self, id: &str) -> std::io::Result<()> {
        let path = self
            .evaluation_key_path(id)
            .ok_or_else(|| std::io::Error::other("invalid key id"))?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
