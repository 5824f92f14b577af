//! The records the store keeps. Plain data: no behaviour beyond small conveniences.

use veil_types::{Delta, Epsilon, PermissionSet, UserId};

/// Microseconds since the Unix epoch (UTC). One integer type in both backends keeps the audit
/// chain's encoding identical everywhere.
pub type Timestamp = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRole {
    pub name: String,
    pub description: String,
    pub permissions: PermissionSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub permissions: PermissionSet,
    pub preset: bool,
    pub created_at: Timestamp,
}

#[derive(Clone)]
pub struct NewUser {
    pub email: String,
    pub role: String,
    pub password_hash: String,
    pub must_change_password: bool,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("email", &self.email)
            .field("role", &self.role)
            .field("password_hash", &"[redacted]")
            .field("must_change_password", &self.must_change_password)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub role: String,
    pub disabled: bool,
    pub must_change_password: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    pub role: Option<String>,
    pub disabled: Option<bool>,
}

#[derive(Clone)]
pub struct PasswordChange {
    pub password_hash: String,
    pub must_change_password: bool,
    pub revokes: Revokes,
}

/// Which of the user's tokens a password change ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revokes {
    /// The user's own change: every session but the one making it (`keep`, if any) ends; API
    /// tokens, which the user made on purpose and can revoke one by one, stay.
    OtherSessions { keep: Option<String> },
    /// An administrator's reset: every session and every API token ends, so nothing minted
    /// before the reset works again once the user has chosen a new password.
    Everything,
}

impl std::fmt::Debug for PasswordChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChange")
            .field("password_hash", &"[redacted]")
            .field("must_change_password", &self.must_change_password)
            .field("revokes", &self.revokes)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Created by a login; short-lived.
    Session,
    /// Named, created explicitly for scripts; optional expiry.
    Api,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "session" => Some(TokenKind::Session),
            "api" => Some(TokenKind::Api),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct NewToken {
    pub id: String,
    pub user_id: UserId,
    pub kind: TokenKind,
    pub name: Option<String>,
    pub secret_hash: [u8; 32],
    pub expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: UserId,
    pub kind: TokenKind,
    pub name: Option<String>,
    pub secret_hash: Vec<u8>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("last_used_at", &self.last_used_at)
            .finish_non_exhaustive()
    }
}

impl TokenRecord {
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// A token joined with its user and the user's role: what authentication needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPrincipal {
    pub token: TokenRecord,
    pub user: User,
    pub permissions: PermissionSet,
}

/// A budget cap to set. `dataset: None` is the user's overall budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCap {
    pub user_id: UserId,
    pub dataset: Option<String>,
    pub epsilon: Epsilon,
    pub delta: Delta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub user_id: UserId,
    pub dataset: Option<String>,
    pub epsilon_cap: Epsilon,
    pub delta_cap: Delta,
    pub epsilon_spent: Epsilon,
    pub delta_spent: Delta,
    pub updated_at: Timestamp,
}

impl Budget {
    pub fn epsilon_remaining(&self) -> Epsilon {
        self.epsilon_cap.saturating_sub(self.epsilon_spent)
    }

    pub fn delta_remaining(&self) -> Delta {
        self.delta_cap.saturating_sub(self.delta_spent)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebitRequest {
    pub user_id: UserId,
    pub dataset: Option<String>,
    pub epsilon: Epsilon,
    pub delta: Delta,
    /// What the budget is spent on, e.g. `query`, `validation`.
    pub purpose: String,
    /// A handle to what was released (query hash, request id), never private data.
    pub reference: String,
    /// A request record to open in the debit's transaction, in which the charged work's
    /// outcome will be recorded (so no charge exists without its record).
    pub opens: Option<NewRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebitReceipt {
    pub ledger_id: i64,
    pub audit_seq: u64,
    pub epsilon: Epsilon,
    pub delta: Delta,
    /// The budgets the debit was charged to, after the debit.
    pub budgets: Vec<Budget>,
    /// The request opened with the debit (`DebitRequest::opens`).
    pub request_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: i64,
    pub user_id: UserId,
    pub dataset: Option<String>,
    pub epsilon: Epsilon,
    pub delta: Delta,
    pub purpose: String,
    pub reference: String,
    pub audit_seq: u64,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// The action happened.
    Ok,
    /// Refused for lack of permission or bad credentials.
    Denied,
    /// Refused by a rule (budget exhausted, validation).
    Refused,
    /// Attempted and failed.
    Failed,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Failed => "failed",
        }
    }
}

/// The time source a store stamps its changes with: the node's injected clock (tests control
/// it), never the wall clock read below `veil-core`.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> Timestamp;
}

/// An audit entry before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// Who acted: an email, or `anonymous` / `system`.
    pub actor: String,
    /// Dotted verb, e.g. `user.create`, `auth.login`.
    pub action: String,
    /// What it acted on, e.g. `user:ana@lab.org`.
    pub target: String,
    pub outcome: AuditOutcome,
    /// Structured context. Never secrets, never private rows.
    pub details: serde_json::Value,
}

impl NewAuditEntry {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: AuditOutcome::Ok,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn outcome(mut self, outcome: AuditOutcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// A sealed audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    /// The JSON text exactly as hashed.
    pub details: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub seal: Vec<u8>,
}

/// The sealed pointer to the newest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: Vec<u8>,
    pub seal: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries with `seq > after_seq`.
    pub after_seq: u64,
    pub limit: u32,
    pub actor: Option<String>,
    /// Only actions starting with this prefix (e.g. `auth.`).
    pub action_prefix: Option<String>,
}

impl Default for AuditFilter {
    fn default() -> Self {
        Self {
            after_seq: 0,
            limit: 100,
            actor: None,
            action_prefix: None,
        }
    }
}

/// A dataset to record after its encrypted file was written.
#[derive(Clone, PartialEq, Eq)]
pub struct NewDataset {
    pub name: String,
    pub description: String,
    /// The schema manifest (TOML) as uploaded.
    pub manifest: String,
    pub file_id: String,
    /// The dataset's data key, wrapped by the master key. Deleting the record destroys it.
    pub wrapped_key: Vec<u8>,
    pub rows: u64,
    pub bytes_stored: u64,
    pub created_by: String,
}

impl std::fmt::Debug for NewDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDataset")
            .field("name", &self.name)
            .field("file_id", &self.file_id)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct DatasetRecord {
    pub name: String,
    pub description: String,
    pub manifest: String,
    pub file_id: String,
    pub wrapped_key: Vec<u8>,
    pub rows: u64,
    pub bytes_stored: u64,
    pub created_by: String,
    pub created_at: Timestamp,
    /// A cap on what all users together may spend on this dataset; `None` for no cap.
    pub epsilon_cap: Option<Epsilon>,
    pub delta_cap: Option<Delta>,
    pub epsilon_spent: Epsilon,
    pub delta_spent: Delta,
    /// `auto` or `review` (whether requests on this dataset need approval).
    pub policy: String,
}

impl std::fmt::Debug for DatasetRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetRecord")
            .field("name", &self.name)
            .field("file_id", &self.file_id)
            .field("rows", &self.rows)
            .field("epsilon_cap", &self.epsilon_cap)
            .field("epsilon_spent", &self.epsilon_spent)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Changes to a dataset's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetSettings {
    /// `Some(None)` removes the cap.
    pub epsilon_cap: Option<Option<Epsilon>>,
    pub delta_cap: Option<Option<Delta>>,
    pub policy: Option<String>,
}

/// A public key a user registered for signing uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSigningKey {
    pub user_id: UserId,
    pub name: String,
    pub public_key: Vec<u8>,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub id: i64,
    pub user_id: UserId,
    pub name: String,
    pub public_key: Vec<u8>,
    pub fingerprint: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A model version to record after its encrypted file was written.
#[derive(Clone, PartialEq, Eq)]
pub struct NewModel {
    pub name: String,
    pub owner_id: UserId,
    pub owner_email: String,
    pub file_id: String,
    pub wrapped_key: Vec<u8>,
    pub sha256: String,
    pub size_bytes: u64,
    /// The inspection summary (JSON).
    pub summary: String,
    /// Fingerprint of the key that signed it, if signed.
    pub signed_by: Option<String>,
    /// The compiled encrypted-inference circuit, if the model is published for FHE.
    pub fhe: Option<FheArtifact>,
    /// Uploaded by someone who may not publish models (a data scientist's own model, for
    /// validation): only its owner and reviewers may see it.
    pub private: bool,
}

/// A model version's compiled FHE circuit: a sealed file (it holds the quantised weights) and
/// the public summary a client needs to encrypt inputs and read outputs (JSON).
#[derive(Clone, PartialEq, Eq)]
pub struct FheArtifact {
    pub file_id: String,
    pub wrapped_key: Vec<u8>,
    pub summary: String,
}

impl std::fmt::Debug for FheArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FheArtifact")
            .field("file_id", &self.file_id)
            .finish_non_exhaustive()
    }
}

/// A TFHE evaluation key a user uploaded; the key itself is a file named by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvaluationKey {
    /// Random public id (`ek_` + 32 hex digits), chosen by the caller.
    pub id: String,
    pub user_id: UserId,
    pub sha256: String,
    pub size_bytes: u64,
    pub expires_at: Timestamp,
    /// Unexpired keys the user may hold, this one included; checked in the insert's
    /// transaction, so racing uploads cannot pass it together.
    pub max_live_per_user: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationKeyRecord {
    pub id: String,
    pub user_id: UserId,
    pub sha256: String,
    pub size_bytes: u64,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for NewModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewModel")
            .field("name", &self.name)
            .field("owner_email", &self.owner_email)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub id: i64,
    pub name: String,
    /// 1, 2, … per name: every upload of a name is a new version.
    pub version: u32,
    pub owner_id: UserId,
    pub owner_email: String,
    pub file_id: String,
    pub wrapped_key: Vec<u8>,
    pub sha256: String,
    pub size_bytes: u64,
    pub summary: String,
    pub signed_by: Option<String>,
    pub created_at: Timestamp,
    pub fhe: Option<FheArtifact>,
    /// Visible only to its owner and to reviewers (see `NewModel::private`).
    pub private: bool,
}

impl std::fmt::Debug for ModelRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRecord")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("owner_email", &self.owner_email)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Running,
    Done,
    Failed,
}

impl RequestStatus {
    pub const ALL: [RequestStatus; 6] = [
        RequestStatus::Pending,
        RequestStatus::Approved,
        RequestStatus::Denied,
        RequestStatus::Running,
        RequestStatus::Done,
        RequestStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Running => "running",
            RequestStatus::Done => "done",
            RequestStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|x| x.as_str() == s)
    }
}

/// A request for something that may need review (a validation run, later a job), or the
/// record of a charged query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    /// e.g. `validation`.
    pub kind: String,
    pub requester_id: UserId,
    pub requester: String,
    /// What it acts on, e.g. `model:tumour-lr@1`.
    pub target: String,
    pub dataset: Option<String>,
    /// Kind-specific parameters (JSON).
    pub parameters: String,
    pub epsilon: Epsilon,
    pub delta: Delta,
    pub status: RequestStatus,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub id: i64,
    pub kind: String,
    pub requester_id: UserId,
    pub requester: String,
    pub target: String,
    pub dataset: Option<String>,
    pub parameters: String,
    pub epsilon: Epsilon,
    pub delta: Delta,
    pub status: RequestStatus,
    pub reason: Option<String>,
    /// The released outcome (JSON), once done.
    pub result: Option<String>,
    pub reviewer: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A compare-and-set status change: applies only if the request is in one of `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTransition {
    pub from: Vec<RequestStatus>,
    pub to: RequestStatus,
    pub reason: Option<String>,
    pub result: Option<String>,
    pub reviewer: Option<String>,
}
