//! What the `veil` binary and the benchmarks (`veil-bench`) share: human output and logging.

pub mod logging;
pub mod output;
