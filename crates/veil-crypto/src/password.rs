//! Password hashing with Argon2id.
//!
//! Parameters follow the OWASP recommendation for Argon2id (19 MiB, 2 passes, 1 lane); the
//! PHC string records them, so raising them later keeps old hashes verifiable. Hashing takes
//! tens of milliseconds on purpose: callers on an async runtime must run it on a blocking pool.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

#[derive(Debug, thiserror::Error)]
pub enum PasswordHashError {
    #[error("stored password hash is malformed")]
    MalformedHash,
    #[error("password hashing failed")]
    Hashing,
}

fn hasher() -> Argon2<'static> {
    // 19 MiB, t = 2, p = 1: valid constants, so `Params::new` cannot fail; fall back to the
    // library default (which is the same recommendation) rather than panic.
    let params = Params::new(19 * 1024, 2, 1, Some(32)).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`).
pub fn hash_password(password: &str) -> Result<String, PasswordHashError> {
    let salt_bytes = crate::random::bytes::<16>();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| PasswordHashError::Hashing)?;
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordHashError::Hashing)
}

/// Verifies a password against a PHC string in constant time (the library compares the
/// derived output with a constant-time equality).
pub fn verify_password(password: &str, phc: &str) -> Result<bool, PasswordHashError> {
    let parsed = PasswordHash::new(phc).map_err(|_| PasswordHashError::MalformedHash)?;
    match hasher().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(_) => Err(PasswordHashError::MalformedHash),
    }
}

/// A hash of a random password, for spending the same time on logins for unknown emails as
/// on known ones (so response time does not reveal which emails have accounts).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&crate::random::one_time_password()).unwrap_or_else(|_| {
            // A syntactically valid hash; verification will simply fail.
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("correct horse battery staple").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse battery staple", &h).expect("verify"));
        assert!(!verify_password("correct horse battery stapler", &h).expect("verify"));
    }

    #[test]
    fn same_password_gets_different_salts() {
        let a = hash_password("pw-pw-pw-pw-pw").expect("hash");
        let b = hash_password("pw-pw-pw-pw-pw").expect("hash");
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_hash_is_an_error_not_a_mismatch() {
        assert!(matches!(
            verify_password("x", "not a hash"),
            Err(PasswordHashError::MalformedHash)
        ));
    }

    #[test]
    fn dummy_hash_never_verifies_a_guess() {
        assert!(!verify_password("password", dummy_hash()).unwrap_or(false));
    }
}
