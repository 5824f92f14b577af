//! A hostile analyst: SQL built to make the node fail, or answer differently, depending on
//! one person, and parameters out of range. Every query runs on neighbouring datasets (with
//! and without the person) through a real node; what the analyst sees must match.

mod common;

use common::*;
use veil_api_types::QueryRequest;

/// Patients with a "valid until" date that may be the 9999-12-31 sentinel, and a unit column.
const MANIFEST: &str = r#"
description = "hostile"
[privacy]
unit = { column = "person", max_rows = 3 }
[columns.person]
type = "id"
[columns.age]
type = "int"
bounds = [0, 120]
[columns.sex]
type = "category"
categories = ["F", "M"]
[columns.income]
type = "float"
bounds = [0.0, 500000.0]
[columns.born]
type = "date"
bounds = ["0001-01-01", "0010-12-31"]
[columns.valid_until]
type = "date"
bounds = ["0001-01-01", "9999-12-31"]
[columns.smoker]
type = "bool"
nullable = true
"#;

/// 300 people, one of them ("target") at every extreme the manifest allows.
fn csv(with_target: bool) -> String {
    let mut s = String::from("person,age,sex,income,born,valid_until,smoker\n");
    for i in 0..300 {
        let sex = if i % 2 == 0 { "F" } else { "M" };
        let smoker = ["true", "false", ""][i % 3];
        s.push_str(&format!(
            "p{i},{},{sex},{}.5,0005-06-15,2030-01-01,{smoker}\n",
            20 + i % 60,
            1000 * (i % 50)
        ));
    }
    if with_target {
        for _ in 0..2 {
            s.push_str("target,120,M,500000.0,0001-01-01,9999-12-31,true\n");
        }
    }
    s
}

struct Pair {
    node: Node,
    analyst: veil_client::Client,
}

async fn neighbours() -> Pair {
    let node = Node::start().await;
    let owner = node.owner().await;
    upload(&owner, "with_target", MANIFEST, csv(true)).await;
    upload(&owner, "without_target", MANIFEST, csv(false)).await;
    let analyst = node
        .user("mallory@lab.org", "data-scientist", Some(100_000.0))
        .await;
    Pair { node, analyst }
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

/// Runs `sql` (with `{t}` for the table) on both datasets and returns what the analyst sees
/// of each: the status and either the result's column names and row count, or the error
/// code. The two must be equal.
async fn on_both(p: &Pair, sql: &str, epsilon: f64) -> String {
    let mut seen = Vec::new();
    for table in ["with_target", "without_target"] {
        let r = p
            .analyst
            .query(table, &q(&sql.replace("{t}", table), epsilon))
            .await;
        seen.push(match r {
            Ok(r) => format!(
                "ok {:?} {} rows",
                r.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                r.rows.len()
            ),
            Err(e) => format!("error {}", code_of::<()>(Err(e))),
        });
    }
    assert_eq!(seen[0], seen[1], "{sql}: the outcome depends on one person");
    seen.swap_remove(0)
}

async fn spent(c: &veil_client::Client) -> f64 {
    c.my_budget().await.expect("budget").budgets[0].epsilon_spent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_buckets_at_both_ends_of_the_calendar_do_not_depend_on_one_person() {
    let p = neighbours().await;
    for sql in [
        "SELECT date_trunc('year', valid_until) AS y, COUNT(*) FROM {t} WHERE person = 'target' GROUP BY y",
        "SELECT date_trunc('year', valid_until) AS y, COUNT(*) FROM {t} GROUP BY y",
        "SELECT date_trunc('month', born) AS m, COUNT(*) FROM {t} WHERE person = 'target' GROUP BY m",
        "SELECT date_trunc('day', born) AS d, COUNT(*) FROM {t} WHERE age = 120 GROUP BY d",
        "SELECT MEDIAN(valid_until) FROM {t} WHERE person = 'target'",
        "SELECT AVG(income), SUM(age), VARIANCE(income) FROM {t} WHERE valid_until > '9000-01-01'",
    ] {
        let seen = on_both(&p, sql, 0.001).await;
        assert!(seen.starts_with("ok"), "{sql}: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_where_clause_runs_and_the_rest_are_refused_before_the_charge() {
    let p = neighbours().await;
    let chain = |n: usize, op: &str| {
        (0..n)
            .map(|i| format!("age <> {}", 200 + i))
            .collect::<Vec<_>>()
            .join(&format!(" {op} "))
    };
    for n in [43, 100, 256] {
        for op in ["AND", "OR"] {
            let sql = format!("SELECT COUNT(*) FROM {{t}} WHERE {}", chain(n, op));
            let seen = on_both(&p, &sql, 0.01).await;
            assert!(seen.starts_with("ok"), "{n} {op}: {seen}");
        }
    }
    let nots = format!(
        "SELECT COUNT(*) FROM {{t}} WHERE {}age > 5{}",
        "NOT (".repeat(20),
        ")".repeat(20)
    );
    assert!(on_both(&p, &nots, 0.01).await.starts_with("ok"));
    let alternating = (0..16).fold("age = 1".to_string(), |acc, i| {
        format!(
            "(({acc}) {} age = {})",
            if i % 2 == 0 { "AND" } else { "OR" },
            i + 2
        )
    });
    let seen = on_both(
        &p,
        &format!("SELECT COUNT(*) FROM {{t}} WHERE {alternating}"),
        0.01,
    )
    .await;
    assert!(seen.starts_with("ok"), "{seen}");

    let before = spent(&p.analyst).await;
    for sql in [
        format!("SELECT COUNT(*) FROM {{t}} WHERE {}", chain(257, "AND")),
        format!(
            "SELECT COUNT(*) FROM {{t}} WHERE {}",
            (0..18).fold("age = 1".to_string(), |acc, i| format!(
                "(({acc}) {} age = {})",
                if i % 2 == 0 { "AND" } else { "OR" },
                i + 2
            ))
        ),
    ] {
        assert_eq!(on_both(&p, &sql, 0.01).await, "error query_refused");
    }
    assert_eq!(spent(&p.analyst).await, before, "refusals cost nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_out_of_range_are_a_400_and_cost_nothing() {
    let p = neighbours().await;
    let before = spent(&p.analyst).await;
    for (epsilon, delta, confidence) in [
        (2e6, 0.0, None),
        (1e-7, 0.0, None),
        (1.0, 1e-20, None),
        (1.0, 1.0, None),
        (1.0, 0.0, Some(1.0)),
        (1.0, 0.0, Some(0.3)),
    ] {
        let r = p
            .analyst
            .query(
                "with_target",
                &QueryRequest {
                    sql: "SELECT COUNT(*) FROM with_target".into(),
                    epsilon,
                    delta,
                    confidence,
                    mechanism: None,
                },
            )
            .await;
        assert_eq!(
            code_of(r),
            "invalid_parameters",
            "ε {epsilon} δ {delta} {confidence:?}"
        );
    }
    assert_eq!(spent(&p.analyst).await, before);
}

/// The same queries on both datasets, across every key and measure: same outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_match_on_neighbouring_datasets() {
    let p = neighbours().await;
    for sql in [
        "SELECT COUNT(*) FROM {t}",
        "SELECT sex, COUNT(*), AVG(income) FROM {t} GROUP BY sex",
        "SELECT smoker, COUNT(*) FROM {t} GROUP BY smoker",
        "SELECT age, COUNT(*) FROM {t} WHERE age >= 100 GROUP BY age",
        "SELECT QUANTILE(income, 0.99), STDDEV(age) FROM {t}",
        "SELECT COUNT(*) FROM {t} WHERE NOT (sex = 'F' OR income < 1000) AND smoker",
        "SELECT COUNT(income) FROM {t} WHERE smoker IS NULL OR valid_until BETWEEN '9999-01-01' AND '9999-12-31'",
        "SELECT sex, COUNT(*) FROM {t} GROUP BY sex ORDER BY COUNT(*) DESC LIMIT 1",
    ] {
        let seen = on_both(&p, sql, 1.0).await;
        assert!(seen.starts_with("ok"), "{sql}: {seen}");
    }
}

/// A charged query whose client goes away is run to its end and recorded: its answer stays
/// readable among the analyst's requests, under the request id the client sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_client_disconnects_is_still_answered_and_recorded() {
    use tokio::io::AsyncWriteExt;

    let p = neighbours().await;
    let token = p
        .node
        .client
        .login("mallory@lab.org", USER_PW)
        .await
        .expect("login")
        .token;
    let body = serde_json::json!({"sql": "SELECT sex, COUNT(*) FROM with_target GROUP BY sex", "epsilon": 0.5})
        .to_string();
    let request = format!(
        "POST /api/v1/datasets/with_target/query HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\nx-request-id: walked-away-1\r\ncontent-length: {}\r\n\r\n{body}",
        p.node.node.addr,
        body.len()
    );
    let before = spent(&p.analyst).await;
    let mut socket = tokio::net::TcpStream::connect(p.node.node.addr)
        .await
        .expect("connect");
    socket.write_all(request.as_bytes()).await.expect("send");
    // Wait until the node has charged the query, then hang up without reading the answer.
    while spent(&p.analyst).await == before {
        tokio::task::yield_now().await;
    }
    drop(socket);
    let record = loop {
        let mine = p.analyst.list_requests(None).await.expect("requests");
        if let Some(r) = mine.into_iter().find(|r| {
            r.kind == "query"
                && r.parameters["client_ref"] == "walked-away-1"
                && r.status != "running"
        }) {
            break r;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(record.status, "done", "{:?}", record.reason);
    let again = p.analyst.get_request(record.id).await.expect("by id");
    assert!(again.result.is_some());
    assert!(
        (spent(&p.analyst).await - before - 0.5).abs() < 1e-6,
        "charged once"
    );
    let owner = p.node.owner().await;
    let done = owner
        .audit(&veil_api_types::AuditQuery {
            action: Some("query.done".into()),
            ..Default::default()
        })
        .await
        .expect("audit");
    assert!(
        done.entries
            .iter()
            .any(|e| e.target == format!("request:{}", record.id)),
        "the audit log records the answered query"
    );
}
