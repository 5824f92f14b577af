//! User accounts.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use veil_api_types::*;
use veil_core::{UserRef, UserUpdateRequest};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::views;

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "All users, by email", body = Vec<UserView>),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `users:read`", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<UserView>>> {
    Ok(Json(
        s.core
            .list_users(&p)
            .await?
            .into_iter()
            .map(views::user)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created, with a one-time password shown once", body = CreateUserResponse),
        (status = 400, description = "`invalid_input`: bad email or role name", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs `users:manage`) or `privilege_escalation`", body = ErrorBody),
        (status = 404, description = "`role_not_found`", body = ErrorBody),
        (status = 409, description = "`user_exists`", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<CreateUserResponse>)> {
    let (user, otp) = s.core.create_user(&p, &req.email, &req.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateUserResponse {
            user: views::user(user),
            one_time_password: otp.expose().to_string(),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/users/{user}", tag = "users",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "Numeric id or email")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `users:read`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn show(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(user): ApiPath<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(views::user(
        s.core.get_user(&p, &UserRef::parse(&user)).await?,
    )))
}

#[utoipa::path(patch, path = "/api/v1/users/{user}", tag = "users",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "Numeric id or email")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The updated user; disabling also revokes their tokens", body = UserView),
        (status = 400, description = "`invalid_input`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs `users:manage`) or `privilege_escalation`", body = ErrorBody),
        (status = 404, description = "`user_not_found` or `role_not_found`", body = ErrorBody),
        (status = 409, description = "`last_owner` or `cannot_modify_self`", body = ErrorBody),
    ))]
pub(crate) async fn update(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(user): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateUserRequest>,
) -> ApiResult<Json<UserView>> {
    if req.role.is_none() && req.disabled.is_none() {
        return Err(ApiError::invalid(
            "nothing to change: give `role` and/or `disabled`",
        ));
    }
    let updated = s
        .core
        .update_user(
            &p,
            &UserRef::parse(&user),
            &UserUpdateRequest {
                role: req.role,
                disabled: req.disabled,
            },
        )
        .await?;
    Ok(Json(views::user(updated)))
}

#[utoipa::path(post, path = "/api/v1/users/{user}/password-reset", tag = "users",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "Numeric id or email")),
    responses(
        (status = 200, description = "A new one-time password, shown once; the user's sessions are ended", body = PasswordResetResponse),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs `users:manage`) or `privilege_escalation`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn reset_password(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(user): ApiPath<String>,
) -> ApiResult<Json<PasswordResetResponse>> {
    let otp = s.core.reset_password(&p, &UserRef::parse(&user)).await?;
    Ok(Json(PasswordResetResponse {
        one_time_password: otp.expose().to_string(),
    }))
}
