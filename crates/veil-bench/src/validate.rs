//! `veil-bench validate`: the MLP fixture validated over a generated million rows, end to end
//! through the API, against the same tract model run over the same rows in a bare loop.
//!
//! Rows are drawn from the breast-cancer data (each a real row with ±5 % jitter), so the model
//! sees realistic inputs. The bare loop gets its rows already parsed in memory; the node has
//! to decrypt, scan and convert them, and then runs the model on its worker pool.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use veil_api_types::ValidateRequestBody;
use veil_client::Client;
use veil_server::ServerConfig;
use veil_server::testing::RunningNode;

use veil::output::{Table, print_json};

const DATA: &str = include_str!("../../../fixtures/data/breast_cancer.csv");
const MANIFEST: &str = include_str!("../../../fixtures/data/breast_cancer.toml");
const MLP: &[u8] = include_bytes!("../../../fixtures/models/breast_cancer_mlp.onnx");
/// Rows per batch in the bare loop (the node's scan batch size).
const BATCH: usize = 8192;

#[derive(Debug, Serialize)]
struct Report {
    rows: u64,
    upload_seconds: f64,
    validation_seconds: f64,
    validation_rows_per_second: f64,
    bare_loop_seconds: f64,
    bare_loop_rows_per_second: f64,
    ratio: f64,
    accuracy: f64,
    model_threads: usize,
}

pub async fn run(rows: u64, runs: usize, json: bool) -> Result<()> {
    let runs = runs.max(1);
    let say = |m: &str| {
        if !json {
            eprintln!("{m}");
        }
    };
    let base: Vec<(Vec<f32>, &str)> = DATA
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (
                c[..30]
                    .iter()
                    .map(|v| v.parse::<f32>().unwrap_or(0.0))
                    .collect(),
                c[30],
            )
        })
        .collect();
    let header = DATA.lines().next().unwrap_or_default();
    let names: Vec<String> = header.split(',').take(30).map(String::from).collect();

    say(&format!("generating {rows} rows × 30 features …"));
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("rows.csv");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut features = Vec::with_capacity(rows as usize * 30);
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&csv)?);
        writeln!(w, "{header}")?;
        let mut line = String::with_capacity(400);
        for _ in 0..rows {
            let (x, label) = &base[rng.random_range(0..base.len())];
            line.clear();
            for v in x {
                let j = (v * rng.random_range(0.95f32..1.05)).max(0.0);
                features.push(j);
                use std::fmt::Write as _;
                let _ = write!(line, "{j},");
            }
            line.push_str(label);
            line.push('\n');
            w.write_all(line.as_bytes())?;
        }
        w.flush()?;
    }

    say("bare loop: the same model over the same rows, in memory …");
    let summary = veil_ml::inspect(MLP, veil_ml::Limits::default()).context("fixture")?;
    let model = veil_ml::Model::load(MLP, &summary)?;
    let mut bare = vec![];
    for _ in 0..runs {
        let started = Instant::now();
        for chunk in features.chunks(BATCH * 30) {
            model.predict(chunk, chunk.len() / 30)?;
        }
        bare.push(started.elapsed().as_secs_f64());
    }
    let bare = crate::datasets::median(bare);
    drop(features);

    let mut config = ServerConfig::new(dir.path().join("node"));
    let pw = veil_crypto::random::one_time_password();
    config.admin_password = Some(pw.clone());
    config.core.upload_limit_bytes = std::fs::metadata(&csv)?.len() * 2;
    let node = RunningNode::start(config).await?;
    let anon = Client::new(&node.url)?;
    let owner = anon.with_token(anon.login("owner@localhost", &pw).await?.token);
    let analyst = crate::funded_analyst(&anon, &owner, (runs as f64).max(100.0)).await?;
    say("uploading …");
    let len = std::fs::metadata(&csv)?.len();
    let stream =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::open(&csv).await?, 1 << 20);
    let t = Instant::now();
    owner
        .upload_dataset("bench", MANIFEST, "csv", stream, len)
        .await?;
    let upload = t.elapsed().as_secs_f64();
    owner.upload_model("bench-mlp", MLP.to_vec(), None).await?;

    say(&format!("validating through the API ({runs} runs) …"));
    let (mut times, mut accuracy) = (vec![], f64::NAN);
    for _ in 0..runs {
        let t = Instant::now();
        let r = analyst
            .validate(
                "bench-mlp",
                &ValidateRequestBody {
                    dataset: "bench".into(),
                    features: names.clone(),
                    label: "diagnosis".into(),
                    metrics: vec!["accuracy".into()],
                    epsilon: 1.0,
                    confidence: None,
                    version: None,
                },
            )
            .await?;
        times.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(
            r.status == "done",
            "validation {}: {:?}",
            r.status,
            r.reason
        );
        accuracy = r
            .result
            .as_ref()
            .and_then(|x| x["metrics"][0]["value"].as_f64())
            .unwrap_or(f64::NAN);
    }
    let validation = crate::datasets::median(times);
    node.stop().await?;

    let report = Report {
        rows,
        upload_seconds: upload,
        validation_seconds: validation,
        validation_rows_per_second: rows as f64 / validation,
        bare_loop_seconds: bare,
        bare_loop_rows_per_second: rows as f64 / bare,
        ratio: validation / bare,
        accuracy,
        model_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if json {
        print_json(&report)?;
    } else {
        let mut t = Table::new(&["MEASUREMENT", "VALUE"]);
        t.row(vec!["rows".into(), rows.to_string()]);
        t.row(vec!["upload".into(), format!("{upload:.2} s")]);
        t.row(vec![
            format!("validation, end to end (API, median of {runs})"),
            format!("{validation:.2} s"),
        ]);
        t.row(vec![
            "validation throughput".into(),
            format!("{:.0} rows/s", report.validation_rows_per_second),
        ]);
        t.row(vec![
            format!("bare tract loop (1 thread, rows in memory, median of {runs})"),
            format!("{bare:.2} s"),
        ]);
        t.row(vec![
            "bare loop throughput".into(),
            format!("{:.0} rows/s", report.bare_loop_rows_per_second),
        ]);
        t.row(vec![
            "ratio (validation / bare loop)".into(),
            format!("{:.2}×", report.ratio),
        ]);
        t.row(vec!["DP accuracy (ε = 1)".into(), format!("{accuracy:.4}")]);
        print!("{}", t.render());
    }
    Ok(())
}
