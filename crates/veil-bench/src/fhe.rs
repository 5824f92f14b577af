//! `veil-bench fhe`: encrypted inference on the breast-cancer and 8×8 digits fixtures.
//!
//! For each model: compile on the training split, then per test sample encrypt, evaluate on a
//! two-thread pool (as a node does), decrypt, and check the result equals the clear simulator.
//! Reports server latency per sample, bootstrap count, key and ciphertext sizes, accuracy
//! (float / quantised on the whole test split / encrypted on the measured samples), and the
//! lower bound `bootstraps × one bootstrap / cores` measured on this machine.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;
use veil_fhe::backend::{ClientKey, Evaluator, Prepared, RunControl};
use veil_fhe::circuit::{Circuit, LUT_BITS, LUT_SIZE, Op};
use veil_fhe::{CompileOptions, FloatModel, compile, read_onnx};

use veil::output::{Table, print_json};

macro_rules! fixture {
    ($p:literal) => {
        include_bytes!(concat!("../../../fixtures/", $p)).as_slice()
    };
}

struct Case {
    name: &'static str,
    model: &'static [u8],
    train: &'static [u8],
    test: &'static [u8],
    /// `--bits`: Concrete ML's setting where we compare with it (4-bit MLP inputs; for
    /// forests, its 6-bit threshold grid).
    bits: Option<u32>,
}

const CASES: &[Case] = &[
    Case {
        name: "breast-cancer LR",
        model: fixture!("models/breast_cancer_lr_scaled.onnx"),
        train: fixture!("data/breast_cancer_train.csv"),
        test: fixture!("data/breast_cancer_test.csv"),
        bits: None,
    },
    Case {
        name: "breast-cancer MLP 30-8-1",
        model: fixture!("models/breast_cancer_mlp8.onnx"),
        train: fixture!("data/breast_cancer_train.csv"),
        test: fixture!("data/breast_cancer_test.csv"),
        bits: None,
    },
    Case {
        name: "breast-cancer MLP 30-30-1",
        model: fixture!("models/breast_cancer_mlp.onnx"),
        train: fixture!("data/breast_cancer_train.csv"),
        test: fixture!("data/breast_cancer_test.csv"),
        bits: None,
    },
    Case {
        name: "breast-cancer MLP 30-30-1, 4 bits",
        model: fixture!("models/breast_cancer_mlp.onnx"),
        train: fixture!("data/breast_cancer_train.csv"),
        test: fixture!("data/breast_cancer_test.csv"),
        bits: Some(4),
    },
    Case {
        name: "breast-cancer MLP 30-16-8-1",
        model: fixture!("models/breast_cancer_mlp16x8.onnx"),
        train: fixture!("data/breast_cancer_train.csv"),
        test: fixture!("data/breast_cancer_test.csv"),
        bits: None,
    },
    Case {
        name: "breast-cancer RF 10×d4",
        model: fixture!("models/breast_cancer_rf.onnx"),
        train: fixture!("data/breast_cancer_train.csv"),
        test: fixture!("data/breast_cancer_test.csv"),
        bits: None,
    },
    Case {
        name: "breast-cancer RF 10×d4, 6 bits",
        model: fixture!("models/breast_cancer_rf.onnx"),
        train: fixture!("data/breast_cancer_train.csv"),
        test: fixture!("data/breast_cancer_test.csv"),
        bits: Some(6),
    },
    Case {
        name: "digits LR",
        model: fixture!("models/digits_lr.onnx"),
        train: fixture!("data/digits_train.csv"),
        test: fixture!("data/digits_test.csv"),
        bits: None,
    },
    Case {
        name: "digits MLP 64-16-10",
        model: fixture!("models/digits_mlp16.onnx"),
        train: fixture!("data/digits_train.csv"),
        test: fixture!("data/digits_test.csv"),
        bits: None,
    },
    Case {
        name: "digits RF 10×d4",
        model: fixture!("models/digits_rf.onnx"),
        train: fixture!("data/digits_train.csv"),
        test: fixture!("data/digits_test.csv"),
        bits: None,
    },
];

fn csv(bytes: &[u8]) -> Result<(Vec<Vec<f64>>, Vec<String>)> {
    let text = std::str::from_utf8(bytes)?;
    let (mut rows, mut labels) = (vec![], vec![]);
    for line in text.lines().skip(1) {
        let mut cells: Vec<&str> = line.split(',').collect();
        let label = cells.pop().context("label")?;
        labels.push(match label {
            "malignant" => "0".into(),
            "benign" => "1".into(),
            l => l.to_string(),
        });
        rows.push(
            cells
                .iter()
                .map(|c| c.parse::<f64>())
                .collect::<Result<_, _>>()?,
        );
    }
    Ok((rows, labels))
}

#[derive(Debug, Serialize)]
struct Row {
    model: String,
    circuit: String,
    pbs: usize,
    samples: usize,
    server_ms_per_sample: f64,
    client_encrypt_ms: f64,
    client_decrypt_ms: f64,
    lower_bound_ms: f64,
    ratio_to_lower_bound: f64,
    input_bytes: usize,
    output_bytes: usize,
    accuracy_float: f64,
    accuracy_quantised: f64,
    accuracy_encrypted: f64,
    encrypted_equals_simulator: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    cores: usize,
    keygen_seconds: f64,
    client_key_bytes: usize,
    evaluation_key_compressed_bytes: usize,
    evaluation_key_decompress_seconds: f64,
    pbs_ms: f64,
    models: Vec<Row>,
}

fn accuracy(pred: impl Iterator<Item = Option<String>>, labels: &[String]) -> f64 {
    let ok = pred
        .zip(labels)
        .filter(|(p, l)| p.as_deref() == Some(l.as_str()))
        .count();
    ok as f64 / labels.len().max(1) as f64
}

/// One bootstrap's latency: a batch of single-LUT circuits on one thread.
fn time_pbs(key: &ClientKey, eval: &Evaluator) -> Result<f64> {
    let circuit = Circuit {
        ops: vec![
            Op::Input {
                feature: 0,
                p: LUT_BITS,
            },
            Op::Lut {
                input: 0,
                table: vec![1; LUT_SIZE],
                p: LUT_BITS,
            },
        ],
        outputs: vec![1],
        n_inputs: 1,
    };
    let prepared = Prepared::new(circuit.clone())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let n = 40;
    let batch = (0..n)
        .map(|i| key.encrypt(&circuit.input_encodings(), &[i % 16]))
        .collect::<Result<Vec<_>, _>>()?;
    let t = Instant::now();
    pool.install(|| {
        eval.run(
            &prepared,
            batch,
            &RunControl {
                deadline: None,
                progress: &|_, _| {},
            },
        )
    })?;
    Ok(t.elapsed().as_secs_f64() * 1000.0 / n as f64)
}

pub fn run(samples: usize, json: bool) -> Result<()> {
    let say = |m: &str| {
        if !json {
            eprintln!("{m}");
        }
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    say("generating keys …");
    let t = Instant::now();
    let key = ClientKey::generate();
    let ek = key.evaluation_key()?;
    let keygen = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let eval = Evaluator::new(&ek, 1 << 31)?;
    let decompress = t.elapsed().as_secs_f64();
    let pbs_ms = time_pbs(&key, &eval)?;
    say(&format!("one bootstrap: {pbs_ms:.1} ms"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cores)
        .thread_name(|i| format!("veil-fhe-{i}"))
        .build()?;

    let mut rows = vec![];
    for case in CASES {
        say(&format!("{} …", case.name));
        let model: FloatModel = read_onnx(case.model, 10_000)?;
        let (train, _) = csv(case.train)?;
        let (test, labels) = csv(case.test)?;
        let opts = CompileOptions {
            bits: case.bits,
            ..CompileOptions::default()
        };
        let compiled = compile(&model, &train, &opts)?;
        let prepared = Prepared::new(compiled.circuit.clone())?;
        let (input_bits, output_bits) = (
            compiled.circuit.input_encodings(),
            compiled.circuit.output_encodings(),
        );
        let acc_float = accuracy(
            test.iter().map(|r| model.head().label(&model.scores(r))),
            &labels,
        );
        let sims: Vec<Vec<i64>> = test
            .iter()
            .map(|r| compiled.simulate(r))
            .collect::<Result<_, _>>()?;
        let acc_quant = accuracy(sims.iter().map(|o| compiled.label(o)), &labels);

        let picked: Vec<usize> = (0..test.len())
            .step_by((test.len() / samples.max(1)).max(1))
            .take(samples)
            .collect();
        let (mut enc_t, mut dec_t, mut server) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let (mut in_bytes, mut out_bytes) = (0, 0);
        let mut equal = true;
        let mut fhe_labels = vec![];
        for &i in &picked {
            let t = Instant::now();
            let ct = key.encrypt(&input_bits, &compiled.quantise(&test[i])?)?;
            enc_t += t.elapsed();
            in_bytes = ct.to_bytes()?.len();
            let t = Instant::now();
            let out = pool.install(|| {
                eval.run(
                    &prepared,
                    vec![ct],
                    &RunControl {
                        deadline: None,
                        progress: &|_, _| {},
                    },
                )
            })?;
            server += t.elapsed();
            out_bytes = out[0].to_bytes()?.len();
            let t = Instant::now();
            let ints = key.decrypt(&output_bits, &out[0])?;
            dec_t += t.elapsed();
            equal &= ints == sims[i];
            fhe_labels.push(compiled.label(&ints));
        }
        let n = picked.len().max(1) as f64;
        let picked_labels: Vec<String> = picked.iter().map(|&i| labels[i].clone()).collect();
        let server_ms = server.as_secs_f64() * 1000.0 / n;
        let pbs = compiled.circuit.pbs_count();
        let lower = pbs as f64 * pbs_ms / cores as f64;
        rows.push(Row {
            model: case.name.into(),
            circuit: compiled.kind.clone(),
            pbs,
            samples: picked.len(),
            server_ms_per_sample: server_ms,
            client_encrypt_ms: enc_t.as_secs_f64() * 1000.0 / n,
            client_decrypt_ms: dec_t.as_secs_f64() * 1000.0 / n,
            lower_bound_ms: lower,
            ratio_to_lower_bound: if lower > 0.0 {
                server_ms / lower
            } else {
                f64::NAN
            },
            input_bytes: in_bytes,
            output_bytes: out_bytes,
            accuracy_float: acc_float,
            accuracy_quantised: acc_quant,
            accuracy_encrypted: accuracy(fhe_labels.into_iter(), &picked_labels),
            encrypted_equals_simulator: equal,
        });
    }
    let report = Report {
        cores,
        keygen_seconds: keygen,
        client_key_bytes: key.to_bytes()?.len(),
        evaluation_key_compressed_bytes: ek.bytes.len(),
        evaluation_key_decompress_seconds: decompress,
        pbs_ms,
        models: rows,
    };
    if json {
        print_json(&report)?;
    } else {
        println!(
            "keys: generated in {:.1} s; client key {:.1} MB; evaluation key {:.1} MB compressed ({:.1} s to decompress); one bootstrap {:.1} ms; {} cores",
            report.keygen_seconds,
            report.client_key_bytes as f64 / 1e6,
            report.evaluation_key_compressed_bytes as f64 / 1e6,
            report.evaluation_key_decompress_seconds,
            report.pbs_ms,
            cores
        );
        let mut t = Table::new(&[
            "MODEL",
            "PBS",
            "SERVER/SAMPLE",
            "LOWER BOUND",
            "RATIO",
            "ENC+DEC",
            "IN/OUT BYTES",
            "ACC FLOAT/QUANT/FHE",
            "FHE=SIM",
        ]);
        for r in &report.models {
            t.row(vec![
                r.model.clone(),
                r.pbs.to_string(),
                format!("{:.1} ms", r.server_ms_per_sample),
                format!("{:.1} ms", r.lower_bound_ms),
                format!("{:.2}×", r.ratio_to_lower_bound),
                format!("{:.2} ms", r.client_encrypt_ms + r.client_decrypt_ms),
                format!("{}/{}", r.input_bytes, r.output_bytes),
                format!(
                    "{:.3}/{:.3}/{:.3} (n={})",
                    r.accuracy_float, r.accuracy_quantised, r.accuracy_encrypted, r.samples
                ),
                r.encrypted_equals_simulator.to_string(),
            ]);
        }
        print!("{}", t.render());
    }
    ensure!(
        report.models.iter().all(|r| r.encrypted_equals_simulator),
        "an encrypted result differed from the simulator"
    );
    Ok(())
}
