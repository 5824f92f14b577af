//! Encrypted inference: models compiled to TFHE circuits at upload, users' evaluation keys,
//! and runs on ciphertexts.
//!
//! The node never holds a client key. It stores each user's evaluation keys (public material)
//! with an expiry and a per-user count limit, and the compiled circuit of each model version
//! published for FHE, sealed like the model (the circuit holds the quantised weights), once
//! its creator confirmed the disclosure of what the public spec reveals. A run is counted
//! against the user's samples per day, parses every ciphertext before any work, checks the
//! fingerprint the client claims for its key (a mistake guard: the node cannot verify which key
//! a ciphertext was made under), and evaluates on the node's FHE pool, which owns its threads,
//! under a wall-clock limit. The audit log records who ran which model on how many samples,
//! never ciphertexts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use veil_fhe::backend::{EncryptedInputs, EvaluationKey, Evaluator, Prepared, RunControl};
use veil_fhe::{ClientSpec, CompileOptions, CompiledModel, FheError};
use veil_store::{EvaluationKeyRecord, FheArtifact, NewAuditEntry, NewEvaluationKey};
use veil_types::Permission;

use crate::{Core, CoreError, Principal, Result};

/// What the model creator asks for when publishing a model for encrypted inference.
#[derive(Debug, Clone, Default)]
pub struct FhePublish {
    /// Input quantisation bits; `None` lets the compiler choose per model type.
    pub bits: Option<u32>,
    /// CSV of calibration rows (a header line, then one column per model input).
    pub calibration_csv: Vec<u8>,
    /// The digest of the disclosure the creator read and accepts (see
    /// [`veil_fhe::Disclosure`]); without the right one nothing is published.
    pub confirm: Option<String>,
    /// Declared per-feature ranges (see `veil_fhe::CompileOptions::ranges`).
    pub ranges: Option<Vec<(f64, f64)>>,
    /// How networks size their accumulators: `input_box` (the default) or `calibration`.
    pub accumulators: Option<String>,
    /// What a reply carries per score: `scores` (the default) or `partial_sums`.
    pub outputs: Option<String>,
}

/// The public part of a compiled model, shown with the model and given to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FheSummary {
    pub spec: ClientSpec,
    /// Calibration rows the creator supplied.
    pub calibration_rows: usize,
    /// SHA-256 of the disclosure the creator confirmed (absent for models published before
    /// confirmation existed).
    #[serde(default)]
    pub disclosure_sha256: Option<String>,
}

/// An encrypted-inference request.
#[derive(Debug, Clone)]
pub struct FheInferRequest {
    pub model: String,
    pub version: Option<u32>,
    /// The caller's evaluation key on this node.
    pub key_id: String,
    /// SHA-256 of the evaluation key the samples were encrypted for.
    pub key_sha256: String,
    /// Per sample, its serialised seeded ciphertexts.
    pub samples: Vec<Vec<u8>>,
}

/// The outcome of an encrypted run.
#[derive(Debug, Clone)]
pub struct FheRun {
    /// Per sample: the encrypted outputs, serialised.
    pub outputs: Vec<Vec<u8>>,
    pub model: String,
    pub version: u32,
    pub pbs: usize,
    pub elapsed: Duration,
}

/// Decompressed evaluation keys, most recently used last (decompressing takes seconds).
#[derive(Debug, Default)]
pub(crate) struct EvaluatorCache {
    entries: Mutex<Vec<(String, Arc<Evaluator>)>>,
}

const EVALUATOR_CACHE: usize = 2;

impl EvaluatorCache {
    fn get(&self, id: &str) -> Option<Arc<Evaluator>> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let i = e.iter().position(|(k, _)| k == id)?;
        let hit = e.remove(i);
        let ev = hit.1.clone();
        e.push(hit);
        Some(ev)
    }
    fn put(&self, id: &str, ev: Arc<Evaluator>) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|(k, _)| k != id);
        if e.len() >= EVALUATOR_CACHE {
            e.remove(0);
        }
        e.push((id.to_string(), ev));
    }
    fn forget(&self, id: &str) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|(k, _)| k != id);
    }
}

/// Parses calibration rows: a header line, then `n` numeric cells per row.
fn calibration_rows(csv: &[u8], n: usize) -> Result<Vec<Vec<f64>>> {
    let text = std::str::from_utf8(csv)
        .map_err(|_| CoreError::InvalidInput("the calibration file is not UTF-8 text".into()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .ok_or_else(|| CoreError::InvalidInput("the calibration file is empty".into()))?;
    let width = header.split(',').count();
    if width != n {
        return Err(CoreError::InvalidInput(format!(
            "the calibration file has {width} columns; the model takes {n} features"
        )));
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let row: Vec<f64> = line
            .split(',')
            .map(|c| c.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                CoreError::InvalidInput(format!(
                    "calibration row {} is not {n} finite numbers",
                    i + 2
                ))
            })?;
        if row.len() != n {
            return Err(CoreError::InvalidInput(format!(
                "calibration row {} has {} values, not {n}",
                i + 2,
                row.len()
            )));
        }
        rows.push(row);
    }
    if rows.len() < 10 {
        return Err(CoreError::InvalidInput(
            "the calibration file needs at least 10 rows to choose the quantisation".into(),
        ));
    }
    Ok(rows)
}

fn fhe_error(e: FheError) -> CoreError {
    match e {
        FheError::Corrupt(m) | FheError::Unsupported(m) => {
            CoreError::InvalidModel(format!("cannot publish for encrypted inference: {m}"))
        }
        FheError::Input(m) => CoreError::InvalidFheRequest(m),
        FheError::Malformed(m) => CoreError::MalformedCiphertext(m),
        FheError::Circuit(m) => CoreError::Internal(format!("stored circuit: {m}")),
        FheError::TimedOut => CoreError::Internal("timed out".into()),
    }
}

impl Core {
    /// Compiles an uploaded model for encrypted inference and stores the sealed circuit.
    /// Called by `upload_model` before the model record is written.
    pub(crate) async fn publish_fhe(
        &self,
        p: &Principal,
        onnx: Arc<Vec<u8>>,
        publish: FhePublish,
    ) -> Result<(FheArtifact, String)> {
        p.require(Permission::ModelsPublish)?;
        let max_features = self.settings.fhe_max_features;
        let (circuit_json, summary, digest) = self
            .on_model_pool(move || -> Result<(Vec<u8>, FheSummary, String)> {
                // Bad options or calibration data are the caller's input; the rest is the model.
                let publish_error = |e: FheError| match e {
                    FheError::Input(m) => CoreError::InvalidInput(m),
                    other => fhe_error(other),
                };
                let model = veil_fhe::read_onnx(&onnx, max_features).map_err(publish_error)?;
                let rows = calibration_rows(&publish.calibration_csv, model.n_features())?;
                let accumulators = match publish.accumulators.as_deref() {
                    None | Some("input_box") => veil_fhe::Accumulators::InputBox,
                    Some("calibration") => veil_fhe::Accumulators::Calibration,
                    Some(other) => {
                        return Err(CoreError::InvalidInput(format!(
                            "unknown accumulators {other:?}: use input_box or calibration"
                        )));
                    }
                };
                let outputs = match publish.outputs.as_deref() {
                    None | Some("scores") => veil_fhe::Outputs::Scores,
                    Some("partial_sums") => veil_fhe::Outputs::PartialSums,
                    Some(other) => {
                        return Err(CoreError::InvalidInput(format!(
                            "unknown outputs {other:?}: use scores or partial_sums"
                        )));
                    }
                };
                let opts = CompileOptions {
                    bits: publish.bits,
                    outputs,
                    ranges: publish.ranges.clone(),
                    accumulators,
                    ..CompileOptions::default()
                };
                let compiled = veil_fhe::compile(&model, &rows, &opts).map_err(publish_error)?;
                let fidelity =
                    veil_fhe::fidelity(&model, &compiled, &rows).map_err(publish_error)?;
                let spec = compiled.client_spec(fidelity);
                let disclosure = spec.disclosure(rows.len());
                let disclosure_json = serde_json::to_vec(&disclosure)
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                let digest = veil_crypto::sha256_hex(&disclosure_json);
                // The compiler is deterministic, so the digest the creator saw on the first
                // attempt is the digest of this compile.
                if !publish
                    .confirm
                    .as_deref()
                    .is_some_and(|c| veil_crypto::ct_eq(c.as_bytes(), digest.as_bytes()))
                {
                    return Err(CoreError::FheDisclosureUnconfirmed {
                        digest,
                        disclosure: serde_json::to_value(&disclosure)
                            .map_err(|e| CoreError::Internal(e.to_string()))?,
                    });
                }
                let summary = FheSummary {
                    spec,
                    calibration_rows: rows.len(),
                    disclosure_sha256: Some(digest.clone()),
                };
                let json = serde_json::to_vec(&compiled)
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                Ok((json, summary, digest))
            })
            .await??;
        let stored = self
            .datasets
            .store_model(circuit_json)
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        Ok((
            FheArtifact {
                file_id: stored.file_id,
                wrapped_key: stored.wrapped_key.as_bytes().to_vec(),
                summary: serde_json::to_string(&summary)
                    .map_err(|e| CoreError::Internal(e.to_string()))?,
            },
            digest,
        ))
    }

    /// The client-side description of a model version published for FHE.
    pub async fn fhe_model(
        &self,
        p: &Principal,
        name: &str,
        version: Option<u32>,
    ) -> Result<(String, u32, FheSummary)> {
        p.require(Permission::FheInfer)?;
        let (m, _, summary) = self.published(name, version).await?;
        Ok((m.name, m.version, summary))
    }

    /// A model version published for FHE: its record, artifact and public summary.
    async fn published(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<(veil_store::ModelRecord, FheArtifact, FheSummary)> {
        // Published models are never private (publishing needs `models:publish`); a private
        // model is simply not found here.
        let m = self
            .store
            .get_model(name, version)
            .await?
            .filter(|m| !m.private)
            .ok_or(CoreError::NotFound(crate::error::NotFound::Model))?;
        let fhe = m.fhe.clone().ok_or_else(|| {
            CoreError::InvalidFheRequest(format!(
                "model {name} version {} is not published for encrypted inference",
                m.version
            ))
        })?;
        let summary: FheSummary = serde_json::from_str(&fhe.summary)
            .map_err(|e| CoreError::Internal(format!("stored FHE summary: {e}")))?;
        Ok((m, fhe, summary))
    }

    /// The sealed compiled circuit of a published model (JSON of `CompiledModel`).
    async fn load_circuit(&self, fhe: &FheArtifact) -> Result<Vec<u8>> {
        let wrapped = veil_crypto::WrappedKey::from_bytes(fhe.wrapped_key.clone());
        self.datasets
            .load_model(&fhe.file_id, &wrapped)
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))
    }

    // ---- evaluation keys

    /// Reserves the right to send an evaluation key, before its bytes are read: keys are
    /// hundreds of megabytes held in memory until checked, so each user sends one at a time
    /// and the node takes `KEY_UPLOADS_AT_ONCE` at once (others are told it is busy).
    pub fn reserve_key_upload(&self, p: &Principal) -> Result<KeyUpload> {
        p.require(Permission::FheInfer)?;
        let own = self.key_upload_slots.take(p.user.id)?;
        let node = self
            .key_uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| CoreError::Busy)?;
        Ok(KeyUpload {
            _own: own,
            _node: node,
        })
    }

    /// Stores a user's evaluation key after checking that it parses with this node's
    /// parameters. Expired keys of the user are removed first; the number of live keys per
    /// user is limited.
    pub async fn add_evaluation_key(
        &self,
        p: &Principal,
        bytes: bytes::Bytes,
    ) -> Result<EvaluationKeyRecord> {
        p.require(Permission::FheInfer)?;
        let limit = self.settings.fhe_key_limit_bytes;
        if bytes.len() as u64 > limit {
            return Err(CoreError::PayloadTooLarge { limit });
        }
        let now = self.now();
        let mut live = 0;
        for k in self.store.list_evaluation_keys(p.user.id).await? {
            if k.expires_at <= now {
                self.drop_evaluation_key(p, &k.id, "expired").await?;
            } else {
                live += 1;
            }
        }
        if live >= self.settings.fhe_max_keys_per_user {
            return Err(CoreError::Conflict(crate::error::Conflict::TooManyFheKeys(
                live,
            )));
        }
        // Decompressing proves the key is whole and made with our parameters (seconds of CPU).
        let check = bytes.clone();
        let evaluator = self
            .on_model_pool(move || {
                Evaluator::new(
                    &EvaluationKey {
                        bytes: check.to_vec(),
                    },
                    limit,
                )
            })
            .await?
            .map_err(fhe_error)?;
        let sha256 = veil_crypto::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let id = self
            .datasets
            .store_evaluation_key(bytes)
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let ttl = crate::micros(self.settings.fhe_key_ttl);
        // The lifetime starts when the key is usable, after the checks above.
        let now = self.now();
        let rec = self
            .store
            .add_evaluation_key(
                &NewEvaluationKey {
                    id: id.clone(),
                    user_id: p.user.id,
                    sha256: sha256.clone(),
                    size_bytes: size,
                    expires_at: now.saturating_add(ttl),
                    max_live_per_user: u32::try_from(self.settings.fhe_max_keys_per_user)
                        .unwrap_or(u32::MAX),
                },
                NewAuditEntry::new(p.email(), "fhe.key.add", format!("fhe-key:{id}"))
                    .details(json!({"sha256": sha256, "bytes": size})),
            )
            .await;
        match rec {
            Ok(rec) => {
                self.evaluators.put(&id, Arc::new(evaluator));
                Ok(rec)
            }
            Err(e) => {
                let _ = self.datasets.remove_evaluation_key(&id);
                Err(match e {
                    // Another upload of the user's took the last place meanwhile.
                    veil_store::StoreError::LimitReached(_) => CoreError::Conflict(
                        crate::error::Conflict::TooManyFheKeys(self.settings.fhe_max_keys_per_user),
                    ),
                    other => other.into(),
                })
            }
        }
    }

    pub async fn list_evaluation_keys(&self, p: &Principal) -> Result<Vec<EvaluationKeyRecord>> {
        p.require(Permission::FheInfer)?;
        Ok(self.store.list_evaluation_keys(p.user.id).await?)
    }

    pub async fn delete_evaluation_key(&self, p: &Principal, id: &str) -> Result<()> {
        p.require(Permission::FheInfer)?;
        self.drop_evaluation_key(p, id, "deleted").await
    }

    async fn drop_evaluation_key(&self, p: &Principal, id: &str, why: &str) -> Result<()> {
        self.store
            .delete_evaluation_key(
                p.user.id,
                id,
                NewAuditEntry::new(p.email(), "fhe.key.delete", format!("fhe-key:{id}"))
                    .details(json!({"reason": why})),
            )
            .await?;
        self.evaluators.forget(id);
        if let Err(e) = self.datasets.remove_evaluation_key(id) {
            tracing::warn!(error = %e, "could not remove an evaluation key file");
        }
        Ok(())
    }

    /// Evaluates a model on encrypted samples with the caller's evaluation key.
    pub async fn fhe_infer(&self, p: &Principal, req: FheInferRequest) -> Result<FheRun> {
        let FheInferRequest {
            model: name,
            version,
            key_id,
            key_sha256,
            samples,
        } = req;
        let (name, key_id, key_sha256) = (name.as_str(), key_id.as_str(), key_sha256.as_str());
        p.require(Permission::FheInfer)?;
        if samples.is_empty() || samples.len() > self.settings.fhe_max_batch {
            return Err(CoreError::InvalidFheRequest(format!(
                "send between 1 and {} samples per request",
                self.settings.fhe_max_batch
            )));
        }
        let key = self
            .store
            .get_evaluation_key(key_id)
            .await?
            .filter(|k| k.user_id == p.user.id)
            .ok_or(CoreError::NotFound(crate::error::NotFound::EvaluationKey))?;
        if key.expires_at <= self.now() {
            return Err(CoreError::FheKeyExpired(key.id));
        }
        if !veil_crypto::ct_eq(key.sha256.as_bytes(), key_sha256.as_bytes()) {
            return Err(CoreError::FheKeyMismatch(key.id));
        }
        let (m, fhe, s) = self.published(name, version).await?;
        // Counted per user whether or not the run succeeds: it bounds queries, not work.
        let n_samples = u32::try_from(samples.len()).unwrap_or(u32::MAX);
        if let Err(retry_after_secs) =
            self.fhe_limiter
                .try_take(&format!("user:{}", p.user.id), n_samples, self.now())
        {
            self.store
                .append_audit(
                    NewAuditEntry::new(p.email(), "fhe.infer", format!("model:{name}"))
                        .outcome(veil_store::AuditOutcome::Refused)
                        .details(json!({"samples": samples.len(), "reason": "rate limited"})),
                )
                .await?;
            return Err(CoreError::RateLimited { retry_after_secs });
        }
        // A feature may be encrypted as several inputs (trees with many thresholds).
        let n_in = s.spec.input_bits.len();
        // Every ciphertext is parsed (and its shape checked) before any work is done.
        let batch: Vec<EncryptedInputs> = samples
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let s = EncryptedInputs::from_bytes(b).map_err(|e| {
                    CoreError::MalformedCiphertext(format!("sample {}: {e}", i + 1))
                })?;
                if s.len() != n_in {
                    return Err(CoreError::InvalidFheRequest(format!(
                        "sample {} has {} encrypted inputs; the model takes {n_in}",
                        i + 1,
                        s.len()
                    )));
                }
                Ok(s)
            })
            .collect::<Result<_>>()?;
        drop(samples);

        let circuit_json = self.load_circuit(&fhe).await?;
        let evaluator = match self.evaluators.get(&key.id) {
            Some(ev) => ev,
            None => {
                let bytes = self
                    .datasets
                    .load_evaluation_key(&key.id)
                    .await
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                let limit = self.settings.fhe_key_limit_bytes;
                let ev = self
                    .on_model_pool(move || Evaluator::new(&EvaluationKey { bytes }, limit))
                    .await?
                    .map_err(fhe_error)?;
                let ev = Arc::new(ev);
                self.evaluators.put(&key.id, ev.clone());
                ev
            }
        };

        let n = batch.len();
        let limit = self.settings.fhe_time_limit;
        let pool = self.fhe_pool.clone();
        let model_label = format!("{}@{}", m.name, m.version);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        let label = model_label.clone();
        pool.spawn(move || {
            let r = (|| -> Result<(Vec<Vec<u8>>, usize)> {
                let compiled: CompiledModel = serde_json::from_slice(&circuit_json)
                    .map_err(|e| CoreError::Internal(format!("stored circuit: {e}")))?;
                let circuit = compiled.circuit;
                let pbs = circuit.pbs_count() * n;
                let prepared = Prepared::new(circuit).map_err(fhe_error)?;
                let last = std::sync::atomic::AtomicUsize::new(0);
                let progress = |done: usize, total: usize| {
                    // Log about every tenth of the work.
                    let step = (total / 10).max(1);
                    if done / step > last.load(std::sync::atomic::Ordering::Relaxed) {
                        last.store(done / step, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(model = %label, done, total, "encrypted inference progress");
                    }
                };
                let ctl = RunControl {
                    deadline: Some(started + limit),
                    progress: &progress,
                };
                let out = evaluator.run(&prepared, batch, &ctl).map_err(|e| match e {
                    FheError::TimedOut => CoreError::FheTimedOut(limit.as_secs()),
                    other => fhe_error(other),
                })?;
                let bytes = out
                    .iter()
                    .map(|o| o.to_bytes().map_err(fhe_error))
                    .collect::<Result<_>>()?;
                Ok((bytes, pbs))
            })();
            let _ = tx.send(r);
        });
        let run = rx
            .await
            .map_err(|_| CoreError::Internal("the FHE job was interrupted".into()))?;
        let elapsed = started.elapsed();
        let mut entry = NewAuditEntry::new(p.email(), "fhe.infer", format!("model:{model_label}"))
            .details(json!({
                "samples": n,
                "key": key.id,
                "timed_out": matches!(run, Err(CoreError::FheTimedOut(_))),
                "ms": elapsed.as_millis() as u64,
            }));
        if run.is_err() {
            entry = entry.outcome(veil_store::AuditOutcome::Failed);
        }
        self.store.append_audit(entry).await?;
        let (outputs, pbs) = run?;
        Ok(FheRun {
            outputs,
            model: m.name,
            version: m.version,
            pbs,
            elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_files_are_checked() {
        let good = "a,b\n1,2\n3,4\n5,6\n7,8\n9,10\n1,1\n2,2\n3,3\n4,4\n5,5\n";
        assert_eq!(calibration_rows(good.as_bytes(), 2).expect("ok").len(), 10);
        let err = calibration_rows(good.as_bytes(), 3).expect_err("width");
        assert!(err.to_string().contains("3 features"), "{err}");
        let bad = good.replace("3,4", "3,x");
        let err = calibration_rows(bad.as_bytes(), 2).expect_err("cell");
        assert!(err.to_string().contains("row 3"), "{err}");
        let err = calibration_rows(b"a,b\n1,2\n", 2).expect_err("few");
        assert!(err.to_string().contains("at least 10"), "{err}");
        let nan = good.replace("5,6", "NaN,6");
        assert!(calibration_rows(nan.as_bytes(), 2).is_err());
    }
}

/// Evaluation key uploads the node takes at once (each is held whole in memory while checked).
pub(crate) const KEY_UPLOADS_AT_ONCE: usize = 2;

/// The right to send one evaluation key; held while it is read and checked.
#[derive(Debug)]
pub struct KeyUpload {
    _own: crate::slots::Slot,
    _node: tokio::sync::OwnedSemaphorePermit,
}
