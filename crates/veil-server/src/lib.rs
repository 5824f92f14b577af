//! Assembles a Veil node from its configuration: data directory, master key, metadata store,
//! core, HTTP API. The `veil serve` command and the end-to-end tests both start nodes here.
//!
//! There is no global state: several nodes can run in one process (the tests do).

pub mod demo;
mod demo_data;
mod master_key;
/// Running a node inside a test or a benchmark (the `testing` feature: not in the product).
#[cfg(feature = "testing")]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use veil_api::ApiConfig;
use veil_core::{Clock, Core, CoreSettings, OneTimePassword, SystemClock};
use veil_crypto::AuditKey;
use veil_store::Store;
use veil_store_postgres::PostgresStore;
use veil_store_sqlite::SqliteStore;

pub use demo_data::PATIENTS_MANIFEST as DEMO_PATIENTS_MANIFEST;
pub use master_key::MasterKeyError;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything a node needs to start, already validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; `None` for the embedded SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Where the master key lives; `None` for `data_dir/master.key`.
    pub master_key_file: Option<PathBuf>,
    /// The owner account created on first start.
    pub owner_email: String,
    /// The owner's password on first start; `None` to generate a one-time password.
    pub admin_password: Option<String>,
    pub tls: Option<TlsFiles>,
    pub api: ApiConfig,
    pub core: CoreSettings,
    /// The node's time (the wall clock; tests give a `ManualClock` to move it at will).
    pub clock: Arc<dyn Clock>,
}

impl ServerConfig {
    /// Defaults for a node whose data lives in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            master_key_file: None,
            owner_email: "owner@localhost".into(),
            admin_password: None,
            tls: None,
            api: ApiConfig::default(),
            core: CoreSettings::default(),
            clock: Arc::new(SystemClock),
        }
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the data directory {path} is open to other users (mode {mode:o}) and not empty; \
         run `chmod 700 {path}` if nobody else has read it, and start again"
    )]
    DataDirTooOpen { path: String, mode: u32 },
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    #[error("cannot open the metadata store: {0}")]
    Store(String),
    #[error(
        "the master key does not match this metadata store (its audit log head is sealed with another key); \
         restore the right key file, or investigate tampering"
    )]
    KeyMismatch,
    #[error("unsupported database URL {0:?}: use postgres://… or sqlite://…")]
    DatabaseUrl(String),
    #[error("cannot set up the owner account: {0}")]
    Owner(String),
    #[error("TLS: {0}")]
    Tls(#[from] veil_api::tls::TlsError),
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// The two store backends, kept concrete so they can be closed cleanly on shutdown.
#[derive(Debug, Clone)]
enum StoreHandle {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
}

impl StoreHandle {
    fn as_dyn(&self) -> Arc<dyn Store> {
        match self {
            StoreHandle::Sqlite(s) => s.clone(),
            StoreHandle::Postgres(s) => s.clone(),
        }
    }

    async fn close(&self) {
        match self {
            StoreHandle::Sqlite(s) => s.close().await,
            StoreHandle::Postgres(s) => s.close().await,
        }
    }
}

/// A node ready to serve.
#[derive(Debug)]
pub struct Prepared {
    pub core: Arc<Core>,
    /// The owner's one-time password, on the very first start only. Print it once.
    pub owner_password: Option<OneTimePassword>,
    store: StoreHandle,
    tls: Option<Arc<rustls::ServerConfig>>,
    api: ApiConfig,
}

/// Creates the data directory (0700), or checks an existing one: it holds the metadata
/// database (password hashes, emails, the audit log, wrapped data keys), so nobody but the
/// node's user may read it. An existing directory open to others is tightened if it is empty
/// (a mount point or a `mkdir` made for the node) and refused otherwise, since what is already
/// inside may have been read.
fn ensure_private_dir(path: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(err)?;
        restrict_to_owner(path).map_err(err)?;
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            // A fresh ext4 mount point holds only `lost+found`.
            let empty = std::fs::read_dir(path)
                .map_err(err)?
                .flatten()
                .all(|e| e.file_name() == "lost+found");
            if !empty {
                return Err(StartError::DataDirTooOpen {
                    path: path.display().to_string(),
                    mode,
                });
            }
            restrict_to_owner(path).map_err(err)?;
        }
    }
    Ok(())
}

fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

async fn open_store(config: &ServerConfig, key: AuditKey) -> Result<StoreHandle, StartError> {
    let store_err = |e: veil_store::StoreError| StartError::Store(e.to_string());
    match config.database_url.as_deref() {
        None => Ok(StoreHandle::Sqlite(Arc::new(
            veil_store_sqlite::open(&config.data_dir.join("veil.db"), key, config.clock.clone())
                .await
                .map_err(store_err)?,
        ))),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(StoreHandle::Postgres(Arc::new(
                veil_store_postgres::open(url, key, config.clock.clone())
                    .await
                    .map_err(store_err)?,
            )))
        }
        Some(url) if url.starts_with("sqlite:") => Ok(StoreHandle::Sqlite(Arc::new(
            veil_store_sqlite::open_url(url, key, config.clock.clone())
                .await
                .map_err(store_err)?,
        ))),
        Some(other) => Err(StartError::DatabaseUrl(redact_url(other))),
    }
}

/// Drops any password from a URL before it is shown.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Opens everything and creates the owner on first start, but does not listen yet.
pub async fn prepare(config: ServerConfig) -> Result<Prepared, StartError> {
    ensure_private_dir(&config.data_dir)?;
    let key_path = config.master_key_path();
    let loaded = master_key::load(&key_path)?;
    let (master, fresh) = match loaded {
        Some(k) => (k, false),
        None => (veil_crypto::MasterKey::generate(), true),
    };
    let audit_key = veil_store::audit_key(&master);
    let store = open_store(&config, audit_key.clone()).await?;
    let head = store
        .as_dyn()
        .audit_head()
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    if let Some(h) = &head {
        let hash =
            veil_store::audit::digest(&h.hash).map_err(|e| StartError::Store(e.to_string()))?;
        if !audit_key.verify_head(h.seq, &hash, &h.seal) {
            store.close().await;
            return Err(if fresh {
                MasterKeyError::Missing {
                    path: key_path.display().to_string(),
                }
                .into()
            } else {
                StartError::KeyMismatch
            });
        }
    }
    if fresh {
        // Only now, with an empty store confirmed, is a new key safe to keep.
        master_key::create(&key_path, &master)?;
        tracing::info!(path = %key_path.display(), "created a new master key");
    }

    let tls = match &config.tls {
        Some(t) => Some(veil_api::tls::load_server_config(&t.cert, &t.key)?),
        None => None,
    };

    let datasets = Arc::new(
        veil_datasets::Storage::open(config.data_dir.join("datasets"), Arc::new(master)).map_err(
            |source| StartError::DataDir {
                path: config.data_dir.join("datasets").display().to_string(),
                source,
            },
        )?,
    );
    let core = Arc::new(Core::new(
        store.as_dyn(),
        datasets,
        audit_key,
        config.clock.clone(),
        config.core.clone(),
    ));
    core.init()
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
    let owner_password = core
        .bootstrap_owner(&config.owner_email, config.admin_password.as_deref())
        .await
        .map_err(|e| StartError::Owner(e.to_string()))?;
    Ok(Prepared {
        core,
        owner_password,
        store,
        tls,
        api: config.api,
    })
}

impl Prepared {
    pub fn backend(&self) -> &'static str {
        self.core.store().backend_name()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, lets in-flight requests finish, then closes the store.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let app = veil_api::router(self.core.clone(), &self.api);
        let result = veil_api::serve(
            app,
            listener,
            self.tls.clone(),
            self.api.connections.clone(),
            shutdown,
        )
        .await;
        self.store.close().await;
        result.map_err(StartError::Serve)
    }
}

/// Prepares and serves a node: `veil_server::run(config, listener, shutdown)`.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    prepare(config).await?.serve(listener, shutdown).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_urls_are_shown_without_passwords() {
        assert_eq!(
            super::redact_url("postgres://veil:s3cret@db:5432/veil"),
            "postgres://…@db:5432/veil"
        );
        assert_eq!(super::redact_url("mysql://x"), "mysql://x");
    }

    #[cfg(unix)]
    #[test]
    fn a_data_directory_open_to_others_is_tightened_when_empty_and_refused_otherwise() {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        let root = tempfile::tempdir().expect("tempdir");

        let fresh = root.path().join("fresh");
        super::ensure_private_dir(&fresh).expect("created");
        assert_eq!(mode(&fresh), 0o700);

        let mounted = root.path().join("mounted");
        std::fs::create_dir(&mounted).expect("mkdir");
        std::fs::set_permissions(&mounted, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        super::ensure_private_dir(&mounted).expect("an empty directory is tightened");
        assert_eq!(mode(&mounted), 0o700);

        let used = root.path().join("used");
        std::fs::create_dir(&used).expect("mkdir");
        std::fs::write(used.join("veil.db"), b"").expect("write");
        std::fs::set_permissions(&used, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let refused = super::ensure_private_dir(&used).expect_err("refused");
        assert!(
            matches!(
                refused,
                super::StartError::DataDirTooOpen { mode: 0o750, .. }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("chmod 700"), "{refused}");
        assert_eq!(
            mode(&used),
            0o750,
            "left as it was for the operator to judge"
        );
    }
}
