//! `veil datasets …` and `veil query`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use veil_api_types::*;
use veil_client::Client;

use crate::args::{DatasetsCmd, QueryArgs};
use crate::output::{Table, amount, fields, print_json, time};

fn format_of(path: &std::path::Path, explicit: Option<&str>) -> Result<&'static str> {
    let ext = explicit.map(str::to_ascii_lowercase).or_else(|| {
        path.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
    });
    match ext.as_deref() {
        Some("csv") => Ok("csv"),
        Some("parquet") | Some("pq") => Ok("parquet"),
        _ => bail!(
            "cannot tell the format of {}: pass --format csv or --format parquet",
            path.display()
        ),
    }
}

fn print_dataset(d: &DatasetView) {
    let unit = match d.privacy_unit.column.as_deref() {
        None => "one row".to_string(),
        Some(c) => format!("each {c} (at most {} rows each)", d.privacy_unit.max_rows),
    };
    let mut pairs = vec![
        ("name", d.name.clone()),
        ("description", d.description.clone()),
        ("privacy unit", unit),
        ("policy", d.policy.clone()),
        (
            "created",
            format!("{} by {}", time(Some(&d.created_at)), d.created_by),
        ),
        (
            "global cap",
            match d.epsilon_cap {
                Some(e) => format!(
                    "ε {} (spent {}), δ {}",
                    amount(e),
                    amount(d.epsilon_spent),
                    d.delta_cap.map_or("unlimited".into(), amount)
                ),
                None => format!("none (ε spent so far {})", amount(d.epsilon_spent)),
            },
        ),
    ];
    if let Some(rows) = d.rows {
        pairs.push((
            "rows",
            format!("{rows} (exact; shown to dataset managers only)"),
        ));
    }
    print!("{}", fields(&pairs));
    let mut t = Table::new(&["COLUMN", "TYPE", "NULLABLE", "DOMAIN"]);
    for c in &d.columns {
        let domain = match (&c.bounds, &c.categories) {
            (Some(b), _) => format!(
                "[{}]",
                b.iter()
                    .map(|v| v.to_string().trim_matches('"').to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (_, Some(cats)) => cats.join(", "),
            _ => "-".into(),
        };
        t.row(vec![
            c.name.clone(),
            c.ty.clone(),
            if c.nullable { "yes" } else { "no" }.into(),
            domain,
        ]);
    }
    println!();
    print!("{}", t.render());
}

pub fn print_error_details(d: &serde_json::Value) {
    if let Some(rows) = d.get("rows").and_then(|r| r.as_array()) {
        let mut t = Table::new(&["ROW", "COLUMN", "PROBLEM"]);
        for r in rows {
            t.row(vec![
                r["row"].to_string(),
                r["column"].as_str().unwrap_or("-").to_string(),
                r["reason"].as_str().unwrap_or_default().to_string(),
            ]);
        }
        eprint!("{}", t.render());
        let total = d["problems"].as_u64().unwrap_or(0);
        if total as usize > rows.len() {
            eprintln!(
                "… and more ({total}{} problems found)",
                if total >= 1000 { "+" } else { "" }
            );
        }
    }
}

pub async fn datasets(c: &Client, json: bool, cmd: DatasetsCmd) -> Result<ExitCode> {
    match cmd {
        DatasetsCmd::Upload {
            name,
            file,
            schema,
            format,
        } => {
            let format = format_of(&file, format.as_deref())?;
            let manifest = std::fs::read_to_string(&schema)
                .with_context(|| format!("cannot read the schema {}", schema.display()))?;
            let handle = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let len = handle.metadata().await?.len();
            let bar = if json || !std::io::stderr().is_terminal() {
                indicatif::ProgressBar::hidden()
            } else {
                let b = indicatif::ProgressBar::new(len);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} uploading {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}, {eta} left",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b
            };
            let progress = bar.clone();
            let stream = tokio_util::io::ReaderStream::with_capacity(handle, 256 * 1024).inspect(
                move |chunk| {
                    if let Ok(b) = chunk {
                        progress.inc(b.len() as u64);
                    }
                },
            );
            let started = std::time::Instant::now();
            let result = c
                .upload_dataset(&name, &manifest, format, stream, len)
                .await;
            bar.finish_and_clear();
            let d = result?;
            if json {
                print_json(&d)?;
            } else {
                let secs = started.elapsed().as_secs_f64();
                match d.rows {
                    Some(rows) => println!(
                        "uploaded {name}: {rows} rows validated and stored encrypted in {secs:.1} s ({:.0} rows/s)",
                        rows as f64 / secs.max(1e-9)
                    ),
                    None => println!("uploaded {name} in {secs:.1} s"),
                }
                print_dataset(&d);
            }
        }
        DatasetsCmd::List => {
            let list = c.list_datasets().await?;
            if json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["NAME", "COLUMNS", "UNIT", "POLICY", "DESCRIPTION"]);
            for d in &list {
                t.row(vec![
                    d.name.clone(),
                    d.columns.len().to_string(),
                    d.privacy_unit
                        .column
                        .clone()
                        .unwrap_or_else(|| "row".into()),
                    d.policy.clone(),
                    d.description.clone(),
                ]);
            }
            print!("{}", t.render());
        }
        DatasetsCmd::Show { name } => {
            let d = c.get_dataset(&name).await?;
            if json {
                print_json(&d)?;
            } else {
                print_dataset(&d);
            }
        }
        DatasetsCmd::Mock { name, rows } => {
            let m = c.mock_dataset(&name, rows).await?;
            if json {
                return print_json(&m).map(|()| ExitCode::SUCCESS);
            }
            println!("SYNTHETIC rows drawn from the schema of {name}, not from its data:");
            let header: Vec<&str> = m.columns.iter().map(String::as_str).collect();
            let mut t = Table::new(&header);
            for r in &m.rows {
                t.row(
                    r.iter()
                        .map(|v| match v {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Null => "NULL".into(),
                            other => other.to_string(),
                        })
                        .collect(),
                );
            }
            print!("{}", t.render());
        }
        DatasetsCmd::Delete { name } => {
            c.delete_dataset(&name).await?;
            if json {
                print_json(&serde_json::json!({"deleted": name}))?;
            } else {
                println!("deleted {name}: its key is destroyed and its file removed");
            }
        }
        DatasetsCmd::Set {
            name,
            epsilon_cap,
            delta_cap,
            no_cap,
            policy,
        } => {
            let req = DatasetUpdateRequest {
                epsilon_cap: if no_cap {
                    Some(None)
                } else {
                    epsilon_cap.map(Some)
                },
                delta_cap: if no_cap {
                    Some(None)
                } else {
                    delta_cap.map(Some)
                },
                policy,
            };
            let d = c.update_dataset(&name, &req).await?;
            if json {
                print_json(&d)?;
            } else {
                print_dataset(&d);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A released number, rounded for reading (the noise makes further digits meaningless).
fn num(x: f64) -> String {
    if x.abs() >= 1000.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub async fn query(c: &Client, json: bool, a: QueryArgs) -> Result<ExitCode> {
    let r = c
        .query(
            &a.dataset,
            &QueryRequest {
                sql: a.sql,
                epsilon: a.epsilon,
                delta: a.delta,
                confidence: Some(a.confidence),
                mechanism: Some(a.mechanism),
            },
        )
        .await?;
    if json {
        return print_json(&r).map(|()| ExitCode::SUCCESS);
    }
    let pct = format!("{:.0}%", r.confidence * 100.0);
    let mut header: Vec<String> = Vec::new();
    for col in &r.columns {
        header.push(col.name.clone());
        if col.kind == "aggregate" {
            header.push(format!("{pct} interval"));
        }
    }
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&header_refs);
    for row in &r.rows {
        let mut cells = Vec::new();
        for cell in row {
            match cell {
                CellView::Key { value } => {
                    cells.push(value.clone().unwrap_or_else(|| "NULL".into()))
                }
                CellView::Value {
                    value,
                    low,
                    high,
                    rank_error,
                } => {
                    cells.push(num(*value));
                    cells.push(match (low, high, rank_error) {
                        (Some(l), Some(h), _) => format!("[{}, {}]", num(*l), num(*h)),
                        (_, _, Some(re)) => format!("rank ±{}", num(*re)),
                        _ => "-".into(),
                    });
                }
            }
        }
        t.row(cells);
    }
    print!("{}", t.render());
    println!();
    for col in r.columns.iter().filter(|c| c.kind == "aggregate") {
        println!(
            "{}: {} (noise scale {})",
            col.expression.as_deref().unwrap_or(&col.name),
            col.mechanism.as_deref().unwrap_or("-"),
            col.noise_scales
                .iter()
                .map(|s| num(*s))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "spent: ε {} δ {}",
        amount(r.epsilon_spent),
        amount(r.delta_spent)
    );
    for b in &r.budgets {
        println!(
            "budget left ({}): ε {} δ {}",
            b.dataset.as_deref().unwrap_or("all datasets"),
            amount(b.epsilon_remaining),
            amount(b.delta_remaining)
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}
