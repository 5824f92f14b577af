//! Roles and the permission catalogue.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use veil_api_types::*;
use veil_types::{Permission, PermissionSet};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::views;

#[utoipa::path(get, path = "/api/v1/roles", tag = "roles",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Preset roles first, then custom ones", body = Vec<RoleView>),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `roles:read`", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<Vec<RoleView>>> {
    Ok(Json(
        s.core
            .list_roles(&p)
            .await?
            .into_iter()
            .map(views::role)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/roles", tag = "roles",
    security(("bearer" = [])),
    request_body = CreateRoleRequest,
    responses(
        (status = 201, description = "Created", body = RoleView),
        (status = 400, description = "`invalid_input`: bad name or unknown permission", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs `roles:manage`) or `privilege_escalation`", body = ErrorBody),
        (status = 409, description = "`role_exists` or `preset_role`", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<CreateRoleRequest>,
) -> ApiResult<(StatusCode, Json<RoleView>)> {
    let permissions = req
        .permissions
        .iter()
        .map(|name| name.parse::<Permission>())
        .collect::<Result<PermissionSet, _>>()
        .map_err(|e| ApiError::invalid(format!("{e}; see GET /api/v1/permissions")))?;
    let role = s
        .core
        .create_role(&p, &req.name, &permissions, &req.description)
        .await?;
    Ok((StatusCode::CREATED, Json(views::role(role))))
}

#[utoipa::path(get, path = "/api/v1/roles/{name}", tag = "roles",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Role name")),
    responses(
        (status = 200, description = "The role", body = RoleView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `roles:read`", body = ErrorBody),
        (status = 404, description = "`role_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn show(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<RoleView>> {
    Ok(Json(views::role(s.core.get_role(&p, &name).await?)))
}

#[utoipa::path(delete, path = "/api/v1/roles/{name}", tag = "roles",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Role name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs `roles:manage`) or `privilege_escalation`", body = ErrorBody),
        (status = 404, description = "`role_not_found`", body = ErrorBody),
        (status = 409, description = "`role_in_use` or `preset_role`", body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.core.delete_role(&p, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/permissions", tag = "roles",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every permission a role can hold", body = Vec<PermissionView>),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `roles:read`", body = ErrorBody),
    ))]
pub(crate) async fn permissions(Caller(_): Caller) -> Json<Vec<PermissionView>> {
    Json(
        Permission::ALL
            .iter()
            .map(|p| PermissionView {
                name: p.as_str().into(),
                description: p.description().into(),
            })
            .collect(),
    )
}
