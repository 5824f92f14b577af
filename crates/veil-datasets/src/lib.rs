//! Encrypted dataset storage and query execution.
//!
//! Each dataset is one Parquet file under `<data dir>/datasets/`, encrypted with Parquet
//! Modular Encryption (AES-256-GCM, encrypted footer, so column names and statistics are
//! sealed too) under its own random 256-bit data key. The data key is stored only wrapped by
//! the master key (in the metadata store, next to the dataset's record); deleting the record
//! destroys the key. The file's AAD prefix is its id, so files cannot be swapped between
//! datasets.
//!
//! [`Storage`] is the only holder of the master key on this path: callers get wrapped keys
//! and hand them back; raw data keys never leave this crate.

mod dates;
mod fixed;
mod footer;
mod ingest;
pub mod models;
mod query;
mod rowkey;
pub mod scan;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use veil_crypto::{DataKey, MasterKey, WrappedKey};
use veil_dp::{CostedPlan, ExactResult, Manifest};

pub use ingest::{Format, IngestError};
pub use models::{ModelFileError, StoredModel};
#[cfg(feature = "bench")]
pub use query::execute_unencrypted;
pub use query::{ExecError, PreparedQuery};

/// Why a query could not be prepared (nothing has been read, so nothing need be charged).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The dataset's file is not on this node, or its key does not unwrap here.
    #[error("the dataset is not available on this node: {0}")]
    Unavailable(String),
    /// The generated SQL did not plan: a bug in the renderer, caught before any charge.
    #[error("the query did not plan: {0}")]
    Plan(String),
}
pub use scan::{Labels, ScanBatch, ScanStream};
pub use schema::Violation;

/// Upload limits, set by the node.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest upload in bytes.
    pub max_upload_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// A stored dataset file, as recorded in the metadata store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Random hex id: the file name and the encryption AAD.
    pub file_id: String,
    pub wrapped_key: WrappedKey,
    pub rows: u64,
    pub bytes_received: u64,
    pub bytes_stored: u64,
}

#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    master: Arc<MasterKey>,
    /// Threads a query may use.
    threads: usize,
    /// The key ranking a unit's rows when its contribution is bounded: fresh per session
    /// (`None`), except in tests that need the same choice twice.
    row_key: Option<veil_crypto::prf::Prf>,
    /// Where queries read and compute (see `Executor`).
    executor: Arc<Executor>,
}

/// The runtime queries execute on: DataFusion's scans and aggregations are CPU-bound tasks,
/// and on the runtime that serves requests they would queue logins, listings and budget reads
/// behind analysts' work. On threads of their own, the operating system shares the cores
/// between the two instead.
#[derive(Debug)]
struct Executor(Option<tokio::runtime::Runtime>);

impl Executor {
    fn start(threads: usize) -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("veil-query")
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // A runtime dropped from async code must not block on its tasks.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Makes a rename (or a new file) in `dir` durable: renaming only changes the directory, which
/// must be synced itself before a record may point at the file.
pub(crate) fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn label(file_id: &str) -> String {
    format!("dataset:{file_id}")
}

impl Storage {
    /// Opens (creating) `dir` and removes temp files a crash may have left.
    pub fn open(dir: impl Into<PathBuf>, master: Arc<MasterKey>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        // Datasets sit at the top; model files and evaluation keys in their folders.
        for folder in [dir.clone(), dir.join("models"), dir.join("fhe-keys")] {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp-") || name.starts_with(".spool-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            dir,
            master,
            threads,
            row_key: None,
            executor: Arc::new(Executor::start(threads)?),
        })
    }

    /// Ranks bounded rows under a fixed key (tests comparing two runs' choices).
    #[cfg(test)]
    pub(crate) fn with_row_key(mut self, key: [u8; 32]) -> Self {
        self.row_key = Some(veil_crypto::prf::Prf::with_key(key));
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, file_id: &str) -> PathBuf {
        self.dir.join(format!("{file_id}.parquet"))
    }

    fn valid_id(file_id: &str) -> bool {
        file_id.len() == 32 && file_id.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// Streams an upload into a new encrypted file. Nothing is left behind on failure.
    pub async fn ingest<S, E>(
        &self,
        manifest: &Manifest,
        format: Format,
        body: S,
        limits: Limits,
    ) -> Result<StoredFile, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let file_id = hex::encode(veil_crypto::random::bytes::<16>());
        let key = DataKey::generate();
        let wrapped_key = self.master.wrap(&key, &label(&file_id));
        let job = ingest::Job {
            manifest: manifest.clone(),
            format,
            key,
            aad: file_id.clone(),
            temp_path: self.dir.join(format!(".tmp-{file_id}.parquet")),
            final_path: self.path(&file_id),
            spool_path: self.dir.join(format!(".spool-{file_id}")),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let worker = tokio::task::spawn_blocking(move || ingest::run(job, rx));
        let mut received = 0u64;
        let mut body = std::pin::pin!(body);
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if received > limits.max_upload_bytes {
                        failure = Some(IngestError::TooLarge {
                            limit: limits.max_upload_bytes,
                        });
                        break;
                    }
                    // The worker stops early on fatal problems; its result explains why.
                    if tx.send(bytes).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(IngestError::Interrupted(e.to_string()));
                    break;
                }
            }
        }
        drop(tx);
        let result = worker
            .await
            .map_err(|e| IngestError::Io(format!("ingest worker failed: {e}")))?;
        if let Some(f) = failure {
            // The worker may have finished a partial file: remove it.
            let _ = std::fs::remove_file(self.path(&file_id));
            return Err(f);
        }
        let (rows, bytes_stored) = result?;
        Ok(StoredFile {
            file_id,
            wrapped_key,
            rows,
            bytes_received: received,
            bytes_stored,
        })
    }

    /// Deletes a dataset's file (its key is destroyed by deleting its metadata record).
    pub fn remove(&self, file_id: &str) -> std::io::Result<()> {
        if !Self::valid_id(file_id) {
            return Err(std::io::Error::other("invalid file id"));
        }
        match std::fs::remove_file(self.path(file_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Checks, without reading any row, that a dataset's file is on this node and its key
    /// unwraps: callers check this before charging for a run over it (a node that shares its
    /// store with others may not hold every dataset's file).
    pub fn check_readable(&self, file_id: &str, wrapped_key: &WrappedKey) -> Result<(), ExecError> {
        if !Self::valid_id(file_id) {
            return Err(ExecError("invalid file id".into()));
        }
        let path = self.path(file_id);
        if !path.is_file() {
            return Err(ExecError(format!(
                "dataset file {} is missing",
                path.display()
            )));
        }
        self.master
            .unwrap_key(wrapped_key, &label(file_id))
            .map(drop)
            .map_err(|e| ExecError(e.to_string()))
    }

    /// Prepares a plan's measures over a dataset file (everything short of reading rows; see
    /// [`PreparedQuery`]). Callers prepare before charging, and run after.
    pub async fn prepare(
        &self,
        file_id: &str,
        wrapped_key: &WrappedKey,
        manifest: &Manifest,
        costed: &CostedPlan,
    ) -> Result<PreparedQuery, PrepareError> {
        self.check_readable(file_id, wrapped_key)
            .map_err(|e| PrepareError::Unavailable(e.0))?;
        let ctx = self
            .session(file_id, wrapped_key, manifest)
            .await
            .map_err(|e| PrepareError::Unavailable(e.0))?;
        let executor = self
            .executor
            .handle()
            .ok_or_else(|| PrepareError::Unavailable("the node is shutting down".into()))?;
        query::prepare(ctx, manifest, costed, executor)
            .await
            .map_err(|e| PrepareError::Plan(e.0))
    }

    /// Computes a plan's exact measures over a dataset file (prepare, then run).
    pub async fn execute(
        &self,
        file_id: &str,
        wrapped_key: &WrappedKey,
        manifest: &Manifest,
        costed: &CostedPlan,
    ) -> Result<ExactResult, ExecError> {
        self.prepare(file_id, wrapped_key, manifest, costed)
            .await
            .map_err(|e| ExecError(e.to_string()))?
            .run()
            .await
    }

    /// A DataFusion session with the dataset registered as `data`.
    pub(crate) async fn session(
        &self,
        file_id: &str,
        wrapped_key: &WrappedKey,
        manifest: &Manifest,
    ) -> Result<datafusion::prelude::SessionContext, ExecError> {
        if !Self::valid_id(file_id) {
            return Err(ExecError("invalid file id".into()));
        }
        let path = self.path(file_id);
        if !path.is_file() {
            return Err(ExecError(format!(
                "dataset file {} is missing",
                path.display()
            )));
        }
        let key = self
            .master
            .unwrap_key(wrapped_key, &label(file_id))
            .map_err(|e| ExecError(e.to_string()))?;
        query::session(
            query::FileRef {
                path,
                key: Some((key, file_id.to_string())),
            },
            manifest,
            self.threads,
            self.row_key
                .clone()
                .unwrap_or_else(veil_crypto::prf::Prf::random),
        )
        .await
    }
}

#[cfg(test)]
mod tests;
