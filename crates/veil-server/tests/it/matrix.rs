//! The permission matrix: every endpoint × every preset role (and a custom role), called for
//! real, each outcome compared with an expectation table written here from PRODUCT.md's role
//! descriptions, independently of the code that grants permissions.

use std::collections::BTreeMap;

use crate::common::*;
use veil_api::endpoints::{Access, endpoints};
use veil_api_types::CreateRoleRequest;
use veil_client::{Client, HttpMethod};

const ALL: &[&str] = &[
    "owner",
    "administrator",
    "compliance-officer",
    "data-scientist",
    "model-creator",
    "data-user",
    "guest",
    "auditor",
];

/// Who may call what, from PRODUCT.md: administrators manage users, roles, budgets and
/// datasets; compliance officers read the audit log and (to review) users, roles, budgets and
/// the catalogue; data scientists browse datasets and mock data, run DP queries and upload
/// their own models; guests browse the catalogue. "auditor" is a custom role holding
/// audit:read and datasets:read-metadata.
fn expected() -> BTreeMap<&'static str, &'static [&'static str]> {
    let admins: &[&str] = &["owner", "administrator"];
    let readers: &[&str] = &["owner", "administrator", "compliance-officer"];
    let auditors: &[&str] = &["owner", "compliance-officer", "auditor"];
    let catalogue: &[&str] = &[
        "owner",
        "administrator",
        "compliance-officer",
        "data-scientist",
        "guest",
        "auditor",
    ];
    let mockers: &[&str] = &["owner", "administrator", "data-scientist"];
    let analysts: &[&str] = &["owner", "data-scientist"];
    let model_readers: &[&str] = &[
        "owner",
        "administrator",
        "compliance-officer",
        "data-scientist",
        "model-creator",
        "data-user",
    ];
    // Data scientists upload their own models to validate them (private to them and
    // reviewers); publishing for encrypted inference stays with model creators.
    let uploaders: &[&str] = &["owner", "data-scientist", "model-creator"];
    let reviewers: &[&str] = &["owner", "compliance-officer"];
    let fhe_users: &[&str] = &["owner", "data-user"];
    BTreeMap::from([
        ("GET /healthz", ALL),
        ("GET /metrics", admins),
        ("GET /api/v1/openapi.json", ALL),
        ("POST /api/v1/auth/login", ALL),
        ("POST /api/v1/auth/logout", ALL),
        ("GET /api/v1/me", ALL),
        ("PUT /api/v1/me/password", ALL),
        ("GET /api/v1/me/budget", ALL),
        ("GET /api/v1/me/tokens", ALL),
        ("POST /api/v1/me/tokens", ALL),
        ("DELETE /api/v1/me/tokens/{id}", ALL),
        ("GET /api/v1/users", readers),
        ("POST /api/v1/users", admins),
        ("GET /api/v1/users/{user}", readers),
        ("PATCH /api/v1/users/{user}", admins),
        ("POST /api/v1/users/{user}/password-reset", admins),
        ("GET /api/v1/users/{user}/budget", readers),
        ("PUT /api/v1/users/{user}/budget", admins),
        ("GET /api/v1/roles", readers),
        ("POST /api/v1/roles", admins),
        ("GET /api/v1/roles/{name}", readers),
        ("DELETE /api/v1/roles/{name}", admins),
        ("GET /api/v1/permissions", readers),
        ("GET /api/v1/audit", auditors),
        ("GET /api/v1/audit/verify", auditors),
        ("GET /api/v1/datasets", catalogue),
        ("GET /api/v1/datasets/{name}", catalogue),
        ("PUT /api/v1/datasets/{name}", admins),
        ("PATCH /api/v1/datasets/{name}", admins),
        ("DELETE /api/v1/datasets/{name}", admins),
        ("GET /api/v1/datasets/{name}/mock", mockers),
        ("POST /api/v1/datasets/{name}/query", analysts),
        ("GET /api/v1/me/keys", ALL),
        ("POST /api/v1/me/keys", ALL),
        ("DELETE /api/v1/me/keys/{id}", ALL),
        ("GET /api/v1/models", model_readers),
        ("GET /api/v1/models/{name}", model_readers),
        ("PUT /api/v1/models/{name}", uploaders),
        ("DELETE /api/v1/models/{name}", uploaders),
        ("POST /api/v1/models/{name}/validate", analysts),
        ("GET /api/v1/requests", ALL),
        ("GET /api/v1/requests/{id}", ALL),
        ("POST /api/v1/requests/{id}/approve", reviewers),
        ("POST /api/v1/requests/{id}/deny", reviewers),
        ("GET /api/v1/fhe/models/{name}", fhe_users),
        ("POST /api/v1/fhe/models/{name}/infer", fhe_users),
        ("GET /api/v1/fhe/keys", fhe_users),
        ("POST /api/v1/fhe/keys", fhe_users),
        ("DELETE /api/v1/fhe/keys/{id}", fhe_users),
    ])
}

fn concrete(path: &str) -> String {
    path.trim_start_matches('/')
        .replace("{user}", "nobody%40nowhere.org")
        .replace("{name}", "no-such-role")
        .replace("{id}", "999999")
}

async fn call(client: &Client, method: &http::Method, path: &str) -> (u16, String) {
    let m = HttpMethod::from_bytes(method.as_str().as_bytes()).expect("method");
    let body = matches!(method.as_str(), "POST" | "PUT" | "PATCH")
        .then(|| ("application/json", b"{}".to_vec()));
    client
        .raw(m, &concrete(path), body)
        .await
        .expect("request sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_for_every_role() {
    let node = TestNode::start(Backend::Sqlite).await;
    let owner = node.owner().await;
    owner
        .create_role(&CreateRoleRequest {
            name: "auditor".into(),
            permissions: vec!["audit:read".into(), "datasets:read-metadata".into()],
            description: String::new(),
        })
        .await
        .expect("custom role");
    let mut clients = BTreeMap::new();
    for role in ALL {
        let client = if *role == "owner" {
            owner.clone()
        } else {
            node.user(&format!("{role}@matrix.test"), role).await
        };
        clients.insert(*role, client);
    }

    let expected = expected();
    let table = endpoints();
    assert_eq!(
        table.len(),
        expected.len(),
        "the expectation table must cover every endpoint"
    );
    let mut failures = Vec::new();
    for e in &table {
        let key = format!("{} {}", e.method, e.path);
        let allowed_roles = expected
            .get(key.as_str())
            .unwrap_or_else(|| panic!("no expectation written for {key}"));

        // Without a token: only public endpoints answer.
        let (status, body) = call(&node.client, &e.method, e.path).await;
        let public = e.access == Access::Public;
        if public == (status == 401) {
            failures.push(format!("{key} without token: {status} {body}"));
        }

        for role in ALL {
            // Logging out revokes the token used: use a throwaway session for it.
            let client = if e.path.ends_with("/logout") {
                let email = if *role == "owner" {
                    OWNER.to_string()
                } else {
                    format!("{role}@matrix.test")
                };
                let pw = if *role == "owner" { OWNER_PW } else { USER_PW };
                node.login(&email, pw).await
            } else {
                clients[role].clone()
            };
            let (status, body) = call(&client, &e.method, e.path).await;
            let denied = status == 403 && body.contains("\"forbidden\"");
            let should_allow = allowed_roles.contains(role);
            if status == 401 || should_allow == denied {
                failures.push(format!(
                    "{key} as {role}: expected {}, got {status} {body}",
                    if should_allow { "allowed" } else { "forbidden" }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "permission matrix mismatches:\n{}",
        failures.join("\n")
    );

    // Denials are audited with the permission that was missing.
    let denied = owner
        .audit(&veil_api_types::AuditQuery {
            action: Some("access.denied".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("audit");
    assert!(denied.entries.iter().any(|e| e.actor == "guest@matrix.test"
        && e.target == "route:GET /api/v1/audit"
        && e.details["permission"] == "audit:read"));
}
