//! Cryptographic primitives of p2pfs: node identity keys, the chunk format
//! (AES-256-GCM), chunk MACs (HMAC-SHA256), key wrapping to a public key,
//! the passphrase KDF (Argon2id) and BLAKE3 helpers.
//!
//! This module owns no files, sockets or tasks: it turns bytes and keys into
//! bytes. Secrets live in types that zeroize on drop and never print.
//! The byte layouts are specified in `docs/VAULT.md` and `docs/PROTOCOL.md`.

pub mod aead;
pub mod chunk;
pub mod kdf;
pub mod keys;
pub mod mac;
pub mod wrap;

use thiserror::Error;

/// Failures of cryptographic operations.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// An authentication tag did not verify: wrong key, or the data was altered.
    #[error("authentication failed (wrong key or altered data)")]
    AuthFailed,
    /// A Diffie-Hellman exchange produced the all-zero value (a low-order public key).
    #[error("peer public key is invalid (low order point)")]
    WeakPublicKey,
    /// Argon2 parameters are outside the accepted bounds.
    #[error("key-derivation parameters out of bounds: {0}")]
    KdfParams(&'static str),
    /// A plaintext or ciphertext is longer than the format allows.
    #[error("input too long for {0}")]
    TooLong(&'static str),
    /// The operating system's random source failed.
    #[error("random number generator failed")]
    Rng,
}

/// Fills an array with bytes from the operating system's CSPRNG.
pub fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    use rand_core::RngCore;
    let mut a = [0u8; N];
    rand_core::OsRng
        .try_fill_bytes(&mut a)
        .map_err(|_| CryptoError::Rng)?;
    Ok(a)
}

/// BLAKE3 of one buffer.
pub fn blake3(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Lower-case hex, as `b3sum` prints.
pub fn to_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Parses lower- or upper-case hex into an array.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let v = data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .ok()?;
    v.try_into().ok()
}
