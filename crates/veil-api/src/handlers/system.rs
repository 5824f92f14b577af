//! Health, metrics, the OpenAPI document, and the fallbacks for unknown routes.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use veil_api_types::{ErrorBody, ErrorCode, Health};

use crate::AppState;
use crate::error::ApiError;

#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "The node is up and its store answers", body = Health)))]
pub(crate) async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    // A cheap read proves the store is reachable, not just the process.
    state
        .core
        .store()
        .audit_head()
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        store: state.core.store().backend_name().into(),
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "system",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `metrics:read` (request counts, failures and latencies depend on private data)", body = ErrorBody),
    ))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "This API's OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see /api/v1/openapi.json",
    )
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not accept that method; see /api/v1/openapi.json",
    )
}
