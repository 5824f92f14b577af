//! Datasets and differentially private queries.
//!
//! Order of operations for a query, and why:
//! 1. validate and plan the SQL against the public manifest (refusals cost nothing, since no
//!    private data was touched, and are audited);
//! 2. compute the exact cost from OpenDP's privacy maps;
//! 3. charge it, in the one transaction that also writes the ledger and audit entries;
//! 4. only then read the data; any failure from here on is reported as the same generic
//!    `QueryFailed`, and the charge stands;
//! 5. release through the DP engine, which is the only producer of [`Released`].

use bytes::Bytes;
use futures::Stream;
use serde_json::json;
use veil_datasets::{Format, IngestError};
use veil_dp::mock::{MockValue, mock_rows};
use veil_dp::{Manifest, QueryOptions, Released};
use veil_store::{
    AuditOutcome, DatasetRecord, DatasetSettings, DebitReceipt, NewAuditEntry, NewDataset,
};
use veil_types::{DatasetName, Delta, Epsilon, Permission};

use crate::budgets::Spend;
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

/// A released answer and the charge that paid for it.
#[derive(Debug, Clone)]
pub struct QueryOutcome {
    pub released: Released,
    pub receipt: DebitReceipt,
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
                let (err, reason) = match e {
                    IngestError::Rejected { violations, count } => (
                        CoreError::UploadRejected { violations, count },
                        format!("{count} invalid rows"),
                    ),
                    IngestError::Malformed(m) => (CoreError::UploadMalformed(m.clone()), m),
                    IngestError::TooLarge { limit } => {
                        (CoreError::PayloadTooLarge { limit }, "too large".into())
                    }
                    IngestError::TooManyRows { limit } => (
                        CoreError::UploadMalformed(format!("a dataset holds at most {limit} rows")),
                        "too many rows".into(),
                    ),
                    IngestError::Interrupted(m) => (
                        CoreError::InvalidInput(format!("the upload was interrupted: {m}")),
                        m,
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
                NewAuditEntry::new(p.email(), "dataset.upload", format!("dataset:{name}")).details(json!({
                    "format": match format { Format::Csv => "csv", Format::Parquet => "parquet" },
                    "rows": stored.rows,
                    "bytes_received": stored.bytes_received,
                    "columns": manifest.columns.len(),
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
    pub async fn query(
        &self,
        p: &Principal,
        name: &str,
        sql: &str,
        options: QueryOptions,
    ) -> Result<QueryOutcome> {
        p.require(Permission::QueriesRun)?;
        let record = self.dataset_record(name).await?;
        let manifest = Self::stored_manifest(&record)?;
        let sql_hash = veil_crypto::sha256_hex(sql.as_bytes());
        let target = format!("dataset:{name}");

        let started = std::time::Instant::now();
        let planned = veil_dp::sql::plan(sql, name, &manifest, options).and_then(veil_dp::cost);
        let costed = match planned {
            Ok(c) => c,
            Err(refusal) => {
                self.store
                    .append_audit(
                        NewAuditEntry::new(p.email(), "query.refused", &target)
                            .outcome(AuditOutcome::Refused)
                            .details(json!({"sql_sha256": sql_hash, "reason": refusal.0})),
                    )
                    .await?;
                return Err(CoreError::QueryRefused(refusal.0));
            }
        };

        let invalid = |e: veil_types::PrivacyAmountError| CoreError::Internal(e.to_string());
        let receipt = self
            .spend(
                p,
                &Spend {
                    dataset: Some(dataset_name(name)?),
                    epsilon: Epsilon::cost_from_f64(costed.epsilon).map_err(invalid)?,
                    delta: Delta::cost_from_f64(costed.delta).map_err(invalid)?,
                    purpose: "query".into(),
                    reference: format!("sha256:{sql_hash}"),
                    details: json!({
                        "sql_sha256": sql_hash,
                        "mechanism": costed.mechanism.name(),
                        "aggregates": costed.plan.aggregates.len(),
                    }),
                },
            )
            .await?;

        let charged = started.elapsed();
        let released = async {
            let exact = self
                .datasets
                .execute(
                    &record.file_id,
                    &veil_crypto::WrappedKey::from_bytes(record.wrapped_key.clone()),
                    &manifest,
                    &costed,
                )
                .await
                .map_err(|e| e.to_string())?;
            let executed = started.elapsed();
            // OpenDP measurements are built and used on one blocking thread.
            tokio::task::spawn_blocking(move || veil_dp::release(&costed, exact))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
                .map(|r| (r, executed))
        }
        .await;
        match released {
            Ok((released, executed)) => {
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
                tracing::debug!(
                    dataset = name,
                    plan_and_charge_ms = ms(charged),
                    execute_ms = ms(executed - charged),
                    release_ms = ms(started.elapsed() - executed),
                    "query answered"
                );
                Ok(QueryOutcome { released, receipt })
            }
            Err(detail) => {
                tracing::error!(dataset = name, error = %detail, "query failed after charging");
                self.store
                    .append_audit(
                        NewAuditEntry::new(p.email(), "query.failed", &target)
                            .outcome(AuditOutcome::Failed)
                            .details(
                                json!({"sql_sha256": sql_hash, "ledger_id": receipt.ledger_id}),
                            ),
                    )
                    .await?;
                Err(CoreError::QueryFailed)
            }
        }
    }
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
                .details(json!({"format": "csv", "rows": stored.rows, "bootstrap": true})),
            )
            .await;
        if let Err(e) = created {
            let _ = self.datasets.remove(&stored.file_id);
            return Err(e.into());
        }
        Ok(true)
    }
}
