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
