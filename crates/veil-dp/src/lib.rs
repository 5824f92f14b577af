//! Veil's differential-privacy engine: pure computation, no IO.
//!
//! The flow for a query:
//! 1. [`Manifest::parse`] reads the dataset's public schema (bounds, categories, unit).
//! 2. [`sql::plan`] validates the SQL against the supported subset and the manifest.
//! 3. [`cost`] calibrates noise for every exact measure and computes the (ε, δ) to charge,
//!    from OpenDP's privacy maps.
//! 4. The executor (outside this crate) computes the [`exact::measures`] into an
//!    [`ExactResult`], which nothing outside this crate can read.
//! 5. [`release()`] adds noise with OpenDP's exact samplers and returns a [`Released`], the
//!    only type carrying numbers derived from private rows, and only this crate builds it.
//!
//! Invariants: no `f64` noise and no seeds (OpenDP's samplers draw from OpenSSL's CSPRNG);
//! sums are over fixed-point integers whose bounds make overflow impossible; group keys come
//! from the manifest, or from a thresholded release when they are unknown.

pub mod exact;
pub mod manifest;
pub mod mock;
pub mod plan;
mod release;
pub mod sql;
pub mod validation;

pub use exact::{ExactResult, KeyValue, Measure};
pub use manifest::{ColumnType, Manifest, ManifestError, PrivacyUnit};
pub use plan::{Mechanism, MechanismChoice, QueryOptions, QueryPlan};
pub use release::{
    Cell, ColumnInfo, CostedPlan, ReleaseError, Released, by_first_key, cost, release,
};
pub use sql::Refusal;

#[cfg(test)]
mod tests;
