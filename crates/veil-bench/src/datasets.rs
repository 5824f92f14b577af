//! `veil-bench datasets`: upload throughput and DP query latency on a generated dataset,
//! against plain DataFusion on the same rows stored unencrypted.
//!
//! Everything runs in this process: the CSV generator, the node, the client. The upload and
//! the query go through the real HTTP path (client → server → ingest / DataFusion + OpenDP).
//! The baseline runs the analyst's SQL directly on an unencrypted Parquet copy with the same
//! compression and row groups, each run with a fresh DataFusion session (as the node does).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use veil_api_types::QueryRequest;
use veil_client::Client;
use veil_server::ServerConfig;
use veil_server::testing::RunningNode;

use veil::output::{Table, print_json};

/// The demo node's patients manifest: the generator below writes rows of that shape.
const MANIFEST: &str = veil_server::DEMO_PATIENTS_MANIFEST;

/// The benchmark query: a GROUP BY with three aggregates.
const SQL: &str = "SELECT region, COUNT(*), AVG(income), SUM(bmi) FROM bench GROUP BY region";

#[derive(Debug, Serialize)]
struct Report {
    rows: u64,
    csv_bytes: u64,
    upload_seconds: f64,
    upload_rows_per_second: f64,
    stored_bytes: Option<u64>,
    query_runs: usize,
    dp_query_seconds_median: f64,
    plain_datafusion_seconds_median: f64,
    /// The node's executor over the unencrypted copy (no decryption, HTTP, charge or noise).
    dp_rewrite_unencrypted_seconds_median: f64,
    overhead_ratio: f64,
    cores: usize,
}

pub(crate) fn generate_csv(path: &std::path::Path, rows: u64) -> Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(w, "age,sex,income,bmi,diagnosis,region,smoker,visit")?;
    let sexes = ["F", "M"];
    let diagnoses = ["healthy", "diabetes", "hypertension", "asthma", "cancer"];
    let regions = ["north", "south", "east", "west"];
    let mut line = String::with_capacity(96);
    for _ in 0..rows {
        line.clear();
        let day = 16_436 + rng.random_range(0..4017);
        use std::fmt::Write as _;
        let _ = writeln!(
            line,
            "{},{},{:.2},{:.1},{},{},{},{}",
            rng.random_range(0..=110),
            sexes[rng.random_range(0..2)],
            rng.random_range(0.0..200_000.0),
            rng.random_range(15.0..45.0),
            diagnoses[rng.random_range(0..5)],
            regions[rng.random_range(0..4)],
            rng.random_bool(0.2),
            veil_dp::manifest::format_date(day),
        );
        w.write_all(line.as_bytes())?;
    }
    w.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Writes the same rows as an unencrypted Parquet file (same compression and row groups).
async fn plain_parquet(csv: &std::path::Path, out: &std::path::Path) -> Result<()> {
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::prelude::{CsvReadOptions, SessionContext};
    let manifest = veil_dp::Manifest::parse(MANIFEST)?;
    let schema = veil_datasets::schema::stored_schema(&manifest);
    let ctx = SessionContext::new();
    let df = ctx
        .read_csv(
            csv.to_string_lossy().as_ref(),
            CsvReadOptions::new().schema(&schema),
        )
        .await?;
    let mut opts = datafusion::config::TableParquetOptions::default();
    opts.global.compression = Some("snappy".into());
    opts.global.max_row_group_size = 1 << 20;
    df.write_parquet(
        out.to_string_lossy().as_ref(),
        DataFrameWriteOptions::new().with_single_file_output(true),
        Some(opts),
    )
    .await?;
    Ok(())
}

async fn plain_query(path: &std::path::Path) -> Result<Duration> {
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
    let start = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
    ctx.register_parquet(
        "bench",
        path.to_string_lossy().as_ref(),
        ParquetReadOptions::default(),
    )
    .await?;
    let batches = ctx.sql(SQL).await?.collect().await?;
    anyhow::ensure!(!batches.is_empty(), "the baseline query returned nothing");
    Ok(start.elapsed())
}

/// The node's executor (clamping, fixed point, the rewritten SQL) over the unencrypted copy:
/// the DP rewrite's share of the overhead, without decryption, HTTP, charging or noise.
async fn rewrite_only(path: &std::path::Path) -> Result<Duration> {
    let manifest = veil_dp::Manifest::parse(MANIFEST)?;
    let start = Instant::now();
    let plan = veil_dp::sql::plan(SQL, "bench", &manifest, veil_dp::QueryOptions::default())
        .and_then(veil_dp::cost)
        .map_err(|r| anyhow::anyhow!("benchmark query refused: {}", r.0))?;
    veil_datasets::execute_unencrypted(path, &manifest, &plan).await?;
    Ok(start.elapsed())
}

/// The median of `v` (the upper one for an even count); `v` must not be empty.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(rows: u64, runs: usize, json: bool) -> Result<()> {
    let runs = runs.max(1);
    let dir = tempfile::tempdir().context("scratch directory")?;
    let csv = dir.path().join("bench.csv");
    let say = |m: &str| {
        if !json {
            eprintln!("{m}");
        }
    };
    say(&format!("generating {rows} rows × 8 columns …"));
    let csv_bytes = generate_csv(&csv, rows)?;

    let mut config = ServerConfig::new(dir.path().join("node"));
    let owner_pw = veil_crypto::random::one_time_password();
    config.admin_password = Some(owner_pw.clone());
    config.core.upload_limit_bytes = csv_bytes * 2;
    let node = RunningNode::start(config).await?;
    let anon = Client::new(&node.url)?;
    let owner = anon.with_token(anon.login("owner@localhost", &owner_pw).await?.token);
    let analyst = crate::funded_analyst(&anon, &owner, 1000.0).await?;

    say("uploading through the API (validate + encrypt) …");
    let file = tokio::fs::File::open(&csv).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    let start = Instant::now();
    let ds = owner
        .upload_dataset("bench", MANIFEST, "csv", stream, csv_bytes)
        .await?;
    let upload = start.elapsed().as_secs_f64();

    say("querying through the API (DP) …");
    let req = QueryRequest {
        sql: SQL.into(),
        epsilon: 1.0,
        delta: 0.0,
        confidence: None,
        mechanism: None,
    };
    let mut dp = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        analyst.query("bench", &req).await?;
        dp.push(t.elapsed().as_secs_f64());
    }
    node.stop().await?;

    say("plain DataFusion on the same rows, unencrypted …");
    let plain_path = dir.path().join("plain.parquet");
    plain_parquet(&csv, &plain_path).await?;
    let (mut plain, mut rewrite) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        plain.push(plain_query(&plain_path).await?.as_secs_f64());
        rewrite.push(rewrite_only(&plain_path).await?.as_secs_f64());
    }
    let report = Report {
        rows,
        csv_bytes,
        upload_seconds: upload,
        upload_rows_per_second: rows as f64 / upload,
        stored_bytes: ds.bytes_stored,
        query_runs: runs,
        dp_query_seconds_median: median(dp),
        plain_datafusion_seconds_median: median(plain),
        dp_rewrite_unencrypted_seconds_median: median(rewrite),
        overhead_ratio: 0.0,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let report = Report {
        overhead_ratio: report.dp_query_seconds_median / report.plain_datafusion_seconds_median,
        ..report
    };
    if json {
        print_json(&report)?;
    } else {
        println!(
            "{rows} rows × 8 columns, CSV {:.0} MB, {} cores",
            csv_bytes as f64 / 1e6,
            report.cores
        );
        let mut t = Table::new(&["MEASUREMENT", "VALUE"]);
        t.row(vec![
            "upload (CLI path → validate → encrypted Parquet)".into(),
            format!("{upload:.2} s"),
        ]);
        t.row(vec![
            "upload throughput".into(),
            format!("{:.0} rows/s", report.upload_rows_per_second),
        ]);
        t.row(vec![
            "stored size".into(),
            report
                .stored_bytes
                .map_or("-".into(), |b| format!("{:.0} MB", b as f64 / 1e6)),
        ]);
        t.row(vec![
            format!("DP query, end to end (median of {runs})"),
            format!("{:.3} s", report.dp_query_seconds_median),
        ]);
        t.row(vec![
            format!("plain DataFusion, unencrypted (median of {runs})"),
            format!("{:.3} s", report.plain_datafusion_seconds_median),
        ]);
        t.row(vec![
            format!("DP executor alone, on the unencrypted copy (median of {runs})"),
            format!("{:.3} s", report.dp_rewrite_unencrypted_seconds_median),
        ]);
        t.row(vec![
            "overhead (DP / plain)".into(),
            format!("{:.2}×", report.overhead_ratio),
        ]);
        print!("{}", t.render());
        println!("query: {SQL}");
    }
    Ok(())
}
