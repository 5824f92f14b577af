//! The audit log.

use axum::Json;
use axum::extract::State;
use veil_api_types::*;
use veil_core::records::AuditFilter;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiQuery, Caller};
use crate::views;

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "Entries in sequence order", body = AuditPageView),
        (status = 400, description = "`invalid_input`: bad query parameters", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `audit:read`", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPageView>> {
    let page = s
        .core
        .list_audit(
            &p,
            &AuditFilter {
                after_seq: q.after.unwrap_or(0),
                limit: q.limit.unwrap_or(100),
                actor: q.actor,
                action_prefix: q.action,
            },
        )
        .await?;
    Ok(Json(AuditPageView {
        entries: page.entries.into_iter().map(views::audit).collect(),
        next_after: page.next_after,
    }))
}

#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The result of recomputing the whole chain; `first_bad` names the first edited, missing or forged entry", body = AuditVerifyView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `audit:read`", body = ErrorBody),
    ))]
pub(crate) async fn verify(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<AuditVerifyView>> {
    let r = s.core.verify_audit(&p).await?;
    Ok(Json(AuditVerifyView {
        ok: r.ok(),
        entries_checked: r.entries_checked,
        first_bad: r
            .first_bad
            .map(|(seq, reason)| AuditBreakView { seq, reason }),
    }))
}
