//! ONNX models: inspect and type-check an upload, then run it on rows, one row per run.
//!
//! Pure computation over bytes (no files, no network). Uploaded models are untrusted input:
//! [`inspect`] decodes the protobuf itself, checks every operator against an allow-list
//! (no control flow, no custom domains), works out what the model computes (classifier with a
//! label output, classifier via argmax over scores, or regressor), and then builds a tract
//! plan and runs one row, all under `catch_unwind` because the ONNX loader has panicking paths
//! on malformed files. [`Model`] is planned for a single row and runs every row alone, so a
//! model's output for a row depends on that row only (see `runtime`); a plan is
//! `Send + Sync` and may be shared by a worker pool.

mod bounded;
mod inspect;
pub mod labels;
mod ops;
mod runtime;

pub use inspect::{IoInfo, ModelKind, ModelSummary, allowed_operators, check_cost, inspect};
pub use labels::ClassMap;
pub use runtime::{Model, ModelCost, Output, Prediction};
pub use veil_onnx::ClassLabels;

/// Upload limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    /// Most input features.
    pub max_features: usize,
    /// Most operators in the graph.
    pub max_operators: usize,
    /// Most work one row may take: multiply-adds plus the elements every operator writes,
    /// from the planned graph's static shapes (see [`ModelCost`]).
    pub max_work_per_row: u64,
    /// Most elements any one tensor may hold while a row runs.
    pub max_tensor_elements: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_features: 10_000,
            max_operators: 10_000,
            // About 50 ms per row on one slow core; a 30-30 MLP is about 2 000.
            max_work_per_row: 100_000_000,
            // 64 MiB of f32.
            max_tensor_elements: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("the model is larger than the node's limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Not a readable ONNX file.
    #[error("not a valid ONNX model: {0}")]
    Corrupt(String),
    /// A valid model this node will not run.
    #[error("{0}")]
    Unsupported(String),
    /// The input is not what the caller gives it.
    #[error("{0}")]
    Input(String),
    /// The model failed while running.
    #[error("the model failed: {0}")]
    Run(String),
}

/// Runs `f`, turning a panic inside the ONNX machinery into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(ModelError::Corrupt(format!(
            "{what} failed on a malformed model"
        ))),
    }
}
