//! `veil keys`, `veil models`, `veil validate`, `veil requests`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use veil_api_types::*;
use veil_client::Client;
use veil_crypto::signing::PrivateKey;

use crate::args::{KeysCmd, ModelsCmd, RequestsCmd, ValidateArgs};
use crate::output::{Table, amount, fields, print_json, time};

/// Writes a new key pair: `out` (private, 0600) and `out.pub` (PEM).
pub fn generate_key(out: &Path, json: bool) -> Result<ExitCode> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite a key", out.display());
    }
    let key = PrivateKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    f.write_all(format!("{}\n", key.to_hex()).as_bytes())?;
    let public = key.public();
    let pub_path = out.with_extension("pub");
    std::fs::write(&pub_path, public.to_pem())
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    if json {
        print_json(&serde_json::json!({
            "private_key": out, "public_key": pub_path, "fingerprint": public.fingerprint(),
        }))?;
    } else {
        println!(
            "private key: {} (keep it secret)\npublic key:  {}\nfingerprint: {}\nregister it with: veil keys add --name <name> --public-key {}",
            out.display(),
            pub_path.display(),
            public.fingerprint(),
            pub_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn keys(c: &Client, json: bool, cmd: KeysCmd) -> Result<ExitCode> {
    match cmd {
        KeysCmd::Generate { .. } => unreachable!("handled without a session"),
        KeysCmd::Add { name, public_key } => {
            let text = match std::fs::read_to_string(&public_key) {
                Ok(t) => t,
                Err(_) => public_key,
            };
            let k = c.add_key(&name, &text).await?;
            if json {
                print_json(&k)?;
            } else {
                println!("registered key {} ({}), id {}", k.name, k.fingerprint, k.id);
            }
        }
        KeysCmd::List => {
            let list = c.list_keys().await?;
            if json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["ID", "NAME", "FINGERPRINT", "STATUS", "ADDED"]);
            for k in &list {
                t.row(vec![
                    k.id.to_string(),
                    k.name.clone(),
                    k.fingerprint.clone(),
                    if k.active { "active" } else { "revoked" }.into(),
                    time(Some(&k.created_at)),
                ]);
            }
            print!("{}", t.render());
        }
        KeysCmd::Revoke { id } => {
            c.revoke_key(id).await?;
            if json {
                print_json(&serde_json::json!({"revoked": id}))?;
            } else {
                println!("revoked key {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_model(m: &ModelView) {
    let io = |i: &IoView| {
        format!(
            "{} {} [{}]",
            i.name,
            i.dtype,
            i.shape
                .iter()
                .map(|d| d.map_or("N".into(), |v| v.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    print!(
        "{}",
        fields(&[
            ("name", format!("{} (version {})", m.name, m.version)),
            ("kind", m.kind.clone()),
            ("input", io(&m.input)),
            (
                "outputs",
                m.outputs.iter().map(io).collect::<Vec<_>>().join("; ")
            ),
            (
                "classes",
                m.classes.as_ref().map_or("-".into(), |c| c.join(", "))
            ),
            (
                "operators",
                m.operators
                    .iter()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ("size", format!("{} bytes", m.size_bytes)),
            ("sha256", m.sha256.clone()),
            ("owner", m.owner.clone()),
            (
                "signed by",
                m.signed_by.clone().unwrap_or_else(|| "not signed".into())
            ),
            ("producer", format!("{} (opset {})", m.producer, m.opset)),
            (
                "encrypted inference",
                m.fhe
                    .as_ref()
                    .map_or("not published".into(), crate::fhe::describe)
            ),
            ("uploaded", time(Some(&m.created_at))),
        ])
    );
}

pub async fn models(c: &Client, json: bool, cmd: ModelsCmd) -> Result<ExitCode> {
    match cmd {
        ModelsCmd::Upload {
            name,
            onnx,
            signature,
            sign_with,
            fhe,
            bits,
            calibration,
            ranges,
            accumulators,
            outputs,
            yes,
        } => {
            let bytes =
                std::fs::read(&onnx).with_context(|| format!("cannot read {}", onnx.display()))?;
            let signature = match (signature, sign_with) {
                (Some(p), _) => Some(
                    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
                ),
                (None, Some(k)) => {
                    let text = std::fs::read_to_string(&k)
                        .with_context(|| format!("cannot read {}", k.display()))?;
                    let key = PrivateKey::from_hex(&text)
                        .context("not a key written by `veil keys generate`")?;
                    Some(key.sign_hex(&bytes).into_bytes())
                }
                (None, None) => None,
            };
            let fhe = match (fhe, calibration) {
                (true, Some(path)) => Some((
                    FhePublishOptions {
                        bits,
                        confirm: None,
                        ranges: ranges.as_deref().map(read_ranges).transpose()?,
                        accumulators,
                        outputs,
                    },
                    std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                )),
                _ => None,
            };
            let first = c
                .upload_model_with(&name, bytes.clone(), signature.clone(), fhe.clone())
                .await;
            // Publishing asks the creator to confirm what the public spec reveals.
            let m = match (first, fhe) {
                (
                    Err(veil_client::ClientError::Api {
                        code,
                        details: Some(details),
                        ..
                    }),
                    Some((opts, calibration)),
                ) if code == "fhe_disclosure_unconfirmed" => {
                    let digest = details["digest"]
                        .as_str()
                        .context("the node's disclosure has no digest")?
                        .to_string();
                    print_disclosure(&details["disclosure"]);
                    if !yes && !confirmed()? {
                        bail!("not published: nothing was stored");
                    }
                    let opts = FhePublishOptions {
                        confirm: Some(digest),
                        ..opts
                    };
                    c.upload_model_with(&name, bytes, signature, Some((opts, calibration)))
                        .await?
                }
                (first, _) => first?,
            };
            if json {
                print_json(&m)?;
            } else {
                println!("uploaded {} version {}", m.name, m.version);
                print_model(&m);
            }
        }
        ModelsCmd::List => {
            let list = c.list_models().await?;
            if json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&[
                "NAME", "VERSION", "KIND", "FEATURES", "OWNER", "SIGNED", "UPLOADED",
            ]);
            for m in &list {
                t.row(vec![
                    m.name.clone(),
                    m.version.to_string(),
                    m.kind.clone(),
                    m.n_features.to_string(),
                    m.owner.clone(),
                    if m.signed_by.is_some() { "yes" } else { "no" }.into(),
                    time(Some(&m.created_at)),
                ]);
            }
            print!("{}", t.render());
        }
        ModelsCmd::Show { name, version } => {
            let m = c.get_model(&name, version).await?;
            if json {
                print_json(&m)?;
            } else {
                print_model(&m);
            }
        }
        ModelsCmd::Delete { name, version } => {
            c.delete_model(&name, version).await?;
            if json {
                print_json(&serde_json::json!({"deleted": name, "version": version}))?;
            } else {
                match version {
                    Some(v) => println!("deleted {name} version {v}"),
                    None => println!("deleted every version of {name}"),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn num(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.4}")
    }
}

/// Prints a request; exit status 1 if it failed or was denied.
fn print_request(r: &RequestView) -> ExitCode {
    print!(
        "{}",
        fields(&[
            ("request", r.id.to_string()),
            ("status", r.status.clone()),
            ("kind", r.kind.clone()),
            ("requester", r.requester.clone()),
            ("target", r.target.clone()),
            ("dataset", r.dataset.clone().unwrap_or_default()),
            ("epsilon", amount(r.epsilon)),
            ("reviewer", r.reviewer.clone().unwrap_or_else(|| "-".into())),
            ("reason", r.reason.clone().unwrap_or_else(|| "-".into())),
            ("updated", time(Some(&r.updated_at))),
        ])
    );
    if let Some(p) = r.parameters.as_object() {
        println!(
            "asked:     features {}; label {}; metrics {}",
            p.get("features").map(|f| f.to_string()).unwrap_or_default(),
            p.get("label").and_then(|l| l.as_str()).unwrap_or_default(),
            p.get("metrics").map(|m| m.to_string()).unwrap_or_default()
        );
    }
    if let Some(result) = &r.result {
        let conf = result["confidence"].as_f64().unwrap_or(0.95);
        let mut t = Table::new(&["METRIC", "VALUE", &format!("{:.0}% INTERVAL", conf * 100.0)]);
        for m in result["metrics"].as_array().into_iter().flatten() {
            t.row(vec![
                m["name"].as_str().unwrap_or_default().to_string(),
                num(m["value"].as_f64().unwrap_or(f64::NAN)),
                format!(
                    "[{}, {}]",
                    num(m["low"].as_f64().unwrap_or(f64::NAN)),
                    num(m["high"].as_f64().unwrap_or(f64::NAN))
                ),
            ]);
        }
        println!();
        print!("{}", t.render());
        if let Some(cm) = result.get("confusion").filter(|c| !c.is_null()) {
            println!("\nconfusion matrix (noisy; rows = true class, columns = predicted):");
            let mut header = vec![String::new()];
            header.extend(
                cm["predicted"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| p.as_str().unwrap_or_default().to_string()),
            );
            let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
            let mut t = Table::new(&header_refs);
            for (label, row) in cm["classes"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(cm["cells"].as_array().into_iter().flatten())
            {
                let mut cells = vec![label.as_str().unwrap_or_default().to_string()];
                cells.extend(
                    row.as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| format!("{:.0}", v.as_f64().unwrap_or(0.0))),
                );
                t.row(cells);
            }
            print!("{}", t.render());
        }
        println!(
            "\nε spent {} ({}, noise scale {})",
            amount(result["epsilon"].as_f64().unwrap_or(0.0)),
            result["mechanism"].as_str().unwrap_or_default(),
            result["noise_scales"]
                .as_array()
                .map(|v| v
                    .iter()
                    .map(|x| num(x.as_f64().unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    match r.status.as_str() {
        "pending" => {
            println!("request {} is waiting for review", r.id);
            ExitCode::SUCCESS
        }
        "failed" | "denied" => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

pub async fn validate(c: &Client, json: bool, a: ValidateArgs) -> Result<ExitCode> {
    let r = c
        .validate(
            &a.model,
            &ValidateRequestBody {
                dataset: a.dataset,
                features: a
                    .features
                    .into_iter()
                    .map(|f| f.trim().to_string())
                    .collect(),
                label: a.label,
                metrics: a.metrics,
                epsilon: a.epsilon,
                confidence: a.confidence,
                version: a.version,
            },
        )
        .await?;
    if json {
        print_json(&r)?;
        return Ok(if matches!(r.status.as_str(), "failed" | "denied") {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    Ok(print_request(&r))
}

pub async fn requests(c: &Client, json: bool, cmd: RequestsCmd) -> Result<ExitCode> {
    let one = |r: RequestView| -> Result<ExitCode> {
        if json {
            print_json(&r)?;
            Ok(ExitCode::SUCCESS)
        } else {
            Ok(print_request(&r))
        }
    };
    match cmd {
        RequestsCmd::List { status, kind } => {
            let list = c
                .list_requests_of_kind(status.as_deref(), kind.as_deref())
                .await?;
            if json {
                return print_json(&list).map(|()| ExitCode::SUCCESS);
            }
            let mut t = Table::new(&[
                "ID",
                "STATUS",
                "KIND",
                "REQUESTER",
                "TARGET",
                "DATASET",
                "ε",
                "UPDATED",
            ]);
            for r in &list {
                t.row(vec![
                    r.id.to_string(),
                    r.status.clone(),
                    r.kind.clone(),
                    r.requester.clone(),
                    r.target.clone(),
                    r.dataset.clone().unwrap_or_default(),
                    amount(r.epsilon),
                    time(Some(&r.updated_at)),
                ]);
            }
            print!("{}", t.render());
            Ok(ExitCode::SUCCESS)
        }
        RequestsCmd::Show { id } => one(c.get_request(id).await?),
        RequestsCmd::Approve { id } => one(c.approve_request(id).await?),
        RequestsCmd::Deny { id, reason } => one(c.deny_request(id, &reason).await?),
    }
}

/// Prints what publishing a model for encrypted inference reveals (the node's disclosure), on
/// stderr so that `--json` output stays clean.
fn print_disclosure(d: &serde_json::Value) {
    let line = |s: String| eprintln!("  {s}");
    eprintln!(
        "Publishing gives every user with fhe:infer this model's client spec, which reveals:"
    );
    line(format!(
        "architecture: {}",
        d["architecture"].as_str().unwrap_or("?")
    ));
    if let Some(features) = d["features"].as_array() {
        for (i, f) in features.iter().enumerate() {
            match f["type"].as_str() {
                Some("range") => line(format!(
                    "feature {}: range [{}, {}] in {} levels",
                    i + 1,
                    f["lo"],
                    f["hi"],
                    f["levels"]
                )),
                _ => line(format!(
                    "feature {}: {} exact tree thresholds {}",
                    i + 1,
                    f["values"].as_array().map_or(0, Vec::len),
                    f["values"]
                )),
            }
        }
    }
    line(format!("classes: {}", d["classes"]));
    line(format!(
        "calibration: {} rows; agreement with the float model {}",
        d["calibration_rows"], d["fidelity"]
    ));
    line(format!(
        "{} outputs per score, {} bootstraps per sample",
        d["outputs_per_score"], d["pbs_per_sample"]
    ));
    if let Some(learn) = d["data_users_learn"].as_array() {
        for l in learn {
            line(format!("data users learn {}", l.as_str().unwrap_or("?")));
        }
    }
}

/// Asks on the terminal whether to publish; `false` without a terminal.
fn confirmed() -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!("no terminal to confirm on: add --yes to publish");
        return Ok(false);
    }
    eprint!("Publish? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Reads declared feature ranges: a header line, then a row of lows and a row of highs.
fn read_ranges(path: &Path) -> Result<Vec<[f64; 2]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split(',')
                .map(|c| c.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: every cell must be a number", path.display()))?;
    let [lows, highs] = rows.as_slice() else {
        bail!(
            "{}: give a header line, a row of lows and a row of highs",
            path.display()
        );
    };
    if lows.len() != highs.len() {
        bail!("{}: the two rows have different lengths", path.display());
    }
    Ok(lows.iter().zip(highs).map(|(lo, hi)| [*lo, *hi]).collect())
}
