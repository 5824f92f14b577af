//! Datasets and differentially private queries.
//!
//! Order of operations for a query, and why:
//! 1. check the privacy parameters' ranges (a 400), validate and plan the SQL against the
//!    public manifest (refusals cost nothing, since no private data was touched, and are
//!    audited);
//! 2. compute the exact cost from OpenDP's privacy maps;
//! 3. prepare the engine's query against the file (its SQL rendered, parsed and planned,
//!    the file present and its key unwrapped) without reading a row: whatever can fail for a
//!    reason that is not a property of the rows fails here, uncharged;
//! 4. charge it, in the one transaction that also writes the ledger, the audit entry and the
//!    query's request record;
//! 5. only then read the data, on a task of its own (see [`crate::charged`]): the outcome is
//!    the release or the one fixed `QueryFailed`, recorded in the request, and the charge
//!    stands;
//! 6. release through the DP engine, which is the only producer of [`Released`].

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use serde_json::json;
use veil_datasets::{Format, IngestError};
use veil_dp::mock::{MockValue, mock_rows};
use veil_dp::{Manifest, QueryOptions, Released};
use veil_store::{
    AuditOutcome, DatasetRecord, DatasetSettings, DebitReceipt, NewAuditEntry, NewDataset,
    NewRequest, RequestStatus, RequestTransition,
};
use veil_types::{DatasetName, Delta, Epsilon, Permission};

use crate::budgets::Spend;
use crate::charged::{CHARGED_FAILURE, Charged, after_charge};
use crate::error::NotFound;
use crate::{Core, CoreError, Principal, Result};

/// A dataset's record with its parsed manifest.
#[derive(Debug, Clone)]
pub struct DatasetInfo {
    pub record: DatasetRecord,
    pub manifest: Manifest,
    /// Whether the caller may see operational details (exact size): `datasets:manage`.
    pub show_size: bool,
}

/// A released answer, the charge that paid for it and the request recording it.
#[derive(Debug, Clone)]
pub struct QueryOutcome {
    pub released: Released,
    pub receipt: DebitReceipt,
    pub request_id: i64,
}

/// Synthetic rows and their column names.
#[derive(Debug, Clone)]
pub struct MockRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<MockValue>>,
}

fn dataset_name(name: &str) -> Result<DatasetName> {
    DatasetName::parse(name).map_err(|e| CoreError::InvalidInput(e.to_string()))
}

impl Core {
    async fn dataset_record(&self, name: &str) -> Result<DatasetRecord> {
        self.store
            .get_dataset(name)
            .await?
            .ok_or(CoreError::NotFound(NotFound::Dataset))
    }

    fn stored_manifest(record: &DatasetRecord) -> Result<Manifest> {
        Manifest::parse(&record.manifest).map_err(|e| {
            CoreError::Internal(format!(
                "stored manifest of {} no longer parses: {e}",
                record.name
            ))
        })
    }

    /// Streams an upload into a new encrypted dataset. Validation failures store nothing.
    pub async fn upload_dataset<S, E>(
        &self,
        p: &Principal,
        name: &str,
        manifest_text: &str,
        format: Format,
        body: S,
    ) -> Result<DatasetRecord>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        p.require(Permission::DatasetsManage)?;
        let name = dataset_name(name)?;
        let manifest =
            Manifest::parse(manifest_text).map_err(|e| CoreError::InvalidManifest(e.0))?;
        if self.store.get_dataset(name.as_str()).await?.is_some() {
            return Err(CoreError::Conflict(crate::error::Conflict::DatasetExists));
        }
        let limits = veil_datasets::Limits {
            max_upload_bytes: self.settings.upload_limit_bytes,
        };
        let stored = match self.datasets.ingest(&manifest, format, body, limits).await {
            Ok(s) => s,
            Err(e) => {
                // The uploader gets the full report; the audit log, which people without
                // access to the data read, gets only what kind of refusal it was (counts and
                // messages quote rows).
                let (err, reason) = match e {
                    IngestError::Rejected { violations, count } => (
                        CoreError::UploadRejected { violations, count },
                        "rows break the manifest",
                    ),
                    IngestError::Malformed(m) => {
                        (CoreError::UploadMalformed(m), "the file is malformed")
                    }
                    IngestError::TooLarge { limit } => {
                        (CoreError::PayloadTooLarge { limit }, "too large")
                    }
                    IngestError::TooManyRows { limit } => (
                        CoreError::UploadMalformed(format!("a dataset holds at most {limit} rows")),
                        "too many rows",
                    ),
                    IngestError::Interrupted(m) => (
                        CoreError::InvalidInput(format!("the upload was interrupted: {m}")),
                        "interrupted",
                    ),
                    IngestError::Io(m) => return Err(CoreError::Internal(m)),
                };
                self.store
                    .append_audit(
                        NewAuditEntry::new(p.email(), "dataset.upload", format!("dataset:{name}"))
                            .outcome(AuditOutcome::Refused)
                            .details(json!({"reason": reason})),
                    )
                    .await?;
                return Err(err);
            }
        };
        let record = self
            .store
            .create_dataset(
                &NewDataset {
                    name: name.to_string(),
                    description: manifest.description.clone(),
                    manifest: manifest_text.to_string(),
                    file_id: stored.file_id.clone(),
                    wrapped_key: stored.wrapped_key.as_bytes().to_vec(),
                    rows: stored.rows,
                    bytes_stored: stored.bytes_stored,
                    created_by: p.email().to_string(),
                },
                // No row count or byte count: people without access to the data read the
                // audit log (and its hashes would let them check a guessed count).
                NewAuditEntry::new(p.email(),
                    "dataset.upload",
                    format!("dataset:{name}"),
                )
                .details(json!({
                    "format": match format { Format::Csv => "csv", Format::Parquet => "parquet" },
                    "columns": manifest.columns.len(),
                    "manifest_sha256": veil_crypto::sha256_hex(manifest_text.as_bytes()),
                })),
            )
            .await;
        match record {
            Ok(r) => Ok(r),
            Err(e) => {
                // The record (and so the key) was not stored: the file is unreadable anyway,
                // but do not leave it behind.
                let _ = self.datasets.remove(&stored.file_id);
                Err(e.into())
            }
        }
    }

    pub async fn list_datasets(&self, p: &Principal) -> Result<Vec<DatasetInfo>> {
        p.require(Permission::DatasetsReadMetadata)?;
        let show_size = p.has(Permission::DatasetsManage);
        self.store
            .list_datasets()
            .await?
            .into_iter()
            .map(|record| {
                Ok(DatasetInfo {
                    manifest: Self::stored_manifest(&record)?,
                    record,
                    show_size,
                })
            })
            .collect()
    }

    pub async fn get_dataset(&self, p: &Principal, name: &str) -> Result<DatasetInfo> {
        p.require(Permission::DatasetsReadMetadata)?;
        let record = self.dataset_record(name).await?;
        Ok(DatasetInfo {
            manifest: Self::stored_manifest(&record)?,
            record,
            show_size: p.has(Permission::DatasetsManage),
        })
    }

    /// Deletes a dataset: its record (with the wrapped key, so the data is unreadable from
    /// this moment) and then its file.
    pub async fn delete_dataset(&self, p: &Principal, name: &str) -> Result<()> {
        p.require(Permission::DatasetsManage)?;
        let record = self
            .store
            .delete_dataset(
                name,
                NewAuditEntry::new(p.email(), "dataset.delete", format!("dataset:{name}")),
            )
            .await?;
        if let Err(e) = self.datasets.remove(&record.file_id) {
            // The key is gone, so the file is ciphertext without a key; still, report it.
            tracing::warn!(dataset = name, error = %e, "could not remove the dataset file");
        }
        Ok(())
    }

    /// Sets a dataset's global cap (what all users together may spend) and review policy.
    pub async fn update_dataset(
        &self,
        p: &Principal,
        name: &str,
        epsilon_cap: Option<Option<f64>>,
        delta_cap: Option<Option<f64>>,
        policy: Option<&str>,
    ) -> Result<DatasetRecord> {
        p.require(Permission::DatasetsManage)?;
        let invalid = |e: veil_types::PrivacyAmountError| CoreError::InvalidInput(e.to_string());
        let epsilon_cap = epsilon_cap
            .map(|c| c.map(Epsilon::cap_from_f64).transpose().map_err(invalid))
            .transpose()?;
        let delta_cap = delta_cap
            .map(|c| c.map(Delta::cap_from_f64).transpose().map_err(invalid))
            .transpose()?;
        if let Some(pol) = policy
            && pol != "auto"
            && pol != "review"
        {
            return Err(CoreError::InvalidInput(
                "policy must be auto or review".into(),
            ));
        }
        Ok(self
            .store
            .update_dataset(
                name,
                &DatasetSettings {
                    epsilon_cap,
                    delta_cap,
                    policy: policy.map(str::to_string),
                },
                NewAuditEntry::new(p.email(), "dataset.update", format!("dataset:{name}")).details(
                    json!({
                        "epsilon_cap": epsilon_cap.map(|c| c.map(|e| e.to_string())),
                        "delta_cap": delta_cap.map(|c| c.map(|d| d.to_string())),
                        "policy": policy,
                    }),
                ),
            )
            .await?)
    }

    /// Synthetic rows from the dataset's declared domains only.
    pub async fn mock_dataset(&self, p: &Principal, name: &str, rows: usize) -> Result<MockRows> {
        p.require(Permission::DatasetsMock)?;
        if rows == 0 || rows > veil_dp::mock::MAX_MOCK_ROWS {
            return Err(CoreError::InvalidInput(format!(
                "ask for 1 to {} mock rows",
                veil_dp::mock::MAX_MOCK_ROWS
            )));
        }
        let record = self.dataset_record(name).await?;
        let manifest = Self::stored_manifest(&record)?;
        let mut rng = rand::rng();
        Ok(MockRows {
            columns: manifest.columns.iter().map(|c| c.name.clone()).collect(),
            rows: mock_rows(&manifest, rows, &mut rng),
        })
    }

    /// Runs a differentially private query, charging its cost to the caller first.
    ///
    /// `client_ref` is the caller's handle for the query (the HTTP request id), kept with the
    /// query's record so a client that lost the answer can find it among its requests.
    pub async fn query(
        self: &Arc<Self>,
        p: &Principal,
        name: &str,
        sql: &str,
        options: QueryOptions,
        client_ref: Option<String>,
    ) -> Result<QueryOutcome> {
        p.require(Permission::QueriesRun)?;
        options
            .check()
            .map_err(|e| CoreError::InvalidParameters(e.0))?;
        let record = self.dataset_record(name).await?;
        let manifest = Self::stored_manifest(&record)?;
        let sql_hash = veil_crypto::sha256_hex(sql.as_bytes());
        let target = format!("dataset:{name}");
        let refused = |reason: String| {
            NewAuditEntry::new(p.email(), "query.refused", &target)
                .outcome(AuditOutcome::Refused)
                .details(json!({"sql_sha256": sql_hash, "reason": reason}))
        };

        // Before the charge: everything that can fail on public inputs. The plan and its cost
        // depend on the SQL and the manifest; preparing renders and plans the engine's query
        // against the file without reading a row.
        let planned = veil_dp::sql::plan(sql, name, &manifest, options).and_then(veil_dp::cost);
        let costed = match planned {
            Ok(c) => c,
            Err(refusal) => {
                self.record_denial(
                    &format!("query.refused {} {target}", p.user.id),
                    refused(refusal.0.clone()),
                )
                .await?;
                return Err(CoreError::QueryRefused(refusal.0));
            }
        };
        // Held until the answer is recorded, on the charged task too.
        let slot = self.query_slots.take(p.user.id)?;
        let prepared = match self
            .datasets
            .prepare(
                &record.file_id,
                &veil_crypto::WrappedKey::from_bytes(record.wrapped_key.clone()),
                &manifest,
                &costed,
            )
            .await
        {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(dataset = name, error = %e, "query could not be prepared");
                self.store
                    .append_audit(refused("the dataset is not available on this node".into()))
                    .await?;
                return Err(match e {
                    veil_datasets::PrepareError::Unavailable(_) => CoreError::DatasetUnavailable,
                    veil_datasets::PrepareError::Plan(detail) => CoreError::Internal(detail),
                });
            }
        };

        let amount =
            |e: veil_types::PrivacyAmountError| CoreError::InvalidParameters(e.to_string());
        let epsilon = Epsilon::cost_from_f64(costed.epsilon).map_err(amount)?;
        let delta = Delta::cost_from_f64(costed.delta).map_err(amount)?;
        let client_ref = client_ref.filter(|r| valid_client_ref(r));
        let parameters = json!({
            "sql_sha256": sql_hash,
            "epsilon": costed.epsilon,
            "delta": costed.delta,
            "mechanism": costed.mechanism.name(),
            "client_ref": client_ref,
        });
        let spend = Spend {
            dataset: Some(dataset_name(name)?),
            epsilon,
            delta,
            purpose: "query".into(),
            reference: format!("sha256:{sql_hash}"),
            details: json!({
                "sql_sha256": sql_hash,
                "mechanism": costed.mechanism.name(),
                "aggregates": costed.plan.aggregates.len(),
            }),
            // The query's record, in the charge's transaction: no charge without it.
            opens: Some(NewRequest {
                kind: "query".into(),
                requester_id: p.user.id,
                requester: p.email().to_string(),
                target: target.clone(),
                dataset: Some(name.to_string()),
                parameters: parameters.to_string(),
                epsilon,
                delta,
                status: RequestStatus::Running,
            }),
        };

        // From the charge on, on a task of its own (a closed connection cannot cut it short,
        // not even while the charge commits): the release or the one fixed failure, recorded
        // under the query's request id.
        let core = Arc::clone(self);
        let caller = p.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let receipt = core.spend(&caller, &spend).await?;
            let request_id = receipt
                .request_id
                .ok_or_else(|| CoreError::Internal("the charge opened no query record".into()))?;
            let started = std::time::Instant::now();
            let outcome = after_charge("query", format!("request:{request_id}"), async move {
                let exact = prepared.run().await.map_err(|e| e.to_string())?;
                // OpenDP measurements are built and used on one blocking thread.
                tokio::task::spawn_blocking(move || veil_dp::release(&costed, exact))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            })
            .await;
            tracing::info!(
                request = request_id,
                seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                "query run finished"
            );
            // Charged already: a database too busy to record the outcome is an internal
            // failure (the request ends as a charged failure at the next start), never a
            // `busy` answer inviting a retry as though nothing had happened.
            let released = core
                .record_query(caller.email(), request_id, outcome)
                .await
                .map_err(|e| match e {
                    CoreError::Busy => CoreError::Internal(format!(
                        "the outcome of query request {request_id} could not be recorded: the database was busy"
                    )),
                    other => other,
                })?;
            Ok(QueryOutcome {
                released,
                receipt,
                request_id,
            })
        })
        .await
        .map_err(|e| CoreError::Internal(format!("the query task failed: {e}")))?
    }

    /// Records a charged query's outcome in its request, and returns the release (or the one
    /// fixed failure, [`CoreError::QueryFailed`]).
    async fn record_query(
        &self,
        actor: &str,
        request_id: i64,
        outcome: Charged<Released>,
    ) -> Result<Released> {
        let (to, reason, result) = match &outcome {
            Charged::Released(r) => (
                RequestStatus::Done,
                None,
                Some(serde_json::to_string(r).map_err(|e| CoreError::Internal(e.to_string()))?),
            ),
            Charged::Failed => (
                RequestStatus::Failed,
                Some(CHARGED_FAILURE.to_string()),
                None,
            ),
        };
        let action = if to == RequestStatus::Done {
            "query.done"
        } else {
            "query.failed"
        };
        self.store
            .transition_request(
                request_id,
                &RequestTransition {
                    from: vec![RequestStatus::Running],
                    to,
                    reason: reason.clone(),
                    result,
                    reviewer: None,
                },
                NewAuditEntry::new(actor, action, format!("request:{request_id}"))
                    .outcome(if to == RequestStatus::Done {
                        AuditOutcome::Ok
                    } else {
                        AuditOutcome::Failed
                    })
                    .details(json!({"reason": reason})),
            )
            .await?;
        match outcome {
            Charged::Released(r) => Ok(r),
            Charged::Failed => Err(CoreError::QueryFailed),
        }
    }
}

/// A client's handle for a query: what a request id header may hold (1 to 64 characters of
/// letters, digits, `-`, `_`, `.`), so it is safe to store and show.
fn valid_client_ref(r: &str) -> bool {
    (1..=64).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Core {
    /// Stores a dataset as the node itself (for `serve --demo`), unless one with this name
    /// exists. Returns whether it was created.
    pub async fn bootstrap_dataset(
        &self,
        name: &str,
        manifest_text: &str,
        csv: Vec<u8>,
    ) -> Result<bool> {
        let name = dataset_name(name)?;
        if self.store.get_dataset(name.as_str()).await?.is_some() {
            return Ok(false);
        }
        let manifest =
            Manifest::parse(manifest_text).map_err(|e| CoreError::InvalidManifest(e.0))?;
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(csv))]);
        let limits = veil_datasets::Limits {
            max_upload_bytes: self.settings.upload_limit_bytes,
        };
        let stored = self
            .datasets
            .ingest(&manifest, Format::Csv, body, limits)
            .await
            .map_err(|e| CoreError::Internal(format!("demo dataset: {e}")))?;
        let created = self
            .store
            .create_dataset(
                &NewDataset {
                    name: name.to_string(),
                    description: manifest.description.clone(),
                    manifest: manifest_text.to_string(),
                    file_id: stored.file_id.clone(),
                    wrapped_key: stored.wrapped_key.as_bytes().to_vec(),
                    rows: stored.rows,
                    bytes_stored: stored.bytes_stored,
                    created_by: crate::auth::SYSTEM.to_string(),
                },
                NewAuditEntry::new(
                    crate::auth::SYSTEM,
                    "dataset.upload",
                    format!("dataset:{name}"),
                )
                .details(json!({"format": "csv", "bootstrap": true})),
            )
            .await;
        if let Err(e) = created {
            let _ = self.datasets.remove(&stored.file_id);
            return Err(e.into());
        }
        Ok(true)
    }
}
