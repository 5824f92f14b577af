//! Bearer tokens: `veil_<id>_<secret>`.
//!
//! The id (48 random bits, hex) is a public handle: it is stored in clear, shown in token
//! listings and used to look the token up. The secret (256 random bits, base64url) is never
//! stored; the store keeps its SHA-256. A high-entropy secret needs no slow hash, and the
//! lookup by id followed by a constant-time comparison of the hash means response timing
//! reveals nothing about how close a guess came.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

const PREFIX: &str = "veil_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 43;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
}

/// A freshly generated token: shown to its owner once, then only its hash is kept.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TokenSecret {
    id: String,
    full: String,
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSecret {{ id: {:?}, secret: [redacted] }}", self.id)
    }
}

impl TokenSecret {
    pub fn generate() -> Self {
        let id = hex::encode(crate::random::bytes::<6>());
        let mut secret = crate::random::bytes::<32>();
        let encoded = URL_SAFE_NO_PAD.encode(secret);
        secret.zeroize();
        Self {
            full: format!("{PREFIX}{id}_{encoded}"),
            id,
        }
    }

    /// The public id, safe to log and store.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole bearer string. Show it once; never log it.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// The hash to store.
    pub fn hash(&self) -> [u8; 32] {
        hash_secret_part(&self.full)
    }
}

fn hash_secret_part(full: &str) -> [u8; 32] {
    let secret = &full[PREFIX.len() + ID_LEN + 1..];
    Sha256::digest(secret.as_bytes()).into()
}

/// A bearer string split into its parts, after a syntax check.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ParsedToken {
    id: String,
    secret_hash: [u8; 32],
}

impl std::fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParsedToken {{ id: {:?}, secret: [redacted] }}", self.id)
    }
}

impl ParsedToken {
    pub fn parse(bearer: &str) -> Result<Self, TokenError> {
        let bytes = bearer.as_bytes();
        let well_formed = bearer.is_ascii()
            && bytes.len() == PREFIX.len() + ID_LEN + 1 + SECRET_LEN
            && bearer.starts_with(PREFIX)
            && bytes[PREFIX.len() + ID_LEN] == b'_'
            && bearer[PREFIX.len()..PREFIX.len() + ID_LEN]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && URL_SAFE_NO_PAD
                .decode(&bearer[PREFIX.len() + ID_LEN + 1..])
                .is_ok_and(|s| s.len() == 32);
        if !well_formed {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            id: bearer[PREFIX.len()..PREFIX.len() + ID_LEN].to_string(),
            secret_hash: hash_secret_part(bearer),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Constant-time check of this token's secret against a stored hash.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        crate::ct_eq(&self.secret_hash, stored_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_match_their_hash() {
        let t = TokenSecret::generate();
        assert!(t.expose().starts_with("veil_"));
        let parsed = ParsedToken::parse(t.expose()).expect("parses");
        assert_eq!(parsed.id(), t.id());
        assert!(parsed.matches(&t.hash()));
        let other = TokenSecret::generate();
        assert!(!parsed.matches(&other.hash()));
    }

    #[test]
    fn a_token_with_a_changed_secret_does_not_match() {
        let t = TokenSecret::generate();
        let mut forged = t.expose().to_string();
        let last = forged.pop().expect("non-empty");
        forged.push(if last == 'A' { 'B' } else { 'A' });
        // Changing the last base64 character may produce a non-canonical encoding, which is
        // rejected outright; otherwise it must not match.
        if let Ok(p) = ParsedToken::parse(&forged) {
            assert!(!p.matches(&t.hash()));
        }
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for bad in [
            "",
            "veil_",
            "bearer",
            "veil_0123456789ab_short",
            "veil_0123456789AB_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "xxxx_0123456789ab_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "veil_0123456789ab-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "veil_0123456789ab_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa€",
            "veil_0123456789é_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(ParsedToken::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let t = TokenSecret::generate();
        let shown = format!(
            "{t:?} {:?}",
            ParsedToken::parse(t.expose()).expect("parses")
        );
        assert!(!shown.contains(&t.expose()[18..]), "{shown}");
    }
}
