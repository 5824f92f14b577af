//! The OpenAPI document matches what the server really does: the same routes and methods as
//! the endpoint table, bearer security exactly where a token is required, and real responses
//! that validate against the documented schemas.

use std::collections::BTreeSet;

use crate::common::*;
use serde_json::{Value, json};
use veil_api::endpoints::{Access, endpoints};
use veil_api_types::{AuditQuery, SetBudgetRequest};

fn document() -> Value {
    serde_json::to_value(veil_api::openapi::document()).expect("serialize")
}

#[test]
fn documented_routes_are_exactly_the_served_routes() {
    let doc = document();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let served: BTreeSet<String> = endpoints()
        .iter()
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn security_and_error_responses_follow_each_endpoint_access() {
    let doc = document();
    for e in endpoints() {
        let op = &doc["paths"][e.path][e.method.as_str().to_lowercase()];
        let secured = op.get("security").is_some_and(|s| {
            s.as_array()
                .is_some_and(|a| a.iter().any(|r| r.get("bearer").is_some()))
        });
        let responses = op["responses"].as_object().expect("responses");
        match e.access {
            Access::Public => assert!(!secured, "{} {} is public", e.method, e.path),
            _ => {
                assert!(secured, "{} {} needs bearer security", e.method, e.path);
                assert!(
                    responses.contains_key("401"),
                    "{} {} documents 401",
                    e.method,
                    e.path
                );
            }
        }
        if let Access::Permission(p) = e.access {
            let forbidden = responses
                .get("403")
                .and_then(|r| r["description"].as_str())
                .unwrap_or_default();
            assert!(
                forbidden.contains(p.as_str()),
                "{} {} must document its 403 with the permission {p}: {forbidden:?}",
                e.method,
                e.path
            );
        }
    }
}

/// Schema errors of `instance` against the document's schema for `method path → status`.
fn schema_errors(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    instance: &Value,
) -> Vec<String> {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} documents no JSON schema for {status}"
    );
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root).expect("valid schema");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn check(doc: &Value, method: &str, path: &str, status: u16, instance: &Value) {
    let errors = schema_errors(doc, method, path, status, instance);
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match its schema: {errors:?}\n{instance:#}"
    );
}

#[test]
fn the_schema_check_rejects_responses_that_do_not_match() {
    let doc = document();
    let wrong_user = json!([{"id": "seven", "email": "a@b.c"}]);
    assert!(!schema_errors(&doc, "get", "/api/v1/users", 200, &wrong_user).is_empty());
    let wrong_error = json!({"error": {"code": 5}});
    assert!(!schema_errors(&doc, "get", "/api/v1/users/{user}", 404, &wrong_error).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_validate_against_the_document() {
    let node = TestNode::start(Backend::Sqlite).await;
    let doc = node.client.openapi().await.expect("served document");
    assert_eq!(doc, document(), "the served document is the generated one");
    let owner = node.owner().await;
    let created = owner
        .create_user("ana@lab.org", "data-scientist")
        .await
        .expect("user");
    owner
        .set_budget(
            "ana@lab.org",
            &SetBudgetRequest {
                dataset: Some("patients".into()),
                epsilon: 1.0,
                delta: 0.0,
            },
        )
        .await
        .expect("budget");
    let tok = owner.create_token("ci", None).await.expect("token");

    check(
        &doc,
        "get",
        "/healthz",
        200,
        &v(&node.client.health().await.expect("health")),
    );
    check(
        &doc,
        "get",
        "/api/v1/me",
        200,
        &v(&owner.me().await.expect("me")),
    );
    check(
        &doc,
        "get",
        "/api/v1/users",
        200,
        &v(&owner.list_users().await.expect("users")),
    );
    check(&doc, "post", "/api/v1/users", 201, &v(&created));
    check(
        &doc,
        "get",
        "/api/v1/roles",
        200,
        &v(&owner.list_roles().await.expect("roles")),
    );
    check(
        &doc,
        "get",
        "/api/v1/permissions",
        200,
        &v(&owner.permissions().await.expect("perms")),
    );
    check(
        &doc,
        "get",
        "/api/v1/me/tokens",
        200,
        &v(&owner.list_tokens().await.expect("tokens")),
    );
    check(&doc, "post", "/api/v1/me/tokens", 201, &v(&tok));
    check(
        &doc,
        "get",
        "/api/v1/users/{user}/budget",
        200,
        &v(&owner.user_budget("ana@lab.org").await.expect("budget")),
    );
    check(
        &doc,
        "get",
        "/api/v1/audit",
        200,
        &v(&owner.audit(&AuditQuery::default()).await.expect("audit")),
    );
    check(
        &doc,
        "get",
        "/api/v1/audit/verify",
        200,
        &v(&owner.verify_audit().await.expect("verify")),
    );

    // Datasets and a DP query.
    let manifest = "[privacy]\nunit = \"row\"\n[columns.age]\ntype = \"int\"\nbounds = [0, 120]\n[columns.sex]\ntype = \"category\"\ncategories = [\"F\", \"M\"]";
    let csv: String = std::iter::once("age,sex\n".to_string())
        .chain((0..100).map(|i| format!("{},{}\n", i, if i % 2 == 0 { "F" } else { "M" })))
        .collect();
    let len = csv.len() as u64;
    let uploaded = owner
        .upload_dataset(
            "people",
            manifest,
            "csv",
            futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(csv))]),
            len,
        )
        .await
        .expect("upload");
    check(&doc, "put", "/api/v1/datasets/{name}", 201, &v(&uploaded));
    check(
        &doc,
        "get",
        "/api/v1/datasets",
        200,
        &v(&owner.list_datasets().await.expect("list")),
    );
    check(
        &doc,
        "get",
        "/api/v1/datasets/{name}/mock",
        200,
        &v(&owner.mock_dataset("people", 3).await.expect("mock")),
    );
    // Nobody funds themselves: the owner funds an analyst, who asks.
    let analyst = node.user("bob@lab.org", "data-scientist").await;
    owner
        .set_budget(
            "bob@lab.org",
            &SetBudgetRequest {
                dataset: None,
                epsilon: 5.0,
                delta: 1e-6,
            },
        )
        .await
        .expect("budget");
    let answer = analyst
        .query(
            "people",
            &veil_api_types::QueryRequest {
                sql: "SELECT sex, COUNT(*), AVG(age), MEDIAN(age) FROM people GROUP BY sex".into(),
                epsilon: 1.0,
                delta: 0.0,
                confidence: None,
                mechanism: None,
            },
        )
        .await
        .expect("query");
    check(
        &doc,
        "post",
        "/api/v1/datasets/{name}/query",
        200,
        &v(&answer),
    );

    // Error bodies match ErrorBody.
    let (status, body) = owner
        .raw(
            veil_client::HttpMethod::GET,
            "api/v1/users/ghost%40x.org",
            None,
        )
        .await
        .expect("raw");
    assert_eq!(status, 404);
    check(
        &doc,
        "get",
        "/api/v1/users/{user}",
        404,
        &serde_json::from_str(&body).expect("json"),
    );
}

fn v<T: serde::Serialize>(x: &T) -> Value {
    serde_json::to_value(x).expect("serialize")
}
