//! Veil's cryptographic building blocks.
//!
//! Everything here is pure computation over bytes: no files, no network, no database. Keys are
//! handed in by the caller (the server loads the master key from disk and passes it down).
//! Secret-holding types zeroize on drop and print as `[redacted]`.
//!
//! Randomness comes from the operating system (`getrandom`) for every secret: tokens,
//! passwords, keys and nonces. Nothing here is used for differential-privacy noise.

pub mod audit;
pub mod blob;
pub mod keys;
pub mod password;
pub mod prf;
pub mod random;
pub mod signing;
pub mod spool;
pub mod token;

pub use audit::{AuditKey, ChainInput, Digest, GENESIS_HASH};
pub use keys::{DataKey, KeyError, MasterKey, WrappedKey};
pub use password::{PasswordHashError, hash_password, verify_password};
pub use token::{ParsedToken, TokenError, TokenSecret};

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Hex SHA-256 of `data` (for audit references such as the hash of a query's text).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}
