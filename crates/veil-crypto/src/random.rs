//! OS randomness for secrets.

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Panics
/// If the OS has no randomness source. There is nothing safe to fall back to, and a node that
/// cannot generate secrets must not start.
pub fn fill(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill(&mut b);
    b
}

/// A random password from an alphabet without look-alike characters (no 0/O, 1/l/I),
/// grouped in fives for reading aloud: 24 characters ≈ 137 bits.
pub fn one_time_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(29);
    let mut produced = 0;
    while produced < 24 {
        for b in bytes::<32>() {
            // Rejection sampling keeps the distribution uniform over the alphabet.
            let limit = 256 - (256 % ALPHABET.len());
            if (b as usize) < limit && produced < 24 {
                if produced > 0 && produced % 6 == 0 {
                    out.push('-');
                }
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
                produced += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_time_passwords_are_long_and_distinct() {
        let a = super::one_time_password();
        let b = super::one_time_password();
        assert_eq!(a.len(), 27, "{a}");
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
