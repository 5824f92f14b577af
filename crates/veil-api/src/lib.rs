//! Veil's REST API: the only crate that knows HTTP.
//!
//! - [`router`] builds the axum router from the endpoint table in [`endpoints`], where every
//!   route declares the access it needs; a middleware enforces it before the handler runs.
//! - [`error`] holds the one mapping from core errors to wire codes and statuses.
//! - [`serve`] runs the router on a TCP or TLS listener until the shutdown future resolves.
//!
//! Handlers are thin: parse the request, call one `veil_core::Core` method, convert the result
//! into a wire type. Rules live in the core.

mod conn;
pub mod endpoints;
pub mod error;
mod extract;
mod handlers;
pub mod metrics;
pub mod openapi;
pub mod tls;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use veil_core::Core;

pub use conn::{ConnectionLimits, serve};

/// HTTP-level settings, validated by the binary.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Origins allowed to call the API from a browser (the admin UI). Empty: none.
    pub cors_origins: Vec<HeaderValue>,
    /// Longest a request may take before the node answers `timeout`.
    pub request_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_idle_timeout: Duration,
    pub connections: ConnectionLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            cors_origins: Vec::new(),
            request_timeout: Duration::from_secs(600),
            body_idle_timeout: Duration::from_secs(30),
            connections: ConnectionLimits::default(),
        }
    }
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    pub metrics: Arc<metrics::Metrics>,
}

/// The peer address of a connection, for rate limiting and audit entries.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the complete router: every endpoint with its access check, plus the cross-cutting
/// layers (request ids, tracing, metrics, CORS, body limit, timeout, security headers).
pub fn router(core: Arc<Core>, config: &ApiConfig) -> Router {
    let state = AppState {
        core,
        metrics: Arc::new(metrics::Metrics::default()),
    };
    let mut app = Router::new();
    for e in endpoints::endpoints() {
        app = app.route(e.path, e.method_router(state.clone()));
    }
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(config.cors_origins.clone()))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600));
    app.fallback(handlers::system::not_found)
        .method_not_allowed_fallback(handlers::system::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            config.body_idle_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::record,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        .layer(axum::middleware::from_fn(error::timeout_body))
        .layer(axum::middleware::from_fn(error::close_after_error_with_body))
        .layer(cors)
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
                let id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // The path only, never the query string (it may carry filters with emails).
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .with_state(state)
}
