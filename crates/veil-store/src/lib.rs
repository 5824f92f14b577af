//! The metadata store: users, roles, tokens, budgets, the budget ledger and the audit log.
//!
//! [`Store`] is the one interface the core talks to; `veil-store-sql` implements it once for
//! the SQLite and PostgreSQL backends, and `veil-store-conformance` holds the tests every
//! backend must pass. The store reads no wall clock: it stamps changes with the node's injected
//! [`Clock`].
//!
//! Invariants every backend keeps:
//! - Every mutating method takes the audit entry describing it and writes both in **one
//!   transaction**: a change is never stored without its audit entry, nor the reverse.
//! - [`Store::debit_budget`] checks the caps, debits, writes the ledger row and the audit entry
//!   in one transaction, and refuses (changing nothing) if any cap would be exceeded, however
//!   many callers race.
//! - The audit log is append-only and hash-chained; entries are sealed with the [`AuditKey`]
//!   given at open time (see [`audit::seal_next`]).
//! - No private data rows ever reach this store: it holds metadata only.

pub mod audit;
mod model;
pub mod rows;

pub use model::*;

use async_trait::async_trait;
use veil_crypto::AuditKey;
use veil_types::{Delta, Epsilon, UserId};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The kinds of record the store keeps, as its errors name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Role,
    User,
    Token,
    Dataset,
    SigningKey,
    Model,
    EvaluationKey,
    Request,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entity::Role => "role",
            Entity::User => "user",
            Entity::Token => "token",
            Entity::Dataset => "dataset",
            Entity::SigningKey => "signing key",
            Entity::Model => "model",
            Entity::EvaluationKey => "evaluation key",
            Entity::Request => "request",
        })
    }
}

/// What went wrong in the store, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(Entity),
    #[error("{0} already exists")]
    Conflict(Entity),
    /// A request was in none of the states a transition may start from (someone else moved
    /// it first).
    #[error("the request is no longer in a state this step starts from")]
    StateChanged,
    #[error("{0} is still in use")]
    InUse(Entity),
    /// The owner already holds as many of `entity` as allowed.
    #[error("too many of {0}")]
    LimitReached(Entity),
    #[error("no privacy budget has been set for this user")]
    NoBudget,
    #[error("privacy budget exhausted")]
    BudgetExhausted(BudgetRefusal),
    /// The stored data could not be decoded: a bug or outside tampering.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// No database connection became free in time: the node is overloaded, nothing changed.
    #[error("the database is busy")]
    Busy,
    /// The database failed (connection lost, disk full, …). Details are for logs only.
    #[error("database error: {0}")]
    Backend(String),
}

/// Which cap refused a debit, and what is left under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    /// `None` for the user's overall budget, `Some(dataset)` for a per-dataset one.
    pub dataset: Option<String>,
    /// True when the refusing cap is the dataset's global cap (all users together).
    pub global: bool,
    pub epsilon_remaining: Epsilon,
    pub delta_remaining: Delta,
}

impl BudgetRefusal {
    /// A user's budget (overall or for one dataset) that cannot take a debit.
    pub fn by_budget(b: &Budget) -> Self {
        Self {
            dataset: b.dataset.clone(),
            global: false,
            epsilon_remaining: b.epsilon_remaining(),
            delta_remaining: b.delta_remaining(),
        }
    }

    /// A dataset's global cap (all users together) that cannot take a debit; an unset cap
    /// leaves an unlimited amount.
    pub fn by_dataset_cap(d: &DatasetRecord) -> Self {
        Self {
            dataset: Some(d.name.clone()),
            global: true,
            epsilon_remaining: d.epsilon_cap.map_or(Epsilon::from_units(u64::MAX), |c| {
                c.saturating_sub(d.epsilon_spent)
            }),
            delta_remaining: d.delta_cap.map_or(Delta::from_units(u64::MAX), |c| {
                c.saturating_sub(d.delta_spent)
            }),
        }
    }
}

/// The metadata store. Implementations must be safe to share across tasks.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Which backend this is, for logs and `/healthz`.
    fn backend_name(&self) -> &'static str;

    // ---- roles
    /// Inserts or updates the preset roles (their permissions are defined in code).
    async fn sync_preset_roles(&self, roles: &[NewRole]) -> Result<()>;
    async fn create_role(&self, role: &NewRole, audit: NewAuditEntry) -> Result<Role>;
    async fn get_role(&self, name: &str) -> Result<Option<Role>>;
    async fn list_roles(&self) -> Result<Vec<Role>>;
    /// Deletes a custom role; `InUse` if any user holds it.
    async fn delete_role(&self, name: &str, audit: NewAuditEntry) -> Result<()>;

    // ---- users
    async fn create_user(&self, user: &NewUser, audit: NewAuditEntry) -> Result<User>;
    async fn get_user(&self, id: UserId) -> Result<Option<User>>;
    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>>;
    async fn list_users(&self) -> Result<Vec<User>>;
    /// The stored Argon2id PHC string.
    async fn get_password_hash(&self, id: UserId) -> Result<Option<String>>;
    /// Changes role and/or disabled flag. Disabling also revokes all the user's tokens.
    async fn update_user(
        &self,
        id: UserId,
        update: &UserUpdate,
        audit: NewAuditEntry,
    ) -> Result<User>;
    /// Replaces the password hash and revokes the tokens `change.revokes` names.
    async fn set_password(
        &self,
        id: UserId,
        change: &PasswordChange,
        audit: NewAuditEntry,
    ) -> Result<()>;
    /// Enabled users holding `role` (to refuse removing the last owner).
    async fn count_enabled_users_with_role(&self, role: &str) -> Result<u64>;

    // ---- tokens
    async fn create_token(&self, token: &NewToken, audit: NewAuditEntry) -> Result<TokenRecord>;
    /// The token with its user and the user's role, in one round trip (the per-request path).
    async fn get_token_principal(&self, token_id: &str) -> Result<Option<TokenPrincipal>>;
    async fn list_tokens(&self, user_id: UserId) -> Result<Vec<TokenRecord>>;
    /// Revokes one of `user_id`'s tokens; `NotFound` if it is not theirs or not active.
    async fn revoke_token(
        &self,
        user_id: UserId,
        token_id: &str,
        audit: NewAuditEntry,
    ) -> Result<()>;
    async fn touch_token(&self, token_id: &str, at: Timestamp) -> Result<()>;

    // ---- budgets
    async fn set_budget(&self, budget: &BudgetCap, audit: NewAuditEntry) -> Result<Budget>;
    async fn list_budgets(&self, user_id: UserId) -> Result<Vec<Budget>>;
    /// Debits a cost from the user's overall budget, their budget for the dataset if one is
    /// set, and the dataset's global cap if it has one; writes the ledger entry and the audit
    /// entry; all in one transaction.
    async fn debit_budget(
        &self,
        debit: &DebitRequest,
        audit: NewAuditEntry,
    ) -> Result<DebitReceipt>;
    async fn list_ledger(&self, user_id: UserId, limit: u32) -> Result<Vec<LedgerEntry>>;

    // ---- datasets
    /// Records a dataset; `Conflict` if the name is taken.
    async fn create_dataset(&self, d: &NewDataset, audit: NewAuditEntry) -> Result<DatasetRecord>;
    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetRecord>>;
    async fn list_datasets(&self) -> Result<Vec<DatasetRecord>>;
    /// Deletes the record (and with it the wrapped key) and returns it, so the caller can
    /// remove the file.
    async fn delete_dataset(&self, name: &str, audit: NewAuditEntry) -> Result<DatasetRecord>;
    async fn update_dataset(
        &self,
        name: &str,
        settings: &DatasetSettings,
        audit: NewAuditEntry,
    ) -> Result<DatasetRecord>;

    // ---- signing keys
    /// `Conflict` if the key is already registered, or the user has an active key of that name.
    async fn add_signing_key(
        &self,
        key: &NewSigningKey,
        audit: NewAuditEntry,
    ) -> Result<SigningKeyRecord>;
    async fn list_signing_keys(&self, user_id: UserId) -> Result<Vec<SigningKeyRecord>>;
    async fn revoke_signing_key(
        &self,
        user_id: UserId,
        id: i64,
        audit: NewAuditEntry,
    ) -> Result<()>;

    // ---- models
    /// Records a model upload as the next version of its name.
    async fn create_model(&self, m: &NewModel, audit: NewAuditEntry) -> Result<ModelRecord>;
    /// A version of a model; the newest if `version` is `None`.
    async fn get_model(&self, name: &str, version: Option<u32>) -> Result<Option<ModelRecord>>;
    /// Every version of every model, by name then version.
    async fn list_models(&self) -> Result<Vec<ModelRecord>>;
    /// Deletes one version, or all versions if `version` is `None`; returns what was deleted.
    async fn delete_model(
        &self,
        name: &str,
        version: Option<u32>,
        audit: NewAuditEntry,
    ) -> Result<Vec<ModelRecord>>;

    // ---- evaluation keys (encrypted inference)
    /// `Conflict` if the id is taken; `LimitReached` if the user already holds
    /// `key.max_live_per_user` unexpired keys.
    async fn add_evaluation_key(
        &self,
        key: &NewEvaluationKey,
        audit: NewAuditEntry,
    ) -> Result<EvaluationKeyRecord>;
    async fn get_evaluation_key(&self, id: &str) -> Result<Option<EvaluationKeyRecord>>;
    /// Oldest first.
    async fn list_evaluation_keys(&self, user_id: UserId) -> Result<Vec<EvaluationKeyRecord>>;
    /// `NotFound` unless the key exists and belongs to `user_id`.
    async fn delete_evaluation_key(
        &self,
        user_id: UserId,
        id: &str,
        audit: NewAuditEntry,
    ) -> Result<()>;

    // ---- requests
    async fn create_request(&self, r: &NewRequest, audit: NewAuditEntry) -> Result<RequestRecord>;
    async fn get_request(&self, id: i64) -> Result<Option<RequestRecord>>;
    /// Newest first; only `requester`'s if given; only `status` if given.
    /// Requests, newest first, filtered by requester, status and kind (each optional).
    async fn list_requests(
        &self,
        requester: Option<UserId>,
        status: Option<RequestStatus>,
        kind: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RequestRecord>>;
    /// Moves a request to `t.to` if it is in one of `t.from`; `Conflict` otherwise.
    async fn transition_request(
        &self,
        id: i64,
        t: &RequestTransition,
        audit: NewAuditEntry,
    ) -> Result<RequestRecord>;

    // ---- audit
    /// Appends a standalone entry (for events that change no other state: logins, refusals).
    async fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditEntry>;
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;
    async fn audit_head(&self) -> Result<Option<AuditHead>>;
}

/// Builds a store's audit sealing key from the node's master key.
pub fn audit_key(master: &veil_crypto::MasterKey) -> AuditKey {
    AuditKey::derive(master)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(epsilon_cap: Option<u64>, delta_cap: Option<u64>) -> DatasetRecord {
        DatasetRecord {
            name: "patients".into(),
            description: String::new(),
            manifest: String::new(),
            file_id: String::new(),
            wrapped_key: Vec::new(),
            rows: 0,
            bytes_stored: 0,
            created_by: String::new(),
            created_at: 0,
            epsilon_cap: epsilon_cap.map(Epsilon::from_units),
            delta_cap: delta_cap.map(Delta::from_units),
            epsilon_spent: Epsilon::from_units(30),
            delta_spent: Delta::from_units(5),
            policy: "auto".into(),
        }
    }

    #[test]
    fn a_refusal_names_its_cap_and_what_is_left_under_it() {
        let budget = Budget {
            user_id: 7,
            dataset: Some("patients".into()),
            epsilon_cap: Epsilon::from_units(100),
            delta_cap: Delta::from_units(10),
            epsilon_spent: Epsilon::from_units(60),
            delta_spent: Delta::from_units(10),
            updated_at: 0,
        };
        assert_eq!(
            BudgetRefusal::by_budget(&budget),
            BudgetRefusal {
                dataset: Some("patients".into()),
                global: false,
                epsilon_remaining: Epsilon::from_units(40),
                delta_remaining: Delta::from_units(0),
            }
        );
        assert_eq!(
            BudgetRefusal::by_dataset_cap(&dataset(Some(50), None)),
            BudgetRefusal {
                dataset: Some("patients".into()),
                global: true,
                epsilon_remaining: Epsilon::from_units(20),
                // No cap on δ: nothing limits it.
                delta_remaining: Delta::from_units(u64::MAX),
            }
        );
        // Spent beyond a cap lowered after the spending: nothing is left, not a wrap-around.
        assert_eq!(
            BudgetRefusal::by_dataset_cap(&dataset(Some(10), Some(1))).epsilon_remaining,
            Epsilon::from_units(0)
        );
    }
}
