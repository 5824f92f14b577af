//! The endpoint table: every route, its method, and the access it needs.
//!
//! This table is the single declaration of who may call what. The router is built from it,
//! the access middleware enforces it, the OpenAPI test checks the document against it, and
//! the permission-matrix test calls every entry as every preset role. A route that is not in
//! this table does not exist.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use http::Method;
use veil_core::CoreError;
use veil_types::Permission;

use crate::AppState;
use crate::error::ApiError;
use crate::handlers::{audit, auth, budgets, datasets, fhe, models, roles, system, tokens, users};

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// Any valid token, even one whose user still has a one-time password (to see who they
    /// are, change the password, or log out).
    Authenticated,
    /// Any valid token of a user who has set their own password: self-service on one's own
    /// account, tokens and budget.
    SelfService,
    /// A valid token whose user's role holds this permission.
    Permission(Permission),
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub method: Method,
    /// The axum path template, e.g. `/api/v1/users/{user}`.
    pub path: &'static str,
    pub access: Access,
    /// Streams its own (large) body and enforces its own size limit.
    pub streaming_body: bool,
    route: fn() -> MethodRouter<AppState>,
}

macro_rules! endpoint {
    ($method:ident $path:literal, $access:expr, $handler:path) => {
        Endpoint {
            method: Method::$method,
            path: $path,
            access: $access,
            streaming_body: false,
            route: || axum::routing::on(MethodFilter::$method, $handler),
        }
    };
    ($method:ident $path:literal, $access:expr, $handler:path, streaming) => {
        Endpoint {
            streaming_body: true,
            ..endpoint!($method $path, $access, $handler)
        }
    };
}

/// Every endpoint of the node.
pub fn endpoints() -> Vec<Endpoint> {
    use Access::*;
    use veil_types::Permission as P;
    vec![
        endpoint!(GET "/healthz", Public, system::healthz),
        // Per-route counts, failures and latencies depend on what runs over private data.
        endpoint!(GET "/metrics", Permission(P::MetricsRead), system::metrics),
        endpoint!(GET "/api/v1/openapi.json", Public, system::openapi),
        endpoint!(POST "/api/v1/auth/login", Public, auth::login),
        endpoint!(POST "/api/v1/auth/logout", Authenticated, auth::logout),
        endpoint!(GET "/api/v1/me", Authenticated, auth::me),
        endpoint!(PUT "/api/v1/me/password", Authenticated, auth::change_password),
        endpoint!(GET "/api/v1/me/budget", SelfService, budgets::mine),
        endpoint!(GET "/api/v1/me/tokens", SelfService, tokens::list),
        endpoint!(POST "/api/v1/me/tokens", SelfService, tokens::create),
        endpoint!(DELETE "/api/v1/me/tokens/{id}", SelfService, tokens::revoke),
        endpoint!(GET "/api/v1/users", Permission(P::UsersRead), users::list),
        endpoint!(POST "/api/v1/users", Permission(P::UsersManage), users::create),
        endpoint!(GET "/api/v1/users/{user}", Permission(P::UsersRead), users::show),
        endpoint!(PATCH "/api/v1/users/{user}", Permission(P::UsersManage), users::update),
        endpoint!(POST "/api/v1/users/{user}/password-reset", Permission(P::UsersManage), users::reset_password),
        endpoint!(GET "/api/v1/users/{user}/budget", Permission(P::BudgetsRead), budgets::show),
        endpoint!(PUT "/api/v1/users/{user}/budget", Permission(P::BudgetsManage), budgets::set),
        endpoint!(GET "/api/v1/roles", Permission(P::RolesRead), roles::list),
        endpoint!(POST "/api/v1/roles", Permission(P::RolesManage), roles::create),
        endpoint!(GET "/api/v1/roles/{name}", Permission(P::RolesRead), roles::show),
        endpoint!(DELETE "/api/v1/roles/{name}", Permission(P::RolesManage), roles::delete),
        endpoint!(GET "/api/v1/permissions", Permission(P::RolesRead), roles::permissions),
        endpoint!(GET "/api/v1/audit", Permission(P::AuditRead), audit::list),
        endpoint!(GET "/api/v1/audit/verify", Permission(P::AuditRead), audit::verify),
        endpoint!(GET "/api/v1/datasets", Permission(P::DatasetsReadMetadata), datasets::list),
        endpoint!(GET "/api/v1/datasets/{name}", Permission(P::DatasetsReadMetadata), datasets::show),
        endpoint!(PUT "/api/v1/datasets/{name}", Permission(P::DatasetsManage), datasets::upload, streaming),
        endpoint!(PATCH "/api/v1/datasets/{name}", Permission(P::DatasetsManage), datasets::update),
        endpoint!(DELETE "/api/v1/datasets/{name}", Permission(P::DatasetsManage), datasets::delete),
        endpoint!(GET "/api/v1/datasets/{name}/mock", Permission(P::DatasetsMock), datasets::mock),
        endpoint!(POST "/api/v1/datasets/{name}/query", Permission(P::QueriesRun), datasets::query),
        endpoint!(GET "/api/v1/me/keys", SelfService, models::list_keys),
        endpoint!(POST "/api/v1/me/keys", SelfService, models::add_key),
        endpoint!(DELETE "/api/v1/me/keys/{id}", SelfService, models::revoke_key),
        endpoint!(GET "/api/v1/models", Permission(P::ModelsRead), models::list),
        endpoint!(GET "/api/v1/models/{name}", Permission(P::ModelsRead), models::show),
        endpoint!(PUT "/api/v1/models/{name}", Permission(P::ModelsManage), models::upload, streaming),
        endpoint!(DELETE "/api/v1/models/{name}", Permission(P::ModelsManage), models::delete),
        endpoint!(POST "/api/v1/models/{name}/validate", Permission(P::ModelsValidate), models::validate),
        endpoint!(GET "/api/v1/requests", SelfService, models::list_requests),
        endpoint!(GET "/api/v1/requests/{id}", SelfService, models::show_request),
        endpoint!(POST "/api/v1/requests/{id}/approve", Permission(P::RequestsReview), models::approve),
        endpoint!(POST "/api/v1/requests/{id}/deny", Permission(P::RequestsReview), models::deny),
        endpoint!(GET "/api/v1/fhe/models/{name}", Permission(P::FheInfer), fhe::spec),
        endpoint!(POST "/api/v1/fhe/models/{name}/infer", Permission(P::FheInfer), fhe::infer),
        endpoint!(GET "/api/v1/fhe/keys", Permission(P::FheInfer), fhe::list_keys),
        endpoint!(POST "/api/v1/fhe/keys", Permission(P::FheInfer), fhe::add_key, streaming),
        endpoint!(DELETE "/api/v1/fhe/keys/{id}", Permission(P::FheInfer), fhe::delete_key),
    ]
}

impl Endpoint {
    /// This endpoint's handler, wrapped in its access check.
    pub(crate) fn method_router(&self, state: AppState) -> MethodRouter<AppState> {
        let mut route = (self.route)();
        if self.streaming_body {
            // The handler streams the body and applies the upload limit itself.
            route = route.layer(axum::extract::DefaultBodyLimit::disable());
        }
        if self.access == Access::Public {
            return route;
        }
        let guard = Guard {
            state,
            access: self.access,
            method: self.method.clone(),
            path: self.path,
        };
        route.route_layer(axum::middleware::from_fn_with_state(guard, authorize))
    }
}

#[derive(Debug, Clone)]
struct Guard {
    state: AppState,
    access: Access,
    method: Method,
    path: &'static str,
}

/// Authenticates the bearer token and checks the endpoint's access before the handler (and
/// before any body parsing), so a caller without access learns nothing about the input rules.
async fn authorize(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(bearer) = bearer else {
        return ApiError::from(CoreError::Unauthenticated).into_response();
    };
    let core = &guard.state.core;
    let principal = match core.authenticate(bearer).await {
        Ok(p) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let allowed = match guard.access {
        Access::Public | Access::Authenticated => principal.ensure_authenticated(),
        Access::SelfService => principal.ensure_active(),
        Access::Permission(p) => principal.require(p),
    };
    if let Err(e) = allowed {
        if let CoreError::Forbidden(p) = &e
            && let Err(audit_err) = core
                .audit_access_denied(&principal, guard.method.as_str(), guard.path, *p)
                .await
        {
            return ApiError::from(audit_err).into_response();
        }
        return ApiError::from(e).into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}
