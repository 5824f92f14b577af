//! Requests that may need review, and model validation runs.
//!
//! A validation is always a request. On a dataset whose policy is `auto` it is approved at
//! once and runs while the caller waits; under `review` it waits for a compliance officer.
//! Running means: check and load everything that can fail on public inputs (the model plans
//! and is fast enough on synthetic rows, the dataset's file is here), charge the requester's
//! budget (nothing runs if it cannot pay), run the model over the private rows on the model
//! worker pool, each row alone, and release the metrics through the DP engine. After the
//! charge nothing cuts the run short: no time limit (the node's limit applies per row,
//! before the charge), no failing row, no closed connection; its outcome is the release or
//! the one fixed failure of [`crate::charged`]. Its duration, and how long it holds its
//! worker threads, is padded to an end computed from the release alone (see
//! [`PreparedValidation::run`]), so neither shows what the rows hold nor exactly how many
//! there are. The request records every step; requesters see only their own requests.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use veil_dp::validation::{
    CostedValidation, ExactValidation, ReleasedValidation, Task, cost_validation, parse_metrics,
    release_validation,
};
use veil_dp::{ColumnType, Manifest};
use veil_ml::{ClassMap, Model, ModelKind, ModelSummary, Output};
use veil_store::{NewAuditEntry, NewRequest, RequestRecord, RequestStatus, RequestTransition};
use veil_types::{DatasetName, Delta, Epsilon, Permission};

use crate::budgets::Spend;
use crate::charged::{CHARGED_FAILURE, Charged, after_charge};
use crate::error::{Conflict, NotFound};
use crate::model_pool::{ModelPool, Spawner};
use crate::{Core, CoreError, Principal, Result};

/// The kind of request a validation is.
const VALIDATION: &str = "validation";

/// Most model-pool workers one validation run reserves (each has one batch in flight, which
/// also bounds memory).
const MAX_VALIDATION_WORKERS: usize = 4;

/// What a data scientist asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRequest {
    pub model: String,
    pub version: Option<u32>,
    pub dataset: String,
    pub features: Vec<String>,
    pub label: String,
    pub metrics: Vec<String>,
    pub epsilon: f64,
    #[serde(default)]
    pub confidence: Option<f64>,
}

/// The parameters stored with a validation request (the model version is pinned, and so is its
/// file: a version number can come back after a delete, with other bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Params {
    model: String,
    version: u32,
    /// SHA-256 of the model file the request names (what a reviewer approves). Requests
    /// filed before files were pinned have none and must be filed again.
    #[serde(default)]
    model_sha256: Option<String>,
    dataset: String,
    features: Vec<String>,
    label: String,
    metrics: Vec<String>,
    epsilon: f64,
    confidence: f64,
}

fn invalid(msg: impl Into<String>) -> CoreError {
    CoreError::InvalidValidation(msg.into())
}

/// Checks a request against the model and the dataset and returns the DP task.
fn task_for(
    manifest: &Manifest,
    summary: &ModelSummary,
    features: &[String],
    label: &str,
) -> Result<Task> {
    if features.len() != summary.n_features {
        return Err(invalid(format!(
            "the model takes {} features; {} were given",
            summary.n_features,
            features.len()
        )));
    }
    for (i, f) in features.iter().enumerate() {
        if features[..i].contains(f) {
            return Err(invalid(format!("feature {f} is listed twice")));
        }
        let c = manifest
            .column(f)
            .ok_or_else(|| invalid(format!("the dataset has no column {f:?}")))?;
        if !matches!(
            c.ty,
            ColumnType::Int { .. }
                | ColumnType::Float { .. }
                | ColumnType::Bool
                | ColumnType::Date { .. }
        ) {
            return Err(invalid(format!(
                "feature {f} is a {} column; features must be numeric",
                c.ty.name()
            )));
        }
        if c.nullable {
            return Err(invalid(format!(
                "feature {f} is nullable; the model cannot take missing values"
            )));
        }
    }
    let l = manifest
        .column(label)
        .ok_or_else(|| invalid(format!("the dataset has no column {label:?}")))?;
    if l.nullable {
        return Err(invalid(format!("the label {label} is nullable")));
    }
    match (&summary.kind, &l.ty) {
        (ModelKind::Regressor { .. }, ColumnType::Int { lo, hi }) => Ok(Task::Regression {
            lo: *lo as f64,
            hi: *hi as f64,
        }),
        (ModelKind::Regressor { .. }, ColumnType::Float { lo, hi }) => {
            Ok(Task::Regression { lo: *lo, hi: *hi })
        }
        (ModelKind::Regressor { .. }, other) => Err(invalid(format!(
            "the model is a regressor but the label {label} is a {} column",
            other.name()
        ))),
        (_, ColumnType::Category { categories }) => Ok(Task::Classification {
            classes: categories.clone(),
        }),
        (_, ColumnType::Bool) => Ok(Task::Classification {
            classes: vec!["false".into(), "true".into()],
        }),
        (_, ColumnType::Int { lo, hi }) if hi - lo < 100 => Ok(Task::Classification {
            classes: (*lo..=*hi).map(|v| v.to_string()).collect(),
        }),
        (_, other) => Err(invalid(format!(
            "the model is a classifier; the label {label} must be a category, a bool or a small int range, not a {}",
            other.name()
        ))),
    }
}

impl Core {
    /// Files a validation request; runs it now if the dataset's policy is `auto`.
    pub async fn validate(
        self: &Arc<Self>,
        p: &Principal,
        req: &ValidationRequest,
    ) -> Result<RequestRecord> {
        p.require(Permission::ModelsValidate)?;
        let model = self.visible_model(p, &req.model, req.version).await?;
        let dataset = self
            .store
            .get_dataset(&req.dataset)
            .await?
            .ok_or(CoreError::NotFound(NotFound::Dataset))?;
        let manifest =
            Manifest::parse(&dataset.manifest).map_err(|e| CoreError::Internal(e.to_string()))?;
        let summary: ModelSummary =
            serde_json::from_str(&model.summary).map_err(|e| CoreError::Internal(e.to_string()))?;
        let task = task_for(&manifest, &summary, &req.features, &req.label)?;
        let metrics = parse_metrics(&req.metrics, &task).map_err(|r| invalid(r.0))?;
        let confidence = req.confidence.unwrap_or(0.95);
        veil_dp::plan::check_epsilon_and_confidence(req.epsilon, confidence)
            .map_err(|e| CoreError::InvalidParameters(e.0))?;
        // Cost it now, so an impossible request is refused before it is filed.
        let costed = cost_validation(task, metrics, req.epsilon, confidence, &manifest.unit)
            .map_err(|r| invalid(r.0))?;
        let params = Params {
            model: model.name.clone(),
            version: model.version,
            model_sha256: Some(model.sha256.clone()),
            dataset: dataset.name.clone(),
            features: req.features.clone(),
            label: req.label.clone(),
            metrics: req.metrics.clone(),
            epsilon: req.epsilon,
            confidence,
        };
        let review = dataset.policy == "review";
        let record = self
            .store
            .create_request(
                &NewRequest {
                    kind: VALIDATION.into(),
                    requester_id: p.user.id,
                    requester: p.email().to_string(),
                    target: format!("model:{}@{}", model.name, model.version),
                    dataset: Some(dataset.name.clone()),
                    parameters: serde_json::to_string(&params)
                        .map_err(|e| CoreError::Internal(e.to_string()))?,
                    epsilon: Epsilon::cost_from_f64(costed.epsilon)
                        .map_err(|e| CoreError::InvalidParameters(e.to_string()))?,
                    delta: Delta::ZERO,
                    status: if review {
                        RequestStatus::Pending
                    } else {
                        RequestStatus::Approved
                    },
                },
                NewAuditEntry::new(
                    p.email(),
                    "request.create",
                    format!("dataset:{}", dataset.name),
                )
                .details(json!({
                    "kind": "validation",
                    "model": format!("{}@{}", model.name, model.version),
                    "epsilon": costed.epsilon,
                    "policy": dataset.policy,
                })),
            )
            .await?;
        if review {
            return Ok(record);
        }
        self.run_request(p.email(), record).await
    }

    /// Approves a pending request and runs it (charging the requester's budget).
    pub async fn approve_request(
        self: &Arc<Self>,
        p: &Principal,
        id: i64,
    ) -> Result<RequestRecord> {
        p.require(Permission::RequestsReview)?;
        // Review means a second person: nobody approves their own request.
        if self.get_request(p, id).await?.requester_id == p.user.id {
            return Err(CoreError::Conflict(Conflict::SelfAction(
                "you cannot approve your own request",
            )));
        }
        let record = self
            .transition(p, id, RequestStatus::Approved, None)
            .await?;
        self.run_request(p.email(), record).await
    }

    pub async fn deny_request(
        &self,
        p: &Principal,
        id: i64,
        reason: &str,
    ) -> Result<RequestRecord> {
        p.require(Permission::RequestsReview)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 1_000 {
            return Err(CoreError::InvalidInput(
                "give a reason of 1 to 1000 characters".into(),
            ));
        }
        // Only what the reviewer may see (a query's record is its requester's alone): anything
        // else is "no such request", not its status.
        self.get_request(p, id).await?;
        self.transition(p, id, RequestStatus::Denied, Some(reason.to_string()))
            .await
    }

    async fn transition(
        &self,
        p: &Principal,
        id: i64,
        to: RequestStatus,
        reason: Option<String>,
    ) -> Result<RequestRecord> {
        let action = if to == RequestStatus::Approved {
            "request.approve"
        } else {
            "request.deny"
        };
        match self
            .store
            .transition_request(
                id,
                &RequestTransition {
                    from: vec![RequestStatus::Pending],
                    to,
                    reason: reason.clone(),
                    result: None,
                    reviewer: Some(p.email().to_string()),
                },
                NewAuditEntry::new(p.email(), action, format!("request:{id}"))
                    .details(json!({"reason": reason})),
            )
            .await
        {
            Ok(r) => Ok(r),
            Err(veil_store::StoreError::StateChanged) => {
                let current = self
                    .store
                    .get_request(id)
                    .await?
                    .ok_or(CoreError::NotFound(NotFound::Request))?;
                Err(CoreError::Conflict(Conflict::RequestNotPending(
                    current.status.as_str().into(),
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the requests a previous run of the node left `approved` or `running` (it stopped
    /// mid-run), so none waits forever: as the one charged failure if its cost had been
    /// charged (a query always had; a validation if the ledger holds its charge), otherwise
    /// as failed with nothing charged. When it happens is the node's restart, which does not
    /// depend on any rows. Assumes this node is the only one serving its store (true today).
    pub(crate) async fn end_interrupted_requests(&self) -> Result<usize> {
        let mut ended = 0;
        for status in [RequestStatus::Approved, RequestStatus::Running] {
            for r in self
                .store
                .list_requests(None, Some(status), None, 100_000)
                .await?
            {
                let reference = format!("request:{}", r.id);
                let charged = r.kind != VALIDATION
                    || self
                        .store
                        .list_ledger(r.requester_id, 100_000)
                        .await?
                        .iter()
                        .any(|e| e.reference == reference);
                let reason = if charged {
                    CHARGED_FAILURE
                } else {
                    "the node restarted before this request ran; nothing was charged"
                };
                let ended_one = self
                    .store
                    .transition_request(
                        r.id,
                        &RequestTransition {
                            from: vec![status],
                            to: RequestStatus::Failed,
                            reason: Some(reason.into()),
                            result: None,
                            reviewer: None,
                        },
                        NewAuditEntry::new(crate::auth::SYSTEM, "request.failed", reference)
                            .details(json!({"reason": reason, "interrupted": true})),
                    )
                    .await;
                match ended_one {
                    Ok(_) => ended += 1,
                    Err(e) => {
                        tracing::error!(request = r.id, error = %e, "could not end an interrupted request");
                    }
                }
            }
        }
        if ended > 0 {
            tracing::warn!(ended, "ended requests interrupted by the node's last stop");
        }
        Ok(ended)
    }

    /// The caller's requests of `kind` (any if `None`). Reviewers see everyone's
    /// validations (what they review), unless they ask for their own queries; a DP query's
    /// record (its released answer) is its requester's alone.
    pub async fn list_requests(
        &self,
        p: &Principal,
        status: Option<RequestStatus>,
        kind: Option<&str>,
    ) -> Result<Vec<RequestRecord>> {
        p.ensure_active()?;
        let (who, kind) = match (p.has(Permission::RequestsReview), kind) {
            (true, None | Some(VALIDATION)) => (None, Some(VALIDATION)),
            (_, kind) => (Some(p.user.id), kind),
        };
        Ok(self.store.list_requests(who, status, kind, 500).await?)
    }

    /// One request: its requester's, or a validation for reviewers (others get "no such
    /// request").
    pub async fn get_request(&self, p: &Principal, id: i64) -> Result<RequestRecord> {
        p.ensure_active()?;
        let r = self
            .store
            .get_request(id)
            .await?
            .ok_or(CoreError::NotFound(NotFound::Request))?;
        let reviewable = r.kind == VALIDATION && p.has(Permission::RequestsReview);
        if r.requester_id != p.user.id && !reviewable {
            return Err(CoreError::NotFound(NotFound::Request));
        }
        Ok(r)
    }

    async fn finish(
        &self,
        actor: &str,
        id: i64,
        to: RequestStatus,
        reason: Option<String>,
        result: Option<String>,
    ) -> Result<RequestRecord> {
        let action = if to == RequestStatus::Done {
            "request.done"
        } else {
            "request.failed"
        };
        Ok(self
            .store
            .transition_request(
                id,
                &RequestTransition {
                    from: vec![RequestStatus::Running],
                    to,
                    reason: reason.clone(),
                    result,
                    reviewer: None,
                },
                NewAuditEntry::new(actor, action, format!("request:{id}"))
                    .details(json!({"reason": reason})),
            )
            .await?)
    }

    /// Runs an approved validation request to `done` or `failed` on its own task: a caller
    /// that stops waiting (a closed connection) does not stop it, and its outcome stays
    /// readable under the request's id.
    async fn run_request(
        self: &Arc<Self>,
        actor: &str,
        record: RequestRecord,
    ) -> Result<RequestRecord> {
        let core = Arc::clone(self);
        let actor = actor.to_string();
        tokio::spawn(async move { core.run_request_to_end(&actor, record).await })
            .await
            .map_err(|e| CoreError::Internal(format!("the validation task failed: {e}")))?
    }

    async fn run_request_to_end(
        &self,
        actor: &str,
        record: RequestRecord,
    ) -> Result<RequestRecord> {
        let id = record.id;
        let record = self
            .store
            .transition_request(
                id,
                &RequestTransition {
                    from: vec![RequestStatus::Approved],
                    to: RequestStatus::Running,
                    reason: None,
                    result: None,
                    reviewer: None,
                },
                NewAuditEntry::new(actor, "request.run", format!("request:{id}")),
            )
            .await?;
        // From here on every outcome ends in `finish`: a request never stays `running`.
        // Before the charge: everything that can fail on public inputs, with its reason shown
        // (it depends on the request and on the node, not on the rows).
        let prepared = match self.prepare_validation(&record).await {
            Ok(p) => p,
            Err(e) => {
                let reason = uncharged_reason(id, e);
                return self
                    .finish(actor, id, RequestStatus::Failed, Some(reason), None)
                    .await;
            }
        };
        if let Err(e) = self
            .spend_for(actor, record.requester_id, &prepared.spend)
            .await
        {
            let reason = uncharged_reason(id, e);
            return self
                .finish(actor, id, RequestStatus::Failed, Some(reason), None)
                .await;
        }
        // After the charge: the release or the one fixed failure (see `charged`).
        let started = Instant::now();
        let outcome = after_charge(
            "validation",
            format!("request:{id}"),
            prepared.run(self.datasets.clone(), self.model_pool.clone()),
        )
        .await;
        // Run time is for the node's operators only, and coarse: the requester never sees it.
        tracing::info!(
            request = id,
            seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "validation run finished"
        );
        match outcome {
            Charged::Released(released) => {
                let result = validation_result(&released);
                self.finish(actor, id, RequestStatus::Done, None, Some(result))
                    .await
            }
            Charged::Failed => {
                self.finish(
                    actor,
                    id,
                    RequestStatus::Failed,
                    Some(CHARGED_FAILURE.into()),
                    None,
                )
                .await
            }
        }
    }

    /// Everything a validation run needs, checked and loaded before anything is charged:
    /// the request still fits the model and the dataset, the model plans, the dataset's
    /// file is on this node, and the model is fast enough on synthetic rows.
    async fn prepare_validation(&self, record: &RequestRecord) -> Result<PreparedValidation> {
        let params: Params = serde_json::from_str(&record.parameters)
            .map_err(|e| CoreError::Internal(format!("stored request parameters: {e}")))?;
        let model = self
            .store
            .get_model(&params.model, Some(params.version))
            .await?
            .ok_or_else(|| invalid("the model version was deleted"))?;
        let replaced =
            || invalid("the model version was replaced since the request was filed; file it again");
        let pinned = params.model_sha256.as_deref().ok_or_else(replaced)?;
        let dataset = self
            .store
            .get_dataset(&params.dataset)
            .await?
            .ok_or_else(|| invalid("the dataset was deleted"))?;
        let manifest =
            Manifest::parse(&dataset.manifest).map_err(|e| CoreError::Internal(e.to_string()))?;
        let summary: ModelSummary =
            serde_json::from_str(&model.summary).map_err(|e| CoreError::Internal(e.to_string()))?;
        let task = task_for(&manifest, &summary, &params.features, &params.label)?;
        let metrics = parse_metrics(&params.metrics, &task).map_err(|r| invalid(r.0))?;
        let costed = cost_validation(
            task,
            metrics,
            params.epsilon,
            params.confidence,
            &manifest.unit,
        )
        .map_err(|r| invalid(r.0))?;
        let dataset_name =
            DatasetName::parse(&dataset.name).map_err(|e| CoreError::Internal(e.to_string()))?;
        let dataset_key = veil_crypto::WrappedKey::from_bytes(dataset.wrapped_key.clone());
        self.datasets
            .check_readable(&dataset.file_id, &dataset_key)
            .map_err(|e| {
                tracing::error!(dataset = %dataset.name, error = %e, "dataset file not readable");
                CoreError::DatasetUnavailable
            })?;

        let bytes = self
            .datasets
            .load_model(
                &model.file_id,
                &veil_crypto::WrappedKey::from_bytes(model.wrapped_key.clone()),
            )
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        // The bytes that will run are the bytes the request names (and a reviewer approved).
        if !veil_crypto::ct_eq(
            pinned.as_bytes(),
            veil_crypto::sha256_hex(&bytes).as_bytes(),
        ) {
            return Err(replaced());
        }
        let probe = probe_rows(&manifest, &params.features, PROBE_ROWS);
        let loaded_summary = summary.clone();
        let (model_run, probed) = self
            .on_model_pool(move || {
                let model = Model::load(&bytes, &loaded_summary)?;
                let mut times: Vec<std::time::Duration> = probe
                    .chunks(model.n_features().max(1))
                    .map(|row| {
                        // Failing on a synthetic row is fine; only the time matters here.
                        let started = Instant::now();
                        let _ = model.predict_row(row);
                        started.elapsed()
                    })
                    .collect();
                // The median: one row slowed by the machine (not by the model) must not count.
                times.sort_unstable();
                let typical = times.get(times.len() / 2).copied().unwrap_or_default();
                Ok::<_, veil_ml::ModelError>((model, typical))
            })
            .await?
            .map_err(|e| CoreError::InvalidModel(e.to_string()))?;
        let row_time = row_time(model_run.cost(), probed);
        let limit = self.settings.validation_row_time_limit;
        if row_time > limit {
            return Err(invalid(format!(
                "the model may take {:.1} ms per row (from its size and on synthetic rows); this node allows {:.1} ms",
                row_time.as_secs_f64() * 1e3,
                limit.as_secs_f64() * 1e3
            )));
        }
        let workers = MAX_VALIDATION_WORKERS.min(self.model_pool.size());
        let padding = Padding {
            row_time,
            workers,
            features: params.features.len(),
        };
        let margin = padding.for_rows(costed.rows_margin());
        if margin > MAX_PADDING_MARGIN {
            return Err(invalid(format!(
                "at ε = {} this run would be padded by up to {:.0} s beyond its rows (the margin on its noisy row count, which ends it); this node allows {} s: ask for a larger ε or use a faster model",
                params.epsilon,
                margin.as_secs_f64(),
                MAX_PADDING_MARGIN.as_secs()
            )));
        }
        let classes = match &costed.task {
            Task::Classification { classes } => Some(ClassMap::new(
                classes,
                match &summary.kind {
                    ModelKind::Classifier { classes, .. } => classes.as_ref(),
                    _ => None,
                },
            )),
            Task::Regression { .. } => None,
        };
        Ok(PreparedValidation {
            spend: Spend {
                dataset: Some(dataset_name),
                epsilon: Epsilon::cost_from_f64(costed.epsilon)
                    .map_err(|e| CoreError::Internal(e.to_string()))?,
                delta: Delta::ZERO,
                purpose: "validation".into(),
                reference: format!("request:{}", record.id),
                details: json!({"requester": record.requester, "model": record.target}),
                opens: None,
            },
            model: Arc::new(model_run),
            padding,
            dataset_rows: dataset.rows,
            classes: classes.map(Arc::new),
            costed,
            file_id: dataset.file_id,
            dataset_key,
            manifest,
            features: params.features,
            label: params.label,
        })
    }
}

/// Synthetic rows timed before the charge.
const PROBE_ROWS: usize = 32;

/// Operations per second a model is assumed to run at, at the least, when its static work
/// bound is turned into time (well below what one core does, so that no row of an admitted
/// model takes longer than its allowance).
const SLOWEST_OPS_PER_SECOND: f64 = 50_000_000.0;
/// What running one row costs beyond its operations (the run's own bookkeeping).
const ROW_OVERHEAD: std::time::Duration = std::time::Duration::from_micros(20);
/// What reading one row costs the scan (decryption, decoding, the per-unit bounding sort),
/// which runs beside the workers; generous, as the scan's speed can depend on the values.
const SCAN_ROW_TIME: std::time::Duration = std::time::Duration::from_micros(10);
/// What the scan costs per feature value of a row (decoding, casting, copying), on top.
const SCAN_VALUE_TIME: std::time::Duration = std::time::Duration::from_nanos(50);
/// What a run costs whatever its rows: opening the file, planning the scan, the release.
const FIXED_RUN_TIME: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest padding a run may get beyond its rows (from the margin on its noisy row count).
const MAX_PADDING_MARGIN: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a validation run is allowed for a number of rows, fixed before the charge.
#[derive(Debug, Clone, Copy)]
struct Padding {
    /// Each row's model time (see [`row_time`]).
    row_time: std::time::Duration,
    /// Workers reserved for the run.
    workers: usize,
    /// Feature values read per row.
    features: usize,
}

impl Padding {
    /// Time for `rows` rows: their model time spread over the workers, plus the scan's.
    fn for_rows(self, rows: f64) -> std::time::Duration {
        let scan =
            SCAN_ROW_TIME.as_secs_f64() + SCAN_VALUE_TIME.as_secs_f64() * self.features as f64;
        let per_row = self.row_time.as_secs_f64() / self.workers.max(1) as f64 + scan;
        // Saturates (about 584 years) instead of panicking on absurd inputs.
        std::time::Duration::try_from_secs_f64(rows.max(0.0) * per_row)
            .unwrap_or(std::time::Duration::MAX)
    }

    /// How long after its start a run of at most `rows_at_most` rows ends: the fixed cost,
    /// the rows, and a last chunk scored by one worker while the others have nothing left.
    fn run_time(self, rows_at_most: f64) -> std::time::Duration {
        let last_chunk = self
            .row_time
            .saturating_mul(u32::try_from(CHUNK_ROWS).unwrap_or(u32::MAX));
        FIXED_RUN_TIME
            .saturating_add(self.for_rows(rows_at_most))
            .saturating_add(last_chunk)
    }
}

/// The time one row is allowed, fixed before the charge from public quantities only: the
/// larger of the model's static work bound at [`SLOWEST_OPS_PER_SECOND`] and four times its
/// typical (median) synthetic row. The static bound covers every operator of the graph, so a model
/// that is fast on synthetic rows because it fails early there (and slow on the row it
/// targets) still gets the time of its whole graph.
fn row_time(cost: veil_ml::ModelCost, typical_probe: std::time::Duration) -> std::time::Duration {
    let from_size =
        std::time::Duration::from_secs_f64(cost.work_per_row as f64 / SLOWEST_OPS_PER_SECOND)
            + ROW_OVERHEAD;
    from_size.max(typical_probe * 4)
}

/// `n` rows of features drawn from the manifest's declared domains (public), row-major, in
/// the model's input encoding (dates as day numbers, booleans as 0/1).
fn probe_rows(manifest: &Manifest, features: &[String], n: usize) -> Vec<f32> {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut out = Vec::with_capacity(n * features.len());
    for _ in 0..n {
        for f in features {
            let v = match manifest.column(f).map(|c| &c.ty) {
                Some(ColumnType::Int { lo, hi }) => rng.random_range(*lo..=*hi) as f32,
                Some(ColumnType::Float { lo, hi }) => rng.random_range(*lo..=*hi) as f32,
                Some(ColumnType::Date { lo, hi }) => rng.random_range(*lo..=*hi) as f32,
                Some(ColumnType::Bool) => f32::from(u8::from(rng.random_bool(0.5))),
                _ => 0.0,
            };
            out.push(v);
        }
    }
    out
}

/// The reason shown for a validation that failed before anything was charged. Those depend
/// only on the request and the node; internal details still go to the log only.
fn uncharged_reason(id: i64, e: CoreError) -> String {
    match e {
        CoreError::Internal(detail) => {
            tracing::error!(request = id, error = %detail, "validation could not start");
            "the node could not start this validation; nothing was charged".into()
        }
        other => other.to_string(),
    }
}

/// A released validation as stored in the request's result. No timing: how long a run took
/// depends on the rows, so it is logged for the operators and never shown to the requester.
fn validation_result(released: &ReleasedValidation) -> String {
    json!({
        "metrics": released.metrics(),
        "confusion": released.confusion(),
        "epsilon": released.epsilon(),
        "mechanism": released.mechanism(),
        "noise_scales": released.noise_scales(),
        "confidence": released.confidence(),
    })
    .to_string()
}

/// A validation ready to run: charged, with everything loaded that can be loaded before.
#[derive(Debug)]
struct PreparedValidation {
    spend: Spend,
    model: Arc<Model>,
    padding: Padding,
    /// The dataset's size, used only to draw a noisy bound when a run ends without a release.
    dataset_rows: u64,
    classes: Option<Arc<ClassMap>>,
    costed: CostedValidation,
    file_id: String,
    dataset_key: veil_crypto::WrappedKey,
    manifest: Manifest,
    features: Vec<String>,
    label: String,
}

impl PreparedValidation {
    /// Runs the validation, after the charge, and ends it at a time computed from its
    /// release alone.
    ///
    /// A model can be slow on one row's values (a path it only takes there), and a scan's
    /// length shows how many rows there are; neither may show, in the run's end or in how
    /// long its threads stay busy. So the run reserves its workers (held until its end,
    /// busy or not), scores and releases, and ends at `start + padding.run_time(bound)`,
    /// where `bound` is the release's noisy row total plus a margin that covers the true
    /// count except with probability [`veil_dp::validation::ROWS_BOUND_MISS`]:
    /// post-processing of the release. A run that fails (a bug) ends at a bound drawn the
    /// same way from the dataset's size. A run that takes longer than its end (rows beyond
    /// their static cost bound, or a machine far busier than the bound assumes) ends late,
    /// and the operators' log says so.
    async fn run(
        self,
        datasets: Arc<veil_datasets::Storage>,
        pool: Arc<ModelPool>,
    ) -> std::result::Result<ReleasedValidation, String> {
        // Waiting for workers depends on other requests, not on these rows.
        let reservation = pool
            .reserve(self.padding.workers)
            .await
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let (padding, dataset_rows, costed) =
            (self.padding, self.dataset_rows, self.costed.clone());
        // On its own task so that even a panic ends at the padded time.
        let outcome = tokio::spawn(self.score_and_release(datasets, reservation.spawner())).await;
        let rows_at_most = match &outcome {
            Ok(Ok(released)) => released.rows_at_most(),
            _ => costed.noisy_rows_at_most(dataset_rows).unwrap_or_else(|e| {
                tracing::error!(error = %e, "no noisy row bound for a failed validation");
                costed.rows_margin()
            }),
        };
        let allowed = padding.run_time(rows_at_most);
        let end = started
            .checked_add(allowed)
            .unwrap_or_else(|| started + std::time::Duration::from_secs(365 * 24 * 3600));
        let elapsed = started.elapsed();
        if elapsed > allowed {
            tracing::warn!(
                allowed_ms = allowed.as_millis() as u64,
                elapsed_ms = elapsed.as_millis() as u64,
                "a validation ran past its padded end; its end showed its real duration"
            );
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
        drop(reservation);
        outcome.map_err(|e| format!("the validation task ended abnormally: {e}"))?
    }

    /// Scores every row (each alone, on the reserved workers) and releases the metrics.
    async fn score_and_release(
        self,
        datasets: Arc<veil_datasets::Storage>,
        workers: Spawner,
    ) -> std::result::Result<ReleasedValidation, String> {
        let mut scan = datasets
            .scan(
                &self.file_id,
                &self.dataset_key,
                &self.manifest,
                &self.features,
                &self.label,
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut total = ExactValidation::new(&self.costed);
        let mut in_flight = std::collections::VecDeque::new();
        // Scanned batches (up to thousands of rows) are scored in chunks, so that every
        // worker has rows to score however few there are.
        let mut chunks = std::collections::VecDeque::new();
        let mut scan_done = false;
        loop {
            while in_flight.len() < workers.workers() {
                let Some((batch, rows)) = chunks.pop_front() else {
                    if scan_done {
                        break;
                    }
                    match scan.next().await {
                        None => scan_done = true,
                        Some(batch) => {
                            let batch = Arc::new(batch.map_err(|e| e.to_string())?);
                            for start in (0..batch.rows).step_by(CHUNK_ROWS) {
                                let end = (start + CHUNK_ROWS).min(batch.rows);
                                chunks.push_back((Arc::clone(&batch), start..end));
                            }
                        }
                    }
                    continue;
                };
                let (model, classes, costed) = (
                    self.model.clone(),
                    self.classes.clone(),
                    self.costed.clone(),
                );
                let (tx, rx) = tokio::sync::oneshot::channel();
                workers.spawn(move || {
                    let _ = tx.send(score_rows(
                        &model,
                        classes.as_deref(),
                        &costed,
                        &batch,
                        rows,
                    ));
                });
                in_flight.push_back(rx);
            }
            let Some(next) = in_flight.pop_front() else {
                break;
            };
            let partial = next
                .await
                .map_err(|_| "a scoring job stopped without a result".to_string())??;
            total.merge(&partial);
        }
        let costed = self.costed;
        tokio::task::spawn_blocking(move || {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
            release_validation(&costed, total, &mut rng)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}

/// Rows a worker scores in one job.
const CHUNK_ROWS: usize = 256;

/// Runs the model on each of a batch's `rows`, alone, and tallies them (on a model-pool
/// thread).
///
/// Whether the model fails on a row may depend on that row (a model can be built to fail on
/// one value), so a failure neither ends the run nor reaches the requester: the row counts
/// as a prediction outside the classes ("(other)") or, for a regressor, as NaN (clipped to
/// the label's lower bound). What kind of prediction is expected comes from the task, fixed
/// before the charge, never from the rows.
fn score_rows(
    model: &Model,
    classes: Option<&ClassMap>,
    costed: &CostedValidation,
    batch: &veil_datasets::ScanBatch,
    rows: std::ops::Range<usize>,
) -> std::result::Result<ExactValidation, String> {
    let mut exact = ExactValidation::new(costed);
    let width = model.n_features().max(1);
    let first = rows.start;
    let rows = batch.features.chunks(width).skip(first).take(rows.len());
    let classify =
        |exact: &mut ExactValidation, row: &[f32], truth: Option<usize>, map: &ClassMap| {
            if let Some(t) = truth {
                let predicted = model.predict_row(row).ok().and_then(|o| map.class_of(&o));
                exact.add_classified(t, predicted);
            }
        };
    match (classes, &batch.labels) {
        (Some(map), veil_datasets::Labels::Text(labels)) => {
            for (row, l) in rows.zip(labels.iter().skip(first)) {
                classify(&mut exact, row, map.truth(l), map);
            }
        }
        (Some(map), veil_datasets::Labels::Numbers(values)) => {
            for (row, v) in rows.zip(values.iter().skip(first)) {
                classify(&mut exact, row, map.truth(&format!("{}", *v as i64)), map);
            }
        }
        (None, veil_datasets::Labels::Numbers(values)) => {
            for (row, y) in rows.zip(values.iter().skip(first)) {
                let predicted = match model.predict_row(row) {
                    Ok(Output::Value(v)) => v,
                    _ => f64::NAN,
                };
                exact.add_regressed(*y, predicted);
            }
        }
        // The label's type comes from the manifest, so this is a bug, not a property of rows.
        (None, veil_datasets::Labels::Text(_)) => {
            return Err("a regression label was read as text".into());
        }
    }
    Ok(exact)
}
