//! Runs the committed fixtures (see fixtures/make_fixtures.py) and checks them against the
//! accuracies scikit-learn reported for the same test split.

use crate::{Limits, Model, ModelError, ModelKind, Prediction, inspect};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The 40% test split of the breast-cancer data: features and 0/1 labels (1 = benign).
fn test_split() -> (Vec<f32>, Vec<i64>, usize) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/data/breast_cancer_test.csv");
    let text = std::fs::read_to_string(path).expect("test split");
    let mut x = Vec::new();
    let mut y = Vec::new();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        for c in &cells[..30] {
            x.push(c.parse::<f32>().expect("number"));
        }
        y.push(i64::from(cells[30] == "benign"));
    }
    let n = y.len();
    (x, y, n)
}

fn accuracy(model: &Model) -> f64 {
    let (x, y, n) = test_split();
    let pred = model.predict(&x, n).expect("predict");
    let labels: Vec<i64> = match pred {
        Prediction::IntLabels(v) => v,
        Prediction::ClassIndices(v) => v.into_iter().map(|i| i as i64).collect(),
        other => panic!("{other:?}"),
    };
    labels.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / n as f64
}

#[test]
fn scikit_learn_and_torch_style_classifiers_match_their_reported_accuracy() {
    let report: serde_json::Value =
        serde_json::from_slice(&fixture("README.json")).expect("fixture report");
    for name in [
        "breast_cancer_lr.onnx",
        "breast_cancer_lr_zipmap.onnx",
        "breast_cancer_rf.onnx",
        "breast_cancer_mlp.onnx",
        "breast_cancer_torch_mlp.onnx",
    ] {
        let bytes = fixture(name);
        let summary = inspect(&bytes, Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summary.n_features, 30, "{name}");
        let model = Model::load(&bytes, &summary).expect("load");
        let acc = accuracy(&model);
        let expected = report["models"][name]["test_accuracy"]
            .as_f64()
            .expect("reported");
        assert!(
            (acc - expected).abs() < 1e-9,
            "{name}: tract {acc} vs scikit-learn {expected}"
        );
    }
}

#[test]
fn kinds_are_recognised() {
    let lr = inspect(&fixture("breast_cancer_lr_zipmap.onnx"), Limits::default()).expect("lr");
    assert!(
        matches!(&lr.kind, ModelKind::Classifier { classes: Some(crate::ClassLabels::Ints(c)), .. } if c == &[0, 1])
    );
    let torch =
        inspect(&fixture("breast_cancer_torch_mlp.onnx"), Limits::default()).expect("torch");
    assert_eq!(
        torch.kind,
        ModelKind::ScoreClassifier {
            scores_output: "logits".into(),
            classes: 2
        }
    );
    let reg = inspect(
        &fixture("breast_cancer_area_regressor.onnx"),
        Limits::default(),
    )
    .expect("reg");
    assert!(matches!(reg.kind, ModelKind::Regressor { .. }));
    assert_eq!(reg.n_features, 2);
    let model = Model::load(&fixture("breast_cancer_area_regressor.onnx"), &reg).expect("load");
    // mean radius 10, perimeter 65: an area around 300.
    match model.predict(&[10.0, 65.0], 1).expect("predict") {
        Prediction::Values(v) => assert!((200.0..400.0).contains(&v[0]), "{v:?}"),
        other => panic!("{other:?}"),
    }
    assert!(lr.operators.contains_key("ai.onnx.ml:ZipMap"));
}

#[test]
fn bad_models_get_clear_errors() {
    let looping = inspect(&fixture("looping.onnx"), Limits::default());
    assert!(
        matches!(&looping, Err(ModelError::Unsupported(m)) if m.contains("ai.onnx:Loop is not allowed")),
        "{looping:?}"
    );
    for garbage in [&b""[..], b"not onnx", &[0xff; 300]] {
        assert!(
            matches!(
                inspect(garbage, Limits::default()),
                Err(ModelError::Corrupt(_))
            ),
            "{garbage:?}"
        );
    }
    let mut truncated = fixture("breast_cancer_mlp.onnx");
    truncated.truncate(truncated.len() / 2);
    assert!(inspect(&truncated, Limits::default()).is_err());
    let big = inspect(
        &fixture("breast_cancer_rf.onnx"),
        Limits {
            max_bytes: 100,
            ..Limits::default()
        },
    );
    assert!(matches!(big, Err(ModelError::TooLarge { limit: 100 })));

    let bytes = fixture("breast_cancer_lr.onnx");
    let summary = inspect(&bytes, Limits::default()).expect("lr");
    let model = Model::load(&bytes, &summary).expect("load");
    assert!(matches!(
        model.predict(&[0.0; 29], 1),
        Err(ModelError::Input(_))
    ));
}
