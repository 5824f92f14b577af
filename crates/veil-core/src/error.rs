//! What a use-case can refuse or fail with. Each variant is something a caller can act on;
//! the HTTP layer maps them to stable wire codes in one table.

use veil_types::{Delta, Epsilon, Permission};

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// No usable credentials: missing, malformed, unknown, expired or revoked token.
    #[error("authentication required: the token is missing, invalid, expired or revoked")]
    Unauthenticated,
    #[error("invalid email or password")]
    InvalidCredentials,
    /// Too many failed logins, or more encrypted samples than the node allows per window.
    #[error("too many attempts or requests; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The caller already has as many operations of this kind in progress as the node allows.
    #[error(
        "you already have {limit} {what} in progress, the most this node allows; retry when one ends"
    )]
    TooManyInProgress { what: &'static str, limit: usize },
    #[error("you must change your one-time password first (veil passwd)")]
    PasswordChangeRequired,
    #[error("this action requires the permission {0}")]
    Forbidden(Permission),
    #[error("you cannot grant permissions you do not hold: {}", .missing.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "))]
    PrivilegeEscalation { missing: Vec<Permission> },
    #[error("{0}")]
    NotFound(NotFound),
    #[error("{0}")]
    Conflict(Conflict),
    #[error("the password is too weak: {0}")]
    WeakPassword(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("no privacy budget has been set for you; ask an administrator")]
    NoBudget,
    #[error(
        "privacy budget exhausted{}: ε {} and δ {} remain",
        match (dataset.as_deref(), global) {
            (Some(d), true) => format!(" (dataset {d}'s cap for all users)"),
            (Some(d), false) => format!(" for dataset {d}"),
            _ => String::new(),
        },
        shown(*epsilon_remaining),
        shown_delta(*delta_remaining)
    )]
    BudgetExhausted {
        dataset: Option<String>,
        /// The dataset's global cap refused, not the user's own budget.
        global: bool,
        epsilon_remaining: Epsilon,
        delta_remaining: Delta,
    },
    #[error("invalid schema manifest: {0}")]
    InvalidManifest(String),
    /// Rows of an upload break the manifest; nothing was stored.
    #[error("{count} row problem(s) found; nothing was stored")]
    UploadRejected {
        violations: Vec<veil_datasets::Violation>,
        count: u64,
    },
    /// The uploaded file cannot be read as the declared format or has the wrong columns.
    #[error("{0}")]
    UploadMalformed(String),
    #[error("the upload exceeds this node's limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// ε, δ or the confidence level is out of the accepted range (nothing was charged).
    #[error("{0}")]
    InvalidParameters(String),
    /// The query is outside the supported subset or the privacy parameters cannot be met.
    #[error("query refused: {0}")]
    QueryRefused(String),
    /// Execution failed after the budget was charged. Deliberately uninformative: the way
    /// a query fails must not depend on the private data.
    #[error("the query could not be completed; its privacy cost was charged")]
    QueryFailed,
    /// The uploaded model is not a valid ONNX file or uses something this node will not run.
    #[error("{0}")]
    InvalidModel(String),
    #[error(
        "this node requires models to be signed by a key registered to the uploader (--signature)"
    )]
    SignatureRequired,
    #[error("{0}")]
    BadSignature(String),
    /// The dataset's file cannot be read on this node (checked before anything is charged).
    #[error("the dataset's data is not available on this node; nothing was charged")]
    DatasetUnavailable,
    /// The node is overloaded (no database connection came free in time); nothing changed.
    #[error("the node is busy; retry in a few seconds")]
    Busy,
    /// A validation request that does not fit the model or the dataset.
    #[error("{0}")]
    InvalidValidation(String),
    /// The evaluation key has passed its expiry; upload a fresh one.
    #[error("the evaluation key {0} has expired; upload it again (veil fhe infer does this)")]
    FheKeyExpired(String),
    /// The ciphertexts name a key whose fingerprint differs from the stored key's.
    #[error(
        "the evaluation key {0} is not the key these ciphertexts were made for (fingerprints differ); \
         encrypt with the client key that belongs to it"
    )]
    FheKeyMismatch(String),
    /// A ciphertext or key that does not parse or was made with other parameters.
    #[error("malformed ciphertext or key: {0}")]
    MalformedCiphertext(String),
    /// Publishing needs the creator to confirm what the client spec reveals.
    #[error(
        "publishing reveals what the disclosure lists (see details); confirm it with its digest {digest}"
    )]
    FheDisclosureUnconfirmed {
        digest: String,
        disclosure: serde_json::Value,
    },
    /// An encrypted-inference request that does not fit the model (not published for FHE,
    /// wrong input width, too many samples).
    #[error("{0}")]
    InvalidFheRequest(String),
    #[error("the encrypted computation ran past this node's limit of {0} s")]
    FheTimedOut(u64),
    /// A failure that is not the caller's fault. The message is for logs only.
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    #[error("no such user")]
    User,
    #[error("no such role")]
    Role,
    #[error("no such active token")]
    Token,
    #[error("no such dataset")]
    Dataset,
    #[error("no such model")]
    Model,
    #[error("no such request")]
    Request,
    #[error("no such signing key")]
    SigningKey,
    #[error("no such evaluation key of yours")]
    EvaluationKey,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("a user with this email already exists")]
    UserExists,
    #[error("a role with this name already exists")]
    RoleExists,
    #[error("you already have an active token with this name")]
    TokenNameTaken,
    #[error("the role is still assigned to users")]
    RoleInUse,
    #[error("preset roles cannot be changed or deleted")]
    PresetRole,
    #[error("this would leave the node without an enabled owner")]
    LastOwner,
    #[error("you cannot {0} your own account")]
    SelfAction(&'static str),
    #[error("a dataset with this name already exists; delete it first")]
    DatasetExists,
    #[error("this key is already registered, or you have an active key with this name")]
    SigningKeyExists,
    #[error("the request is {0}; only pending requests can be approved or denied")]
    RequestNotPending(String),
    #[error("the model name {0} belongs to another user")]
    ModelNameTaken(String),
    #[error(
        "you already have {0} evaluation keys on this node; delete one first (veil fhe keys delete)"
    )]
    TooManyFheKeys(usize),
}

impl From<veil_store::StoreError> for CoreError {
    fn from(e: veil_store::StoreError) -> Self {
        use veil_store::{Entity, StoreError as S};
        match e {
            S::NotFound(Entity::User) => CoreError::NotFound(NotFound::User),
            S::NotFound(Entity::Role) => CoreError::NotFound(NotFound::Role),
            S::NotFound(Entity::Token) => CoreError::NotFound(NotFound::Token),
            S::NotFound(Entity::Dataset) => CoreError::NotFound(NotFound::Dataset),
            S::NotFound(Entity::Model) => CoreError::NotFound(NotFound::Model),
            S::NotFound(Entity::Request) => CoreError::NotFound(NotFound::Request),
            S::NotFound(Entity::SigningKey) => CoreError::NotFound(NotFound::SigningKey),
            S::Conflict(Entity::SigningKey) => CoreError::Conflict(Conflict::SigningKeyExists),
            S::NotFound(Entity::EvaluationKey) => CoreError::NotFound(NotFound::EvaluationKey),
            S::Conflict(Entity::Dataset) => CoreError::Conflict(Conflict::DatasetExists),
            S::Conflict(Entity::User) => CoreError::Conflict(Conflict::UserExists),
            S::Conflict(Entity::Role) => CoreError::Conflict(Conflict::RoleExists),
            S::Conflict(Entity::Token) => CoreError::Conflict(Conflict::TokenNameTaken),
            S::InUse(Entity::Role) => CoreError::Conflict(Conflict::RoleInUse),
            S::NoBudget => CoreError::NoBudget,
            S::Busy => CoreError::Busy,
            S::BudgetExhausted(r) => CoreError::BudgetExhausted {
                global: r.global,
                dataset: r.dataset,
                epsilon_remaining: r.epsilon_remaining,
                delta_remaining: r.delta_remaining,
            },
            other => CoreError::Internal(other.to_string()),
        }
    }
}

fn shown(e: Epsilon) -> String {
    if e.units() == u64::MAX {
        "unlimited".into()
    } else {
        e.to_string()
    }
}

fn shown_delta(d: Delta) -> String {
    if d.units() == u64::MAX {
        "unlimited".into()
    } else {
        d.to_string()
    }
}
