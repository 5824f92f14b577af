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

/// tract walks a tree with unchecked indexing until it meets a leaf and adds each vote at an
/// unchecked class offset, and reports no cost for either. A branch back to its own node
/// loops forever on the one value that takes it (a membership oracle that also keeps a worker
/// thread for good); a vote for class 10^8 writes outside the output. Both are refused before
/// tract sees the graph, and a deep path is counted as work.
#[test]
fn tree_ensembles_that_loop_write_out_of_range_or_hide_their_depth_are_caught() {
    use onnx::TreeNode as N;
    let refused = |bytes: Vec<u8>, needle: &str| {
        let r = veil_ml::inspect(&bytes, veil_ml::Limits::default());
        assert!(
            matches!(&r, Err(veil_ml::ModelError::Unsupported(m)) if m.contains(needle)),
            "expected a refusal mentioning {needle:?}, got {r:?}"
        );
    };
    let three = |mode: &'static str, feature: i64, yes: i64, no: i64| {
        vec![
            N::branch(0, 0, mode, feature, 10.0, yes, no),
            N::leaf(0, yes.max(1)),
            N::leaf(0, no.max(2)),
        ]
    };
    let cases: Vec<(&str, Vec<N>, Vec<onnx::Vote>, &str)> = vec![
        (
            "node 0 branches to itself when x0 == 17.5, to a leaf otherwise",
            vec![N::branch(0, 0, "BRANCH_EQ", 0, 17.5, 0, 1), N::leaf(0, 1)],
            vec![(0, 1, 1, 1.0)],
            "must lead to a later node",
        ),
        (
            "a two-node cycle further down",
            vec![
                N::branch(0, 0, "BRANCH_LEQ", 0, 10.0, 1, 3),
                N::branch(0, 1, "BRANCH_EQ", 0, 7.0, 2, 3),
                N::branch(0, 2, "BRANCH_LEQ", 1, 0.0, 1, 3),
                N::leaf(0, 3),
            ],
            vec![(0, 3, 0, 1.0)],
            "must lead to a later node",
        ),
        (
            "a vote far outside the declared classes",
            three("BRANCH_LEQ", 0, 1, 2),
            vec![(0, 1, 0, 1.0), (0, 2, 100_000_000, 1.0)],
            "votes for class",
        ),
        (
            "a vote on a branch",
            three("BRANCH_LEQ", 0, 1, 2),
            vec![(0, 0, 0, 1.0)],
            "not a leaf",
        ),
        (
            "node ids that skip",
            three("BRANCH_LEQ", 0, 1, 5),
            vec![(0, 1, 0, 1.0)],
            "once each",
        ),
        (
            "a feature the input does not have",
            three("BRANCH_LEQ", 40, 1, 2),
            vec![(0, 1, 0, 1.0), (0, 2, 1, 1.0)],
            "reads feature 40",
        ),
        (
            "BRANCH_GTE, which tract runs as a leaf over an arbitrary range of votes",
            three("BRANCH_GTE", 0, 1, 2),
            vec![(0, 1, 0, 1.0), (0, 2, 1, 1.0)],
            "BRANCH_GTE",
        ),
    ];
    for (what, nodes, votes, needle) in cases {
        eprintln!("{what}");
        refused(onnx::tree_classifier(30, 2, &nodes, &votes), needle);
    }
    // Two declared classes, padded with a million labels in a field tract does not read, to
    // make a vote for class 999 999 look declared.
    let small_tree = [
        N::branch(0, 0, "BRANCH_LEQ", 0, 10.0, 1, 2),
        N::leaf(0, 1),
        N::leaf(0, 2),
    ];
    let mut padded =
        onnx::TreeModel::new(30, 2, &small_tree, &[(0, 1, 0, 1.0), (0, 2, 999_999, 1.0)]);
    padded.extra.push(tract_onnx::pb::AttributeProto {
        name: "classlabels_int64s".into(),
        r#type: 7,
        ints: vec![0, 1],
        strings: vec![b"x".to_vec(); 1_000_000],
        ..Default::default()
    });
    refused(padded.build(), "holds values other than its type says");

    // A proper tree runs and predicts; a chain as deep as its nodes (each step taken only on
    // one exact value) is accepted, and its depth is counted as work.
    let small = onnx::tree_classifier(
        30,
        2,
        &[
            N::branch(0, 0, "BRANCH_LEQ", 0, 15.0, 1, 2),
            N::leaf(0, 1),
            N::leaf(0, 2),
        ],
        &[(0, 1, 0, 1.0), (0, 2, 1, 1.0)],
    );
    let model = planned(&small);
    let mut row = vec![0.0f32; 30];
    assert_eq!(
        model.predict_row(&row).expect("run"),
        veil_ml::Output::IntLabel(0)
    );
    row[0] = 20.0;
    assert_eq!(
        model.predict_row(&row).expect("run"),
        veil_ml::Output::IntLabel(1)
    );

    let depth = 20_000i64;
    let mut chain: Vec<N> = (0..depth)
        .map(|i| N::branch(0, i, "BRANCH_EQ", 0, i as f32, i + 1, depth + 1))
        .collect();
    chain.push(N::leaf(0, depth));
    chain.push(N::leaf(0, depth + 1));
    let deep = onnx::tree_classifier(30, 2, &chain, &[(0, depth, 0, 1.0), (0, depth + 1, 1, 1.0)]);
    let cost = planned(&deep).cost();
    assert!(
        cost.work_per_row >= 5 * depth as u64,
        "a path of {depth} nodes is counted as {} units of work",
        cost.work_per_row
    );
    // Fed 64 copies of the row, the trees are walked 64 times per row, and counted so.
    let chain_votes = [(0, depth, 0, 1.0), (0, depth + 1, 1, 1.0)];
    let mut copied = onnx::TreeModel::new(30, 2, &chain, &chain_votes);
    copied.copies = 64;
    let copied_cost = planned(&copied.build()).cost();
    assert!(
        copied_cost.work_per_row >= 64 * 5 * depth as u64,
        "{} units for 64 walks of a path of {depth} nodes",
        copied_cost.work_per_row
    );
    // The same chain with its depth counted against the node's limit.
    let limits = veil_ml::Limits {
        max_work_per_row: 50_000,
        ..veil_ml::Limits::default()
    };
    let r = veil_ml::inspect(&deep, limits);
    assert!(
        matches!(&r, Err(veil_ml::ModelError::Unsupported(m)) if m.contains("operations per row")),
        "{r:?}"
    );
}

/// Thousands of tiny operators cost far more per row than their arithmetic (tract's per-node
/// bookkeeping): each is charged a fixed amount of work, so a row's allowance still covers
/// them. (A property of this machine as much as of the code: the allowance must be an upper
/// bound here, with room for a busier machine.)
#[test]
fn many_tiny_operators_stay_within_their_rows_allowance() {
    let mut g = onnx::Graph::new(30);
    let mut h = g.feature(RADIUS);
    let (a, m) = (g.scalar(0.5), g.scalar(1.0001));
    for i in 0..4_500 {
        h = if i % 2 == 0 {
            g.op("Add", &[&h, &a], vec![])
        } else {
            g.op("Mul", &[&h, &m], vec![])
        };
    }
    let bytes = g.finish(&h, &[None, Some(1)]);
    let model = planned(&bytes);
    let cost = model.cost();
    assert!(
        cost.operators > 4_000,
        "the planner kept the chain: {cost:?}"
    );
    let allowance = cost.work_per_row as f64 / 50e6 + 20e-6;
    let row: Vec<f32> = (0..30).map(|i| i as f32).collect();
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let started = std::time::Instant::now();
            let _ = model.predict_row(&row);
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    assert!(
        median * 2.0 < allowance,
        "a row takes {median:.6} s against an allowance of {allowance:.6} s ({cost:?})"
    );
}

/// Arithmetic on subnormal numbers is far slower than on normal ones on many CPUs, and a model
/// can make only the target's row subnormal. tract's matrix kernels treat subnormal inputs as
/// zero; element-wise operators do not, and the rate a row's work is turned into time at
/// (50 M operations a second) must cover them.
#[test]
fn subnormal_arithmetic_stays_within_its_rows_allowance() {
    // 256 copies of the radius times `level`, multiplied 400 times by factors that keep it at
    // that level: with level 1e-40 every value of every step is subnormal.
    let build = |level: f32| {
        let mut g = onnx::Graph::new(30);
        let f = g.feature(RADIUS);
        let s = g.scalar(level / 10.0);
        let mut h = g.op("Mul", &[&f, &s], vec![]);
        for _ in 0..8 {
            h = g.op("Concat", &[&h, &h], vec![onnx::int_attr("axis", 1)]);
        }
        let (up, down) = (g.scalar(1.001), g.scalar(0.999));
        for i in 0..400 {
            h = g.op("Mul", &[&h, if i % 2 == 0 { &up } else { &down }], vec![]);
            // Keeps the planner from folding the factors into one.
            h = g.op("Abs", &[&h], vec![]);
        }
        let axes = g.ints(&[1], vec![1]);
        let out = g.op(
            "ReduceSum",
            &[&h, &axes],
            vec![onnx::int_attr("keepdims", 1)],
        );
        g.finish(&out, &[None, Some(1)])
    };
    let row: Vec<f32> = (0..30).map(|i| 10.0 + i as f32).collect();
    let median = |model: &veil_ml::Model| {
        let mut times: Vec<f64> = (0..15)
            .map(|_| {
                let started = std::time::Instant::now();
                let _ = model.predict_row(&row);
                started.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let subnormal = planned(&build(1e-40));
    let normal = planned(&build(1.0));
    let out = subnormal.predict_row(&row).expect("run");
    assert!(
        matches!(out, veil_ml::Output::Value(v) if v > 1e-39 && v < 1e-36),
        "the chain stayed subnormal: {out:?}"
    );
    let cost = subnormal.cost();
    assert!(cost.operators > 400, "the planner kept the chain: {cost:?}");
    let allowance = cost.work_per_row as f64 / 50e6 + 20e-6;
    let (slow, fast) = (median(&subnormal), median(&normal));
    eprintln!("subnormal row {slow:.6} s, normal row {fast:.6} s, allowance {allowance:.6} s");
    assert!(
        slow * 2.0 < allowance,
        "a subnormal row takes {slow:.6} s (normal {fast:.6} s) against an allowance of {allowance:.6} s"
    );
}

/// Formatting a number as text takes time that depends on the number; strings may only be a
/// classifier's labels.
#[test]
fn models_that_make_strings_are_refused() {
    let r = veil_ml::inspect(&onnx::string_cast_regressor(30), veil_ml::Limits::default());
    assert!(
        matches!(&r, Err(veil_ml::ModelError::Unsupported(m)) if m.contains("casts to strings")),
        "{r:?}"
    );
    // A tree classifier with string labels (which tract cannot plan) is refused cleanly, and
    // so is one whose string label is parsed as a number (time that depends on its text).
    let tree = [
        onnx::TreeNode::branch(0, 0, "BRANCH_LEQ", 0, 15.0, 1, 2),
        onnx::TreeNode::leaf(0, 1),
        onnx::TreeNode::leaf(0, 2),
    ];
    let votes = [(0, 1, 0, 1.0), (0, 2, 1, 1.0)];
    let mut labelled = onnx::TreeModel::new(30, 2, &tree, &votes);
    labelled.string_labels = true;
    for label_as_float in [false, true] {
        labelled.label_as_float = label_as_float;
        let r = veil_ml::inspect(&labelled.build(), veil_ml::Limits::default());
        assert!(
            matches!(&r, Err(veil_ml::ModelError::Unsupported(_))),
            "{r:?}"
        );
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
    // Each row's allowance is at least its graph's work at 50 M operations a second plus
    // 20 µs, spread over the run's workers (at most 4), plus 10 µs and 50 ns a feature of
    // scan; a run ends a second, its rows' allowances and one last chunk of 256 rows after it
    // starts, for a noisy bound on the rows that exceeds the true count except with
    // probability 1e-9.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4) as f64;
    let row_time = cost.work_per_row as f64 / 50e6 + 20e-6;
    let per_row = row_time / workers + 10e-6 + 30.0 * 50e-9;
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
    let floor = 1.0 + 256.0 * row_time + per_row * (p.bc.rows.len() - 1) as f64;
    assert!(
        took.iter().all(|t| *t >= floor),
        "runs of {took:?} s, below their padded length {floor} s"
    );
    // Both end at their padded length, which differs only by the noise on the row count
    // (about 3 rows here), not by the target row's chain.
    assert!(
        (took[0] - took[1]).abs() < 0.2,
        "{took:?} s against a padded length of {floor} s"
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
