//! What makes a password acceptable.
//!
//! Length alone is a poor rule ("aaaaaaaaaaaa" is long); zxcvbn estimates guessability from
//! dictionaries, keyboard patterns and the user's own email, which is what an attacker tries.

use crate::CoreError;

#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_length: usize,
    /// Longest accepted password in bytes (Argon2 cost grows with input; bound it).
    pub max_length: usize,
    /// zxcvbn score 0–4; 3 means "safely unguessable: moderate protection from offline attack".
    pub min_score: u8,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 12,
            max_length: 1024,
            min_score: 3,
        }
    }
}

impl PasswordPolicy {
    pub fn check(&self, password: &str, email: &str) -> Result<(), CoreError> {
        let chars = password.chars().count();
        if chars < self.min_length {
            return Err(CoreError::WeakPassword(format!(
                "use at least {} characters (got {chars})",
                self.min_length
            )));
        }
        if password.len() > self.max_length {
            return Err(CoreError::WeakPassword(format!(
                "use at most {} bytes",
                self.max_length
            )));
        }
        if password.chars().any(char::is_control) {
            return Err(CoreError::WeakPassword(
                "control characters are not allowed".into(),
            ));
        }
        let local = email.split('@').next().unwrap_or_default();
        let entropy = zxcvbn::zxcvbn(password, &[email, local, "veil"]);
        let score = u8::from(entropy.score());
        if score < self.min_score {
            let hint = entropy
                .feedback()
                .and_then(|f| f.warning().map(|w| w.to_string()))
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "it is too easy to guess".into());
            return Err(CoreError::WeakPassword(format!(
                "{hint} (strength {score}/4, need {}/4); try a passphrase of several unrelated words",
                self.min_score
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_short_common_and_personal_passwords() {
        let p = PasswordPolicy::default();
        for weak in [
            "short",
            "password1234",
            "aaaaaaaaaaaaaaaa",
            "qwertyuiop123",
            "ana@lab.org123",
        ] {
            assert!(
                matches!(
                    p.check(weak, "ana@lab.org"),
                    Err(CoreError::WeakPassword(_))
                ),
                "{weak:?} should be rejected"
            );
        }
    }

    #[test]
    fn accepts_passphrases_and_generated_passwords() {
        let p = PasswordPolicy::default();
        assert!(
            p.check("correct horse battery staple", "ana@lab.org")
                .is_ok()
        );
        assert!(
            p.check(&veil_crypto::random::one_time_password(), "ana@lab.org")
                .is_ok()
        );
    }

    #[test]
    fn bounds_length() {
        let p = PasswordPolicy::default();
        assert!(p.check(&"Zq9!".repeat(300), "a@b.c").is_err());
    }
}
