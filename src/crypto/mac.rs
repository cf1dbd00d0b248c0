//! Chunk MACs for the wire: HMAC-SHA256 under a per-session key derived
//! from the Noise handshake, checked (in constant time) before a received
//! chunk is written (`docs/PROTOCOL.md`, *Data streams*).
//!
//! The MAC is hash-then-MAC: HMAC-SHA256 over the chunk's position and the
//! BLAKE3 of the sealed chunk. The receiver needs that BLAKE3 anyway (it is
//! the leaf of the vault's ciphertext digest), so the MAC check costs one
//! short HMAC instead of a second pass over every byte with SHA-256 — the
//! slowest primitive on the path. BLAKE3 is collision resistant, so the tag
//! still authenticates every byte of the ciphertext.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    chunk::{sealed_chunk_hash, FileId},
    keys::Secret32,
    CryptoError,
};

type HmacSha256 = Hmac<Sha256>;

/// Length of a chunk MAC.
pub const MAC_LEN: usize = 32;

/// A per-session chunk MAC key.
pub struct MacKey(Secret32);

impl MacKey {
    /// Wraps a derived key.
    pub fn new(key: Secret32) -> Self {
        Self(key)
    }

    fn mac(&self, file_id: &FileId, index: u64, len: u64, leaf: &[u8; 32]) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        #[allow(clippy::expect_used)]
        let mut m = HmacSha256::new_from_slice(self.0.expose()).expect("HMAC key");
        m.update(b"p2pfs/chunk-mac/v1");
        m.update(file_id);
        m.update(&index.to_be_bytes());
        m.update(&len.to_be_bytes());
        m.update(leaf);
        m
    }

    /// The MAC of a sealed chunk whose BLAKE3 (`leaf`) and length are known.
    pub fn tag_leaf(
        &self,
        file_id: &FileId,
        index: u64,
        len: u64,
        leaf: &[u8; 32],
    ) -> [u8; MAC_LEN] {
        self.mac(file_id, index, len, leaf)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The MAC of a sealed chunk at its position.
    pub fn tag(&self, file_id: &FileId, index: u64, sealed: &[u8]) -> [u8; MAC_LEN] {
        self.tag_leaf(
            file_id,
            index,
            sealed.len() as u64,
            &sealed_chunk_hash(sealed),
        )
    }

    /// Checks a MAC in constant time, given the chunk's BLAKE3 and length.
    pub fn verify_leaf(
        &self,
        file_id: &FileId,
        index: u64,
        len: u64,
        leaf: &[u8; 32],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        self.mac(file_id, index, len, leaf)
            .verify_slice(tag)
            .map_err(|_| CryptoError::AuthFailed)
    }

    /// Checks a MAC in constant time.
    pub fn verify(
        &self,
        file_id: &FileId,
        index: u64,
        sealed: &[u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        self.verify_leaf(
            file_id,
            index,
            sealed.len() as u64,
            &sealed_chunk_hash(sealed),
            tag,
        )
    }
}

/// HMAC-SHA256 of `data` under a 32-byte key (compare tags with
/// `subtle::ConstantTimeEq`).
pub fn hmac_sha256(key: &Secret32, data: &[u8]) -> [u8; MAC_LEN] {
    // HMAC accepts keys of any length; 32 bytes cannot fail.
    #[allow(clippy::expect_used)]
    let mut m = HmacSha256::new_from_slice(key.expose()).expect("HMAC key");
    m.update(data);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_verifies_and_binds_position_and_content() {
        let k = MacKey::new(Secret32::from_bytes([7; 32]));
        let t = k.tag(&[1; 16], 3, b"sealed");
        k.verify(&[1; 16], 3, b"sealed", &t).unwrap();
        assert!(k.verify(&[1; 16], 4, b"sealed", &t).is_err());
        assert!(k.verify(&[2; 16], 3, b"sealed", &t).is_err());
        assert!(k.verify(&[1; 16], 3, b"sealeD", &t).is_err());
        assert!(k.verify(&[1; 16], 3, b"sealed!", &t).is_err());
        assert!(k.verify(&[1; 16], 3, b"sealed", &t[..31]).is_err());
        let other = MacKey::new(Secret32::from_bytes([8; 32]));
        assert!(other.verify(&[1; 16], 3, b"sealed", &t).is_err());
        assert_eq!(k.tag_leaf(&[1; 16], 3, 6, &sealed_chunk_hash(b"sealed")), t);
    }
}
