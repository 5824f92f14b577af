//! A hostile node against an encrypted-inference client. The client decrypts what the node
//! returns, so a node that could get those decryptions back (as split inference once posted
//! them) could choose ciphertexts whose decryption spells out the client's secret key, one bit
//! per output. The client therefore never sends decrypted values anywhere, and refuses replies
//! that do not fit what it sent and the model's spec.

mod common;

use common::*;
use veil_fhe::backend::{ClientKey, EncryptedOutputs};

/// A reply of `samples` output sets of `outputs` ciphertexts each, written as a hostile node
/// would: raw bytes in the wire format, each ciphertext's mask chosen freely (here: all of it
/// on the key's first coordinates, the shape that reads key bits).
fn crafted(samples: usize, outputs: usize) -> Vec<EncryptedOutputs> {
    let lwe_size = veil_fhe::backend::ciphertext_coefficients();
    (0..samples)
        .map(|_| {
            let mut bytes = Vec::new();
            bytes.extend((outputs as u64).to_le_bytes());
            for o in 0..outputs {
                bytes.extend(0u32.to_le_bytes()); // rounded 32-bit coefficients
                bytes.extend((lwe_size as u64).to_le_bytes());
                for i in 0..lwe_size {
                    let coefficient: u32 = if i == o { 1u32 << 31 } else { 0 };
                    bytes.extend(coefficient.to_le_bytes());
                }
            }
            EncryptedOutputs::from_bytes(&bytes).expect("well-formed crafted outputs")
        })
        .collect()
}

fn lr_spec() -> veil_fhe::ClientSpec {
    let model = veil_fhe::read_onnx(
        &std::fs::read(fixtures().join("models/breast_cancer_lr.onnx")).expect("model"),
        64,
    )
    .expect("read");
    let text = std::fs::read_to_string(fixtures().join("data/breast_cancer_train.csv"))
        .expect("calibration");
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .take(30)
                .map(|c| c.parse().expect("number"))
                .collect()
        })
        .collect();
    let compiled =
        veil_fhe::compile(&model, &rows, &veil_fhe::CompileOptions::default()).expect("compile");
    let fidelity = veil_fhe::fidelity(&model, &compiled, &rows).expect("fidelity");
    compiled.client_spec(fidelity)
}

#[test]
fn the_client_refuses_replies_beyond_what_it_sent_and_the_spec() {
    let key = ClientKey::generate();
    let spec = lr_spec();
    let outputs = spec.output_bits.len();
    // A reply that fits is decrypted (to whatever the node chose: it stays here).
    assert_eq!(
        key.decrypt_reply(&spec, 2, &crafted(2, outputs))
            .expect("fits")
            .len(),
        2
    );
    // More output sets than samples sent: every extra one would be a free decryption.
    assert!(key.decrypt_reply(&spec, 2, &crafted(3, outputs)).is_err());
    // More ciphertexts per sample than the spec has outputs.
    assert!(
        key.decrypt_reply(&spec, 2, &crafted(2, outputs + 30))
            .is_err()
    );
    // A spec (served by the node) asking for more outputs than its scores have.
    let mut lying = spec.clone();
    lying.output_bits = vec![48; 2048];
    assert!(key.decrypt_reply(&lying, 1, &crafted(1, 2048)).is_err());
    lying.outputs_per_score = 2048;
    assert!(key.decrypt_reply(&lying, 1, &crafted(1, 2048)).is_err());
}

/// No endpoint takes decrypted values back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_has_no_way_to_receive_decrypted_values() {
    let node = Node::start().await;
    let user = node.user("pat@home.org", "data-user", None).await;
    // The endpoint split inference posted decrypted activations to is gone.
    for path in ["api/v1/fhe/models/tumour-mlp/finish"] {
        let (status, _) = user
            .raw(
                veil_client::HttpMethod::POST,
                path,
                Some(("application/json", b"{\"activations\": [[1, 2]]}".to_vec())),
            )
            .await
            .expect("sent");
        assert_eq!(status, 404, "{path}");
    }
    let spec = node.client.openapi().await.expect("openapi");
    assert!(
        !spec.to_string().contains("activations"),
        "no operation takes activations"
    );
}
