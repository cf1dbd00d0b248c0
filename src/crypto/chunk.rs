//! The chunk format shared by the vault and the wire (`docs/VAULT.md`,
//! *Chunk format*): each chunk is `nonce || AES-256-GCM ciphertext || tag`
//! under the file key, with the file id, chunk index and final flag bound as
//! associated data so reordering, splicing and truncation fail to open.

use super::{
    aead::{random_nonce, AeadKey, NONCE_LEN, TAG_LEN},
    keys::Secret32,
    CryptoError,
};

/// Bytes a sealed chunk adds to its plaintext (nonce + tag).
pub const CHUNK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest accepted chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Largest accepted chunk count.
pub const MAX_CHUNK_COUNT: u64 = 1 << 32;
/// Length of a file id.
pub const FILE_ID_LEN: usize = 16;

const AD_LABEL: &[u8; 14] = b"p2pfs/chunk/v1";

/// Identifies a file across the wire and in the vault (random, 16 bytes).
pub type FileId = [u8; FILE_ID_LEN];

/// Number of chunks of a file of `size` bytes: at least one, so an empty file
/// still has a final chunk.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size)).max(1)
}

/// Plaintext length of chunk `index`.
pub fn chunk_plain_len(size: u64, chunk_size: u32, index: u64) -> usize {
    let start = index.saturating_mul(u64::from(chunk_size));
    size.saturating_sub(start).min(u64::from(chunk_size)) as usize
}

/// The associated data of chunk `index`.
pub fn chunk_ad(file_id: &FileId, index: u64, is_final: bool) -> [u8; 39] {
    let mut ad = [0u8; 39];
    ad[..14].copy_from_slice(AD_LABEL);
    ad[14..30].copy_from_slice(file_id);
    ad[30..38].copy_from_slice(&index.to_be_bytes());
    ad[38] = u8::from(is_final);
    ad
}

/// A per-file AES-256-GCM key.
pub struct FileKey {
    raw: Secret32,
    aead: AeadKey,
}

impl FileKey {
    /// A fresh random file key.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::from_secret(Secret32::generate()?))
    }

    /// Rebuilds a file key from its bytes.
    pub fn from_secret(raw: Secret32) -> Self {
        let aead = AeadKey::new(&raw);
        Self { raw, aead }
    }

    /// The key bytes (to wrap them into an envelope).
    pub fn secret(&self) -> &Secret32 {
        &self.raw
    }

    /// Seals a chunk in place. `buf` is `[NONCE_LEN spare][plaintext][TAG_LEN spare]`;
    /// on return it is the sealed chunk.
    pub fn seal_chunk_in_place(
        &self,
        file_id: &FileId,
        index: u64,
        is_final: bool,
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.seal_chunk_with_nonce(random_nonce()?, file_id, index, is_final, buf)
    }

    /// As [`Self::seal_chunk_in_place`] with a caller-chosen nonce: for the
    /// known-answer tests only; production code always uses a random nonce.
    pub fn seal_chunk_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        file_id: &FileId,
        index: u64,
        is_final: bool,
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        if buf.len() < CHUNK_OVERHEAD {
            return Err(CryptoError::TooLong("chunk buffer"));
        }
        let end = buf.len() - TAG_LEN;
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let ad = chunk_ad(file_id, index, is_final);
        let tag = self
            .aead
            .seal_detached(nonce, &ad, &mut buf[NONCE_LEN..end])?;
        buf[end..].copy_from_slice(&tag);
        Ok(())
    }

    /// Seals `plaintext` into a new sealed chunk.
    pub fn seal_chunk(
        &self,
        file_id: &FileId,
        index: u64,
        is_final: bool,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut buf = vec![0u8; plaintext.len() + CHUNK_OVERHEAD];
        buf[NONCE_LEN..NONCE_LEN + plaintext.len()].copy_from_slice(plaintext);
        self.seal_chunk_in_place(file_id, index, is_final, &mut buf)?;
        Ok(buf)
    }

    /// Opens a sealed chunk in place; returns the plaintext slice.
    pub fn open_chunk_in_place<'a>(
        &self,
        file_id: &FileId,
        index: u64,
        is_final: bool,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if sealed.len() < CHUNK_OVERHEAD {
            return Err(CryptoError::AuthFailed);
        }
        let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        let ad = chunk_ad(file_id, index, is_final);
        self.aead.open_in_place(n, &ad, body)
    }
}

/// BLAKE3 of one sealed chunk, the leaf of the ciphertext digest.
pub fn sealed_chunk_hash(sealed: &[u8]) -> [u8; 32] {
    *blake3::hash(sealed).as_bytes()
}

/// The ciphertext digest of a file from its chunks' hashes, in order
/// (`docs/VAULT.md`). Verifiable without any key.
pub fn ct_digest(chunk_hashes: &[[u8; 32]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"p2pfs/ct/v1");
    h.update(&(chunk_hashes.len() as u64).to_be_bytes());
    for c in chunk_hashes {
        h.update(c);
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts() {
        assert_eq!(chunk_count(0, 4096), 1);
        assert_eq!(chunk_count(4096, 4096), 1);
        assert_eq!(chunk_count(4097, 4096), 2);
        assert_eq!(chunk_plain_len(4097, 4096, 1), 1);
        assert_eq!(chunk_plain_len(0, 4096, 0), 0);
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000),
                                idx in any::<u64>(), fin in any::<bool>(), id in any::<[u8;16]>()) {
            let k = FileKey::generate().unwrap();
            let mut sealed = k.seal_chunk(&id, idx, fin, &data).unwrap();
            prop_assert_eq!(sealed.len(), data.len() + CHUNK_OVERHEAD);
            let pt = k.open_chunk_in_place(&id, idx, fin, &mut sealed.clone()).unwrap().to_vec();
            prop_assert_eq!(&pt, &data);
            // any other position, flag or file fails
            prop_assert!(k.open_chunk_in_place(&id, idx.wrapping_add(1), fin, &mut sealed.clone()).is_err());
            prop_assert!(k.open_chunk_in_place(&id, idx, !fin, &mut sealed.clone()).is_err());
            let mut other = id; other[0] ^= 1;
            prop_assert!(k.open_chunk_in_place(&other, idx, fin, &mut sealed.clone()).is_err());
            let last = sealed.len() - 1;
            sealed[last] ^= 0x80;
            prop_assert!(k.open_chunk_in_place(&id, idx, fin, &mut sealed).is_err());
        }
    }
}
