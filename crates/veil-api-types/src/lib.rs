//! The wire vocabulary of Veil's REST API (`/api/v1`): request and response bodies, and the
//! stable error codes.
//!
//! Both the server (`veil-api`) and the client (`veil-client`) use these types, so a field
//! renamed here is renamed on both sides at once. Everything here derives `ToSchema`: the
//! OpenAPI document is generated from these definitions, not written by hand.

mod errors;
mod types;

pub use errors::{ErrorBody, ErrorCode, ErrorDetail};
pub use types::*;

/// The timestamp type used on the wire (UTC, RFC 3339), re-exported so clients need not
/// depend on chrono themselves.
pub type ChronoTime = chrono::DateTime<chrono::Utc>;
