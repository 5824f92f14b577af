//! Starting real nodes on ephemeral ports, for end-to-end tests and benchmarks.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{ServerConfig, StartError, prepare};

/// A node serving on `127.0.0.1:<random port>` in the current runtime.
#[derive(Debug)]
pub struct RunningNode {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>` (or `https://localhost:<port>` with TLS).
    pub url: String,
    /// The owner's one-time password, if this start created the owner without a password.
    pub owner_password: Option<String>,
    /// The node's core, for benchmarks that measure use-cases without HTTP in between.
    pub core: Arc<veil_core::Core>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
}

impl RunningNode {
    /// Prepares the node, binds port 0 and starts serving in a background task.
    pub async fn start(config: ServerConfig) -> Result<Self, StartError> {
        let prepared = prepare(config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = if prepared.is_tls() {
            format!("https://localhost:{}", addr.port())
        } else {
            format!("http://{addr}")
        };
        let owner_password = prepared
            .owner_password
            .as_ref()
            .map(|p| p.expose().to_string());
        let core = prepared.core.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(prepared.serve(listener, async move {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            url,
            owner_password,
            core,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Stops accepting, waits for in-flight requests and for the store to close.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t
                .await
                .map_err(|e| StartError::Serve(std::io::Error::other(e.to_string())))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
