//! Ed25519 signatures on uploaded artefacts (models, code).
//!
//! Users register public keys; a node can require every upload to carry a signature by a key
//! registered to the uploader. Verification is strict (`verify_strict`: no small-order keys,
//! no malleable signatures).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("not an Ed25519 public key: give 32 bytes as hex or base64, or a PEM \"PUBLIC KEY\"")]
    BadPublicKey,
    #[error("not an Ed25519 signature: give 64 bytes as hex, base64 or raw")]
    BadSignature,
    #[error("not an Ed25519 private key")]
    BadPrivateKey,
    #[error("the signature does not match the file and key")]
    Mismatch,
}

fn decode_text(text: &str) -> Option<Vec<u8>> {
    let t: String = text.split_whitespace().collect();
    hex::decode(&t).ok().or_else(|| STANDARD.decode(&t).ok())
}

/// A registered public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Accepts PEM (`-----BEGIN PUBLIC KEY-----`, as `openssl genpkey -algorithm ed25519`
    /// writes), or the 32 raw bytes as hex or base64.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        if text.contains("BEGIN PUBLIC KEY") {
            return VerifyingKey::from_public_key_pem(text)
                .map(Self)
                .map_err(|_| SigningError::BadPublicKey);
        }
        let bytes = decode_text(text).ok_or(SigningError::BadPublicKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SigningError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| SigningError::BadPublicKey)?;
        let key = VerifyingKey::from_bytes(&arr).map_err(|_| SigningError::BadPublicKey)?;
        if key.is_weak() {
            return Err(SigningError::BadPublicKey);
        }
        Ok(Self(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|_| hex::encode(self.to_bytes()))
    }

    /// `SHA256:` + the first 16 bytes of the key's SHA-256, hex: what listings show.
    pub fn fingerprint(&self) -> String {
        let d = Sha256::digest(self.to_bytes());
        format!("SHA256:{}", hex::encode(&d[..16]))
    }

    /// Verifies a signature (64 bytes: raw, hex or base64) over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SigningError> {
        let sig = parse_signature(signature)?;
        self.0
            .verify_strict(message, &sig)
            .map_err(|_| SigningError::Mismatch)
    }
}

fn parse_signature(raw: &[u8]) -> Result<Signature, SigningError> {
    let bytes: Vec<u8> = if raw.len() == 64 {
        raw.to_vec()
    } else {
        let text = std::str::from_utf8(raw).map_err(|_| SigningError::BadSignature)?;
        decode_text(text).ok_or(SigningError::BadSignature)?
    };
    let arr: [u8; 64] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SigningError::BadSignature)?;
    Ok(Signature::from_bytes(&arr))
}

/// A private signing key, for the CLI's `veil keys generate` and signing before upload.
pub struct PrivateKey(SigningKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

impl PrivateKey {
    pub fn generate() -> Self {
        let mut seed = crate::random::bytes::<32>();
        let key = SigningKey::from_bytes(&seed);
        seed.zeroize();
        Self(key)
    }

    /// The on-disk form: the 32-byte seed as hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn from_hex(text: &str) -> Result<Self, SigningError> {
        let mut bytes = hex::decode(text.trim()).map_err(|_| SigningError::BadPrivateKey)?;
        let seed: Result<[u8; 32], _> = bytes.as_slice().try_into();
        bytes.zeroize();
        let mut seed = seed.map_err(|_| SigningError::BadPrivateKey)?;
        let key = SigningKey::from_bytes(&seed);
        seed.zeroize();
        Ok(Self(key))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message`; the signature as hex (what `--signature` files contain).
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.0.sign(message).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_encodings() {
        let k = PrivateKey::generate();
        let pk = k.public();
        let sig = k.sign_hex(b"model bytes");
        pk.verify(b"model bytes", sig.as_bytes())
            .expect("hex signature");
        let raw = hex::decode(&sig).expect("hex");
        pk.verify(b"model bytes", &raw).expect("raw signature");
        assert_eq!(
            pk.verify(b"other bytes", sig.as_bytes()),
            Err(SigningError::Mismatch)
        );
        assert_eq!(pk.verify(b"x", b"short"), Err(SigningError::BadSignature));

        assert_eq!(PublicKey::parse(&pk.to_pem()).expect("pem"), pk);
        assert_eq!(
            PublicKey::parse(&hex::encode(pk.to_bytes())).expect("hex"),
            pk
        );
        assert_eq!(
            PublicKey::parse(&STANDARD.encode(pk.to_bytes())).expect("b64"),
            pk
        );
        assert!(PublicKey::parse("nonsense").is_err());
        assert!(
            PublicKey::from_bytes(&[0u8; 32]).is_err(),
            "weak (small-order) key"
        );
        assert!(pk.fingerprint().starts_with("SHA256:"));
        assert_eq!(
            PrivateKey::from_hex(&k.to_hex())
                .expect("round trip")
                .public(),
            pk
        );
    }
}
