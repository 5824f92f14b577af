//! Model validation end to end: real ONNX fixtures, encrypted datasets, DP metrics,
//! requests and reviews, signatures.

use crate::common::*;
use veil_api_types::*;
use veil_client::Client;

const FEATURES: [&str; 30] = [
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
    "radius_error",
    "texture_error",
    "perimeter_error",
    "area_error",
    "smoothness_error",
    "compactness_error",
    "concavity_error",
    "concave_points_error",
    "symmetry_error",
    "fractal_dimension_error",
    "worst_radius",
    "worst_texture",
    "worst_perimeter",
    "worst_area",
    "worst_smoothness",
    "worst_compactness",
    "worst_concavity",
    "worst_concave_points",
    "worst_symmetry",
    "worst_fractal_dimension",
];

fn fixture(path: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

async fn upload_breast_cancer(owner: &Client) {
    let csv = fixture("data/breast_cancer.csv");
    let len = csv.len() as u64;
    let manifest = String::from_utf8(fixture("data/breast_cancer.toml")).expect("utf-8");
    owner
        .upload_dataset(
            "breast_cancer",
            &manifest,
            "csv",
            futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(csv))]),
            len,
        )
        .await
        .expect("dataset");
}

/// The model's accuracy on the whole plaintext dataset, computed here with the same engine.
fn true_accuracy(model: &str) -> f64 {
    let bytes = fixture(&format!("models/{model}"));
    let summary = veil_ml::inspect(&bytes, veil_ml::Limits::default()).expect("inspect");
    let m = veil_ml::Model::load(&bytes, &summary).expect("load");
    let text = String::from_utf8(fixture("data/breast_cancer.csv")).expect("utf-8");
    let mut x = Vec::new();
    let mut y = Vec::new();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        x.extend(
            cells[..30]
                .iter()
                .map(|c| c.parse::<f32>().expect("number")),
        );
        y.push(i64::from(cells[30] == "benign"));
    }
    let labels = match m.predict(&x, y.len()).expect("predict") {
        veil_ml::Prediction::IntLabels(v) => v,
        veil_ml::Prediction::ClassIndices(v) => v.into_iter().map(|i| i as i64).collect(),
        other => panic!("{other:?}"),
    };
    labels.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
}

fn body(epsilon: f64, metrics: &[&str]) -> ValidateRequestBody {
    ValidateRequestBody {
        dataset: "breast_cancer".into(),
        features: FEATURES.iter().map(|s| s.to_string()).collect(),
        label: "diagnosis".into(),
        metrics: metrics.iter().map(|s| s.to_string()).collect(),
        epsilon,
        confidence: None,
        version: None,
    }
}

fn metric(r: &RequestView, name: &str) -> (f64, f64, f64) {
    let m = r.result.as_ref().expect("result")["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.result));
    (
        m["value"].as_f64().expect("value"),
        m["low"].as_f64().expect("low"),
        m["high"].as_f64().expect("high"),
    )
}

struct Setup {
    node: TestNode,
    owner: Client,
    creator: Client,
    scientist: Client,
}

async fn setup(backend: Backend) -> Setup {
    let node = TestNode::start(backend).await;
    let owner = node.owner().await;
    upload_breast_cancer(&owner).await;
    let creator = node.user("mo@lab.org", "model-creator").await;
    let scientist = node.user("ana@lab.org", "data-scientist").await;
    owner
        .set_budget(
            "ana@lab.org",
            &SetBudgetRequest {
                dataset: None,
                epsilon: 50.0,
                delta: 0.0,
            },
        )
        .await
        .expect("budget");
    Setup {
        node,
        owner,
        creator,
        scientist,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_accuracy_of_the_fixtures_matches_their_true_accuracy() {
    for backend in backends() {
        let s = setup(backend).await;
        for (name, file) in [
            ("tumour-lr", "breast_cancer_lr.onnx"),
            ("tumour-lr-zipmap", "breast_cancer_lr_zipmap.onnx"),
            ("tumour-rf", "breast_cancer_rf.onnx"),
            ("tumour-mlp", "breast_cancer_mlp.onnx"),
            ("tumour-torch", "breast_cancer_torch_mlp.onnx"),
        ] {
            let m = s
                .creator
                .upload_model(name, fixture(&format!("models/{file}")), None)
                .await
                .expect("upload");
            assert_eq!((m.version, m.n_features), (1, 30), "{name}");
            let r = s
                .scientist
                .validate(
                    name,
                    &body(
                        10.0,
                        &["accuracy", "precision", "recall", "f1", "confusion"],
                    ),
                )
                .await
                .expect("validate");
            assert_eq!(r.status, "done", "{name}: {:?}", r.reason);
            let truth = true_accuracy(file);
            let (acc, low, high) = metric(&r, "accuracy");
            // ε = 10 on 569 rows: noise of scale 0.1 per cell; 0.02 is a wide tolerance.
            assert!(
                (acc - truth).abs() < 0.02,
                "{name}: DP accuracy {acc}, true {truth}"
            );
            assert!(low <= acc && acc <= high, "{name}: [{low}, {high}]");
            assert!(
                high - low < 0.05,
                "{name}: interval [{low}, {high}] too wide for ε = 10"
            );
            let cm = &r.result.as_ref().expect("result")["confusion"];
            assert_eq!(cm["classes"], serde_json::json!(["malignant", "benign"]));
        }
        // The budget paid for five runs of ε = 10.
        let b = s.scientist.my_budget().await.expect("budget");
        assert!((b.budgets[0].epsilon_spent - 50.0).abs() < 1e-6);
        let r = s
            .scientist
            .validate("tumour-lr", &body(1.0, &["accuracy"]))
            .await
            .expect("validate");
        assert_eq!(r.status, "failed");
        assert!(
            r.reason
                .as_deref()
                .is_some_and(|m| m.contains("budget exhausted")),
            "{:?}",
            r.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_models_release_error_metrics() {
    let s = setup(Backend::Sqlite).await;
    s.creator
        .upload_model(
            "area",
            fixture("models/breast_cancer_area_regressor.onnx"),
            None,
        )
        .await
        .expect("upload");
    let r = s
        .scientist
        .validate(
            "area",
            &ValidateRequestBody {
                dataset: "breast_cancer".into(),
                features: vec!["mean_radius".into(), "mean_perimeter".into()],
                label: "mean_area".into(),
                metrics: vec!["mae".into(), "rmse".into(), "r2".into()],
                epsilon: 45.0,
                confidence: None,
                version: None,
            },
        )
        .await
        .expect("validate");
    assert_eq!(r.status, "done", "{:?}", r.reason);
    // ε = 45 of the 50 budgeted: the squared-error sums are clipped to the label's public
    // range (area up to 5000), so R² needs a large ε to be informative. The true R² on these
    // rows is 0.974.
    let (r2, lo, hi) = metric(&r, "r2");
    assert!(r2 > 0.8, "R² {r2} [{lo}, {hi}]");
    let (mae, ..) = metric(&r, "mae");
    assert!(mae > 0.0 && mae < 200.0, "MAE {mae}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_policy_requests_and_approvals() {
    let s = setup(Backend::Sqlite).await;
    s.creator
        .upload_model("tumour-lr", fixture("models/breast_cancer_lr.onnx"), None)
        .await
        .expect("upload");
    s.owner
        .update_dataset(
            "breast_cancer",
            &DatasetUpdateRequest {
                policy: Some("review".into()),
                ..Default::default()
            },
        )
        .await
        .expect("policy");
    let pending = s
        .scientist
        .validate("tumour-lr", &body(2.0, &["accuracy", "f1"]))
        .await
        .expect("file");
    assert_eq!(pending.status, "pending");
    assert!(pending.result.is_none());
    assert_eq!(
        s.scientist.my_budget().await.expect("b").budgets[0].epsilon_spent,
        0.0,
        "nothing charged yet"
    );
    expect_code(s.scientist.approve_request(pending.id).await, "forbidden");

    let officer = s.node.user("carl@lab.org", "compliance-officer").await;
    let queue = officer.list_requests(Some("pending")).await.expect("queue");
    assert_eq!(queue.len(), 1);
    assert_eq!(
        queue[0].parameters["metrics"],
        serde_json::json!(["accuracy", "f1"])
    );
    let done = officer.approve_request(pending.id).await.expect("approve");
    assert_eq!(
        (done.status.as_str(), done.reviewer.as_deref()),
        ("done", Some("carl@lab.org"))
    );
    let seen = s
        .scientist
        .get_request(pending.id)
        .await
        .expect("requester sees it");
    assert!(seen.result.is_some());
    assert!(
        (s.scientist.my_budget().await.expect("b").budgets[0].epsilon_spent - 2.0).abs() < 1e-9
    );

    let second = s
        .scientist
        .validate("tumour-lr", &body(2.0, &["accuracy"]))
        .await
        .expect("file");
    let denied = officer
        .deny_request(second.id, "use fewer metrics")
        .await
        .expect("deny");
    assert_eq!(
        (denied.status.as_str(), denied.reason.as_deref()),
        ("denied", Some("use fewer metrics"))
    );
    let msg = expect_code(
        officer.approve_request(second.id).await,
        "request_not_pending",
    );
    assert!(msg.contains("denied"), "{msg}");
    expect_code(
        officer.deny_request(second.id, "again").await,
        "request_not_pending",
    );
    expect_code(officer.deny_request(pending.id, " ").await, "invalid_input");

    // The owner holds both permissions, but review needs a second person.
    let own = s
        .owner
        .validate("tumour-lr", &body(1.0, &["accuracy"]))
        .await
        .expect("file");
    let msg = expect_code(s.owner.approve_request(own.id).await, "cannot_modify_self");
    assert!(msg.contains("own request"), "{msg}");
    officer
        .deny_request(own.id, "filed by the approver")
        .await
        .expect("deny");

    // Requesters see only their own requests.
    let other = s.node.user("bo@lab.org", "data-scientist").await;
    expect_code(other.get_request(pending.id).await, "request_not_found");
    assert!(other.list_requests(None).await.expect("own").is_empty());
    assert_eq!(officer.list_requests(None).await.expect("all").len(), 3);

    let audit = s
        .owner
        .audit(&AuditQuery {
            action: Some("request.".into()),
            limit: Some(100),
            ..Default::default()
        })
        .await;
    let actions: Vec<String> = audit
        .expect("audit")
        .entries
        .into_iter()
        .map(|e| e.action)
        .collect();
    for a in [
        "request.create",
        "request.approve",
        "request.run",
        "request.done",
        "request.deny",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_models_and_bad_requests_get_clear_errors() {
    let s = setup(Backend::Sqlite).await;
    let msg = expect_code(
        s.creator
            .upload_model("junk", b"not an onnx file".to_vec(), None)
            .await,
        "invalid_model",
    );
    assert!(msg.contains("ONNX"), "{msg}");
    let msg = expect_code(
        s.creator
            .upload_model("loop", fixture("models/looping.onnx"), None)
            .await,
        "invalid_model",
    );
    assert!(msg.contains("Loop is not allowed"), "{msg}");
    // Data users may not upload models at all.
    let data_user = s.node.user("dan@lab.org", "data-user").await;
    expect_code(
        data_user
            .upload_model("mine", fixture("models/breast_cancer_lr.onnx"), None)
            .await,
        "forbidden",
    );

    s.creator
        .upload_model("tumour-lr", fixture("models/breast_cancer_lr.onnx"), None)
        .await
        .expect("upload");
    let other_creator = s.node.user("zed@lab.org", "model-creator").await;
    expect_code(
        other_creator
            .upload_model("tumour-lr", fixture("models/breast_cancer_lr.onnx"), None)
            .await,
        "model_name_taken",
    );

    let mut narrow = body(1.0, &["accuracy"]);
    narrow.features.pop();
    let msg = expect_code(
        s.scientist.validate("tumour-lr", &narrow).await,
        "invalid_validation",
    );
    assert!(msg.contains("takes 30 features; 29 were given"), "{msg}");
    let mut float_label = body(1.0, &["accuracy"]);
    float_label.label = "mean_area".into();
    let msg = expect_code(
        s.scientist.validate("tumour-lr", &float_label).await,
        "invalid_validation",
    );
    assert!(msg.contains("must be a category"), "{msg}");
    let msg = expect_code(
        s.scientist
            .validate("tumour-lr", &body(1.0, &["rmse"]))
            .await,
        "invalid_validation",
    );
    assert!(msg.contains("regression metric"), "{msg}");
    expect_code(
        s.scientist
            .validate("nope", &body(1.0, &["accuracy"]))
            .await,
        "model_not_found",
    );
    let mut missing = body(1.0, &["accuracy"]);
    missing.dataset = "nope".into();
    expect_code(
        s.scientist.validate("tumour-lr", &missing).await,
        "dataset_not_found",
    );

    // Stored models are sealed: no operator name or weight is readable on disk.
    let mut sealed = 0;
    for e in std::fs::read_dir(s.node.config.data_dir.join("datasets/models")).expect("models dir")
    {
        let bytes = std::fs::read(e.expect("entry").path()).expect("read");
        assert!(!bytes.windows(16).any(|w| w == b"LinearClassifier"));
        sealed += 1;
    }
    assert_eq!(sealed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slower_than_the_row_time_limit_is_refused_before_the_charge() {
    let node = TestNode::start_with(Backend::Sqlite, |c| {
        c.core.validation_row_time_limit = std::time::Duration::from_nanos(1);
    })
    .await;
    let owner = node.owner().await;
    upload_breast_cancer(&owner).await;
    let creator = node.user("mo@lab.org", "model-creator").await;
    let scientist = node.user("ana@lab.org", "data-scientist").await;
    owner
        .set_budget(
            "ana@lab.org",
            &SetBudgetRequest {
                dataset: None,
                epsilon: 5.0,
                delta: 0.0,
            },
        )
        .await
        .expect("budget");
    creator
        .upload_model("tumour-mlp", fixture("models/breast_cancer_mlp.onnx"), None)
        .await
        .expect("upload");
    let r = scientist
        .validate("tumour-mlp", &body(1.0, &["accuracy"]))
        .await
        .expect("validate");
    assert_eq!(r.status, "failed");
    assert!(
        r.reason.as_deref().is_some_and(|m| m.contains("per row")),
        "{:?}",
        r.reason
    );
    assert_eq!(
        scientist.my_budget().await.expect("b").budgets[0].epsilon_spent,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_uploads_are_verified_against_the_uploaders_keys() {
    let node = TestNode::start_with(Backend::Sqlite, |c| c.core.require_signed_models = true).await;
    let creator = node.user("mo@lab.org", "model-creator").await;
    let bytes = fixture("models/breast_cancer_lr.onnx");
    expect_code(
        creator.upload_model("m", bytes.clone(), None).await,
        "signature_required",
    );

    let key = veil_crypto::signing::PrivateKey::generate();
    let sig = key.sign_hex(&bytes).into_bytes();
    let msg = expect_code(
        creator
            .upload_model("m", bytes.clone(), Some(sig.clone()))
            .await,
        "bad_signature",
    );
    assert!(msg.contains("no registered signing key"), "{msg}");

    let k = creator
        .add_key("laptop", &key.public().to_pem())
        .await
        .expect("add key");
    assert_eq!(k.fingerprint, key.public().fingerprint());
    expect_code(
        creator.add_key("again", &key.public().to_pem()).await,
        "key_exists",
    );
    expect_code(creator.add_key("bad", "not a key").await, "invalid_input");

    let m = creator
        .upload_model("m", bytes.clone(), Some(sig.clone()))
        .await
        .expect("signed upload");
    assert!(
        m.signed_by
            .as_deref()
            .is_some_and(|s| s.starts_with("laptop (SHA256:")),
        "{:?}",
        m.signed_by
    );

    let tampered = {
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        b
    };
    expect_code(
        creator.upload_model("m", tampered, Some(sig.clone())).await,
        "bad_signature",
    );
    let stranger = veil_crypto::signing::PrivateKey::generate();
    expect_code(
        creator
            .upload_model(
                "m",
                bytes.clone(),
                Some(stranger.sign_hex(&bytes).into_bytes()),
            )
            .await,
        "bad_signature",
    );
    creator.revoke_key(k.id).await.expect("revoke");
    expect_code(
        creator.upload_model("m", bytes, Some(sig)).await,
        "bad_signature",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_scientists_validate_their_own_private_models() {
    let s = setup(Backend::Sqlite).await;
    let ana = &s.scientist;
    let uploaded = ana
        .upload_model("ana-lr", fixture("models/breast_cancer_lr.onnx"), None)
        .await
        .expect("a data scientist uploads her own model");
    assert!(uploaded.private, "{uploaded:?}");
    let r = ana
        .validate("ana-lr", &body(5.0, &["accuracy"]))
        .await
        .expect("validate");
    assert_eq!(r.status, "done", "{:?}", r.reason);
    assert!(
        ana.list_models()
            .await
            .expect("list")
            .iter()
            .any(|m| m.name == "ana-lr")
    );

    // Private to her and to reviewers: for other users the model does not exist.
    let bo = s.node.user("bo@lab.org", "data-scientist").await;
    let reviewer = s.node.user("cora@lab.org", "compliance-officer").await;
    for other in [&bo, &s.creator] {
        assert!(
            !other
                .list_models()
                .await
                .expect("list")
                .iter()
                .any(|m| m.name == "ana-lr")
        );
        expect_code(other.get_model("ana-lr", None).await, "model_not_found");
    }
    expect_code(
        bo.validate("ana-lr", &body(1.0, &["accuracy"])).await,
        "model_not_found",
    );
    expect_code(bo.delete_model("ana-lr", None).await, "model_not_found");
    assert!(
        reviewer
            .get_model("ana-lr", None)
            .await
            .expect("reviewer")
            .private
    );
    assert!(
        s.owner
            .get_model("ana-lr", None)
            .await
            .expect("owner")
            .private
    );

    // A model creator's uploads stay in the catalogue.
    let public = s
        .creator
        .upload_model("mo-lr", fixture("models/breast_cancer_lr.onnx"), None)
        .await
        .expect("creator");
    assert!(!public.private);
    assert!(bo.get_model("mo-lr", None).await.is_ok());

    // Publishing for encrypted inference stays a model creator's right.
    let calibration = fixture("data/breast_cancer_train.csv");
    expect_code(
        ana.upload_model_with(
            "ana-fhe",
            fixture("models/breast_cancer_lr.onnx"),
            None,
            Some((FhePublishOptions::default(), calibration)),
        )
        .await,
        "forbidden",
    );
}
