//! Whole-object AES-256-GCM for small stored objects (models): nonce ‖ ciphertext ‖ tag,
//! with the object's label as associated data so a sealed object cannot be moved to another
//! record.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::DataKey;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the object could not be decrypted (wrong key, wrong label, or tampered data)")]
pub struct BlobError;

pub fn seal(key: &DataKey, label: &str, plain: &[u8]) -> Vec<u8> {
    let aead =
        Aes256Gcm::new_from_slice(key.expose()).unwrap_or_else(|_| unreachable!("32-byte key"));
    let nonce = crate::random::bytes::<12>();
    let ct = aead
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: label.as_bytes(),
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

pub fn open(key: &DataKey, label: &str, sealed: &[u8]) -> Result<Vec<u8>, BlobError> {
    if sealed.len() < 12 + 16 {
        return Err(BlobError);
    }
    let aead =
        Aes256Gcm::new_from_slice(key.expose()).unwrap_or_else(|_| unreachable!("32-byte key"));
    let (nonce, ct) = sealed.split_at(12);
    aead.decrypt(
        Nonce::from_slice(nonce),
        Payload {
            msg: ct,
            aad: label.as_bytes(),
        },
    )
    .map_err(|_| BlobError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_bindings() {
        let k = DataKey::generate();
        let s = seal(&k, "model:a", b"onnx bytes");
        assert_eq!(open(&k, "model:a", &s).expect("opens"), b"onnx bytes");
        assert_eq!(open(&k, "model:b", &s), Err(BlobError));
        assert_eq!(open(&DataKey::generate(), "model:a", &s), Err(BlobError));
        assert_eq!(open(&k, "model:a", &s[..10]), Err(BlobError));
    }
}
