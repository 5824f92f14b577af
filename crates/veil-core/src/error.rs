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
    #[error("too many failed attempts; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
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
        "privacy budget exhausted{}: ε {epsilon_remaining} and δ {delta_remaining} remain",
        dataset.as_deref().map(|d| format!(" for dataset {d}")).unwrap_or_default()
    )]
    BudgetExhausted {
        dataset: Option<String>,
        epsilon_remaining: Epsilon,
        delta_remaining: Delta,
    },
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
}

impl From<veil_store::StoreError> for CoreError {
    fn from(e: veil_store::StoreError) -> Self {
        use veil_store::StoreError as S;
        match e {
            S::NotFound { what: "user" } => CoreError::NotFound(NotFound::User),
            S::NotFound { what: "role" } => CoreError::NotFound(NotFound::Role),
            S::NotFound { what: "token" } => CoreError::NotFound(NotFound::Token),
            S::Conflict { what: "user" } => CoreError::Conflict(Conflict::UserExists),
            S::Conflict { what: "role" } => CoreError::Conflict(Conflict::RoleExists),
            S::Conflict { what: "token" } => CoreError::Conflict(Conflict::TokenNameTaken),
            S::InUse { what: "role" } => CoreError::Conflict(Conflict::RoleInUse),
            S::NoBudget => CoreError::NoBudget,
            S::BudgetExhausted(r) => CoreError::BudgetExhausted {
                dataset: r.dataset,
                epsilon_remaining: r.epsilon_remaining,
                delta_remaining: r.delta_remaining,
            },
            other => CoreError::Internal(other.to_string()),
        }
    }
}
