//! `veil-bench`: Veil's benchmarks, out of the product binary (`veil` links none of their
//! code). `veil-bench api|datasets|validate|fhe|load`, from a release build:
//! `cargo run --release -p veil-bench -- validate`.
//!
//! `veil-bench api`: authenticated requests per second through the real HTTP stack, and the
//! latency of the budget debit (the one-transaction store method) under concurrency.
//!
//! The node runs in this process on a scratch data directory (or a scratch PostgreSQL
//! database created on the given server and dropped afterwards), so the load generator and
//! the node share the machine's cores: figures are a floor for a node with its own machine.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use veil_client::Client;
use veil_core::Spend;
use veil_server::ServerConfig;
use veil_server::testing::RunningNode;
use veil_store_postgres::testing::ScratchDatabase;
use veil_types::{Delta, Epsilon};

use clap::Parser as _;
use veil::output::{Table, print_json};

mod datasets;
mod fhe;
mod load;
mod validate;

/// Veil's benchmarks.
#[derive(Debug, clap::Parser)]
#[command(name = "veil-bench", version)]
struct BenchArgs {
    /// What to measure: `api` (requests/s, budget debit latency), `datasets` (upload
    /// throughput, DP query overhead over plain DataFusion), `validate` (model validation
    /// throughput against a bare tract loop) or `fhe` (encrypted inference per sample against
    /// the bootstrap lower bound) or `load` (login and budget latency while other clients
    /// run queries, validations and uploads).
    target: String,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// `fhe`: encrypted samples per model.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Rows to generate [default: 10 million for `datasets`, 1 million for `validate`, 200 000
    /// for `load`].
    #[arg(long)]
    rows: Option<u64>,
    /// `datasets`: query runs; `validate`: validations and bare loops (medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// postgres://… server to benchmark the PostgreSQL backend on (a scratch database is
    /// created and dropped there); default SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// Concurrent clients [default: 100 for `api`, 32 for `load`].
    #[arg(long)]
    clients: Option<usize>,
    /// Seconds per measurement [default: 10 for `api`, 60 for `load`].
    #[arg(long)]
    seconds: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let json = args.json;
    match run(args, json).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Serialize)]
struct Measurement {
    name: String,
    operations: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    store: String,
    clients: usize,
    seconds: u64,
    cores: usize,
    measurements: Vec<Measurement>,
}

fn summarize(name: &str, mut lat: Vec<Duration>, elapsed: Duration) -> Measurement {
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    Measurement {
        name: name.into(),
        operations: lat.len() as u64,
        per_second: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    }
}

/// Runs `op` from `clients` concurrent tasks for `seconds`; returns every latency.
async fn load<F, Fut>(clients: usize, seconds: u64, op: F) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                op().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("benchmark task panicked")??);
    }
    Ok((all, start.elapsed()))
}

async fn run(a: BenchArgs, json: bool) -> Result<ExitCode> {
    // The in-process node logs only when asked (`RUST_LOG=veil_core=debug` shows each
    // query's phases), so the benchmark's own output stays clean.
    if let Ok(level) = std::env::var("RUST_LOG") {
        veil::logging::init(false, &level)?;
    }
    match a.target.as_str() {
        "api" => api(a, json).await,
        "datasets" => {
            datasets::run(a.rows.unwrap_or(10_000_000), a.runs, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        "validate" => {
            validate::run(a.rows.unwrap_or(1_000_000), a.runs, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        "fhe" => {
            let samples = a.samples;
            tokio::task::spawn_blocking(move || fhe::run(samples, json))
                .await
                .context("benchmark task panicked")??;
            Ok(ExitCode::SUCCESS)
        }
        "load" => {
            let (clients, seconds) = (a.clients.unwrap_or(32), a.seconds.unwrap_or(60));
            if clients == 0 || seconds == 0 {
                bail!("--clients and --seconds must be positive");
            }
            load::run(clients, seconds, a.rows.unwrap_or(200_000), json).await?;
            Ok(ExitCode::SUCCESS)
        }
        other => {
            bail!("unknown benchmark {other:?}: available: api, datasets, validate, fhe, load")
        }
    }
}

async fn api(a: BenchArgs, json: bool) -> Result<ExitCode> {
    let (clients, seconds) = (a.clients.unwrap_or(100), a.seconds.unwrap_or(10));
    if clients == 0 || seconds == 0 {
        bail!("--clients and --seconds must be positive");
    }
    let dir = tempfile::tempdir().context("cannot create a scratch directory")?;
    let mut config = ServerConfig::new(dir.path().join("data"));
    // Every client of this benchmark comes from one address, as through a reverse proxy.
    config.api.connections.max_per_address = 0;
    let owner_pw = veil_crypto::random::one_time_password();
    config.admin_password = Some(owner_pw.clone());
    let _scratch = match &a.database_url {
        Some(url) => {
            let db = ScratchDatabase::create(url)
                .await
                .context("cannot create a scratch database on the given server")?;
            config.database_url = Some(db.url().to_string());
            Some(db)
        }
        None => None,
    };
    let node = RunningNode::start(config).await?;
    let anon = Client::new(&node.url)?;
    let owner = anon.with_token(anon.login("owner@localhost", &owner_pw).await?.token);
    let (user, pw) = funded_analyst_named(&anon, &owner, "bench@bench.local", 1_000_000.0).await?;

    if !json {
        eprintln!(
            "measuring {} s with {} clients on {} …",
            seconds,
            clients,
            node.core.store().backend_name()
        );
    }
    let c = user.clone();
    let (lat, elapsed) = load(clients, seconds, move || {
        let c = c.clone();
        async move {
            c.me().await?;
            Ok(())
        }
    })
    .await?;
    let requests = summarize("authenticated GET /api/v1/me (HTTP)", lat, elapsed);

    let principal = Arc::new(
        node.core
            .authenticate(&anon.login("bench@bench.local", &pw).await?.token)
            .await?,
    );
    let core = node.core.clone();
    let (lat, elapsed) = load(clients, seconds, move || {
        let core = core.clone();
        let principal = principal.clone();
        async move {
            core.spend(
                &principal,
                &Spend {
                    dataset: None,
                    epsilon: Epsilon::from_units(1),
                    delta: Delta::ZERO,
                    purpose: "bench".into(),
                    reference: "bench".into(),
                    details: serde_json::json!({}),
                    opens: None,
                },
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    let debits = summarize(
        "budget debit (ledger + audit, one transaction)",
        lat,
        elapsed,
    );

    let report = Report {
        store: node.core.store().backend_name().into(),
        clients,
        seconds,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        measurements: vec![requests, debits],
    };
    node.stop().await?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "store {}, {} concurrent clients, {} s each, {} cores (load generator in the same process)",
            report.store, report.clients, report.seconds, report.cores
        );
        let mut t = Table::new(&["MEASUREMENT", "OPS", "OPS/S", "P50 MS", "P99 MS", "MAX MS"]);
        for m in &report.measurements {
            t.row(vec![
                m.name.clone(),
                m.operations.to_string(),
                format!("{:.0}", m.per_second),
                format!("{:.2}", m.p50_ms),
                format!("{:.2}", m.p99_ms),
                format!("{:.2}", m.max_ms),
            ]);
        }
        print!("{}", t.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// A data scientist (`bench@bench.local`) with `epsilon` to spend, logged in: the owner funds
/// them, since nobody may set their own budget.
pub(crate) async fn funded_analyst(anon: &Client, owner: &Client, epsilon: f64) -> Result<Client> {
    Ok(
        funded_analyst_named(anon, owner, "bench@bench.local", epsilon)
            .await?
            .0,
    )
}

/// [`funded_analyst`] under a chosen email; also returns the password it was given.
pub(crate) async fn funded_analyst_named(
    anon: &Client,
    owner: &Client,
    email: &str,
    epsilon: f64,
) -> Result<(Client, String)> {
    let created = owner.create_user(email, "data-scientist").await?;
    let first = anon.with_token(anon.login(email, &created.one_time_password).await?.token);
    let pw = veil_crypto::random::one_time_password();
    first
        .change_password(&created.one_time_password, &pw)
        .await?;
    owner
        .set_budget(
            email,
            &veil_api_types::SetBudgetRequest {
                dataset: None,
                epsilon,
                delta: 0.0,
            },
        )
        .await?;
    let client = anon.with_token(anon.login(email, &pw).await?.token);
    Ok((client, pw))
}
