//! The OpenAPI document, generated from the handlers' annotations and the wire types.
//!
//! `veil-server`'s `tests/it/openapi.rs` checks it against the endpoint table (same routes,
//! same methods, bearer security exactly where a token is needed) and validates real
//! responses against its schemas.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::handlers::{audit, auth, budgets, datasets, fhe, models, roles, system, tokens, users};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Veil node API",
        description = "Users, roles, tokens, privacy budgets and the audit log of a Veil node. \
                       Errors are `{\"error\": {\"code\", \"message\"}}` with stable codes.",
    ),
    paths(
        system::healthz, system::metrics, system::openapi,
        auth::login, auth::logout, auth::me, auth::change_password,
        budgets::mine, budgets::show, budgets::set,
        tokens::list, tokens::create, tokens::revoke,
        users::list, users::create, users::show, users::update, users::reset_password,
        roles::list, roles::create, roles::show, roles::delete, roles::permissions,
        audit::list, audit::verify,
        datasets::list, datasets::show, datasets::upload, datasets::update, datasets::delete,
        datasets::mock, datasets::query,
        models::list_keys, models::add_key, models::revoke_key,
        models::list, models::show, models::upload, models::delete, models::validate,
        models::list_requests, models::show_request, models::approve, models::deny,
        fhe::spec, fhe::list_keys, fhe::add_key, fhe::delete_key, fhe::infer,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "system", description = "Health, metrics, this document"),
        (name = "auth", description = "Logging in and the caller's own account"),
        (name = "users", description = "User accounts"),
        (name = "roles", description = "Preset and custom roles"),
        (name = "tokens", description = "Named API tokens"),
        (name = "budgets", description = "Privacy budgets in (ε, δ)"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "datasets", description = "Encrypted datasets and differentially private queries"),
        (name = "models", description = "Signing keys, the model registry, and DP model validation"),
        (name = "requests", description = "Requests that may need review"),
        (name = "fhe", description = "Encrypted inference (TFHE): model specifications, evaluation keys, runs on ciphertexts"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session token from /api/v1/auth/login or a named API token",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document served at `/api/v1/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}
