//! Login, logout, the caller's identity, password changes.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use veil_api_types::*;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, Caller, ClientIp};
use crate::views;

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; the token authenticates later requests", body = LoginResponse),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many failures", body = ErrorBody),
        (status = 400, description = "`invalid_input` or `malformed_json`", body = ErrorBody),
    ))]
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let out = state.core.login(&req.email, &req.password, &ip).await?;
    Ok(Json(LoginResponse {
        token: out.token.expose().to_string(),
        token_id: out.token.id().to_string(),
        expires_at: views::time(out.expires_at),
        user: views::user(out.user),
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The token used for this request is revoked"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
    ))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<StatusCode> {
    state.core.logout(&p).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Who the token belongs to, with their permissions", body = Me),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
    ))]
pub(crate) async fn me(Caller(p): Caller) -> ApiResult<Json<Me>> {
    Ok(Json(Me {
        permissions: p.permissions.to_names(),
        token: CurrentToken {
            id: p.token_id,
            kind: p.token_kind.as_str().to_string(),
        },
        user: views::user(p.user),
    }))
}

#[utoipa::path(put, path = "/api/v1/me/password", tag = "auth",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed; the user's other sessions are ended"),
        (status = 401, description = "`unauthenticated` or `invalid_credentials` (wrong current password)", body = ErrorBody),
        (status = 422, description = "`weak_password`", body = ErrorBody),
    ))]
pub(crate) async fn change_password(
    State(state): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    state
        .core
        .change_password(&p, &req.current_password, &req.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
