//! Privacy budgets.

use axum::Json;
use axum::extract::State;
use veil_api_types::*;
use veil_core::{BudgetReport, UserRef};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, Caller};
use crate::views;

fn report(r: BudgetReport) -> BudgetReportView {
    BudgetReportView {
        user: r.user.email,
        budgets: r.budgets.into_iter().map(views::budget).collect(),
        recent: r.recent.into_iter().map(views::ledger).collect(),
    }
}

#[utoipa::path(get, path = "/api/v1/me/budget", tag = "budgets",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Your budgets and recent spending", body = BudgetReportView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`password_change_required`", body = ErrorBody),
    ))]
pub(crate) async fn mine(
    State(s): State<AppState>,
    Caller(p): Caller,
) -> ApiResult<Json<BudgetReportView>> {
    Ok(Json(report(s.core.budget_report(&p, None).await?)))
}

#[utoipa::path(get, path = "/api/v1/users/{user}/budget", tag = "budgets",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "Numeric id or email")),
    responses(
        (status = 200, description = "The user's budgets and recent spending", body = BudgetReportView),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `budgets:read`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn show(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(user): ApiPath<String>,
) -> ApiResult<Json<BudgetReportView>> {
    Ok(Json(report(
        s.core
            .budget_report(&p, Some(&UserRef::parse(&user)))
            .await?,
    )))
}

#[utoipa::path(put, path = "/api/v1/users/{user}/budget", tag = "budgets",
    security(("bearer" = [])),
    params(("user" = String, Path, description = "Numeric id or email")),
    request_body = SetBudgetRequest,
    responses(
        (status = 200, description = "The cap as set; what was spent stays spent", body = BudgetView),
        (status = 400, description = "`invalid_input`: negative, non-finite or too large amounts, bad dataset name", body = ErrorBody),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs `budgets:manage`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn set(
    State(s): State<AppState>,
    Caller(p): Caller,
    ApiPath(user): ApiPath<String>,
    ApiJson(req): ApiJson<SetBudgetRequest>,
) -> ApiResult<Json<BudgetView>> {
    let b = s
        .core
        .set_budget(
            &p,
            &UserRef::parse(&user),
            req.dataset.as_deref(),
            req.epsilon,
            req.delta,
        )
        .await?;
    Ok(Json(views::budget(b)))
}
