//! The caller's own API tokens and sessions.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use veil_api_types::*;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::views;

#[utoipa::path(get, path = "/api/v1/me/tokens", tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Your sessions and API tokens, including revoked and expired ones", body = Vec<TokenView>),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<TokenView>>> {
    let now = s.core.now();
    Ok(Json(
        s.core
            .list_tokens(&p)
            .await?
            .into_iter()
            .map(|t| views::token(t, now))
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/me/tokens", tag = "tokens",
    security(("bearer" = [])),
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created; the token is shown once", body = CreateTokenResponse),
        (status = 400, description = "`invalid_input`: bad name or lifetime", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
        (status = 409, description = "`token_name_taken`", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreateTokenResponse>)> {
    let ttl = req.expires_in_seconds.map(Duration::from_secs);
    let (record, secret) = s.core.create_api_token(&p, &req.name, ttl).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateTokenResponse {
            token: secret.expose().to_string(),
            info: views::token(record, s.core.now()),
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/me/tokens/{id}", tag = "tokens",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The token's public id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
        (status = 404, description = "`token_not_found`: not yours, or already revoked", body = ErrorBody),
    ))]
pub(crate) async fn revoke(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.core.revoke_token(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
