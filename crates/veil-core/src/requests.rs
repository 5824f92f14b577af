//! Requests that may need review, and model validation runs.
//!
//! A validation is always a request. On a dataset whose policy is `auto` it is approved at
//! once and runs while the caller waits; under `review` it waits for a compliance officer.
//! Running means: charge the requester's budget (nothing runs if it cannot pay), run the model
//! over the private rows on the model worker pool within the time limit, and release the
//! metrics through the DP engine. The request records every step; requesters see only their
//! own requests.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use veil_dp::validation::{
    CostedValidation, ExactValidation, Task, cost_validation, parse_metrics, release_validation,
};
use veil_dp::{ColumnType, Manifest};
use veil_ml::{ClassMap, Model, ModelKind, ModelSummary, Prediction};
use veil_store::{NewAuditEntry, NewRequest, RequestRecord, RequestStatus, RequestTransition};
use veil_types::{DatasetName, Delta, Epsilon, Permission};

use crate::budgets::Spend;
use crate::error::{Conflict, NotFound};
use crate::{Core, CoreError, Principal, Result};

/// Batches a validation run may have in flight on the pool (bounds memory).
const IN_FLIGHT: usize = 4;

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

/// The parameters stored with a validation request (the model version is pinned).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Params {
    model: String,
    version: u32,
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
    for f in features {
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
    pub async fn validate(&self, p: &Principal, req: &ValidationRequest) -> Result<RequestRecord> {
        p.require(Permission::ModelsValidate)?;
        let model = self
            .store
            .get_model(&req.model, req.version)
            .await?
            .ok_or(CoreError::NotFound(NotFound::Model))?;
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
        // Cost it now, so an impossible request is refused before it is filed.
        let costed = cost_validation(task, metrics, req.epsilon, confidence, &manifest.unit)
            .map_err(|r| invalid(r.0))?;
        let params = Params {
            model: model.name.clone(),
            version: model.version,
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
                    kind: "validation".into(),
                    requester_id: p.user.id,
                    requester: p.email().to_string(),
                    target: format!("model:{}@{}", model.name, model.version),
                    dataset: Some(dataset.name.clone()),
                    parameters: serde_json::to_string(&params)
                        .map_err(|e| CoreError::Internal(e.to_string()))?,
                    epsilon: Epsilon::cost_from_f64(costed.epsilon)
                        .map_err(|e| CoreError::Internal(e.to_string()))?,
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
    pub async fn approve_request(&self, p: &Principal, id: i64) -> Result<RequestRecord> {
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
            Err(veil_store::StoreError::Conflict { .. }) => {
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

    /// The caller's requests, or everyone's for reviewers.
    pub async fn list_requests(
        &self,
        p: &Principal,
        status: Option<RequestStatus>,
    ) -> Result<Vec<RequestRecord>> {
        p.ensure_active()?;
        let who = (!p.has(Permission::RequestsReview)).then_some(p.user.id);
        Ok(self.store.list_requests(who, status, 500).await?)
    }

    /// One request: its requester's or any for reviewers (others get "no such request").
    pub async fn get_request(&self, p: &Principal, id: i64) -> Result<RequestRecord> {
        p.ensure_active()?;
        let r = self
            .store
            .get_request(id)
            .await?
            .ok_or(CoreError::NotFound(NotFound::Request))?;
        if r.requester_id != p.user.id && !p.has(Permission::RequestsReview) {
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

    /// Runs an approved validation request to `done` or `failed`.
    async fn run_request(&self, actor: &str, record: RequestRecord) -> Result<RequestRecord> {
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
        let outcome = match serde_json::from_str::<Params>(&record.parameters) {
            Ok(params) => self.run_validation(actor, &record, &params).await,
            Err(e) => Err(CoreError::Internal(format!(
                "stored request parameters: {e}"
            ))),
        };
        match outcome {
            Ok(result) => {
                self.finish(actor, id, RequestStatus::Done, None, Some(result))
                    .await
            }
            Err(e) => {
                let reason = match &e {
                    CoreError::Internal(detail) => {
                        tracing::error!(request = id, error = %detail, "validation failed");
                        "the validation failed on the node; its privacy cost was charged"
                            .to_string()
                    }
                    other => other.to_string(),
                };
                self.finish(actor, id, RequestStatus::Failed, Some(reason), None)
                    .await
            }
        }
    }

    async fn run_validation(
        &self,
        actor: &str,
        record: &RequestRecord,
        params: &Params,
    ) -> Result<String> {
        let model = self
            .store
            .get_model(&params.model, Some(params.version))
            .await?
            .ok_or_else(|| invalid("the model version was deleted"))?;
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

        // Pay first: nothing is read unless the requester's budget covers it.
        let dataset_name =
            DatasetName::parse(&dataset.name).map_err(|e| CoreError::Internal(e.to_string()))?;
        self.spend_for(
            actor,
            record.requester_id,
            &Spend {
                dataset: Some(dataset_name),
                epsilon: Epsilon::cost_from_f64(costed.epsilon)
                    .map_err(|e| CoreError::Internal(e.to_string()))?,
                delta: Delta::ZERO,
                purpose: "validation".into(),
                reference: format!("request:{}", record.id),
                details: json!({"requester": record.requester, "model": record.target}),
            },
        )
        .await?;

        let bytes = self
            .datasets
            .load_model(
                &model.file_id,
                &veil_crypto::WrappedKey::from_bytes(model.wrapped_key.clone()),
            )
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let started = Instant::now();
        let deadline = started + self.settings.validation_time_limit;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let summary_for_load = summary.clone();
        self.model_pool.spawn(move || {
            let _ = tx.send(Model::load(&bytes, &summary_for_load));
        });
        let model_run = Arc::new(
            rx.await
                .map_err(|_| CoreError::Internal("model loading was interrupted".into()))?
                .map_err(|e| CoreError::Internal(e.to_string()))?,
        );
        let classes = match &costed.task {
            Task::Classification { classes } => Some(Arc::new(ClassMap::new(
                classes,
                match &summary.kind {
                    ModelKind::Classifier { classes, .. } => classes.as_ref(),
                    _ => None,
                },
            ))),
            Task::Regression { .. } => None,
        };

        let mut scan = self
            .datasets
            .scan(
                &dataset.file_id,
                &veil_crypto::WrappedKey::from_bytes(dataset.wrapped_key.clone()),
                &manifest,
                &params.features,
                &params.label,
            )
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let mut total = ExactValidation::new(&costed);
        let (done_tx, mut done_rx) =
            tokio::sync::mpsc::channel::<Result<ExactValidation>>(IN_FLIGHT);
        let mut in_flight = 0usize;
        let time_limit = || {
            invalid(format!(
                "the validation exceeded the {} s time limit; its privacy cost was charged",
                self.settings.validation_time_limit.as_secs()
            ))
        };
        let mut scan_done = false;
        while !scan_done || in_flight > 0 {
            if Instant::now() > deadline {
                return Err(time_limit());
            }
            if !scan_done && in_flight < IN_FLIGHT {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, scan.next()).await {
                    Err(_) => return Err(time_limit()),
                    Ok(None) => scan_done = true,
                    Ok(Some(batch)) => {
                        let batch = batch.map_err(|e| CoreError::Internal(e.to_string()))?;
                        let (model_run, classes, costed, tx) = (
                            model_run.clone(),
                            classes.clone(),
                            costed.clone(),
                            done_tx.clone(),
                        );
                        in_flight += 1;
                        self.model_pool.spawn(move || {
                            let _ = tx.blocking_send(score_batch(
                                &model_run,
                                classes.as_deref(),
                                &costed,
                                batch,
                            ));
                        });
                    }
                }
                continue;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, done_rx.recv()).await {
                Err(_) => return Err(time_limit()),
                Ok(None) => break,
                Ok(Some(partial)) => {
                    in_flight -= 1;
                    total.merge(&partial?);
                }
            }
        }
        let released = tokio::task::spawn_blocking(move || {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
            release_validation(&costed, total, &mut rng)
        })
        .await
        .map_err(|e| CoreError::Internal(e.to_string()))?
        .map_err(|e| CoreError::Internal(e.to_string()))?;
        serde_json::to_string(&json!({
            "metrics": released.metrics(),
            "confusion": released.confusion(),
            "epsilon": released.epsilon(),
            "mechanism": released.mechanism(),
            "noise_scales": released.noise_scales(),
            "confidence": released.confidence(),
            "seconds": started.elapsed().as_secs_f64(),
        }))
        .map_err(|e| CoreError::Internal(e.to_string()))
    }
}

/// A label no category can have (categories are printable text).
const FAILED_ROW: &str = "\u{0}failed";

/// Predicts a batch one row at a time. A row the model fails on gets a prediction no class
/// map recognises (so it counts in the "(other)" column) or NaN (clipped to the lower bound).
fn predict_row_by_row(model: &Model, batch: &veil_datasets::ScanBatch) -> Prediction {
    let width = model.n_features().max(1);
    let rows: Vec<Option<Prediction>> = batch
        .features
        .chunks(width)
        .take(batch.rows)
        .map(|row| model.predict(row, 1).ok())
        .collect();
    match rows.iter().flatten().next() {
        Some(Prediction::Values(_)) => Prediction::Values(
            rows.iter()
                .map(|p| match p {
                    Some(Prediction::Values(v)) => v.first().copied().unwrap_or(f64::NAN),
                    _ => f64::NAN,
                })
                .collect(),
        ),
        Some(Prediction::IntLabels(_)) => Prediction::IntLabels(
            rows.iter()
                .map(|p| match p {
                    Some(Prediction::IntLabels(v)) => v.first().copied().unwrap_or(i64::MIN),
                    _ => i64::MIN,
                })
                .collect(),
        ),
        Some(Prediction::ClassIndices(_)) => Prediction::ClassIndices(
            rows.iter()
                .map(|p| match p {
                    Some(Prediction::ClassIndices(v)) => v.first().copied().unwrap_or(usize::MAX),
                    _ => usize::MAX,
                })
                .collect(),
        ),
        Some(Prediction::StringLabels(_)) | None => Prediction::StringLabels(
            rows.iter()
                .map(|p| match p {
                    Some(Prediction::StringLabels(v)) => {
                        v.first().cloned().unwrap_or_else(|| FAILED_ROW.into())
                    }
                    _ => FAILED_ROW.into(),
                })
                .collect(),
        ),
    }
}

/// Runs the model on one batch and tallies it (on a model-pool thread).
fn score_batch(
    model: &Model,
    classes: Option<&ClassMap>,
    costed: &CostedValidation,
    batch: veil_datasets::ScanBatch,
) -> Result<ExactValidation> {
    let mut exact = ExactValidation::new(costed);
    // Whether a model fails may depend on the private rows (a model can be built to fail on
    // one value), so a failure must not end the run or reach the requester: rows the model
    // cannot predict count as wrong predictions inside the DP release instead.
    let prediction = match model.predict(&batch.features, batch.rows) {
        Ok(p) => p,
        Err(_) => predict_row_by_row(model, &batch),
    };
    match (classes, &batch.labels, &prediction) {
        (Some(map), veil_datasets::Labels::Text(labels), _) => {
            for (i, l) in labels.iter().enumerate() {
                if let Some(t) = map.truth(l) {
                    exact.add_classified(t, map.predicted(&prediction, i));
                }
            }
        }
        (Some(map), veil_datasets::Labels::Numbers(values), _) => {
            for (i, v) in values.iter().enumerate() {
                let label = format!("{}", *v as i64);
                if let Some(t) = map.truth(&label) {
                    exact.add_classified(t, map.predicted(&prediction, i));
                }
            }
        }
        (None, veil_datasets::Labels::Numbers(values), Prediction::Values(preds)) => {
            for (y, p) in values.iter().zip(preds) {
                exact.add_regressed(*y, *p);
            }
        }
        _ => return Err(invalid("the model's output does not fit the label column")),
    }
    Ok(exact)
}
