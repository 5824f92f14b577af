//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "veil", version, about = "Veil: privacy-preserving data platform", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The node's URL (default: the one you logged in to).
    #[arg(long, global = true, env = "VEIL_SERVER")]
    pub server: Option<String>,
    /// A bearer token to use instead of the stored login.
    #[arg(long, global = true, env = "VEIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM CA certificate to trust (for nodes with private certificates).
    #[arg(long, global = true, env = "VEIL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Where credentials are stored (default: ~/.config/veil).
    #[arg(long, global = true, env = "VEIL_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Log in and store a session token.
    Login(LoginArgs),
    /// End the current session and forget it.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// Change your password.
    Passwd(PasswdArgs),
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Manage roles.
    #[command(subcommand)]
    Roles(RolesCmd),
    /// Manage your API tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Show and set privacy budgets.
    #[command(subcommand)]
    Budget(BudgetCmd),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Upload and browse private datasets.
    #[command(subcommand)]
    Datasets(DatasetsCmd),
    /// Ask a differentially private SQL question of a dataset.
    Query(QueryArgs),
    /// Ed25519 keys for signing uploads.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Upload and browse ONNX models.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Measure a model on a private dataset (DP metrics).
    Validate(ValidateArgs),
    /// List, inspect, approve or deny requests.
    #[command(subcommand)]
    Requests(RequestsCmd),
    /// Encrypted inference (TFHE): keys, encryption, runs on published models.
    #[command(subcommand)]
    Fhe(FheCmd),
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// A TOML file with any of these settings (flags and VEIL_* variables override it).
    #[arg(long, env = "VEIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its data [default: ./veil-data].
    #[arg(long, env = "VEIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "VEIL_LISTEN")]
    pub listen: Option<String>,
    /// postgres://… to keep metadata in PostgreSQL [default: SQLite in the data dir].
    #[arg(long, env = "VEIL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The master key file [default: <data-dir>/master.key].
    #[arg(long, env = "VEIL_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// The owner account's email, used on first start [default: owner@localhost].
    #[arg(long, env = "VEIL_OWNER_EMAIL")]
    pub owner_email: Option<String>,
    /// Also create demo accounts and sample data.
    #[arg(long)]
    pub demo: bool,
    /// Read the owner's first password from standard input (one line), for the first start.
    /// `VEIL_ADMIN_PASSWORD` is taken this way too: the node re-executes itself with the
    /// variable removed, so its environment never shows it.
    #[arg(long)]
    pub admin_password_stdin: bool,
    /// TLS certificate chain (PEM); requires --tls-key.
    #[arg(long, env = "VEIL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "VEIL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Browser origins allowed to call the API (the admin UI), comma-separated.
    #[arg(long, env = "VEIL_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Largest request body in bytes [default: 1048576].
    #[arg(long, env = "VEIL_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Connections open at once [default: what the open-files limit allows, at most 16384].
    #[arg(long, env = "VEIL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Connections open at once from one address (an IPv6 /64); 0 for no limit, as behind a
    /// reverse proxy, which then must limit them itself [default: 64].
    #[arg(long, env = "VEIL_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// How long a client may take to send a request's headers, which is also how long an idle
    /// HTTP/1.1 keep-alive connection stays open, e.g. 20s [default: 20s].
    #[arg(long, env = "VEIL_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// How long a connection with no request in progress and no traffic stays open, e.g. 60s
    /// [default: 60s].
    #[arg(long, env = "VEIL_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Login session lifetime, e.g. 12h [default: 12h].
    #[arg(long, env = "VEIL_SESSION_TTL")]
    pub session_ttl: Option<String>,
    /// Longest lifetime an API token may have, and the lifetime of one created without
    /// `--ttl`, e.g. 90d, or `never` [default: 365d].
    #[arg(long, env = "VEIL_MAX_TOKEN_TTL")]
    pub max_token_ttl: Option<String>,
    /// Refuse model uploads not signed by a key registered to the uploader.
    #[arg(long, env = "VEIL_REQUIRE_SIGNED_MODELS")]
    pub require_signed_models: bool,
    /// Largest model upload in bytes [default: 67108864].
    #[arg(long, env = "VEIL_MODEL_LIMIT")]
    pub model_limit: Option<usize>,
    /// The longest a model may take on one row, in milliseconds, measured on synthetic rows
    /// before a validation is charged; slower models are refused, nothing charged (after the
    /// charge nothing cuts a run short) [default: 20].
    #[arg(long, env = "VEIL_VALIDATION_ROW_TIME_LIMIT_MS")]
    pub validation_row_time_limit_ms: Option<u64>,
    /// Wall-clock limit of one encrypted-inference request, e.g. 10m [default: 10m].
    #[arg(long, env = "VEIL_FHE_TIME_LIMIT")]
    pub fhe_time_limit: Option<String>,
    /// Encrypted samples one user may run per day [default: 10000].
    #[arg(long, env = "VEIL_FHE_SAMPLES_PER_DAY")]
    pub fhe_samples_per_day: Option<u32>,
    /// How long an uploaded evaluation key stays usable, e.g. 7d [default: 7d].
    #[arg(long, env = "VEIL_FHE_KEY_TTL")]
    pub fhe_key_ttl: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "VEIL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or veil=debug [default: info].
    #[arg(long, env = "VEIL_LOG")]
    pub log_level: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[arg(long)]
    pub email: String,
    /// Read the password from standard input (the first line); a second line, if present,
    /// becomes the new password when the account still has its one-time password.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Read the current and the new password from the first two lines of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// List all users.
    List,
    /// Show one user (by email or id).
    Show { user: String },
    /// Create a user; prints their one-time password.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
    /// Disable a user and revoke their tokens.
    Disable { user: String },
    /// Re-enable a disabled user.
    Enable { user: String },
    /// Change a user's role.
    SetRole { user: String, role: String },
    /// Give a user a new one-time password and end their sessions.
    ResetPassword { user: String },
}

#[derive(Debug, Subcommand)]
pub enum RolesCmd {
    /// List preset and custom roles.
    List,
    /// Show a role and its permissions.
    Show { name: String },
    /// Create a custom role.
    Create {
        name: String,
        /// Comma-separated permissions, e.g. audit:read,datasets:read-metadata.
        #[arg(long, value_delimiter = ',')]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a custom role nobody holds.
    Delete { name: String },
    /// List every permission a role can hold.
    Permissions,
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create a named API token; prints it once.
    Create {
        name: String,
        /// Lifetime such as 30d, 12h, 45m, or `never` [default: 90d].
        #[arg(long, default_value = "90d")]
        expires_in: String,
    },
    /// List your tokens and sessions.
    List,
    /// Revoke one of your tokens by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum BudgetCmd {
    /// Set a user's privacy budget cap.
    Set {
        #[arg(long)]
        user: String,
        // Negative numbers parse, so the node can say what is wrong with them.
        #[arg(long, allow_negative_numbers = true)]
        epsilon: f64,
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        delta: f64,
        /// Cap spending on this dataset only (in addition to the overall cap).
        #[arg(long)]
        dataset: Option<String>,
    },
    /// Show a budget (yours by default).
    Show {
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit entries.
    List {
        /// Entries after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        actor: Option<String>,
        /// Action prefix, e.g. auth. or budget.
        #[arg(long)]
        action: Option<String>,
    },
    /// Recompute the hash chain and check every seal.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum DatasetsCmd {
    /// Upload a CSV or Parquet file with its schema manifest (stored encrypted).
    Upload {
        name: String,
        /// The data: .csv (with a header row) or .parquet.
        #[arg(long)]
        file: PathBuf,
        /// The schema manifest (TOML).
        #[arg(long)]
        schema: PathBuf,
        /// csv or parquet [default: from the file extension].
        #[arg(long)]
        format: Option<String>,
    },
    /// List datasets.
    List,
    /// Show a dataset's schema, bounds and privacy unit.
    Show { name: String },
    /// Synthetic rows drawn from the declared schema only (never from the data).
    Mock {
        name: String,
        #[arg(long, default_value_t = 10)]
        rows: usize,
    },
    /// Delete a dataset: its key is destroyed and its file removed.
    Delete { name: String },
    /// Change a dataset's global privacy cap or review policy.
    Set {
        name: String,
        /// Cap on ε spent by all users together.
        #[arg(long)]
        epsilon_cap: Option<f64>,
        #[arg(long)]
        delta_cap: Option<f64>,
        /// Remove the global caps.
        #[arg(long, conflicts_with_all = ["epsilon_cap", "delta_cap"])]
        no_cap: bool,
        /// auto or review.
        #[arg(long)]
        policy: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The dataset to query.
    pub dataset: String,
    /// The SQL (aggregates only; see the README).
    pub sql: String,
    /// Privacy budget to spend on this query.
    #[arg(long, allow_negative_numbers = true)]
    pub epsilon: f64,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub delta: f64,
    /// Confidence level of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// auto, laplace or gaussian.
    #[arg(long, default_value = "auto")]
    pub mechanism: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key pair locally: the private key file (mode 0600) and `<file>.pub`.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Register a public key with the node.
    Add {
        #[arg(long)]
        name: String,
        /// A file with the public key (PEM, hex or base64), or the key itself.
        #[arg(long)]
        public_key: String,
    },
    /// List your registered keys.
    List,
    /// Revoke one of your keys by id.
    Revoke { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCmd {
    /// Upload an ONNX model (checked, then stored encrypted as the next version).
    Upload {
        name: String,
        #[arg(long)]
        onnx: PathBuf,
        /// A detached Ed25519 signature of the file.
        #[arg(long, conflicts_with = "sign_with")]
        signature: Option<PathBuf>,
        /// Sign with this private key file (from `veil keys generate`) before uploading.
        #[arg(long)]
        sign_with: Option<PathBuf>,
        /// Also publish for encrypted inference: the node compiles the model to a TFHE
        /// circuit (needs `models:publish` and `--calibration`).
        #[arg(long, requires = "calibration")]
        fhe: bool,
        /// Input quantisation bits for `--fhe` (2-12) [default: chosen per model type].
        #[arg(long, requires = "fhe")]
        bits: Option<u32>,
        /// CSV of representative inputs (header, then one column per feature) to calibrate
        /// the quantisation for `--fhe`.
        #[arg(long, requires = "fhe")]
        calibration: Option<PathBuf>,
        /// Declared feature ranges for `--fhe`: a CSV with a header line and two rows, the
        /// lowest and the highest value of each feature. Published as given, instead of the
        /// calibration rows' range rounded outward.
        #[arg(long, requires = "fhe")]
        ranges: Option<PathBuf>,
        /// How networks size their accumulators for `--fhe`: `input_box` (no legal input wraps)
        /// or `calibration` (fewer bootstraps; inputs unlike the calibration rows may get a
        /// wrong score) [default: input_box].
        #[arg(long, requires = "fhe")]
        accumulators: Option<String>,
        /// What replies carry per score for `--fhe`: `scores` (one ciphertext each; data users
        /// learn only the scores) or `partial_sums` (more accurate for some models; data users
        /// see the parts) [default: scores].
        #[arg(long, requires = "fhe")]
        outputs: Option<String>,
        /// Publish without asking: accept what the node's disclosure says the public client
        /// spec reveals (it is printed either way). Without it, a terminal is asked.
        #[arg(long, requires = "fhe")]
        yes: bool,
    },
    /// List models (every version).
    List,
    /// Show a model: inputs, outputs, operators, size, owner, signer.
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Delete a model version (or every version).
    Delete {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FheCmd {
    /// Create a client key (kept here, mode 0600) and its evaluation key for nodes.
    Keygen {
        /// Key directory [default: <config dir>/fhe].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Your evaluation keys on the node.
    #[command(subcommand)]
    Keys(FheKeysCmd),
    /// Show how a model was compiled for encrypted inference.
    Show {
        model: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Encrypt rows of a CSV, run the model on the node, decrypt the predictions here.
    Infer(FheInferArgs),
    /// Encrypt rows of a CSV into a request body for `POST /api/v1/fhe/models/{name}/infer`.
    Encrypt {
        model: String,
        #[arg(long)]
        input: PathBuf,
        /// Where to write the request JSON [default: standard output].
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        version: Option<u32>,
        /// Key directory [default: <config dir>/fhe].
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Use this model specification (from `veil fhe show --json`) instead of asking the node.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// Decrypt a node's reply (the JSON of `POST …/infer`) into predictions.
    Decrypt {
        model: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        keys: Option<PathBuf>,
        #[arg(long)]
        spec: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FheKeysCmd {
    List,
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct FheInferArgs {
    pub model: String,
    /// CSV with a header and one column per model feature (plus, optionally, `--label`).
    #[arg(long)]
    pub input: PathBuf,
    /// A column of true labels to leave out of the inputs and score the predictions against.
    #[arg(long)]
    pub label: Option<String>,
    #[arg(long)]
    pub version: Option<u32>,
    /// Key directory [default: <config dir>/fhe].
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Samples per request (progress is shown per request).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The model to validate.
    pub model: String,
    #[arg(long)]
    pub dataset: String,
    /// Dataset columns in the model's feature order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    #[arg(long)]
    pub label: String,
    /// accuracy,precision,recall,f1,confusion or mae,rmse,r2.
    #[arg(long, value_delimiter = ',', default_value = "accuracy")]
    pub metrics: Vec<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub epsilon: f64,
    #[arg(long)]
    pub version: Option<u32>,
    #[arg(long)]
    pub confidence: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum RequestsCmd {
    /// Your requests (everyone's validations, for reviewers).
    List {
        /// pending, approved, denied, running, done or failed.
        #[arg(long)]
        status: Option<String>,
        /// validation, or query (your DP queries, each with its answer).
        #[arg(long)]
        kind: Option<String>,
    },
    /// One request, with its result once done.
    Show { id: i64 },
    /// Approve a pending request (it runs at once, on the requester's budget).
    Approve { id: i64 },
    /// Deny a pending request.
    Deny {
        id: i64,
        #[arg(long)]
        reason: String,
    },
}
