//! End to end: a real node on port 0, driven through the real client, on each backend.
//! Walks the issue's user story, then tries bad input of every kind.

use std::time::Duration;

use crate::common::*;
use veil_api_types::*;
use veil_client::HttpMethod;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_walks_through_accounts_roles_budgets_and_audit() {
    for backend in backends() {
        let mut node = TestNode::start(backend).await;
        let health = node.client.health().await.expect("health");
        assert_eq!(health.status, "ok");
        assert_eq!(
            health.store,
            if backend == Backend::Sqlite {
                "sqlite"
            } else {
                "postgres"
            }
        );

        let owner = node.owner().await;
        let me = owner.me().await.expect("whoami");
        assert_eq!(me.user.email, OWNER);
        assert_eq!(me.user.role, "owner");
        assert!(me.permissions.contains(&"node:keys".to_string()));

        // veil users create --email ana@lab.org --role data-scientist
        let ana = owner
            .create_user("ana@lab.org", "data-scientist")
            .await
            .expect("create ana");
        assert!(ana.user.must_change_password);
        assert!(ana.one_time_password.len() >= 20);

        // The one-time password works once for changing the password, and nothing else.
        let ana_first = node.login("ana@lab.org", &ana.one_time_password).await;
        expect_code(ana_first.list_tokens().await, "password_change_required");
        assert!(
            ana_first
                .me()
                .await
                .expect("whoami allowed")
                .user
                .must_change_password
        );
        ana_first
            .change_password(&ana.one_time_password, USER_PW)
            .await
            .expect("change");
        let ana_client = node.login("ana@lab.org", USER_PW).await;

        // veil budget set --user ana@lab.org --epsilon 3 --delta 1e-6
        let b = owner
            .set_budget(
                "ana@lab.org",
                &SetBudgetRequest {
                    dataset: None,
                    epsilon: 3.0,
                    delta: 1e-6,
                },
            )
            .await
            .expect("set budget");
        assert_eq!(
            (b.epsilon_cap, b.delta_cap, b.epsilon_spent),
            (3.0, 1e-6, 0.0)
        );
        let mine = ana_client.my_budget().await.expect("own budget");
        assert_eq!(mine.budgets.len(), 1);
        assert_eq!(mine.budgets[0].epsilon_remaining, 3.0);
        expect_code(ana_client.user_budget(OWNER).await, "forbidden");

        // veil roles create auditor --permissions audit:read,datasets:read-metadata
        let auditor = owner
            .create_role(&CreateRoleRequest {
                name: "auditor".into(),
                permissions: vec!["audit:read".into(), "datasets:read-metadata".into()],
                description: "reads the audit log".into(),
            })
            .await
            .expect("create role");
        assert_eq!(
            auditor.permissions,
            ["audit:read", "datasets:read-metadata"]
        );
        let roles = owner.list_roles().await.expect("roles");
        assert_eq!(roles.len(), 8);
        assert_eq!(roles.iter().filter(|r| r.preset).count(), 7);

        // Named API tokens work like sessions and can be revoked.
        let tok = ana_client
            .create_token("notebook", Some(Duration::from_secs(3600)))
            .await
            .expect("token");
        assert!(tok.info.active);
        let scripted = node.client.with_token(&tok.token);
        assert_eq!(scripted.me().await.expect("me").token.kind, "api");
        ana_client.revoke_token(&tok.info.id).await.expect("revoke");
        expect_code(scripted.me().await, "unauthenticated");
        expect_code(
            ana_client.revoke_token(&tok.info.id).await,
            "token_not_found",
        );

        // veil audit list / veil audit verify
        let page = owner.audit(&AuditQuery::default()).await.expect("audit");
        let actions: Vec<&str> = page.entries.iter().map(|e| e.action.as_str()).collect();
        for expected in [
            "user.create",
            "auth.login",
            "user.password",
            "budget.set",
            "role.create",
            "token.create",
            "token.revoke",
            "access.denied",
        ] {
            assert!(
                actions.contains(&expected),
                "missing {expected} in {actions:?}"
            );
        }
        // Secrets never reach the log.
        let log_text = serde_json::to_string(&page.entries).expect("json");
        assert!(!log_text.contains(&ana.one_time_password));
        assert!(!log_text.contains(USER_PW));
        assert!(!log_text.contains(&tok.token));
        let verified = owner.verify_audit().await.expect("verify");
        assert!(verified.ok, "{verified:?}");
        assert_eq!(verified.entries_checked, page.entries.len() as u64);

        // State survives a restart.
        node.restart().await;
        let owner = node.owner().await;
        assert_eq!(owner.list_users().await.expect("users").len(), 2);
        assert!(owner.verify_audit().await.expect("verify").ok);
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    for backend in backends() {
        let node = TestNode::start_with(backend, |c| c.api.body_limit = 4096).await;
        let owner = node.owner().await;
        let users_before = owner.list_users().await.expect("users").len();

        // Malformed JSON, wrong content type, unknown fields, wrong types.
        let (status, body) = owner
            .raw(
                HttpMethod::POST,
                "api/v1/users",
                Some(("application/json", b"{\"email\": ".to_vec())),
            )
            .await
            .expect("raw");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("\"malformed_json\""), "{body}");
        let (status, body) = owner
            .raw(
                HttpMethod::POST,
                "api/v1/users",
                Some(("text/plain", b"{}".to_vec())),
            )
            .await
            .expect("raw");
        assert_eq!(
            (status, body.contains("unsupported_media_type")),
            (415, true),
            "{body}"
        );
        let (status, body) = owner
            .raw(
                HttpMethod::POST,
                "api/v1/users",
                Some((
                    "application/json",
                    br#"{"email":"x@y.z","role":"guest","admin":true}"#.to_vec(),
                )),
            )
            .await
            .expect("raw");
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("invalid_input") && body.contains("unknown field"),
            "{body}"
        );

        // Oversized body.
        let big = format!(r#"{{"email":"{}@x.org","role":"guest"}}"#, "a".repeat(8000));
        let (status, body) = owner
            .raw(
                HttpMethod::POST,
                "api/v1/users",
                Some(("application/json", big.into_bytes())),
            )
            .await
            .expect("raw");
        assert_eq!(
            (status, body.contains("payload_too_large")),
            (413, true),
            "{body}"
        );

        // Unknown role, invalid email, duplicate email.
        expect_code(
            owner.create_user("bo@lab.org", "wizard").await,
            "role_not_found",
        );
        expect_code(
            owner.create_user("not-an-email", "guest").await,
            "invalid_input",
        );
        owner
            .create_user("bo@lab.org", "guest")
            .await
            .expect("first bo");
        expect_code(
            owner.create_user("BO@lab.org", "guest").await,
            "user_exists",
        );

        // Weak passwords.
        let first = owner.create_user("cy@lab.org", "guest").await.expect("cy");
        let cy = node.login("cy@lab.org", &first.one_time_password).await;
        let msg = expect_code(
            cy.change_password(&first.one_time_password, "password123")
                .await,
            "weak_password",
        );
        assert!(msg.contains("weak"), "{msg}");
        expect_code(
            cy.change_password("not my password", "a long passphrase for tests")
                .await,
            "invalid_credentials",
        );

        // Tokens: garbage, revoked (by logout), expired.
        expect_code(
            node.client.with_token("veil_nonsense").me().await,
            "unauthenticated",
        );
        expect_code(node.client.me().await, "unauthenticated");
        let session = node.owner().await;
        session.logout().await.expect("logout");
        expect_code(session.me().await, "unauthenticated");
        let short = owner
            .create_token("short", Some(Duration::from_secs(1)))
            .await
            .expect("short token");
        let short_client = node.client.with_token(&short.token);
        short_client.me().await.expect("valid at first");
        node.clock.advance(Duration::from_millis(1100));
        expect_code(short_client.me().await, "unauthenticated");
        let err = expect_code(
            owner.create_token("zero", Some(Duration::ZERO)).await,
            "invalid_input",
        );
        assert!(err.contains("positive"), "{err}");
        owner.create_token("dup", None).await.expect("dup 1");
        expect_code(owner.create_token("dup", None).await, "token_name_taken");

        // Privilege escalation attempts by an administrator.
        let admin = node.user("admin@lab.org", "administrator").await;
        expect_code(
            admin.create_user("boss@lab.org", "owner").await,
            "privilege_escalation",
        );
        expect_code(
            admin
                .create_role(&CreateRoleRequest {
                    name: "sneaky".into(),
                    permissions: vec!["node:keys".into()],
                    description: String::new(),
                })
                .await,
            "privilege_escalation",
        );
        expect_code(
            admin
                .update_user(
                    OWNER,
                    &UpdateUserRequest {
                        role: None,
                        disabled: Some(true),
                    },
                )
                .await,
            "privilege_escalation",
        );
        expect_code(
            admin
                .update_user(
                    "admin@lab.org",
                    &UpdateUserRequest {
                        role: Some("owner".into()),
                        disabled: None,
                    },
                )
                .await,
            "cannot_modify_self",
        );
        expect_code(admin.reset_password(OWNER).await, "privilege_escalation");
        expect_code(
            owner
                .create_role(&CreateRoleRequest {
                    name: "bad".into(),
                    permissions: vec!["users:everything".into()],
                    description: String::new(),
                })
                .await,
            "invalid_input",
        );
        expect_code(owner.delete_role("guest").await, "preset_role");
        expect_code(
            owner
                .update_user(
                    OWNER,
                    &UpdateUserRequest {
                        role: None,
                        disabled: Some(true),
                    },
                )
                .await,
            "cannot_modify_self",
        );

        // Budget amounts are validated.
        for (e, d) in [(-1.0, 0.0), (1.0, 2.0), (1e9, 0.0)] {
            expect_code(
                owner
                    .set_budget(
                        "bo@lab.org",
                        &SetBudgetRequest {
                            dataset: None,
                            epsilon: e,
                            delta: d,
                        },
                    )
                    .await,
                "invalid_input",
            );
        }
        expect_code(
            owner
                .set_budget(
                    "ghost@lab.org",
                    &SetBudgetRequest {
                        dataset: None,
                        epsilon: 1.0,
                        delta: 0.0,
                    },
                )
                .await,
            "user_not_found",
        );

        // Unknown routes and methods.
        let (status, body) = owner
            .raw(HttpMethod::GET, "api/v1/nope", None)
            .await
            .expect("raw");
        assert_eq!(
            (status, body.contains("\"not_found\"")),
            (404, true),
            "{body}"
        );
        let (status, body) = owner
            .raw(HttpMethod::DELETE, "api/v1/users", None)
            .await
            .expect("raw");
        assert_eq!(
            (status, body.contains("method_not_allowed")),
            (405, true),
            "{body}"
        );

        // Nothing half-written: exactly the users created above exist.
        let users = owner.list_users().await.expect("users");
        assert_eq!(users.len(), users_before + 3, "{users:?}");
        assert!(owner.verify_audit().await.expect("verify").ok);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_slowed_and_audited() {
    let node = TestNode::start(Backend::Sqlite).await;
    for _ in 0..5 {
        expect_code(
            node.client.login(OWNER, "wrong password!!").await,
            "invalid_credentials",
        );
    }
    match node.client.login(OWNER, OWNER_PW).await {
        Err(veil_client::ClientError::Api {
            code,
            status,
            retry_after_secs,
            ..
        }) => {
            assert_eq!((code.as_str(), status), ("rate_limited", 429));
            assert!(retry_after_secs.is_some_and(|s| s > 0));
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    // Another account from the same address is not held up by one account's failures.
    expect_code(
        node.client.login("nobody@x.org", "whatever").await,
        "invalid_credentials",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served_and_count_routes() {
    let node = TestNode::start(Backend::Sqlite).await;
    let owner = node.owner().await;
    owner.list_users().await.expect("users");
    owner.get_user("ana@nowhere.org").await.expect_err("404");
    // Metrics depend on what ran over private data: operators only.
    expect_code(node.client.metrics().await, "unauthenticated");
    let scientist = node.user("ana@lab.org", "data-scientist").await;
    expect_code(scientist.metrics().await, "forbidden");
    let text = owner.metrics().await.expect("metrics");
    assert!(
        text.contains(
            r#"veil_http_requests_total{method="GET",route="/api/v1/users",status="200"} 1"#
        ),
        "{text}"
    );
    // Concrete paths (with emails) never become labels.
    assert!(text.contains(r#"route="/api/v1/users/{user}""#), "{text}");
    assert!(!text.contains("ana@nowhere.org"), "{text}");
    assert!(
        text.contains("veil_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_the_configured_origin() {
    let node = TestNode::start_with(Backend::Sqlite, |c| {
        c.api.cors_origins = vec![http_header("https://admin.example.org")];
    })
    .await;
    let http = reqwest_client();
    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/users", node.url()),
        )
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
    };
    let ok = preflight("https://admin.example.org")
        .await
        .expect("preflight");
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://admin.example.org")
    );
    let other = preflight("https://evil.example.org")
        .await
        .expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_to_a_body_closes_the_connection() {
    // An upload refused before its body is read leaves unread bytes that make the server drop
    // the connection; the answer must say so, or the client's next request on that pooled
    // connection fails with a broken pipe.
    let node = TestNode::start(Backend::Sqlite).await;
    let http = reqwest_client();
    let connection = |resp: &reqwest::Response| {
        resp.headers()
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let refused = http
        .put(format!("{}/api/v1/models/m", node.url()))
        .body(vec![0u8; 1 << 20])
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(connection(&refused).as_deref(), Some("close"));
    // Errors to requests without a body, and successes, keep the connection.
    let missing = http
        .get(format!("{}/api/v1/nothing-here", node.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(connection(&missing), None);
    let health = http
        .get(format!("{}/healthz", node.url()))
        .send()
        .await
        .expect("health");
    assert!(health.status().is_success());
    assert_eq!(connection(&health), None);
    // The real client, refused many times in a row, never trips over a dropped connection.
    let user = node.user("ana@lab.org", "data-user").await;
    for _ in 0..20 {
        expect_code(
            user.upload_model("m", vec![0u8; 256 << 10], None).await,
            "forbidden",
        );
        user.list_evaluation_keys()
            .await
            .expect("list after refusal");
    }
}

fn http_header(s: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(s)
}

fn reqwest_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
