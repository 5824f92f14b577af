//! Veil's use-cases: the rules of the node, independent of HTTP and SQL.
//!
//! [`Core`] is the single entry point. Every method that acts for a user takes the caller's
//! [`Principal`] and checks its permission itself (the HTTP layer checks too; this is the
//! second lock). Every change is recorded in the audit log by the store, in the same
//! transaction as the change.
//!
//! This crate must not depend on axum, sqlx or clap (a test in `veil-server` checks).

mod audit;
mod auth;
mod budgets;
mod charged;
mod clock;
mod datasets;
pub mod error;
mod fhe;
mod model_pool;
mod models;
mod password_policy;
mod principal;
mod rate_limit;
mod requests;
mod roles;
mod slots;
mod throttle;
mod tokens;
mod users;

use std::sync::Arc;
use std::time::Duration;

pub use audit::{AuditPage, VerifyReport};
pub use auth::{LoginOutcome, OneTimePassword};
pub use budgets::{BudgetReport, DebitOutcome, Spend};
pub use clock::{Clock, ManualClock, SystemClock};
pub use datasets::{DatasetInfo, MockRows, QueryOutcome};
pub use error::CoreError;
pub use fhe::{FheInferRequest, FhePublish, FheRun, FheSummary, KeyUpload};
pub use models::ModelInfo;
pub use password_policy::PasswordPolicy;
pub use principal::Principal;

/// The records this crate's use-cases return as they are stored, named here so that the edges
/// (HTTP, CLI) depend on `veil-core` alone and never on the store.
pub mod records {
    pub use veil_store::{
        AuditEntry, AuditFilter, Budget, EvaluationKeyRecord, LedgerEntry, RequestRecord,
        RequestStatus, Role, SigningKeyRecord, Timestamp, TokenKind, User,
    };
}
pub use rate_limit::RateLimitSettings;
pub use requests::ValidationRequest;
pub use slots::{Counted, Held};
pub use throttle::{LoginThrottleSettings, client_address_key};
pub use tokens::Token;
pub use users::{UserRef, UserUpdateRequest};

use tokio::sync::Semaphore;
use veil_crypto::AuditKey;
use veil_store::{NewAuditEntry, Store};

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Tunable rules of the node, validated by the binary before the core is built.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// How long a login session lasts.
    pub session_ttl: Duration,
    /// The longest lifetime an API token may be given, and the lifetime of a token asked for
    /// without one; `None` allows tokens that never expire.
    pub max_token_ttl: Option<Duration>,
    pub password_policy: PasswordPolicy,
    pub login_throttle: LoginThrottleSettings,
    /// Identical denials (throttled logins, refused calls, refused charges) within this
    /// window are written to the audit log once, with a count.
    pub denial_window: Duration,
    /// How many Argon2 computations may run at once (each takes 19 MiB and ~50 ms of CPU).
    pub password_hash_concurrency: usize,
    /// DP queries one user may have running at once.
    pub max_queries_per_user: usize,
    /// Largest dataset upload, in bytes.
    pub upload_limit_bytes: u64,
    /// Largest model upload, in bytes.
    pub model_limit_bytes: usize,
    /// Refuse model uploads that are not signed by a key registered to the uploader.
    pub require_signed_models: bool,
    /// The longest a model may take on one row, measured on synthetic rows before a
    /// validation is charged (after the charge nothing cuts a run short).
    pub validation_row_time_limit: Duration,
    /// Threads of the model worker pool (model runs never use the async runtime's threads).
    pub model_threads: usize,
    /// Threads of the encrypted-inference pool (its own; TFHE-rs keeps per-thread state).
    pub fhe_threads: usize,
    /// Wall-clock limit of one encrypted-inference request.
    pub fhe_time_limit: Duration,
    /// Largest evaluation key upload, in bytes.
    pub fhe_key_limit_bytes: u64,
    /// How long an uploaded evaluation key stays usable.
    pub fhe_key_ttl: Duration,
    /// Live evaluation keys one user may hold.
    pub fhe_max_keys_per_user: usize,
    /// Most samples in one encrypted-inference request.
    pub fhe_max_batch: usize,
    /// Widest model input accepted for encrypted inference.
    pub fhe_max_features: usize,
    /// Encrypted samples one user may run per window (bounds how fast a published model can
    /// be queried, for instance to extract it).
    pub fhe_rate_limit: RateLimitSettings,
}

impl Default for CoreSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            // A forgotten script's token should not work for ever.
            max_token_ttl: Some(Duration::from_secs(365 * 86_400)),
            password_policy: PasswordPolicy::default(),
            login_throttle: LoginThrottleSettings::default(),
            denial_window: Duration::from_secs(60),
            password_hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get() * 2)
                .unwrap_or(4),
            max_queries_per_user: 2,
            upload_limit_bytes: 10 * 1024 * 1024 * 1024,
            model_limit_bytes: 64 * 1024 * 1024,
            require_signed_models: false,
            validation_row_time_limit: Duration::from_millis(20),
            model_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            fhe_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            fhe_time_limit: Duration::from_secs(600),
            fhe_key_limit_bytes: 256 * 1024 * 1024,
            fhe_key_ttl: Duration::from_secs(7 * 24 * 3600),
            fhe_max_keys_per_user: 3,
            fhe_max_batch: 64,
            fhe_max_features: 4096,
            fhe_rate_limit: RateLimitSettings {
                max_events: 10_000,
                window: Duration::from_secs(24 * 3600),
            },
        }
    }
}

/// The node's use-cases over a store.
#[derive(Debug)]
pub struct Core {
    store: Arc<dyn Store>,
    datasets: Arc<veil_datasets::Storage>,
    audit_key: AuditKey,
    clock: Arc<dyn Clock>,
    settings: CoreSettings,
    login_throttle: throttle::LoginThrottle,
    denials: throttle::DenialLog,
    /// DP queries in progress per user.
    query_slots: slots::PerUserSlots,
    /// Evaluation key uploads in progress, per user and on the node.
    key_upload_slots: slots::PerUserSlots,
    key_uploads: Arc<Semaphore>,
    /// Encrypted samples per user and window.
    fhe_limiter: rate_limit::RateLimiter,
    hashing: Semaphore,
    /// Runs models; its threads belong to it alone.
    model_pool: Arc<model_pool::ModelPool>,
    /// Runs encrypted inference; its threads belong to it alone.
    fhe_pool: Arc<rayon::ThreadPool>,
    evaluators: fhe::EvaluatorCache,
}

pub(crate) fn worker_pool(threads: usize, name: &'static str) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(move |i| format!("veil-{name}-{i}"))
        // Without a handler a panicking job aborts the whole node; with it, the job's
        // result channel closes and the caller reports an error.
        .panic_handler(move |_| tracing::error!("a {name} worker job panicked"))
        .build()
        .unwrap_or_else(|_| {
            // Building a pool only fails if threads cannot be spawned at all.
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap_or_else(|e| panic!("cannot start the {name} worker pool: {e}"))
        })
}

impl Core {
    pub fn new(
        store: Arc<dyn Store>,
        datasets: Arc<veil_datasets::Storage>,
        audit_key: AuditKey,
        clock: Arc<dyn Clock>,
        settings: CoreSettings,
    ) -> Self {
        Self {
            datasets,
            login_throttle: throttle::LoginThrottle::new(settings.login_throttle.clone()),
            denials: throttle::DenialLog::new(settings.denial_window),
            query_slots: slots::PerUserSlots::new("queries", settings.max_queries_per_user),
            key_upload_slots: slots::PerUserSlots::new("evaluation key uploads", 1),
            key_uploads: Arc::new(Semaphore::new(fhe::KEY_UPLOADS_AT_ONCE)),
            fhe_limiter: rate_limit::RateLimiter::new(settings.fhe_rate_limit.clone()),
            hashing: Semaphore::new(settings.password_hash_concurrency.max(1)),
            model_pool: Arc::new(model_pool::ModelPool::new(settings.model_threads)),
            fhe_pool: Arc::new(worker_pool(settings.fhe_threads, "fhe")),
            evaluators: fhe::EvaluatorCache::default(),
            store,
            audit_key,
            clock,
            settings,
        }
    }

    /// Writes `entry`, a denial of kind `kind`, unless one of that kind was written within the
    /// denial window; then it is only counted, and the next one written carries the count
    /// (`unwritten_before`). See `throttle::DenialLog`.
    pub(crate) async fn record_denial(&self, kind: &str, mut entry: NewAuditEntry) -> Result<()> {
        let Some(unwritten) = self.denials.admit(kind, self.now()) else {
            return Ok(());
        };
        if unwritten > 0
            && let serde_json::Value::Object(map) = &mut entry.details
        {
            map.insert("unwritten_before".into(), serde_json::json!(unwritten));
        }
        self.store.append_audit(entry).await?;
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    /// The node's time, from its injected clock (microseconds since the Unix epoch).
    pub fn now(&self) -> veil_store::Timestamp {
        self.clock.now_micros()
    }

    /// Runs CPU work on the model pool (untrusted input: off the async threads).
    pub(crate) async fn on_model_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        self.model_pool.run(f).await
    }

    /// Runs a CPU-heavy password operation off the async workers, a few at a time.
    async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| CoreError::Internal("password hashing pool closed".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| CoreError::Internal(format!("password hashing task failed: {e}")))
    }
}

/// Converts a `Duration` to whole microseconds for timestamps.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
