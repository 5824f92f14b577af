//! Signing keys and the model registry.
//!
//! An upload is inspected and type-checked before it is stored (see `veil_ml::inspect`), its
//! signature (if any, or if the node requires one) is verified against the uploader's
//! registered keys, and the file is stored sealed under its own key. Every upload of a name is
//! a new version; a name belongs to whoever first uploaded it.
//!
//! Who sees a model: uploads by someone who may publish models (`models:publish`, model
//! creators) form the catalogue every `models:read` holder sees. Uploads by anyone else (a
//! data scientist's own model, uploaded to validate it) are private: only their owner,
//! reviewers (`requests:review`, who must see what they approve) and the node's owner see
//! them; to everyone else they do not exist.

use serde_json::json;
use veil_crypto::signing::PublicKey;
use veil_ml::ModelSummary;
use veil_store::{ModelRecord, NewAuditEntry, NewModel, NewSigningKey, SigningKeyRecord};
use veil_types::{Permission, RoleName};

use crate::error::{Conflict, NotFound};
use crate::{Core, CoreError, Principal, Result};

/// A model version with its parsed summary.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub record: ModelRecord,
    pub summary: ModelSummary,
    /// The signing key's name, if signed.
    pub signer: Option<String>,
}

fn model_name(name: &str) -> Result<String> {
    // Same rules as role names: lowercase, digits, '-' and '_'.
    RoleName::parse(name)
        .map(|n| n.to_string())
        .map_err(|_| {
            CoreError::InvalidInput(format!(
                "invalid model name {name:?}: use 1-64 characters: lowercase letters, digits, '-' and '_', starting with a letter"
            ))
        })
}

impl Core {
    // ---- signing keys

    /// Registers a public key for the caller.
    pub async fn add_signing_key(
        &self,
        p: &Principal,
        name: &str,
        public_key: &str,
    ) -> Result<SigningKeyRecord> {
        p.ensure_active()?;
        let name = RoleName::parse(name)
            .map_err(|e| CoreError::InvalidInput(e.to_string().replace("role", "key")))?;
        let key =
            PublicKey::parse(public_key).map_err(|e| CoreError::InvalidInput(e.to_string()))?;
        let fingerprint = key.fingerprint();
        Ok(self
            .store
            .add_signing_key(
                &NewSigningKey {
                    user_id: p.user.id,
                    name: name.to_string(),
                    public_key: key.to_bytes().to_vec(),
                    fingerprint: fingerprint.clone(),
                },
                NewAuditEntry::new(p.email(), "key.add", format!("key:{fingerprint}"))
                    .details(json!({"name": name.as_str()})),
            )
            .await?)
    }

    pub async fn list_signing_keys(&self, p: &Principal) -> Result<Vec<SigningKeyRecord>> {
        p.ensure_active()?;
        Ok(self.store.list_signing_keys(p.user.id).await?)
    }

    pub async fn revoke_signing_key(&self, p: &Principal, id: i64) -> Result<()> {
        p.ensure_active()?;
        self.store
            .revoke_signing_key(
                p.user.id,
                id,
                NewAuditEntry::new(p.email(), "key.revoke", format!("key:{id}")),
            )
            .await?;
        Ok(())
    }

    /// Finds which of the uploader's active keys signed `bytes`.
    async fn verify_upload_signature(
        &self,
        p: &Principal,
        bytes: &[u8],
        signature: &[u8],
    ) -> Result<SigningKeyRecord> {
        let keys = self.store.list_signing_keys(p.user.id).await?;
        let active: Vec<_> = keys
            .into_iter()
            .filter(|k| k.revoked_at.is_none())
            .collect();
        if active.is_empty() {
            return Err(CoreError::BadSignature(
                "you have no registered signing key; add one with `veil keys add`".into(),
            ));
        }
        let mut malformed = None;
        for k in active {
            let Ok(public) = PublicKey::from_bytes(&k.public_key) else {
                continue;
            };
            match public.verify(bytes, signature) {
                Ok(()) => return Ok(k),
                Err(veil_crypto::signing::SigningError::Mismatch) => {}
                Err(e) => malformed = Some(e.to_string()),
            }
        }
        Err(CoreError::BadSignature(malformed.unwrap_or_else(|| {
            "the signature does not verify with any of your registered keys".into()
        })))
    }

    // ---- models

    /// Inspects, verifies and stores a model upload as the next version of `name`; with
    /// `fhe`, also compiles it for encrypted inference (needs `models:publish`).
    pub async fn upload_model(
        &self,
        p: &Principal,
        name: &str,
        bytes: Vec<u8>,
        signature: Option<Vec<u8>>,
        fhe: Option<crate::FhePublish>,
    ) -> Result<ModelInfo> {
        p.require(Permission::ModelsManage)?;
        if fhe.is_some() {
            p.require(Permission::ModelsPublish)?;
        }
        let name = model_name(name)?;
        if let Some(existing) = self.store.get_model(&name, None).await?
            && existing.owner_id != p.user.id
        {
            return Err(CoreError::Conflict(Conflict::ModelNameTaken(name)));
        }
        let limits = veil_ml::Limits {
            max_bytes: self.settings.model_limit_bytes,
            ..veil_ml::Limits::default()
        };
        if bytes.len() > limits.max_bytes {
            return Err(CoreError::PayloadTooLarge {
                limit: limits.max_bytes as u64,
            });
        }
        let signer = match &signature {
            Some(sig) => Some(self.verify_upload_signature(p, &bytes, sig).await?),
            None if self.settings.require_signed_models => {
                return Err(CoreError::SignatureRequired);
            }
            None => None,
        };
        // Parsing and a trial run are CPU work on untrusted input: off the async threads.
        let (bytes, r) = self
            .on_model_pool(move || {
                let r = veil_ml::inspect(&bytes, limits);
                (bytes, r)
            })
            .await?;
        let summary = r.map_err(|e| match e {
            veil_ml::ModelError::TooLarge { limit } => CoreError::PayloadTooLarge {
                limit: limit as u64,
            },
            other => CoreError::InvalidModel(other.to_string()),
        })?;
        let sha256 = veil_crypto::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let bytes = std::sync::Arc::new(bytes);
        let (fhe, disclosure_sha256) = match fhe {
            Some(publish) => {
                let (artifact, digest) = self.publish_fhe(p, bytes.clone(), publish).await?;
                (Some(artifact), Some(digest))
            }
            None => (None, None),
        };
        let fhe_kind = fhe.as_ref().map(|_| "published");
        let stored = self
            .datasets
            .store_model(std::sync::Arc::unwrap_or_clone(bytes))
            .await
            .map_err(|e| {
                if let Some(f) = &fhe {
                    let _ = self.datasets.remove_model(&f.file_id);
                }
                CoreError::Internal(e.to_string())
            })?;
        let fhe_file = fhe.as_ref().map(|f| f.file_id.clone());
        let summary_json =
            serde_json::to_string(&summary).map_err(|e| CoreError::Internal(e.to_string()))?;
        let record = self
            .store
            .create_model(
                &NewModel {
                    name: name.clone(),
                    owner_id: p.user.id,
                    owner_email: p.email().to_string(),
                    file_id: stored.file_id.clone(),
                    wrapped_key: stored.wrapped_key.as_bytes().to_vec(),
                    sha256: sha256.clone(),
                    size_bytes: size,
                    summary: summary_json,
                    signed_by: signer.as_ref().map(|k| k.fingerprint.clone()),
                    fhe,
                    private: !p.has(Permission::ModelsPublish),
                },
                NewAuditEntry::new(p.email(), "model.upload", format!("model:{name}")).details(
                    json!({
                        "sha256": sha256,
                        "bytes": size,
                        "signed_by": signer.as_ref().map(|k| &k.fingerprint),
                        "operators": summary.operators.keys().collect::<Vec<_>>(),
                        "fhe": fhe_kind,
                        // What the creator confirmed the client spec may reveal.
                        "disclosure_sha256": disclosure_sha256,
                    }),
                ),
            )
            .await;
        match record {
            Ok(record) => Ok(ModelInfo {
                record,
                summary,
                signer: signer.map(|k| format!("{} ({})", k.name, k.fingerprint)),
            }),
            Err(e) => {
                let _ = self.datasets.remove_model(&stored.file_id);
                if let Some(f) = fhe_file {
                    let _ = self.datasets.remove_model(&f);
                }
                Err(e.into())
            }
        }
    }

    async fn model_info(&self, record: ModelRecord) -> Result<ModelInfo> {
        let summary: ModelSummary = serde_json::from_str(&record.summary)
            .map_err(|e| CoreError::Internal(format!("stored model summary: {e}")))?;
        let signer = match &record.signed_by {
            Some(fp) => self
                .store
                .list_signing_keys(record.owner_id)
                .await?
                .into_iter()
                .find(|k| &k.fingerprint == fp)
                .map(|k| format!("{} ({fp})", k.name)),
            None => None,
        };
        Ok(ModelInfo {
            record,
            summary,
            signer,
        })
    }

    pub async fn list_models(&self, p: &Principal) -> Result<Vec<ModelInfo>> {
        p.require(Permission::ModelsRead)?;
        let mut out = Vec::new();
        for r in self.store.list_models().await? {
            if may_see(p, &r) {
                out.push(self.model_info(r).await?);
            }
        }
        Ok(out)
    }

    /// A model version the caller may see; others' private models do not exist for them.
    pub(crate) async fn visible_model(
        &self,
        p: &Principal,
        name: &str,
        version: Option<u32>,
    ) -> Result<ModelRecord> {
        self.store
            .get_model(name, version)
            .await?
            .filter(|r| may_see(p, r))
            .ok_or(CoreError::NotFound(NotFound::Model))
    }

    pub async fn get_model(
        &self,
        p: &Principal,
        name: &str,
        version: Option<u32>,
    ) -> Result<ModelInfo> {
        p.require(Permission::ModelsRead)?;
        let r = self.visible_model(p, name, version).await?;
        self.model_info(r).await
    }

    /// Deletes a model version (or all versions): only its owner, or the node's owner.
    pub async fn delete_model(
        &self,
        p: &Principal,
        name: &str,
        version: Option<u32>,
    ) -> Result<usize> {
        p.require(Permission::ModelsManage)?;
        let current = self.visible_model(p, name, version).await?;
        if current.owner_id != p.user.id && !p.has(Permission::NodeKeys) {
            return Err(CoreError::Forbidden(Permission::NodeKeys));
        }
        let deleted = self
            .store
            .delete_model(
                name,
                version,
                NewAuditEntry::new(p.email(), "model.delete", format!("model:{name}"))
                    .details(json!({"version": version})),
            )
            .await?;
        for m in &deleted {
            let files = std::iter::once(&m.file_id).chain(m.fhe.as_ref().map(|f| &f.file_id));
            for file in files {
                if let Err(e) = self.datasets.remove_model(file) {
                    tracing::warn!(model = name, error = %e, "could not remove a model file");
                }
            }
        }
        Ok(deleted.len())
    }
}

/// Whether `p` may see model `r` (see the module notes).
fn may_see(p: &Principal, r: &ModelRecord) -> bool {
    !r.private
        || r.owner_id == p.user.id
        || p.has(Permission::RequestsReview)
        || p.has(Permission::NodeKeys)
}

impl Core {
    /// Stores a model as the node's first owner (for `serve --demo`), unless the name exists.
    pub async fn bootstrap_model(&self, name: &str, bytes: Vec<u8>) -> Result<bool> {
        let name = model_name(name)?;
        if self.store.get_model(&name, None).await?.is_some() {
            return Ok(false);
        }
        let owner = self
            .store
            .list_users()
            .await?
            .into_iter()
            .find(|u| u.role == veil_types::PresetRole::Owner.name())
            .ok_or_else(|| CoreError::Internal("no owner account".into()))?;
        let (bytes, summary) = tokio::task::spawn_blocking(move || {
            let s = veil_ml::inspect(&bytes, veil_ml::Limits::default());
            (bytes, s)
        })
        .await
        .map_err(|e| CoreError::Internal(e.to_string()))?;
        let summary = summary.map_err(|e| CoreError::Internal(format!("demo model: {e}")))?;
        let sha256 = veil_crypto::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let stored = self
            .datasets
            .store_model(bytes)
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let created = self
            .store
            .create_model(
                &NewModel {
                    name: name.clone(),
                    owner_id: owner.id,
                    owner_email: owner.email.clone(),
                    file_id: stored.file_id.clone(),
                    wrapped_key: stored.wrapped_key.as_bytes().to_vec(),
                    sha256,
                    size_bytes: size,
                    summary: serde_json::to_string(&summary)
                        .map_err(|e| CoreError::Internal(e.to_string()))?,
                    signed_by: None,
                    fhe: None,
                    private: false,
                },
                NewAuditEntry::new(crate::auth::SYSTEM, "model.upload", format!("model:{name}"))
                    .details(json!({"bootstrap": true})),
            )
            .await;
        if let Err(e) = created {
            let _ = self.datasets.remove_model(&stored.file_id);
            return Err(e.into());
        }
        Ok(true)
    }
}
