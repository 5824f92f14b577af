//! `veil fhe`: the client side of encrypted inference. The client key is made and used only
//! here; the node receives the evaluation key and ciphertexts.
//!
//! Key directory (default `<config dir>/fhe`, mode 0700): `client.key` (secret, 0600),
//! `evaluation.key` (sent to nodes), `key.json` (its fingerprint), `nodes.json` (the id each
//! node gave the evaluation key, so it is uploaded once per node).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use veil_api_types::*;
use veil_client::Client;
use veil_fhe::ClientSpec;
use veil_fhe::backend::{ClientKey, EncryptedOutputs};

use crate::args::{FheCmd, FheInferArgs, FheKeysCmd, Global};
use crate::credentials::write_atomically as write_file;
use crate::output::{Table, fields, print_json, time};

/// One line summary of a model's FHE publication.
pub fn describe(f: &FheInfoView) -> String {
    let fit = match (f.label_agreement, f.mean_abs_error) {
        (Some(a), _) => format!(
            "labels agree with the float model on {:.1}% of calibration rows",
            a * 100.0
        ),
        (_, Some(e)) => format!("mean absolute difference {e:.4} from the float model"),
        _ => String::new(),
    };
    // Quantisation bits: enough for the most levels any feature takes (a node that does not
    // report levels gets the encoding alone).
    let inputs = match f.input_levels {
        0 => format!("inputs encrypted at {} bits", f.input_bits),
        levels => format!(
            "{}-bit inputs (encrypted at {} bits)",
            u32::BITS - (levels - 1).leading_zeros(),
            f.input_bits
        ),
    };
    format!(
        "{}: {} PBS per sample, {inputs}, {fit}",
        f.kind, f.pbs_per_sample
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyInfo {
    sha256: String,
    parameters: String,
    created_at: String,
}

struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    fn new(explicit: Option<&Path>, g: &Global) -> Result<Self> {
        let dir = match explicit {
            Some(d) => d.to_path_buf(),
            None => crate::credentials::config_dir(g.config_dir.as_deref())?.join("fhe"),
        };
        Ok(Self { dir })
    }

    fn client_key(&self) -> Result<ClientKey> {
        let path = self.dir.join("client.key");
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {}; create a key with `veil fhe keygen`",
                path.display()
            )
        })?;
        ClientKey::from_bytes(&bytes)
            .with_context(|| format!("{} is not a Veil FHE client key", path.display()))
    }

    fn info(&self) -> Result<KeyInfo> {
        let path = self.dir.join("key.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; create a key with `veil fhe keygen`",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    fn nodes(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.dir.join("nodes.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn remember_node(&self, server: &str, id: &str) -> Result<()> {
        let mut nodes = self.nodes();
        nodes.insert(server.to_string(), id.to_string());
        write_file(
            &self.dir.join("nodes.json"),
            serde_json::to_string_pretty(&nodes)?.as_bytes(),
            0o600,
        )
    }
}

fn spinner(msg: &str, json: bool) -> indicatif::ProgressBar {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new_spinner();
    b.set_message(msg.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b
}

fn keygen(dir: &KeyDir, force: bool, json: bool) -> Result<ExitCode> {
    let client_path = dir.dir.join("client.key");
    if client_path.exists() && !force {
        bail!(
            "{} exists; refusing to replace a key (use --force; ciphertexts made for the old key become undecryptable)",
            client_path.display()
        );
    }
    crate::credentials::private_dir(&dir.dir)?;
    let bar = spinner("generating the client key", json);
    let key = ClientKey::generate();
    bar.set_message("deriving the compressed evaluation key (tens of seconds)");
    let eval = key.evaluation_key()?;
    bar.finish_and_clear();
    let secret = key.to_bytes()?;
    write_file(&client_path, &secret, 0o600)?;
    write_file(&dir.dir.join("evaluation.key"), &eval.bytes, 0o644)?;
    let info = KeyInfo {
        sha256: veil_crypto::sha256_hex(&eval.bytes),
        parameters: veil_fhe::backend::PARAMETER_SET.into(),
        created_at: chrono_now(),
    };
    write_file(
        &dir.dir.join("key.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
        0o644,
    )?;
    // A new key is unknown to every node.
    let _ = std::fs::remove_file(dir.dir.join("nodes.json"));
    if json {
        print_json(&serde_json::json!({
            "dir": dir.dir,
            "client_key_bytes": secret.len(),
            "evaluation_key_bytes": eval.bytes.len(),
            "sha256": info.sha256,
            "parameters": info.parameters,
        }))?;
    } else {
        print!(
            "{}",
            fields(&[
                (
                    "client key",
                    format!(
                        "{} ({} bytes, mode 0600; never leaves this machine)",
                        client_path.display(),
                        secret.len()
                    )
                ),
                (
                    "evaluation key",
                    format!(
                        "{} ({} bytes, sent to nodes)",
                        dir.dir.join("evaluation.key").display(),
                        eval.bytes.len()
                    )
                ),
                ("fingerprint", info.sha256),
                ("parameters", info.parameters),
            ])
        );
    }
    Ok(ExitCode::SUCCESS)
}

// The CLI runs on the user's machine, outside any node: its own clock is the right one.
#[allow(clippy::disallowed_methods)]
fn chrono_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}", d.as_secs())
}

/// A CSV of inputs: header, numeric rows.
struct Inputs {
    rows: Vec<Vec<f64>>,
    labels: Option<Vec<String>>,
}

fn read_inputs(path: &Path, n_features: usize, label: Option<&str>) -> Result<Inputs> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .context("the input file is empty")?
        .split(',')
        .map(str::trim)
        .collect();
    let label_col = match label {
        Some(l) => Some(
            header
                .iter()
                .position(|h| *h == l)
                .with_context(|| format!("no column named {l:?}"))?,
        ),
        None => None,
    };
    let width = header.len() - usize::from(label_col.is_some());
    if width != n_features {
        bail!("the input has {width} feature columns; the model takes {n_features}");
    }
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != header.len() {
            bail!(
                "row {} has {} cells, the header {}",
                i + 2,
                cells.len(),
                header.len()
            );
        }
        let mut row = Vec::with_capacity(n_features);
        for (j, c) in cells.iter().enumerate() {
            if Some(j) == label_col {
                labels.push((*c).to_string());
                continue;
            }
            let v: f64 = c
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .with_context(|| {
                    format!("row {}, column {}: {c:?} is not a number", i + 2, header[j])
                })?;
            row.push(v);
        }
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("the input file has no rows");
    }
    Ok(Inputs {
        rows,
        labels: label_col.map(|_| labels),
    })
}

async fn spec_of(
    client: Option<&Client>,
    model: &str,
    version: Option<u32>,
    file: Option<&Path>,
) -> Result<(FheModelView, ClientSpec)> {
    let view: FheModelView = match (file, client) {
        (Some(f), _) => serde_json::from_str(
            &std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        )
        .with_context(|| {
            format!(
                "{} is not the output of `veil fhe show --json`",
                f.display()
            )
        })?,
        (None, Some(c)) => c.fhe_model(model, version).await?,
        (None, None) => bail!("give --spec or log in to a node"),
    };
    let spec: ClientSpec = serde_json::from_value(view.spec.clone())
        .context("the node sent a model specification this client cannot read")?;
    Ok((view, spec))
}

/// For the offline primitives: the spec from `--spec` if given (no node needed), otherwise
/// from the node, whose client is returned too.
async fn offline_spec(
    client: &impl Fn() -> Result<Client>,
    model: &str,
    version: Option<u32>,
    file: Option<&Path>,
) -> Result<(Option<Client>, FheModelView, ClientSpec)> {
    let c = if file.is_none() {
        Some(client()?)
    } else {
        None
    };
    let (view, spec) = spec_of(c.as_ref(), model, version, file).await?;
    Ok((c, view, spec))
}

fn encrypt_rows(key: &ClientKey, spec: &ClientSpec, rows: &[Vec<f64>]) -> Result<Vec<String>> {
    rows.iter()
        .map(|r| {
            let q = spec.quantise(r)?;
            let ct = key.encrypt(&spec.input_bits, &q)?;
            Ok(B64.encode(ct.to_bytes()?))
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct Prediction {
    row: usize,
    label: Option<String>,
    scores: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truth: Option<String>,
}

/// Decrypts a reply to `samples` samples (bounded by the spec: see
/// `ClientKey::decrypt_reply`); the decrypted values never leave this machine.
fn decrypt_outputs(
    key: &ClientKey,
    spec: &ClientSpec,
    samples: usize,
    outputs: &[String],
    first_row: usize,
) -> Result<Vec<Prediction>> {
    let reply = outputs
        .iter()
        .map(|o| {
            let bytes = B64.decode(o).context("an output is not base64")?;
            Ok(EncryptedOutputs::from_bytes(&bytes)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(key
        .decrypt_reply(spec, samples, &reply)?
        .into_iter()
        .enumerate()
        .map(|(i, ints)| Prediction {
            row: first_row + i,
            label: spec.label(&ints),
            scores: spec.scores(&ints),
            truth: None,
        })
        .collect())
}

fn print_predictions(preds: &[Prediction], json: bool) -> Result<()> {
    if json {
        return print_json(&preds);
    }
    let mut t = Table::new(&["ROW", "PREDICTION", "SCORES"]);
    for p in preds {
        t.row(vec![
            p.row.to_string(),
            p.label.clone().unwrap_or_else(|| "-".into()),
            p.scores
                .iter()
                .map(|s| format!("{s:.4}"))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// The node's id for our evaluation key, uploading the key if the node lacks a live copy.
async fn node_key(c: &Client, dir: &KeyDir, info: &KeyInfo, json: bool) -> Result<String> {
    let server = c.base_url().to_string();
    let live: Vec<EvaluationKeyView> = c.list_evaluation_keys().await?;
    if let Some(id) = dir.nodes().get(&server)
        && live
            .iter()
            .any(|k| &k.id == id && !k.expired && k.sha256 == info.sha256)
    {
        return Ok(id.clone());
    }
    if let Some(k) = live.iter().find(|k| !k.expired && k.sha256 == info.sha256) {
        dir.remember_node(&server, &k.id)?;
        return Ok(k.id.clone());
    }
    let path = dir.dir.join("evaluation.key");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let bar = spinner(
        &format!(
            "uploading the evaluation key ({} MB, once per node)",
            bytes.len() / 1_000_000
        ),
        json,
    );
    let k = c.upload_evaluation_key(bytes).await;
    bar.finish_and_clear();
    let k = k?;
    dir.remember_node(&server, &k.id)?;
    Ok(k.id)
}

async fn infer(c: &Client, dir: &KeyDir, a: FheInferArgs, json: bool) -> Result<ExitCode> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (view, spec) = spec_of(Some(c), &a.model, a.version, None).await?;
    let inputs = read_inputs(&a.input, spec.n_features(), a.label.as_deref())?;
    let key = dir.client_key()?;
    let info = dir.info()?;
    let key_id = node_key(c, dir, &info, json).await?;
    let bar = if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(inputs.rows.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} samples, {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("{} (encrypted)", view.model));
        b
    };
    let mut preds = Vec::new();
    let mut server_ms = 0u64;
    let started = std::time::Instant::now();
    for (chunk_no, chunk) in inputs.rows.chunks(a.batch).enumerate() {
        let samples = encrypt_rows(&key, &spec, chunk)?;
        let reply = c
            .fhe_infer(
                &a.model,
                &FheInferBody {
                    key_id: key_id.clone(),
                    key_sha256: info.sha256.clone(),
                    version: Some(view.version),
                    samples,
                },
            )
            .await?;
        server_ms += reply.server_ms;
        let first = chunk_no * a.batch + 1;
        preds.extend(decrypt_outputs(
            &key,
            &spec,
            chunk.len(),
            &reply.outputs,
            first,
        )?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let total_ms = started.elapsed().as_millis() as u64;
    if let Some(labels) = &inputs.labels {
        for (p, t) in preds.iter_mut().zip(labels) {
            p.truth = Some(t.clone());
        }
    }
    let correct = inputs.labels.as_ref().map(|_| {
        preds
            .iter()
            .filter(|p| p.label.is_some() && p.label == p.truth)
            .count()
    });
    if json {
        print_json(&serde_json::json!({
            "model": view.model,
            "version": view.version,
            "predictions": preds,
            "accuracy": correct.map(|c| c as f64 / preds.len() as f64),
            "server_ms": server_ms,
            "total_ms": total_ms,
        }))?;
    } else {
        print_predictions(&preds, false)?;
        println!(
            "{} samples of {} (version {}): {} ms on the node, {} ms in all",
            preds.len(),
            view.model,
            view.version,
            server_ms,
            total_ms
        );
        if let Some(c) = correct {
            println!(
                "accuracy against {}: {:.3} ({c}/{})",
                a.label.as_deref().unwrap_or("labels"),
                c as f64 / preds.len() as f64,
                preds.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: FheCmd, g: &Global, client: impl Fn() -> Result<Client>) -> Result<ExitCode> {
    let json = g.json;
    match cmd {
        FheCmd::Keygen { out, force } => keygen(&KeyDir::new(out.as_deref(), g)?, force, json),
        FheCmd::Keys(FheKeysCmd::List) => {
            let keys = client()?.list_evaluation_keys().await?;
            if json {
                print_json(&keys)?;
            } else {
                let mut t =
                    Table::new(&["ID", "FINGERPRINT", "BYTES", "CREATED", "EXPIRES", "STATE"]);
                for k in &keys {
                    t.row(vec![
                        k.id.clone(),
                        k.sha256.chars().take(16).collect(),
                        k.size_bytes.to_string(),
                        time(Some(&k.created_at)),
                        time(Some(&k.expires_at)),
                        if k.expired { "expired" } else { "live" }.into(),
                    ]);
                }
                print!("{}", t.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        FheCmd::Keys(FheKeysCmd::Delete { id }) => {
            client()?.delete_evaluation_key(&id).await?;
            if !json {
                println!("deleted evaluation key {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        FheCmd::Show { model, version } => {
            let v = client()?.fhe_model(&model, version).await?;
            if json {
                print_json(&v)?;
            } else {
                print!(
                    "{}",
                    fields(&[
                        ("model", format!("{} (version {})", v.model, v.version)),
                        ("circuit", describe(&v.info)),
                        ("features", v.info.n_features.to_string()),
                        ("outputs", v.info.n_outputs.to_string()),
                        ("calibration rows", v.info.calibration_rows.to_string()),
                        (
                            "failure probability",
                            match v.info.log2_p_fail_sample {
                                Some(s) => format!(
                                    "≤ 2^{:.1} per read, ≤ 2^{s:.1} per sample",
                                    v.info.log2_p_fail
                                ),
                                None => format!("≤ 2^{:.1} per read", v.info.log2_p_fail),
                            }
                        ),
                        ("outputs per score", v.info.outputs_per_score.to_string()),
                        (
                            "accumulators",
                            match v.info.accumulators_may_wrap {
                                Some([0, n]) => format!("{n}, none can wrap for a legal input"),
                                Some([w, n]) => format!(
                                    "{w} of {n} sized to the calibration rows: an input unlike them may get a wrong score"
                                ),
                                None => "not checked (published before the check)".into(),
                            }
                        ),
                    ])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FheCmd::Infer(a) => {
            let dir = KeyDir::new(a.keys.as_deref(), g)?;
            infer(&client()?, &dir, a, json).await
        }
        FheCmd::Encrypt {
            model,
            input,
            out,
            version,
            keys,
            spec,
        } => {
            let dir = KeyDir::new(keys.as_deref(), g)?;
            let (c, view, cs) = offline_spec(&client, &model, version, spec.as_deref()).await?;
            let inputs = read_inputs(&input, cs.n_features(), None)?;
            let key = dir.client_key()?;
            let info = dir.info()?;
            let key_id = match &c {
                Some(c) => dir
                    .nodes()
                    .get(&c.base_url().to_string())
                    .cloned()
                    .unwrap_or_default(),
                None => String::new(),
            };
            let body = FheInferBody {
                key_id,
                key_sha256: info.sha256,
                version: Some(view.version),
                samples: encrypt_rows(&key, &cs, &inputs.rows)?,
            };
            let text = serde_json::to_string(&body)?;
            match out {
                Some(p) => write_file(&p, text.as_bytes(), 0o644)?,
                None => println!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        FheCmd::Decrypt {
            model,
            input,
            version,
            keys,
            spec,
        } => {
            let dir = KeyDir::new(keys.as_deref(), g)?;
            let (_, _, cs) = offline_spec(&client, &model, version, spec.as_deref()).await?;
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let reply: FheInferResponse = serde_json::from_str(&text)
                .context("not a node's reply to an encrypted-inference request")?;
            // A reply saved by `veil fhe encrypt`'s user: one output set per sample it holds.
            let n = reply.outputs.len();
            let preds = decrypt_outputs(&dir.client_key()?, &cs, n, &reply.outputs, 1)?;
            print_predictions(&preds, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(input_levels: u32) -> FheInfoView {
        FheInfoView {
            kind: "network 2×16-8 relu".into(),
            pbs_per_sample: 21,
            n_features: 30,
            n_outputs: 2,
            input_bits: 24,
            input_levels,
            label_agreement: Some(0.988),
            mean_abs_error: None,
            calibration_rows: 341,
            log2_p_fail: -132.1,
            log2_p_fail_sample: Some(-127.4),
            outputs_per_score: 1,
            accumulators_may_wrap: Some([0, 13]),
        }
    }

    /// The summary names the quantisation's bits, not the ciphertext encoding's, as the width.
    #[test]
    fn the_summary_names_quantisation_bits_and_encoding_apart() {
        assert_eq!(
            describe(&info(32)),
            "network 2×16-8 relu: 21 PBS per sample, 5-bit inputs (encrypted at 24 bits), labels \
             agree with the float model on 98.8% of calibration rows"
        );
        assert!(describe(&info(16)).contains("4-bit inputs"));
        assert!(describe(&info(17)).contains("5-bit inputs"));
        assert!(describe(&info(0)).contains("21 PBS per sample, inputs encrypted at 24 bits,"));
    }
}
