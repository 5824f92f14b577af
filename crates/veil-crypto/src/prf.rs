//! A keyed pseudo-random function over byte strings: HMAC-SHA256 truncated to 64 bits.
//!
//! Used where a choice must look random to anyone without the key but be a fixed function of
//! its input for whoever holds it (which rows of a privacy unit a query keeps). The key is
//! fresh per use and never leaves the process.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// A keyed PRF. Prints as `[redacted]`.
#[derive(Clone)]
pub struct Prf {
    /// HMAC with the key already absorbed; cloned per input (no key schedule per call).
    keyed: Hmac<Sha256>,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Prf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prf([redacted])")
    }
}

impl PartialEq for Prf {
    fn eq(&self, other: &Self) -> bool {
        crate::ct_eq(self.key.as_slice(), other.key.as_slice())
    }
}

impl Eq for Prf {}

impl std::hash::Hash for Prf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Identity, not the key: hashing the key would hand it to whatever hashes.
        state.write_u8(0);
    }
}

impl Prf {
    /// A PRF under a fresh random key from the OS.
    pub fn random() -> Self {
        Self::with_key(crate::random::bytes::<32>())
    }

    /// A PRF under `key` (tests that need a repeatable choice).
    pub fn with_key(key: [u8; 32]) -> Self {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self {
            keyed,
            key: Zeroizing::new(key),
        }
    }

    /// The PRF of `input`.
    pub fn eval(&self, input: &[u8]) -> u64 {
        let mut mac = self.keyed.clone();
        mac.update(input);
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u64::from_be_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_value_other_key_other_value() {
        let a = Prf::with_key([1; 32]);
        assert_eq!(a.eval(b"row"), Prf::with_key([1; 32]).eval(b"row"));
        assert_ne!(a.eval(b"row"), Prf::with_key([2; 32]).eval(b"row"));
        assert_ne!(a.eval(b"row"), a.eval(b"rox"));
        assert_eq!(format!("{a:?}"), "Prf([redacted])");
    }
}
