//! Encrypted inference end to end: a creator publishes a model for FHE, a data user uploads an
//! evaluation key, sends real TFHE ciphertexts, and decrypts exactly what the clear simulator
//! of the same circuit computes. Bad keys, ciphertexts and widths get their own errors.

use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use veil_api_types::*;
use veil_client::Client;
use veil_fhe::backend::{ClientKey, EncryptedOutputs};
use veil_fhe::{ClientSpec, CompileOptions};

fn fixture(path: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Rows of a fixture CSV without its last (label) column.
fn rows(path: &str) -> Vec<Vec<f64>> {
    let text = String::from_utf8(fixture(path)).expect("utf-8");
    text.lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            cells[..cells.len() - 1]
                .iter()
                .map(|c| c.parse().expect("number"))
                .collect()
        })
        .collect()
}

fn calibration_csv(rows: &[Vec<f64>]) -> Vec<u8> {
    let n = rows[0].len();
    let mut s = (0..n)
        .map(|i| format!("f{i}"))
        .collect::<Vec<_>>()
        .join(",");
    s.push('\n');
    for r in rows {
        s.push_str(
            &r.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        s.push('\n');
    }
    s.into_bytes()
}

struct Keys {
    client: ClientKey,
    evaluation: Vec<u8>,
    sha256: String,
}

fn keys() -> Keys {
    let client = ClientKey::generate();
    let evaluation = client.evaluation_key().expect("evaluation key").bytes;
    let sha256 = veil_crypto::sha256_hex(&evaluation);
    Keys {
        client,
        evaluation,
        sha256,
    }
}

fn encrypt(k: &Keys, spec: &ClientSpec, rows: &[Vec<f64>]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            let ct = k
                .client
                .encrypt(&spec.input_bits, &spec.quantise(r).expect("quantise"))
                .expect("encrypt");
            B64.encode(ct.to_bytes().expect("bytes"))
        })
        .collect()
}

/// Publishes `model` as `name` with `options`, confirming its disclosure as a creator would.
async fn publish(
    creator: &Client,
    name: &str,
    model: &str,
    options: FhePublishOptions,
    train: &[Vec<f64>],
) -> ModelView {
    // The first attempt compiles and asks the creator to confirm what the spec reveals.
    let first = creator
        .upload_model_with(
            name,
            fixture(&format!("models/{model}")),
            None,
            Some((options.clone(), calibration_csv(train))),
        )
        .await;
    let details = match first {
        Err(veil_client::ClientError::Api { code, details, .. })
            if code == "fhe_disclosure_unconfirmed" =>
        {
            details.expect("the disclosure")
        }
        other => panic!("expected the disclosure to confirm, got {other:?}"),
    };
    let disclosure = &details["disclosure"];
    // Ranges are published rounded outward (a little wider than the calibration rows'), not
    // as the extreme rows' exact values.
    for (i, f) in disclosure["features"]
        .as_array()
        .expect("features")
        .iter()
        .enumerate()
    {
        if f["type"] == "range" {
            let (lo, hi) = (f["lo"].as_f64().expect("lo"), f["hi"].as_f64().expect("hi"));
            let min = train.iter().map(|r| r[i]).fold(f64::INFINITY, f64::min);
            let max = train.iter().map(|r| r[i]).fold(f64::NEG_INFINITY, f64::max);
            assert!(
                lo < min && hi > max,
                "{f}: calibration range [{min}, {max}]"
            );
            assert!(hi - lo <= 1.45 * (max - min) + 1e-9, "{f}: [{min}, {max}]");
        }
    }
    assert!(
        creator
            .list_models()
            .await
            .expect("list")
            .iter()
            .all(|m| m.name != name),
        "nothing stored before the confirmation"
    );
    let learn = disclosure["data_users_learn"].to_string();
    assert!(learn.contains("no circuit privacy"), "{learn}");
    if options.accumulators.as_deref() == Some("calibration") {
        assert!(learn.contains("sized to the calibration rows"), "{learn}");
    }
    let digest = details["digest"].as_str().expect("digest").to_string();
    creator
        .upload_model_with(
            name,
            fixture(&format!("models/{model}")),
            None,
            Some((
                FhePublishOptions {
                    confirm: Some(digest),
                    ..options
                },
                calibration_csv(train),
            )),
        )
        .await
        .expect("publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_inference_decrypts_to_the_simulator() {
    let node = TestNode::start(Backend::Sqlite).await;
    let owner = node.owner().await;
    let creator = node.user("mo@lab.org", "model-creator").await;
    let user = node.user("pat@home.org", "data-user").await;
    let train = rows("data/breast_cancer_train.csv");
    let test = rows("data/breast_cancer_test.csv");

    // Concrete ML's MLP at its 4-bit setting, with the creator's choices that keep its
    // bootstraps (accumulators sized to the calibration rows, partial sums returned): some
    // neurons bootstrap, some fold into the affine part. (By default, sized to the whole input
    // box with one output per score, this almost linearly separable task compiles to no
    // bootstrap at all.)
    let options = FhePublishOptions {
        bits: Some(4),
        accumulators: Some("calibration".into()),
        outputs: Some("partial_sums".into()),
        ..FhePublishOptions::default()
    };
    let m = publish(
        &creator,
        "tumour-mlp",
        "breast_cancer_mlp.onnx",
        options,
        &train,
    )
    .await;
    let info = m.fhe.clone().expect("published");
    assert!(info.kind.starts_with("network 1×30"), "{info:?}");
    assert!(
        info.pbs_per_sample > 0 && info.log2_p_fail <= -128.0,
        "{info:?}"
    );
    assert!(info.label_agreement.expect("classifier") > 0.95, "{info:?}");
    let shown = user.get_model("tumour-mlp", None).await.expect("show");
    assert_eq!(shown.fhe, Some(info.clone()));

    // The node compiled exactly what the engine compiles from the same inputs, so the local
    // simulator predicts the decrypted integers bit for bit.
    let float = veil_fhe::read_onnx(&fixture("models/breast_cancer_mlp.onnx"), 4096).expect("read");
    let opts = CompileOptions {
        bits: Some(4),
        accumulators: veil_fhe::Accumulators::Calibration,
        outputs: veil_fhe::Outputs::PartialSums,
        ..CompileOptions::default()
    };
    let compiled = veil_fhe::compile(&float, &train, &opts).expect("compile");
    let view = user.fhe_model("tumour-mlp", None).await.expect("spec");
    let spec: ClientSpec = serde_json::from_value(view.spec.clone()).expect("spec");
    assert_eq!(spec.input_bits, compiled.circuit.input_encodings());

    let k = keys();
    let key = user
        .upload_evaluation_key(k.evaluation.clone())
        .await
        .expect("key");
    assert_eq!(
        (key.sha256.as_str(), key.expired),
        (k.sha256.as_str(), false)
    );
    assert_eq!(user.list_evaluation_keys().await.expect("list").len(), 1);

    let samples: Vec<Vec<f64>> = test.iter().step_by(50).cloned().collect();
    let reply = user
        .fhe_infer(
            "tumour-mlp",
            &FheInferBody {
                key_id: key.id.clone(),
                key_sha256: k.sha256.clone(),
                version: None,
                samples: encrypt(&k, &spec, &samples),
            },
        )
        .await
        .expect("infer");
    assert_eq!(reply.outputs.len(), samples.len());
    assert_eq!(reply.pbs, info.pbs_per_sample * samples.len());
    for (r, o) in samples.iter().zip(&reply.outputs) {
        let ct = EncryptedOutputs::from_bytes(&B64.decode(o).expect("b64")).expect("outputs");
        let got = k.client.decrypt(&spec.output_bits, &ct).expect("decrypt");
        assert_eq!(got, compiled.simulate(r).expect("simulate"));
    }

    // The client side refuses a reply that does not fit what it sent and the spec.
    let replies: Vec<EncryptedOutputs> = reply
        .outputs
        .iter()
        .map(|o| EncryptedOutputs::from_bytes(&B64.decode(o).expect("b64")).expect("outputs"))
        .collect();
    assert_eq!(
        k.client
            .decrypt_reply(&spec, samples.len(), &replies)
            .expect("fits")
            .len(),
        samples.len()
    );
    assert!(
        k.client
            .decrypt_reply(&spec, samples.len() - 1, &replies)
            .is_err()
    );
    // Split inference is gone: no endpoint takes decrypted values back.
    let (status, _) = user
        .raw(
            veil_client::HttpMethod::POST,
            "api/v1/fhe/models/tumour-mlp/finish",
            Some(("application/json", b"{}".to_vec())),
        )
        .await
        .expect("sent");
    assert_eq!(status, 404);

    // The audit log says who ran what on how many samples, never ciphertexts.
    let audit = owner
        .audit(&AuditQuery {
            action: Some("fhe.".into()),
            ..Default::default()
        })
        .await
        .expect("audit");
    let run = audit
        .entries
        .iter()
        .find(|e| e.action == "fhe.infer")
        .expect("fhe.infer entry");
    assert_eq!(run.actor, "pat@home.org");
    assert_eq!(run.details["samples"], samples.len());
    assert!(
        !serde_json::to_string(&audit)
            .expect("json")
            .contains(&reply.outputs[0][..40])
    );

    // Errors: ciphertexts made for another key (fingerprint differs).
    let body = |samples: Vec<String>, sha: &str| FheInferBody {
        key_id: key.id.clone(),
        key_sha256: sha.into(),
        version: None,
        samples,
    };
    let one = encrypt(&k, &spec, &samples[..1]);
    expect_code(
        user.fhe_infer("tumour-mlp", &body(one.clone(), &"0".repeat(64)))
            .await,
        "fhe_key_mismatch",
    );
    // A malformed ciphertext.
    expect_code(
        user.fhe_infer("tumour-mlp", &body(vec![B64.encode(b"garbage")], &k.sha256))
            .await,
        "malformed_ciphertext",
    );
    // The wrong input width.
    let narrow = k
        .client
        .encrypt(
            &spec.input_bits[..29],
            &spec.quantise(&samples[0]).expect("q")[..29],
        )
        .expect("encrypt");
    let msg = expect_code(
        user.fhe_infer(
            "tumour-mlp",
            &body(
                vec![B64.encode(narrow.to_bytes().expect("bytes"))],
                &k.sha256,
            ),
        )
        .await,
        "invalid_fhe_request",
    );
    assert!(msg.contains("29") && msg.contains("30"), "{msg}");
    // No samples, and a key that is not the caller's.
    expect_code(
        user.fhe_infer("tumour-mlp", &body(vec![], &k.sha256)).await,
        "invalid_fhe_request",
    );
    let other = node.user("eve@home.org", "data-user").await;
    expect_code(
        other
            .fhe_infer("tumour-mlp", &body(one.clone(), &k.sha256))
            .await,
        "fhe_key_not_found",
    );
    // A model that is not published for encrypted inference.
    creator
        .upload_model("plain", fixture("models/breast_cancer_lr.onnx"), None)
        .await
        .expect("upload");
    expect_code(
        user.fhe_infer("plain", &body(one, &k.sha256)).await,
        "invalid_fhe_request",
    );
    // Not a key at all.
    expect_code(
        user.upload_evaluation_key(b"not a key".to_vec()).await,
        "malformed_ciphertext",
    );
    // Only creators with models:publish may publish; data users may not.
    expect_code(
        user.upload_model_with(
            "mine",
            fixture("models/breast_cancer_lr.onnx"),
            None,
            Some((FhePublishOptions::default(), calibration_csv(&train))),
        )
        .await,
        "forbidden",
    );
    user.delete_evaluation_key(&key.id).await.expect("delete");
    assert!(user.list_evaluation_keys().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_refuses_what_cannot_be_compiled() {
    let node = TestNode::start(Backend::Sqlite).await;
    let creator = node.user("mo@lab.org", "model-creator").await;
    let train = rows("data/breast_cancer_train.csv");
    // Calibration rows of the wrong width.
    let narrow: Vec<Vec<f64>> = train.iter().map(|r| r[..5].to_vec()).collect();
    let msg = expect_code(
        creator
            .upload_model_with(
                "m",
                fixture("models/breast_cancer_mlp8.onnx"),
                None,
                Some((FhePublishOptions::default(), calibration_csv(&narrow))),
            )
            .await,
        "invalid_input",
    );
    assert!(msg.contains("30 features"), "{msg}");
    // A graph the compiler does not handle.
    let msg = expect_code(
        creator
            .upload_model_with(
                "m",
                fixture("models/looping.onnx"),
                None,
                Some((FhePublishOptions::default(), calibration_csv(&train))),
            )
            .await,
        "invalid_model",
    );
    assert!(!msg.is_empty());
    // Out-of-range bits.
    expect_code(
        creator
            .upload_model_with(
                "m",
                fixture("models/breast_cancer_mlp8.onnx"),
                None,
                Some((
                    FhePublishOptions {
                        bits: Some(30),
                        confirm: None,
                        ranges: None,
                        accumulators: None,
                        outputs: None,
                    },
                    calibration_csv(&train),
                )),
            )
            .await,
        "invalid_input",
    );
    // Nothing was stored by the refusals.
    assert!(creator.list_models().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_evaluation_keys_are_refused() {
    let node = TestNode::start_with(Backend::Sqlite, |c| {
        c.core.fhe_key_ttl = std::time::Duration::from_secs(1);
    })
    .await;
    let creator = node.user("mo@lab.org", "model-creator").await;
    let user = node.user("pat@home.org", "data-user").await;
    let train = rows("data/breast_cancer_train.csv");
    publish(
        &creator,
        "lr",
        "breast_cancer_lr_scaled.onnx",
        FhePublishOptions::default(),
        &train,
    )
    .await;
    let spec: ClientSpec =
        serde_json::from_value(user.fhe_model("lr", None).await.expect("spec").spec).expect("spec");
    let k = keys();
    let key = user
        .upload_evaluation_key(k.evaluation.clone())
        .await
        .expect("key");
    node.clock.advance(std::time::Duration::from_millis(1500));
    let msg = expect_code(
        user.fhe_infer(
            "lr",
            &FheInferBody {
                key_id: key.id.clone(),
                key_sha256: k.sha256.clone(),
                version: None,
                samples: encrypt(&k, &spec, &train[..1]),
            },
        )
        .await,
        "fhe_key_expired",
    );
    assert!(msg.contains(&key.id), "{msg}");
    // Uploading again replaces the expired key.
    let again = user
        .upload_evaluation_key(k.evaluation)
        .await
        .expect("again");
    let live = user.list_evaluation_keys().await.expect("list");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, again.id);
}
