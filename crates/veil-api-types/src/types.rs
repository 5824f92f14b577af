//! Request and response bodies.
//!
//! Requests reject unknown fields, so a typo in a field name is an error rather than a
//! silently ignored setting. Privacy amounts travel as JSON numbers (ε = 0.5), timestamps as
//! RFC 3339 strings in UTC.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the node answers.
    pub status: String,
    pub version: String,
    /// The metadata store backend: `sqlite` or `postgres`.
    pub store: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &"[redacted]")
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// The bearer token. Shown once; send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// The token's public id (for listing and revoking).
    pub token_id: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserView,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("token", &"[redacted]")
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub email: String,
    pub role: String,
    pub disabled: bool,
    /// True until the user replaces their one-time password.
    pub must_change_password: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub user: UserView,
    /// The permissions of the user's role.
    pub permissions: Vec<String>,
    /// The token this request was made with.
    pub token: CurrentToken,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CurrentToken {
    pub id: String,
    /// `session` (from a login) or `api` (named token).
    pub kind: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

impl std::fmt::Debug for ChangePasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangePasswordRequest([redacted])")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub email: String,
    /// A preset or custom role name.
    pub role: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateUserResponse {
    pub user: UserView,
    /// Shown once. The user must replace it at first login.
    pub one_time_password: String,
}

impl std::fmt::Debug for CreateUserResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserResponse")
            .field("user", &self.user)
            .field("one_time_password", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct PasswordResetResponse {
    /// Shown once. The user's sessions were ended.
    pub one_time_password: String,
}

impl std::fmt::Debug for PasswordResetResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordResetResponse([redacted])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    /// Preset roles come with the node and cannot be changed.
    pub preset: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleRequest {
    pub name: String,
    pub permissions: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PermissionView {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    /// Set for API tokens; sessions have none.
    pub name: Option<String>,
    /// `session` or `api`.
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Neither revoked nor expired.
    pub active: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    /// Lifetime in seconds; omit for a token that never expires (if the node allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenResponse {
    /// The bearer token. Shown once.
    pub token: String,
    pub info: TokenView,
}

impl std::fmt::Debug for CreateTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &"[redacted]")
            .field("info", &self.info)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BudgetView {
    /// The dataset this cap applies to; absent for the user's overall budget.
    pub dataset: Option<String>,
    pub epsilon_cap: f64,
    pub delta_cap: f64,
    pub epsilon_spent: f64,
    pub delta_spent: f64,
    pub epsilon_remaining: f64,
    pub delta_remaining: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudgetRequest {
    /// Set the cap for this dataset only; omit for the overall budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    pub epsilon: f64,
    #[serde(default)]
    pub delta: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntryView {
    pub id: i64,
    pub dataset: Option<String>,
    pub epsilon: f64,
    pub delta: f64,
    pub purpose: String,
    pub reference: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetReportView {
    pub user: String,
    pub budgets: Vec<BudgetView>,
    /// Most recent spending first.
    pub recent: Vec<LedgerEntryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// `ok`, `denied`, `refused` or `failed`.
    pub outcome: String,
    pub details: serde_json::Value,
    /// Hex SHA-256 of this entry (covers the previous hash).
    pub hash: String,
    pub prev_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPageView {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `after` to fetch the next page; absent at the end.
    pub next_after: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Return entries after this sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many entries (1–1000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only entries by this actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Only actions starting with this prefix, e.g. `auth.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyView {
    pub ok: bool,
    pub entries_checked: u64,
    pub first_bad: Option<AuditBreakView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditBreakView {
    pub seq: u64,
    pub reason: String,
}

/// The privacy unit of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PrivacyUnitView {
    /// `row` or `id`.
    pub kind: String,
    /// For `id`: the identifier column.
    pub column: Option<String>,
    /// Rows one unit may contribute (1 for `row`).
    pub max_rows: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ColumnView {
    pub name: String,
    /// int, float, category, date, bool, id or text.
    #[serde(rename = "type")]
    pub ty: String,
    pub nullable: bool,
    /// For int, float and date columns: the declared public bounds.
    pub bounds: Option<Vec<serde_json::Value>>,
    pub categories: Option<Vec<String>>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatasetView {
    pub name: String,
    pub description: String,
    pub privacy_unit: PrivacyUnitView,
    pub columns: Vec<ColumnView>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// `auto` or `review`.
    pub policy: String,
    /// Exact size, shown only to holders of `datasets:manage`.
    pub rows: Option<u64>,
    pub bytes_stored: Option<u64>,
    /// Cap on what all users together may spend; absent for none.
    pub epsilon_cap: Option<f64>,
    pub delta_cap: Option<f64>,
    pub epsilon_spent: f64,
    pub delta_spent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// `csv` (default) or `parquet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Multipart form for an upload: the manifest first, then the file.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The schema manifest (TOML).
    pub manifest: String,
    /// The data (CSV with a header row, or Parquet).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetUpdateRequest {
    /// New global ε cap; `null` removes it; absent leaves it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>)]
    pub epsilon_cap: Option<Option<f64>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>)]
    pub delta_cap: Option<Option<f64>>,
    /// `auto` or `review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MockParams {
    /// How many synthetic rows (1–1000, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MockView {
    /// Always true: these rows are drawn from the manifest's domains, not from the data.
    pub synthetic: bool,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
    pub epsilon: f64,
    #[serde(default)]
    pub delta: f64,
    /// Confidence level of the intervals (default 0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// `auto` (default), `laplace` or `gaussian`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultColumnView {
    pub name: String,
    /// `key` or `aggregate`.
    pub kind: String,
    pub expression: Option<String>,
    pub mechanism: Option<String>,
    /// Noise scale per exact measure, in the column's units.
    pub noise_scales: Vec<f64>,
    /// ε spent on this column (pure-DP releases).
    pub epsilon: Option<f64>,
}

/// One released cell: a group key, or a noisy value with its interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CellView {
    Key {
        value: Option<String>,
    },
    Value {
        value: f64,
        low: Option<f64>,
        high: Option<f64>,
        /// Quantiles: rank accuracy instead of a value interval.
        rank_error: Option<f64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryResponse {
    /// The query's record among the caller's requests (`GET /api/v1/requests/{id}`), where
    /// the answer stays readable.
    pub request_id: i64,
    pub columns: Vec<ResultColumnView>,
    pub rows: Vec<Vec<CellView>>,
    pub epsilon_spent: f64,
    pub delta_spent: f64,
    pub confidence: f64,
    pub mechanism: String,
    pub notes: Vec<String>,
    /// The budgets charged, after this query.
    pub budgets: Vec<BudgetView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyView {
    pub id: i64,
    pub name: String,
    /// `SHA256:` + 32 hex digits.
    pub fingerprint: String,
    /// The key as PEM.
    pub public_key: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub active: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddKeyRequest {
    pub name: String,
    /// Ed25519 public key: PEM, or 32 bytes as hex or base64.
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IoView {
    pub name: String,
    pub dtype: String,
    /// Dimensions; null for symbolic ones (the batch).
    pub shape: Vec<Option<i64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelView {
    pub name: String,
    pub version: u32,
    pub owner: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
    /// The signing key (name and fingerprint), if signed.
    pub signed_by: Option<String>,
    /// Uploaded by someone who may not publish models (a data scientist's own model, for
    /// validation): only its owner and reviewers see it.
    #[serde(default)]
    pub private: bool,
    /// `classifier`, `score_classifier` (argmax over scores) or `regressor`.
    pub kind: String,
    pub n_features: usize,
    pub input: IoView,
    pub outputs: Vec<IoView>,
    /// `domain:Op` → count.
    pub operators: std::collections::BTreeMap<String, usize>,
    pub producer: String,
    pub opset: i64,
    /// The model's own class labels, if it declares them.
    pub classes: Option<Vec<String>>,
    /// Set when this version is published for encrypted inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhe: Option<FheInfoView>,
}

/// How a model version was compiled for encrypted inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FheInfoView {
    /// Circuit shape, e.g. `linear`, `network 1×8 relu`, `forest of 10 trees`.
    pub kind: String,
    /// Programmable bootstraps per sample (the cost driver; linear models need none).
    pub pbs_per_sample: usize,
    pub n_features: usize,
    /// Output ciphertexts per sample (a score may come back as several partial sums).
    pub n_outputs: usize,
    /// Widest input encoding in bits (the ciphertext's, not the quantisation's).
    pub input_bits: u32,
    /// Most distinct values any feature is quantised to (`2^bits` for `--bits`).
    #[serde(default)]
    pub input_levels: u32,
    /// Classifiers: share of calibration rows where the circuit's label equals the float model's.
    pub label_agreement: Option<f64>,
    /// Regressors: mean absolute difference from the float model on the calibration rows.
    pub mean_abs_error: Option<f64>,
    pub calibration_rows: usize,
    /// log2 of the worst per-read decryption failure probability the noise analysis proves.
    pub log2_p_fail: f64,
    /// log2 of the bound on a whole sample failing (any of its reads: the union bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log2_p_fail_sample: Option<f64>,
    /// Output ciphertexts per score: 1 (the scores only) unless the creator chose partial sums.
    #[serde(default = "one_output")]
    pub outputs_per_score: usize,
    /// Accumulators an input unlike every calibration row could wrap (a wrong score), of all
    /// the circuit's; absent for models published before the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accumulators_may_wrap: Option<[usize; 2]>,
}

fn one_output() -> usize {
    1
}

/// What a client needs to encrypt inputs for a model and read its outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FheModelView {
    pub model: String,
    pub version: u32,
    pub info: FheInfoView,
    /// The engine's client specification: quantisers (feature ranges rounded outward or
    /// declared, a forest's exact thresholds), encodings, output scale, head, calibration
    /// statistics; everything in it was listed to and confirmed by the model's creator.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EvaluationKeyView {
    pub id: String,
    /// SHA-256 of the key bytes: the fingerprint inference requests must name.
    pub sha256: String,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub expired: bool,
}

/// Encrypted samples for a model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FheInferBody {
    /// The evaluation key to use (`veil fhe keys list`).
    pub key_id: String,
    /// SHA-256 of the evaluation key the samples were encrypted for.
    pub key_sha256: String,
    /// A model version; the newest if omitted.
    #[serde(default)]
    pub version: Option<u32>,
    /// One base64 string per sample: its seeded LWE ciphertext list (`veil fhe encrypt`).
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FheInferResponse {
    pub model: String,
    pub version: u32,
    /// One base64 string per sample: its encrypted outputs (`veil fhe decrypt`).
    pub outputs: Vec<String>,
    /// Bootstraps evaluated for the whole batch.
    pub pbs: usize,
    /// Server-side evaluation time in milliseconds.
    pub server_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionParams {
    /// A model version; the newest if omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Multipart form for a model upload.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct ModelUploadForm {
    /// The ONNX file.
    #[schema(value_type = String, format = Binary)]
    pub onnx: Vec<u8>,
    /// Optional Ed25519 signature of the file (64 bytes, raw, hex or base64).
    #[schema(value_type = Option<String>, format = Binary)]
    pub signature: Option<Vec<u8>>,
    /// Publish for encrypted inference: JSON options, e.g. `{"bits": 4}` (`{}` for defaults).
    /// Needs `models:publish` and a `calibration` part.
    pub fhe: Option<String>,
    /// CSV of calibration rows (header, then one column per model input) for quantisation.
    #[schema(value_type = Option<String>, format = Binary)]
    pub calibration: Option<Vec<u8>>,
}

/// The `fhe` part of a model upload.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FhePublishOptions {
    /// Input quantisation bits (2-12); the compiler chooses per model type if omitted.
    #[serde(default)]
    pub bits: Option<u32>,
    /// The SHA-256 of the compiled model's disclosure (everything its public client spec
    /// reveals), confirming the creator read it. Without it, or with another digest, the node
    /// compiles, stores nothing and answers `fhe_disclosure_unconfirmed` with the disclosure
    /// and its digest in `details`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
    /// Per feature, `[low, high]`: the range to quantise over, declared by the creator and
    /// published as given. By default the calibration rows' range, rounded outward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<[f64; 2]>>,
    /// How networks size their accumulators: `input_box` (default: no legal input wraps) or
    /// `calibration` (finer, fewer bootstraps, but an input unlike every calibration row may
    /// get a wrong score; the disclosure says how many accumulators can wrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accumulators: Option<String>,
    /// What a reply carries per score: `scores` (default: one ciphertext each, data users learn
    /// the scores only) or `partial_sums` (more accuracy where one sum would decrypt too
    /// coarsely; data users see the parts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequestBody {
    pub dataset: String,
    /// Dataset columns, in the order of the model's input features.
    pub features: Vec<String>,
    pub label: String,
    /// accuracy, precision, recall, f1, confusion; or mae, rmse, r2.
    pub metrics: Vec<String>,
    pub epsilon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// A model version; the newest if omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    pub id: i64,
    pub kind: String,
    pub requester: String,
    pub target: String,
    pub dataset: Option<String>,
    pub parameters: serde_json::Value,
    pub epsilon: f64,
    pub delta: f64,
    /// pending, approved, denied, running, done or failed.
    pub status: String,
    pub reason: Option<String>,
    /// The released outcome, once done.
    pub result: Option<serde_json::Value>,
    pub reviewer: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestsQuery {
    /// Only requests in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only requests of this kind: `validation` or `query` (a DP query's record, which only
    /// its requester sees). Reviewers see everyone's validations unless they ask for `query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRequestBody {
    pub reason: String,
}
