//! A hostile model uploader: ONNX models built to read one person's presence out of a
//! validation, run against neighbouring datasets (the breast-cancer data with and without the
//! person), at the engine and through a real node.

mod common;

use common::onnx;
use common::*;
use veil_api_types::{RequestView, ValidateRequestBody};

/// Mean radius: the column the models key on.
const RADIUS: usize = 0;

fn planned(bytes: &[u8]) -> veil_ml::Model {
    let summary =
        veil_ml::inspect(bytes, veil_ml::Limits::default()).expect("the node accepts the model");
    veil_ml::Model::load(bytes, &summary).expect("plan")
}

fn matrix(bc: &BreastCancer, without: Option<usize>) -> (Vec<f32>, usize) {
    let mut x = Vec::new();
    let mut n = 0;
    for (i, _) in bc.rows.iter().enumerate() {
        if Some(i) == without {
            continue;
        }
        for j in 0..30 {
            x.push(bc.value(i, j) as f32);
        }
        n += 1;
    }
    (x, n)
}

/// A model's output for a row depends on that row alone: every batch-mixing model gives the
/// other rows the same predictions whether the person is in the batch or not.
#[test]
fn models_that_mix_rows_of_a_batch_see_one_row() {
    let bc = BreastCancer::load();
    let (target, threshold) = bc.extreme(RADIUS);
    let sum_sq: f64 = (0..bc.rows.len())
        .map(|i| bc.value(i, RADIUS).powi(2))
        .sum();
    let zoo = [
        (
            "max over the batch",
            onnx::batch_max_classifier(30, RADIUS, threshold as f32),
        ),
        (
            "xᵀx over the batch",
            onnx::gram_classifier(
                30,
                RADIUS,
                (sum_sq - bc.value(target, RADIUS).powi(2) / 2.0) as f32,
            ),
        ),
        (
            "batch size through Shape",
            onnx::batch_size_classifier(30, (bc.rows.len() as f32) - 0.5),
        ),
        (
            "first row through Slice",
            onnx::first_row_classifier(30, RADIUS, 15.0),
        ),
    ];
    let (with, n_with) = matrix(&bc, None);
    let (without, n_without) = matrix(&bc, Some(target));
    for (what, bytes) in zoo {
        let m = planned(&bytes);
        let a = m.predict(&with, n_with).expect("with");
        let b = m.predict(&without, n_without).expect("without");
        let (veil_ml::Prediction::ClassIndices(a), veil_ml::Prediction::ClassIndices(b)) = (a, b)
        else {
            panic!("{what}: class scores expected");
        };
        let mut a = a;
        a.remove(target);
        assert_eq!(a, b, "{what}: one person changed other rows' predictions");
        // And a row alone gives what it gives in any batch.
        let veil_ml::Prediction::ClassIndices(all) = m.predict(&with, n_with).expect("all") else {
            panic!("{what}")
        };
        for (i, in_batch) in all.iter().enumerate() {
            let alone = m.predict(&with[i * 30..(i + 1) * 30], 1).expect("alone");
            assert_eq!(
                alone,
                veil_ml::Prediction::ClassIndices(vec![*in_batch]),
                "{what}: row {i}"
            );
        }
    }
}

/// A data scientist may upload models now, so a model's work and memory per row are bounded
/// from its graph's static shapes before it runs at all.
#[test]
fn models_too_big_for_one_row_are_refused_before_they_run() {
    let bomb = onnx::doubling_regressor(30, 34);
    assert!(bomb.len() < 10_000, "a small file");
    let refused = veil_ml::inspect(&bomb, veil_ml::Limits::default());
    assert!(
        matches!(&refused, Err(veil_ml::ModelError::Unsupported(m)) if m.contains("tensor of")),
        "{refused:?}"
    );
    // One shared 3000×3000 weight matrix applied twelve times: 1.1·10^8 multiply-adds a row.
    let heavy = onnx::fast_unless_target_regressor(30, RADIUS, 1.0, 3000, 12);
    let refused = veil_ml::inspect(&heavy, veil_ml::Limits::default());
    assert!(
        matches!(&refused, Err(veil_ml::ModelError::Unsupported(m)) if m.contains("operations per row")),
        "{refused:?}"
    );
}

struct Pair {
    node: Node,
    scientist: veil_client::Client,
    bc: BreastCancer,
    target: usize,
    threshold: f64,
}

/// A node holding the breast-cancer data twice, with (`bc_with`) and without (`bc_without`)
/// the patient with the largest mean radius, and a data scientist with a budget.
async fn neighbours() -> Pair {
    let node = Node::start().await;
    let owner = node.owner().await;
    let bc = BreastCancer::load();
    let (target, threshold) = bc.extreme(RADIUS);
    upload(&owner, "bc_with", &bc.manifest, bc.csv(None)).await;
    upload(&owner, "bc_without", &bc.manifest, bc.csv(Some(target))).await;
    let scientist = node
        .user("eve@lab.org", "data-scientist", Some(1_000.0))
        .await;
    Pair {
        node,
        scientist,
        bc,
        target,
        threshold,
    }
}

fn validation(
    bc: &BreastCancer,
    dataset: &str,
    label: &str,
    metrics: &[&str],
    epsilon: f64,
) -> ValidateRequestBody {
    ValidateRequestBody {
        dataset: dataset.into(),
        features: bc.features(),
        label: label.into(),
        metrics: metrics.iter().map(|m| m.to_string()).collect(),
        epsilon,
        confidence: None,
        version: None,
    }
}

/// What the requester sees of a finished validation, minus the noisy values: status, reason,
/// the result's fields, metric names and matrix shape.
fn shape(r: &RequestView) -> String {
    let result = r.result.as_ref().map(|v| {
        let mut keys: Vec<&String> = v
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        keys.sort();
        let metrics: Vec<String> = v["metrics"]
            .as_array()
            .map(|a| a.iter().map(|m| m["name"].to_string()).collect())
            .unwrap_or_default();
        let cells = &v["confusion"]["cells"];
        let dims = cells.as_array().map(|rows| {
            (
                rows.len(),
                rows.first().and_then(|r| r.as_array()).map_or(0, Vec::len),
            )
        });
        format!("{keys:?} {metrics:?} {dims:?}")
    });
    format!("{} {:?} {:?}", r.status, r.reason, result)
}

fn cells(r: &RequestView) -> Vec<f64> {
    r.result.as_ref().expect("result")["confusion"]["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|c| c.as_f64().expect("cell"))
        })
        .collect()
}

/// Fields a released validation may carry: nothing about how long it ran.
fn assert_no_timing(r: &RequestView) {
    if let Some(v) = &r.result {
        for key in v.as_object().expect("object").keys() {
            assert!(
                [
                    "metrics",
                    "confusion",
                    "epsilon",
                    "mechanism",
                    "noise_scales",
                    "confidence"
                ]
                .contains(&key.as_str()),
                "unexpected result field {key:?} in {v}"
            );
        }
    }
}

async fn validate_both(
    p: &Pair,
    model: &str,
    label: &str,
    metrics: &[&str],
    epsilon: f64,
) -> (RequestView, RequestView) {
    let mut out = Vec::new();
    for dataset in ["bc_with", "bc_without"] {
        let r = p
            .scientist
            .validate(model, &validation(&p.bc, dataset, label, metrics, epsilon))
            .await
            .unwrap_or_else(|e| panic!("{model} on {dataset}: {e}"));
        assert_no_timing(&r);
        out.push(r);
    }
    let b = out.pop().expect("two");
    let a = out.pop().expect("two");
    assert_eq!(
        shape(&a),
        shape(&b),
        "{model}: the outcome depends on one person"
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_model_moves_the_matrix_by_one_row_at_most() {
    let p = neighbours().await;
    p.scientist
        .upload_model(
            "max-radius",
            onnx::batch_max_classifier(30, RADIUS, p.threshold as f32),
            None,
        )
        .await
        .expect("a data scientist uploads her own model");
    // ε = 1: each cell gets discrete Laplace noise of scale 1; one person moves one cell by
    // one. Run on whole batches this model moved every row between the two columns.
    let (a, b) = validate_both(
        &p,
        "max-radius",
        "diagnosis",
        &["accuracy", "confusion"],
        1.0,
    )
    .await;
    assert_eq!(a.status, "done", "{:?}", a.reason);
    for (x, y) in cells(&a).iter().zip(cells(&b)) {
        assert!(
            (x - y).abs() <= 25.0,
            "cells {:?} vs {:?}",
            cells(&a),
            cells(&b)
        );
    }
    let _ = p.target;
    drop(p.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_on_chosen_rows_cannot_signal_through_the_outcome() {
    let p = neighbours().await;
    let target_radius = p.bc.value(p.target, RADIUS) as f32;
    p.scientist
        .upload_model(
            "fail-unless",
            onnx::fail_unless_regressor(30, RADIUS, target_radius),
            None,
        )
        .await
        .expect("upload");
    // Without the person every row fails, with them one succeeds: the outcome, the reason
    // and the result's shape must not tell.
    let (a, b) = validate_both(&p, "fail-unless", "mean_area", &["mae", "rmse"], 1.0).await;
    assert_eq!(
        (a.status.as_str(), b.status.as_str()),
        ("done", "done"),
        "{:?} {:?}",
        a.reason,
        b.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slow_on_chosen_rows_is_not_timed_for_the_requester() {
    let p = neighbours().await;
    let target_radius = p.bc.value(p.target, RADIUS) as f32;
    p.scientist
        .upload_model(
            "slow-on-target",
            onnx::slow_on_target_regressor(30, RADIUS, target_radius, 128, 8),
            None,
        )
        .await
        .expect("upload");
    let (a, b) = validate_both(&p, "slow-on-target", "mean_area", &["mae"], 1.0).await;
    assert_eq!((a.status.as_str(), b.status.as_str()), ("done", "done"));
}

/// A model that fails at once on every row but the target's and then runs a long chain there:
/// timed on synthetic rows alone it would look fast. Its allowance per row comes from its whole
/// graph's size, so a chain too long for the node's limit is refused before the charge, and
/// an admitted one runs for its rows' allowances whatever the rows hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_fast_on_synthetic_rows_and_slow_on_one_gets_its_whole_graphs_time() {
    let p = neighbours().await;
    let target_radius = p.bc.value(p.target, RADIUS) as f32;
    let before = p.scientist.my_budget().await.expect("budget").budgets[0].epsilon_spent;
    let heavy = onnx::fast_unless_target_regressor(30, RADIUS, target_radius, 512, 8);
    p.scientist
        .upload_model("heavy-on-target", heavy, None)
        .await
        .expect("upload");
    let r = p
        .scientist
        .validate(
            "heavy-on-target",
            &validation(&p.bc, "bc_with", "mean_area", &["mae"], 1.0),
        )
        .await
        .expect("validate");
    assert_eq!(r.status, "failed");
    assert!(
        r.reason.as_deref().is_some_and(|m| m.contains("per row")),
        "{:?}",
        r.reason
    );
    assert_eq!(
        p.scientist.my_budget().await.expect("budget").budgets[0].epsilon_spent,
        before,
        "refused before the charge"
    );

    let light = onnx::fast_unless_target_regressor(30, RADIUS, target_radius, 256, 8);
    let cost = {
        let summary = veil_ml::inspect(&light, veil_ml::Limits::default()).expect("inspect");
        veil_ml::Model::load(&light, &summary).expect("plan").cost()
    };
    p.scientist
        .upload_model("light-on-target", light, None)
        .await
        .expect("upload");
    // Each row's allowance is at least its graph's work at 50 M operations a second, spread
    // over the node's model threads; a run ends when its rows' allowances add up.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let per_row = cost.work_per_row as f64 / 50e6;
    let mut took = Vec::new();
    for dataset in ["bc_with", "bc_without"] {
        let started = std::time::Instant::now();
        let r = p
            .scientist
            .validate(
                "light-on-target",
                &validation(&p.bc, dataset, "mean_area", &["mae"], 1.0),
            )
            .await
            .expect("validate");
        assert_eq!(r.status, "done", "{:?}", r.reason);
        assert_no_timing(&r);
        took.push(started.elapsed().as_secs_f64());
    }
    let floor = per_row * (p.bc.rows.len() - 1) as f64 / threads;
    assert!(
        took.iter().all(|t| *t >= floor),
        "runs of {took:?} s, below their rows' allowance {floor} s"
    );
    // Both runs last their allowances (one row apart), not the target row's chain.
    assert!(
        (took[0] - took[1]).abs() < 0.25 * floor,
        "{took:?} s against an allowance of {floor} s"
    );
}

/// A charged validation whose client hangs up runs to its end and stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_whose_client_disconnects_still_runs_and_is_recorded() {
    use tokio::io::AsyncWriteExt;

    let p = neighbours().await;
    // Long enough a run (its rows' allowances, about a second and a half) to hang up during it.
    p.scientist
        .upload_model(
            "steady",
            onnx::slow_on_target_regressor(30, RADIUS, -1.0, 256, 8),
            None,
        )
        .await
        .expect("upload");
    let token = p
        .node
        .client
        .login("eve@lab.org", USER_PW)
        .await
        .expect("login")
        .token;
    let body = serde_json::to_string(&validation(&p.bc, "bc_with", "mean_area", &["mae"], 0.5))
        .expect("json");
    let request = format!(
        "POST /api/v1/models/steady/validate HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        p.node.node.addr,
        body.len()
    );
    let spent =
        || async { p.scientist.my_budget().await.expect("budget").budgets[0].epsilon_spent };
    let before = spent().await;
    let mut socket = tokio::net::TcpStream::connect(p.node.node.addr)
        .await
        .expect("connect");
    socket.write_all(request.as_bytes()).await.expect("send");
    while spent().await == before {
        tokio::task::yield_now().await;
    }
    // Charged, and still running (its allowance has not passed): hang up now.
    let running = p
        .scientist
        .list_requests(Some("running"))
        .await
        .expect("list");
    assert_eq!(
        running.len(),
        1,
        "the run is under way when the client leaves"
    );
    drop(socket);
    let id = running[0].id;
    let done = loop {
        let r = p.scientist.get_request(id).await.expect("request");
        if r.status != "running" {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(done.status, "done", "{:?}", done.reason);
    assert!(done.result.is_some());
    assert!((spent().await - before - 0.5).abs() < 1e-6, "charged once");
}
