//! Datasets and DP queries end to end: real node, real client, encrypted files, OpenDP.

use crate::common::*;
use veil_api_types::*;
use veil_client::Client;

const MANIFEST: &str = r#"
description = "Test patients"
[privacy]
unit = "row"
[columns.age]
type = "int"
bounds = [0, 120]
[columns.sex]
type = "category"
categories = ["F", "M"]
[columns.income]
type = "float"
bounds = [0.0, 500000.0]
"#;

/// 2 000 rows; incomes above 20 000 for ages ≥ 20; one unmistakable marker value.
fn csv() -> String {
    let mut s = String::from("age,sex,income\n");
    for i in 0..2_000 {
        let age = i % 100;
        let sex = if i % 3 == 0 { "M" } else { "F" };
        let income = if i == 1234 {
            424_242.42
        } else {
            f64::from(age) * 1_000.0
        };
        s.push_str(&format!("{age},{sex},{income}\n"));
    }
    s
}

async fn upload(
    c: &Client,
    name: &str,
    text: String,
) -> Result<DatasetView, veil_client::ClientError> {
    let len = text.len() as u64;
    let stream = futures::stream::iter(
        text.into_bytes()
            .chunks(4096)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    c.upload_dataset(name, MANIFEST, "csv", stream, len).await
}

fn q(sql: &str, epsilon: f64) -> QueryRequest {
    QueryRequest {
        sql: sql.into(),
        epsilon,
        delta: 0.0,
        confidence: None,
        mechanism: None,
    }
}

async fn analyst(node: &TestNode, email: &str, epsilon: f64) -> Client {
    let c = node.user(email, "data-scientist").await;
    node.owner()
        .await
        .set_budget(
            email,
            &SetBudgetRequest {
                dataset: None,
                epsilon,
                delta: 1e-6,
            },
        )
        .await
        .expect("budget");
    c
}

async fn spent(c: &Client) -> f64 {
    c.my_budget().await.expect("budget").budgets[0].epsilon_spent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_query_and_the_privacy_guarantees() {
    for backend in backends() {
        let node = TestNode::start(backend).await;
        let owner = node.owner().await;
        let d = upload(&owner, "patients", csv()).await.expect("upload");
        assert_eq!(d.rows, Some(2_000), "the owner sees the exact size");
        assert_eq!(d.columns.len(), 3);

        // Nothing readable on disk: not the marker income, not even a column name, anywhere
        // in the data directory (dataset files and the metadata database).
        for entry in walk(&node.config.data_dir) {
            let bytes = std::fs::read(&entry).expect("read");
            for needle in ["424242.42", "income"] {
                if entry.extension().is_some_and(|e| e == "parquet") {
                    assert!(!contains(&bytes, needle), "{needle} in {}", entry.display());
                }
            }
            assert!(
                !contains(&bytes, "424242.42"),
                "marker in {}",
                entry.display()
            );
        }

        let ana = analyst(&node, "ana@lab.org", 3.0).await;
        let shown = ana.get_dataset("patients").await.expect("show");
        assert_eq!(shown.rows, None, "analysts never see the exact row count");

        // The issue's example.
        let r = ana
            .query(
                "patients",
                &q("SELECT sex, COUNT(*), AVG(age) FROM patients WHERE income > 20000 GROUP BY sex", 0.5),
            )
            .await
            .expect("query");
        assert_eq!(r.rows.len(), 2);
        assert!((r.epsilon_spent - 0.5).abs() < 1e-6, "{}", r.epsilon_spent);
        assert_eq!(r.mechanism, "discrete_laplace");
        assert!(r.columns[1].noise_scales[0] > 0.0);
        // True counts: ages 21..=99 (20 000 means "> 20 000" excludes age 20); F has 2/3.
        let count_f = match &r.rows[0][1] {
            CellView::Value {
                value,
                low: Some(l),
                high: Some(h),
                ..
            } => {
                assert!(l < value && value < h);
                *value
            }
            other => panic!("{other:?}"),
        };
        assert!((count_f - 1053.0).abs() < 60.0, "F count {count_f}");
        assert!((r.budgets[0].epsilon_remaining - 2.5).abs() < 1e-6);

        // Refused queries cost nothing and say why.
        let before = spent(&ana).await;
        let msg = expect_code(
            ana.query("patients", &q("SELECT * FROM patients", 0.2))
                .await,
            "query_refused",
        );
        assert!(msg.contains("would return rows"), "{msg}");
        assert_eq!(spent(&ana).await, before);

        // Repeating a query is charged every time (no averaging for free).
        for _ in 0..3 {
            ana.query("patients", &q("SELECT COUNT(*) FROM patients", 0.1))
                .await
                .expect("repeat");
        }
        assert!((spent(&ana).await - before - 0.3).abs() < 1e-6);
        let ledger = ana.my_budget().await.expect("budget").recent;
        assert_eq!(ledger.len(), 4);
        assert!(
            ledger
                .iter()
                .all(|l| l.purpose == "query" && l.reference.starts_with("sha256:"))
        );

        // Exhausted budget: refused before anything is computed.
        let left = 3.0 - spent(&ana).await;
        let msg = expect_code(
            ana.query("patients", &q("SELECT COUNT(*) FROM patients", left + 0.5))
                .await,
            "budget_exhausted",
        );
        assert!(msg.contains("remain"), "{msg}");

        // Mock rows: synthetic, within the declared domains.
        let m = ana.mock_dataset("patients", 25).await.expect("mock");
        assert!(m.synthetic);
        assert_eq!(m.rows.len(), 25);
        assert!(m.rows.iter().all(|r| r[1] == "F" || r[1] == "M"));
        assert!(
            m.rows
                .iter()
                .all(|r| r[0].as_i64().is_some_and(|a| (0..=120).contains(&a)))
        );

        // The audit log has the upload, the debits with the query hash, and the refusal.
        let audit = owner
            .audit(&AuditQuery {
                limit: Some(1000),
                ..AuditQuery::default()
            })
            .await
            .expect("audit");
        let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
        assert!(actions.contains(&"dataset.upload"));
        assert!(actions.contains(&"query.refused"));
        assert!(audit.entries.iter().any(|e| {
            e.action == "budget.debit"
                && e.details["purpose"] == "query"
                && e.details["sql_sha256"]
                    .as_str()
                    .is_some_and(|h| h.len() == 64)
        }));
        let text = serde_json::to_string(&audit.entries).expect("json");
        assert!(
            !text.contains("WHERE income > 20000"),
            "SQL text is hashed, not logged"
        );
        assert!(owner.verify_audit().await.expect("verify").ok);
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_cannot_overspend() {
    for backend in backends() {
        let node = TestNode::start(backend).await;
        upload(&node.owner().await, "patients", csv())
            .await
            .expect("upload");
        let ana = analyst(&node, "ana@lab.org", 1.0).await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let c = ana.clone();
                tokio::spawn(async move {
                    // A user runs a few queries at once; the others are told to retry.
                    loop {
                        let r = c
                            .query("patients", &q("SELECT COUNT(*) FROM patients", 0.1))
                            .await;
                        match &r {
                            Err(e)
                                if e.code().map(|c| c.as_str()) == Some("too_many_in_progress") =>
                            {
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            }
                            _ => break r,
                        }
                    }
                })
            })
            .collect();
        let mut ok = 0;
        for t in futures::future::join_all(tasks).await {
            match t.expect("task") {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(
                    e.code().map(|c| c.as_str()),
                    Some("budget_exhausted"),
                    "{e}"
                ),
            }
        }
        assert_eq!(ok, 10);
        assert!((spent(&ana).await - 1.0).abs() < 1e-9);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dataset_file_is_found_before_the_charge() {
    // A node sharing its store with another may not hold every dataset's file: that is found
    // before anything is charged, and said without internals.
    let node = TestNode::start(Backend::Sqlite).await;
    let owner = node.owner().await;
    upload(&owner, "patients", csv()).await.expect("upload");
    let ana = analyst(&node, "ana@lab.org", 2.0).await;
    for f in walk(&node.config.data_dir.join("datasets")) {
        std::fs::remove_file(f).expect("remove");
    }
    let msg = expect_code(
        ana.query("patients", &q("SELECT COUNT(*) FROM patients", 0.3))
            .await,
        "dataset_unavailable",
    );
    assert!(msg.contains("nothing was charged"), "{msg}");
    assert!(
        !msg.contains("missing") && !msg.contains("parquet"),
        "no internals: {msg}"
    );
    assert_eq!(spent(&ana).await, 0.0);
    let refused = owner
        .audit(&AuditQuery {
            action: Some("query.refused".into()),
            ..AuditQuery::default()
        })
        .await
        .expect("audit");
    assert_eq!(refused.entries.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_reported_and_store_nothing() {
    let node = TestNode::start(Backend::Sqlite).await;
    let owner = node.owner().await;
    let bad = "age,sex,income\n30,F,10\n200,F,10\n40,X,10\n".to_string();
    match upload(&owner, "patients", bad).await {
        Err(veil_client::ClientError::Api {
            code,
            details: Some(d),
            status,
            ..
        }) => {
            assert_eq!((code.as_str(), status), ("upload_rejected", 422));
            assert_eq!(d["problems"], 2);
            assert_eq!(d["rows"][0]["row"], 2);
            assert_eq!(d["rows"][0]["column"], "age");
            assert_eq!(d["rows"][1]["row"], 3);
        }
        other => panic!("expected upload_rejected, got {other:?}"),
    }
    expect_code(owner.get_dataset("patients").await, "dataset_not_found");
    assert!(walk(&node.config.data_dir.join("datasets")).is_empty());

    let wrong_manifest = owner
        .upload_dataset(
            "patients",
            "[privacy]\nunit = \"nobody\"",
            "csv",
            futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                b"a\n1\n",
            ))]),
            4,
        )
        .await;
    expect_code(wrong_manifest, "invalid_manifest");
    expect_code(upload(&owner, "Bad Name", csv()).await, "invalid_input");
    upload(&owner, "patients", csv())
        .await
        .expect("a good upload");
    expect_code(upload(&owner, "patients", csv()).await, "dataset_exists");
    let guest = node.user("guest@lab.org", "guest").await;
    expect_code(upload(&guest, "other", csv()).await, "forbidden");
    expect_code(
        guest
            .query("patients", &q("SELECT COUNT(*) FROM patients", 0.1))
            .await,
        "forbidden",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_dataset_destroys_its_key_and_file() {
    let node = TestNode::start(Backend::Sqlite).await;
    let owner = node.owner().await;
    upload(&owner, "patients", csv()).await.expect("upload");
    let ana = analyst(&node, "ana@lab.org", 5.0).await;
    ana.query("patients", &q("SELECT COUNT(*) FROM patients", 0.1))
        .await
        .expect("query");
    owner.delete_dataset("patients").await.expect("delete");
    assert!(
        walk(&node.config.data_dir.join("datasets")).is_empty(),
        "file removed"
    );
    expect_code(
        ana.query("patients", &q("SELECT COUNT(*) FROM patients", 0.1))
            .await,
        "dataset_not_found",
    );
    expect_code(owner.delete_dataset("patients").await, "dataset_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_cap_binds_all_analysts_together() {
    let node = TestNode::start(Backend::Sqlite).await;
    let owner = node.owner().await;
    upload(&owner, "patients", csv()).await.expect("upload");
    let d = owner
        .update_dataset(
            "patients",
            &DatasetUpdateRequest {
                epsilon_cap: Some(Some(1.0)),
                ..DatasetUpdateRequest::default()
            },
        )
        .await
        .expect("cap");
    assert_eq!(d.epsilon_cap, Some(1.0));
    let ana = analyst(&node, "ana@lab.org", 5.0).await;
    let bo = analyst(&node, "bo@lab.org", 5.0).await;
    ana.query("patients", &q("SELECT COUNT(*) FROM patients", 0.7))
        .await
        .expect("ana");
    let msg = expect_code(
        bo.query("patients", &q("SELECT COUNT(*) FROM patients", 0.5))
            .await,
        "budget_exhausted",
    );
    assert!(msg.contains("cap for all users"), "{msg}");
    bo.query("patients", &q("SELECT COUNT(*) FROM patients", 0.3))
        .await
        .expect("fits the rest");
}
