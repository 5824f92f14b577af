//! `veil-bench load`: the control path under load. `--clients` clients (32 by default) mix
//! charged DP queries (grouped medians over a generated dataset), model validations and
//! dataset uploads for `--seconds` (60 by default), spread over eight analysts, while one more
//! client logs in and reads its budget in a loop. Reports the control calls' latencies, how
//! the background operations ended (answers, and refusals such as `too_many_in_progress`),
//! the process's peak resident memory, and whether every charged request ended with an
//! outcome (none left `running`).
//!
//! The node runs in this process, so the load generator shares its cores: a floor for a node
//! with its own machine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use veil_api_types::{QueryRequest, ValidateRequestBody};
use veil_client::{Client, ClientError};
use veil_server::ServerConfig;
use veil_server::testing::RunningNode;

use veil::output::{Table, print_json};

const BC_DATA: &str = include_str!("../../../fixtures/data/breast_cancer.csv");
const BC_MANIFEST: &str = include_str!("../../../fixtures/data/breast_cancer.toml");
const MLP: &[u8] = include_bytes!("../../../fixtures/models/breast_cancer_mlp.onnx");
const QUERY: &str = "SELECT region, MEDIAN(income), AVG(bmi), COUNT(*) FROM bench GROUP BY region";
const ANALYSTS: usize = 8;

#[derive(Debug, Serialize)]
struct Report {
    cores: usize,
    clients: usize,
    seconds: u64,
    rows: u64,
    control: Vec<crate::Measurement>,
    /// Background operations by kind and outcome (`ok` or an error code).
    background: BTreeMap<String, u64>,
    peak_rss_mib: f64,
    charged_requests_without_outcome: usize,
}

fn rss_peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn outcome<T>(r: &std::result::Result<T, ClientError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(ClientError::Api { code, .. }) => code.clone(),
        Err(other) => format!("client error: {other}"),
    }
}

pub async fn run(clients: usize, seconds: u64, rows: u64, json: bool) -> Result<()> {
    let say = |m: &str| {
        if !json {
            eprintln!("{m}");
        }
    };
    let dir = tempfile::tempdir().context("scratch directory")?;
    let csv = dir.path().join("bench.csv");
    say(&format!("generating {rows} rows …"));
    let csv_bytes = crate::datasets::generate_csv(&csv, rows)?;

    let mut config = ServerConfig::new(dir.path().join("node"));
    let owner_pw = veil_crypto::random::one_time_password();
    config.admin_password = Some(owner_pw.clone());
    config.core.upload_limit_bytes = csv_bytes * 2;
    // Every client of this benchmark comes from one address, as through a reverse proxy.
    config.api.connections.max_per_address = 0;
    let node = RunningNode::start(config).await?;
    let anon = Client::new(&node.url)?;
    let owner = anon.with_token(anon.login("owner@localhost", &owner_pw).await?.token);

    say("uploading the datasets and the model …");
    let stream =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::open(&csv).await?, 1 << 20);
    owner
        .upload_dataset(
            "bench",
            veil_server::DEMO_PATIENTS_MANIFEST,
            "csv",
            stream,
            csv_bytes,
        )
        .await?;
    upload_small(&owner, "bc").await?;
    owner.upload_model("bench-mlp", MLP.to_vec(), None).await?;
    let mut analysts = Vec::with_capacity(ANALYSTS);
    for i in 0..ANALYSTS {
        let (analyst, _) =
            crate::funded_analyst_named(&anon, &owner, &format!("a{i}@bench.local"), 1e6).await?;
        analysts.push(analyst);
    }
    let (control_email, control_pw) = (
        "control@bench.local",
        veil_crypto::random::one_time_password(),
    );
    let created = owner.create_user(control_email, "data-scientist").await?;
    let first = anon.with_token(
        anon.login(control_email, &created.one_time_password)
            .await?
            .token,
    );
    first
        .change_password(&created.one_time_password, &control_pw)
        .await?;

    say(&format!(
        "{clients} clients mix queries, validations and uploads for {seconds} s while one logs in and reads its budget …"
    ));
    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let analyst = analysts[i % ANALYSTS].clone();
        let owner = owner.clone();
        let outcomes = outcomes.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let (kind, result) = match i % 3 {
                    0 => ("query", outcome(&analyst.query("bench", &query()).await)),
                    1 => (
                        "validation",
                        outcome(&analyst.validate("bench-mlp", &validation()).await),
                    ),
                    _ => {
                        let name = format!("up-{i}-{n}");
                        let r = upload_small(&owner, &name).await;
                        if r.is_ok() {
                            let _ = owner.delete_dataset(&name).await;
                        }
                        ("upload", outcome(&r))
                    }
                };
                if result.starts_with("client error")
                    || result == "busy"
                    || result.contains("too_many")
                {
                    // Back off a little, as a well-behaved client told to retry would.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let mut o = outcomes.lock().unwrap_or_else(|p| p.into_inner());
                *o.entry(format!("{kind}: {result}")).or_insert(0) += 1;
            }
        }));
    }

    let (mut logins, mut budgets) = (Vec::new(), Vec::new());
    let started = Instant::now();
    while Instant::now() < deadline {
        let t = Instant::now();
        let session = anon.login(control_email, &control_pw).await?;
        logins.push(t.elapsed());
        let me = anon.with_token(session.token);
        let t = Instant::now();
        me.my_budget().await?;
        budgets.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    for t in tasks {
        t.await.context("a load task panicked")?;
    }

    // Every charged request ended: none is still running or approved.
    let mut unfinished = 0;
    for status in ["running", "approved"] {
        unfinished += owner.list_requests(Some(status)).await?.len();
    }
    let report = Report {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        clients,
        seconds,
        rows,
        control: vec![
            crate::summarize("login", logins, elapsed),
            crate::summarize("read own budget", budgets, elapsed),
        ],
        background: outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        peak_rss_mib: rss_peak_mib(),
        charged_requests_without_outcome: unfinished,
    };
    if json {
        print_json(&report)?;
    } else {
        let mut t = Table::new(&["CONTROL CALL", "CALLS", "P50 MS", "P99 MS", "MAX MS"]);
        for m in &report.control {
            t.row(vec![
                m.name.clone(),
                m.operations.to_string(),
                format!("{:.1}", m.p50_ms),
                format!("{:.1}", m.p99_ms),
                format!("{:.1}", m.max_ms),
            ]);
        }
        print!("{}", t.render());
        let mut b = Table::new(&["BACKGROUND OPERATION: OUTCOME", "COUNT"]);
        for (k, v) in &report.background {
            b.row(vec![k.clone(), v.to_string()]);
        }
        print!("{}", b.render());
        println!(
            "peak RSS {:.0} MiB; charged requests without an outcome: {}; {} cores",
            report.peak_rss_mib, report.charged_requests_without_outcome, report.cores
        );
    }
    anyhow::ensure!(
        unfinished == 0,
        "{unfinished} charged requests were left without an outcome"
    );
    Ok(())
}

fn query() -> QueryRequest {
    QueryRequest {
        sql: QUERY.into(),
        epsilon: 0.01,
        delta: 0.0,
        confidence: None,
        mechanism: None,
    }
}

fn validation() -> ValidateRequestBody {
    let features = BC_DATA
        .lines()
        .next()
        .unwrap_or_default()
        .split(',')
        .take(30)
        .map(String::from)
        .collect();
    ValidateRequestBody {
        dataset: "bc".into(),
        features,
        label: "diagnosis".into(),
        metrics: vec!["accuracy".into()],
        epsilon: 0.01,
        confidence: None,
        version: None,
    }
}

async fn upload_small(owner: &Client, name: &str) -> std::result::Result<(), ClientError> {
    let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(
        BC_DATA.as_bytes(),
    ))]);
    owner
        .upload_dataset(name, BC_MANIFEST, "csv", body, BC_DATA.len() as u64)
        .await
        .map(drop)
}
