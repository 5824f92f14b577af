//! Veil's shared vocabulary: the small value types every layer speaks.
//!
//! This crate has no IO and no heavy dependencies on purpose: the engines, the stores, the core
//! and the wire layer all depend on it, so anything added here is compiled everywhere.

pub mod names;
pub mod permissions;
pub mod privacy;

pub use names::{DatasetName, Email, NameError, RoleName, TokenName};
pub use permissions::{Permission, PermissionSet, PresetRole, UnknownPermission};
pub use privacy::{Delta, Epsilon, PrivacyAmountError};

/// A user's numeric id, assigned by the metadata store.
pub type UserId = i64;
