//! Row shapes shared by the SQL backends.
//!
//! Each backend fetches rows as plain tuples (`sqlx::query_as::<_, UserRow>`) and converts them
//! here, so decoding rules (how permissions, amounts and booleans are stored) live in one place
//! and both backends store identical values.

use veil_types::{Delta, Epsilon, PermissionSet};

use crate::{
    AuditEntry, AuditHead, Budget, DatasetRecord, EvaluationKeyRecord, FheArtifact, LedgerEntry,
    ModelRecord, RequestRecord, RequestStatus, Role, SigningKeyRecord, StoreError, TokenKind,
    TokenRecord, User,
};

/// The column list matching the row tuple below, as a literal for `concat!`.
#[macro_export]
macro_rules! user_columns {
    () => {
        "id, email, role, disabled, must_change_password, created_at, updated_at"
    };
}
pub type UserRow = (i64, String, String, bool, bool, i64, i64);

pub fn user(r: UserRow) -> User {
    User {
        id: r.0,
        email: r.1,
        role: r.2,
        disabled: r.3,
        must_change_password: r.4,
        created_at: r.5,
        updated_at: r.6,
    }
}

/// The column list matching the row tuple below, as a literal for `concat!`.
#[macro_export]
macro_rules! role_columns {
    () => {
        "name, description, permissions, preset, created_at"
    };
}
pub type RoleRow = (String, String, String, bool, i64);

pub fn role(r: RoleRow) -> Result<Role, StoreError> {
    Ok(Role {
        permissions: permissions(&r.2)?,
        name: r.0,
        description: r.1,
        preset: r.3,
        created_at: r.4,
    })
}

/// Permissions are stored as a comma-separated list of their names.
pub fn permissions_text(p: &PermissionSet) -> String {
    p.to_string()
}

pub fn permissions(text: &str) -> Result<PermissionSet, StoreError> {
    PermissionSet::parse_list(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The column list matching the row tuple below, as a literal for `concat!`.
#[macro_export]
macro_rules! token_columns {
    () => {
        "id, user_id, kind, name, secret_hash, created_at, expires_at, revoked_at, last_used_at"
    };
}
pub type TokenRow = (
    String,
    i64,
    String,
    Option<String>,
    Vec<u8>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

pub fn token(r: TokenRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        kind: TokenKind::parse(&r.2)
            .ok_or_else(|| StoreError::Corrupt(format!("token kind {:?}", r.2)))?,
        id: r.0,
        user_id: r.1,
        name: r.3,
        secret_hash: r.4,
        created_at: r.5,
        expires_at: r.6,
        revoked_at: r.7,
        last_used_at: r.8,
    })
}

/// The overall budget is stored with an empty scope so `(user_id, scope)` can be a primary key.
pub const OVERALL_SCOPE: &str = "";

pub fn scope(dataset: Option<&str>) -> &str {
    dataset.unwrap_or(OVERALL_SCOPE)
}

/// The column list matching the row tuple below, as a literal for `concat!`.
#[macro_export]
macro_rules! budget_columns {
    () => {
        "user_id, scope, epsilon_cap, delta_cap, epsilon_spent, delta_spent, updated_at"
    };
}
pub type BudgetRow = (i64, String, i64, i64, i64, i64, i64);

pub fn budget(r: BudgetRow) -> Result<Budget, StoreError> {
    Ok(Budget {
        user_id: r.0,
        dataset: (r.1 != OVERALL_SCOPE).then_some(r.1),
        epsilon_cap: Epsilon::from_units(amount(r.2)?),
        delta_cap: Delta::from_units(amount(r.3)?),
        epsilon_spent: Epsilon::from_units(amount(r.4)?),
        delta_spent: Delta::from_units(amount(r.5)?),
        updated_at: r.6,
    })
}

/// Amounts are `u64` in memory and `BIGINT` in SQL; they never exceed `i64::MAX` because caps
/// are bounded (see `veil_types::privacy`).
pub fn amount(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative privacy amount {v}")))
}

pub fn sql_amount(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The column list matching the row tuple below, as a literal for `concat!`.
#[macro_export]
macro_rules! ledger_columns {
    () => {
        "id, user_id, dataset, epsilon, delta, purpose, reference, audit_seq, at"
    };
}
pub type LedgerRow = (i64, i64, Option<String>, i64, i64, String, String, i64, i64);

pub fn ledger(r: LedgerRow) -> Result<LedgerEntry, StoreError> {
    Ok(LedgerEntry {
        id: r.0,
        user_id: r.1,
        dataset: r.2,
        epsilon: Epsilon::from_units(amount(r.3)?),
        delta: Delta::from_units(amount(r.4)?),
        purpose: r.5,
        reference: r.6,
        audit_seq: seq(r.7)?,
        at: r.8,
    })
}

/// The column list matching the row tuple below, as a literal for `concat!`.
#[macro_export]
macro_rules! audit_columns {
    () => {
        "seq, at, actor, action, target, outcome, details, prev_hash, hash, seal"
    };
}
pub type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
);

pub fn audit(r: AuditRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: seq(r.0)?,
        at: r.1,
        actor: r.2,
        action: r.3,
        target: r.4,
        outcome: r.5,
        details: r.6,
        prev_hash: r.7,
        hash: r.8,
        seal: r.9,
    })
}

pub type AuditHeadRow = (i64, Vec<u8>, Vec<u8>);

pub fn audit_head(r: AuditHeadRow) -> Result<AuditHead, StoreError> {
    Ok(AuditHead {
        seq: seq(r.0)?,
        hash: r.1,
        seal: r.2,
    })
}

pub fn seq(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative sequence number {v}")))
}

pub fn sql_seq(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The column list matching [`DatasetRow`], as a literal for `concat!`.
#[macro_export]
macro_rules! dataset_columns {
    () => {
        "name, description, manifest, file_id, wrapped_key, row_count, bytes_stored, created_by, created_at, epsilon_cap, delta_cap, epsilon_spent, delta_spent, policy"
    };
}
pub type DatasetRow = (
    String,
    String,
    String,
    String,
    Vec<u8>,
    i64,
    i64,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
    String,
);

pub fn dataset(r: DatasetRow) -> Result<DatasetRecord, StoreError> {
    Ok(DatasetRecord {
        name: r.0,
        description: r.1,
        manifest: r.2,
        file_id: r.3,
        wrapped_key: r.4,
        rows: amount(r.5)?,
        bytes_stored: amount(r.6)?,
        created_by: r.7,
        created_at: r.8,
        epsilon_cap: r.9.map(amount).transpose()?.map(Epsilon::from_units),
        delta_cap: r.10.map(amount).transpose()?.map(Delta::from_units),
        epsilon_spent: Epsilon::from_units(amount(r.11)?),
        delta_spent: Delta::from_units(amount(r.12)?),
        policy: r.13,
    })
}

#[macro_export]
macro_rules! signing_key_columns {
    () => {
        "id, user_id, name, public_key, fingerprint, created_at, revoked_at"
    };
}
pub type SigningKeyRow = (i64, i64, String, Vec<u8>, String, i64, Option<i64>);

pub fn signing_key(r: SigningKeyRow) -> SigningKeyRecord {
    SigningKeyRecord {
        id: r.0,
        user_id: r.1,
        name: r.2,
        public_key: r.3,
        fingerprint: r.4,
        created_at: r.5,
        revoked_at: r.6,
    }
}

#[macro_export]
macro_rules! model_columns {
    () => {
        "id, name, version, owner_id, owner_email, file_id, wrapped_key, sha256, size_bytes, summary, signed_by, created_at, fhe_file_id, fhe_wrapped_key, fhe_summary, private"
    };
}
pub type ModelRow = (
    i64,
    String,
    i64,
    i64,
    String,
    String,
    Vec<u8>,
    String,
    i64,
    String,
    Option<String>,
    i64,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    bool,
);

pub fn model(r: ModelRow) -> Result<ModelRecord, StoreError> {
    Ok(ModelRecord {
        id: r.0,
        name: r.1,
        version: u32::try_from(r.2)
            .map_err(|_| StoreError::Corrupt(format!("model version {}", r.2)))?,
        owner_id: r.3,
        owner_email: r.4,
        file_id: r.5,
        wrapped_key: r.6,
        sha256: r.7,
        size_bytes: amount(r.8)?,
        summary: r.9,
        signed_by: r.10,
        created_at: r.11,
        private: r.15,
        fhe: match (r.12, r.13, r.14) {
            (Some(file_id), Some(wrapped_key), Some(summary)) => Some(FheArtifact {
                file_id,
                wrapped_key,
                summary,
            }),
            (None, None, None) => None,
            _ => {
                return Err(StoreError::Corrupt(
                    "model FHE columns are partly set".into(),
                ));
            }
        },
    })
}

#[macro_export]
macro_rules! evaluation_key_columns {
    () => {
        "id, user_id, sha256, size_bytes, created_at, expires_at"
    };
}
pub type EvaluationKeyRow = (String, i64, String, i64, i64, i64);

pub fn evaluation_key(r: EvaluationKeyRow) -> Result<EvaluationKeyRecord, StoreError> {
    Ok(EvaluationKeyRecord {
        id: r.0,
        user_id: r.1,
        sha256: r.2,
        size_bytes: amount(r.3)?,
        created_at: r.4,
        expires_at: r.5,
    })
}

#[macro_export]
macro_rules! request_columns {
    () => {
        "id, kind, requester_id, requester, target, dataset, parameters, epsilon, delta, status, reason, result, reviewer, created_at, updated_at"
    };
}
pub type RequestRow = (
    i64,
    String,
    i64,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

pub fn request(r: RequestRow) -> Result<RequestRecord, StoreError> {
    Ok(RequestRecord {
        id: r.0,
        kind: r.1,
        requester_id: r.2,
        requester: r.3,
        target: r.4,
        dataset: r.5,
        parameters: r.6,
        epsilon: Epsilon::from_units(amount(r.7)?),
        delta: Delta::from_units(amount(r.8)?),
        status: RequestStatus::parse(&r.9)
            .ok_or_else(|| StoreError::Corrupt(format!("request status {:?}", r.9)))?,
        reason: r.10,
        result: r.11,
        reviewer: r.12,
        created_at: r.13,
        updated_at: r.14,
    })
}

/// Statuses as a comma-separated list, for `status IN (…)` checks.
pub fn status_list(s: &[RequestStatus]) -> String {
    s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",")
}
