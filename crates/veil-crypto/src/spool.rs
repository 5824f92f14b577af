//! Chunked AES-256-GCM for temporary files that must be read back at random offsets
//! (an uploaded Parquet file is spooled to disk because its footer is at the end).
//!
//! The key is ephemeral: generated for one spool and dropped with it, so a spool left behind
//! by a crash is unreadable. Chunks are independently sealed: nonce = 8-byte random file
//! prefix ‖ 4-byte chunk index, associated data = chunk index ‖ last-chunk flag, so chunks
//! cannot be reordered, and a file cut at a chunk boundary is detected.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
/// Ciphertext overhead per chunk (the GCM tag).
pub const TAG: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpoolError {
    #[error("spool chunk {0} failed authentication")]
    Corrupt(u32),
    #[error("spool is too large")]
    TooLarge,
}

/// An ephemeral chunk cipher.
pub struct SpoolCipher {
    aead: Aes256Gcm,
    prefix: [u8; 8],
}

impl std::fmt::Debug for SpoolCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolCipher([redacted])")
    }
}

impl SpoolCipher {
    pub fn generate() -> Self {
        let mut key = crate::random::bytes::<32>();
        let aead = Aes256Gcm::new_from_slice(&key).unwrap_or_else(|_| unreachable!("32-byte key"));
        zeroize::Zeroize::zeroize(&mut key);
        Self {
            aead,
            prefix: crate::random::bytes(),
        }
    }

    fn nonce(&self, index: u32) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&self.prefix);
        n[8..].copy_from_slice(&index.to_be_bytes());
        n
    }

    fn aad(index: u32, last: bool) -> [u8; 5] {
        let mut a = [0u8; 5];
        a[..4].copy_from_slice(&index.to_be_bytes());
        a[4] = u8::from(last);
        a
    }

    /// Seals chunk `index` (at most [`CHUNK`] bytes).
    pub fn seal(&self, index: u32, last: bool, plain: &[u8]) -> Vec<u8> {
        let nonce = self.nonce(index);
        self.aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &Self::aad(index, last),
                },
            )
            .unwrap_or_default()
    }

    pub fn open(&self, index: u32, last: bool, sealed: &[u8]) -> Result<Vec<u8>, SpoolError> {
        let nonce = self.nonce(index);
        self.aead
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: sealed,
                    aad: &Self::aad(index, last),
                },
            )
            .map_err(|_| SpoolError::Corrupt(index))
    }
}

/// Where chunk `index` starts in the sealed file, and how long it is.
pub fn sealed_span(index: u64, plain_len: u64) -> (u64, usize) {
    let start = index * (CHUNK + TAG) as u64;
    let plain_start = index * CHUNK as u64;
    let len = (plain_len - plain_start).min(CHUNK as u64) as usize;
    (start, len + TAG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let c = SpoolCipher::generate();
        let sealed = c.seal(3, false, b"hello");
        assert_eq!(c.open(3, false, &sealed).expect("opens"), b"hello");
        assert_eq!(
            c.open(4, false, &sealed),
            Err(SpoolError::Corrupt(4)),
            "reordered"
        );
        assert_eq!(
            c.open(3, true, &sealed),
            Err(SpoolError::Corrupt(3)),
            "last flag"
        );
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert!(c.open(3, false, &bad).is_err());
        assert!(
            SpoolCipher::generate().open(3, false, &sealed).is_err(),
            "other key"
        );
    }

    #[test]
    fn spans() {
        assert_eq!(sealed_span(0, 10), (0, 10 + TAG));
        let n = CHUNK as u64 * 2 + 5;
        assert_eq!(sealed_span(1, n), ((CHUNK + TAG) as u64, CHUNK + TAG));
        assert_eq!(sealed_span(2, n), (2 * (CHUNK + TAG) as u64, 5 + TAG));
    }
}
