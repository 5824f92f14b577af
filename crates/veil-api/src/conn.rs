//! The accept loop and what each connection may hold.
//!
//! A node reachable by strangers must not let connections that send nothing (or almost
//! nothing) use up its file descriptors. So:
//! - at most `max_connections` are open at once; beyond that the loop stops accepting and new
//!   clients wait in the kernel's backlog (no descriptor is spent on them);
//! - at most `max_per_address` come from one address (an IPv6 /64 counts as one address);
//!   more are closed as soon as they are accepted;
//! - a TLS handshake must finish within `handshake_timeout`, on the connection's own task;
//! - a connection's first request must have arrived within `header_read_timeout` of its
//!   opening (while the protocol is still being detected, hyper applies no timeout of its own);
//! - HTTP/1 request headers, including the wait for the next request on a kept-alive
//!   connection, must arrive within `header_read_timeout`;
//! - a connection (HTTP/1 or HTTP/2) with no request in progress (a response still being
//!   sent counts) for `idle_timeout` is closed: idleness is measured in requests, not bytes,
//!   since HTTP/2 pings move bytes on a connection nobody uses;
//! - request bodies must keep arriving (the router's body timeout, see `router`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::ClientAddr;

/// Limits on connections, whatever they carry.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at once (the binary sizes it from the open-files limit).
    pub max_connections: usize,
    /// Open connections from one address; 0 turns the check off (behind a reverse proxy,
    /// every connection comes from the proxy's address).
    pub max_per_address: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_per_address: 64,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `app` on `listener` (plain TCP, or TLS if `tls` is given) until `shutdown`
/// resolves; then stops accepting and lets requests in progress finish.
pub async fn serve(
    app: Router,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // `Counted` with limit 0 counts without limiting: no cap per address.
    let per_address = veil_core::Counted::new(limits.max_per_address);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let acceptor = tls.map(TlsAcceptor::from);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, addr) = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = per_address.take(veil_core::client_address_key(addr.ip())) else {
            tracing::debug!(peer = %addr, "too many connections from this address; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = service(app.clone(), addr, activity.clone());
        let (builder, acceptor, limits) = (builder.clone(), acceptor.clone(), limits.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _held = (slot, address_slot);
            let idle = activity.idle_for(limits.idle_timeout, limits.header_read_timeout);
            match acceptor {
                None => {
                    let io = TokioIo::new(stream);
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    tokio::select! {
                        r = watcher.watch(conn) => log_end(addr, r),
                        () = idle => tracing::debug!(peer = %addr, "idle connection closed"),
                    }
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
                    let tls = match handshake.await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let io = TokioIo::new(tls);
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    tokio::select! {
                        r = watcher.watch(conn) => log_end(addr, r),
                        () = idle => tracing::debug!(peer = %addr, "idle connection closed"),
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn log_end<E: std::fmt::Display>(addr: SocketAddr, r: Result<(), E>) {
    if let Err(e) = r {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}

/// The router as a hyper service for one connection: tells handlers the peer's address and
/// counts requests in progress, until their response body has been sent (a connection with
/// one is never idle).
fn service(
    app: Router,
    addr: SocketAddr,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(ClientAddr(addr)));
        let in_progress = activity.clone().request();
        let app = app.clone();
        async move {
            let response = tower::ServiceExt::oneshot(app, req).await;
            response.map(|r| {
                r.map(|body| {
                    axum::body::Body::new(Sending {
                        body,
                        _in_progress: in_progress,
                    })
                })
            })
        }
    })
}

/// A response body that keeps its request counted as in progress until it is sent (or
/// dropped).
struct Sending {
    body: axum::body::Body,
    _in_progress: InProgress,
}

impl hyper::body::Body for Sending {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// When a connection's last request ended, and how many are in progress.
struct Activity {
    opened: Instant,
    last_millis: AtomicU64,
    requests: AtomicUsize,
    any_request: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_millis: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            any_request: AtomicBool::new(false),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_millis.store(self.millis(), Ordering::Relaxed);
    }

    fn request(self: Arc<Self>) -> InProgress {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.any_request.store(true, Ordering::Release);
        InProgress(self)
    }

    /// Resolves once no request has been in progress for `limit`, or if no request at all
    /// has arrived within `first_request`.
    async fn idle_for(self: Arc<Self>, limit: Duration, first_request: Duration) {
        let as_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (limit_ms, first_ms) = (as_ms(limit), as_ms(first_request));
        let step = (limit.min(first_request) / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(step).await;
            let now = self.millis();
            if !self.any_request.load(Ordering::Acquire) && now >= first_ms {
                return;
            }
            let quiet = now.saturating_sub(self.last_millis.load(Ordering::Relaxed));
            if self.requests.load(Ordering::Acquire) == 0 && quiet >= limit_ms {
                return;
            }
        }
    }
}

struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.touch();
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}
