//! What a node serves from its vault to peers allowed to fetch, without any
//! key — stored objects as they are (data file and envelope), the vault
//! header for the owner's devices — and how a fetching owner's device opens
//! them with the passphrase typed there (`docs/VAULT.md`, *Retrieval*).

use std::{os::unix::fs::FileExt, path::PathBuf};

use super::{
    error::Result,
    format::{EnvelopeBody, EnvelopeFile, HeaderFile, ObjectHeader},
    fsutil,
    home::format_error,
    vault::{id_hex, open_envelope, open_secret, Vault},
    StoreError,
};
use crate::crypto::{
    chunk::{chunk_count, FileId, CHUNK_OVERHEAD},
    kdf::derive_kek,
    keys::Keypair,
};

/// A stored object as it is served: its clear facts and its sealed parts.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// The object id.
    pub id: FileId,
    /// Plaintext size (from the data file's length).
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The data file.
    pub data: PathBuf,
    /// The envelope as stored (sealed to the vault key).
    pub envelope: Vec<u8>,
}

impl Vault {
    /// The ids of the committed objects (an envelope in `objects/`).
    pub fn object_ids(&self) -> Result<Vec<FileId>> {
        Ok(self.scan()?.env.keys().copied().collect())
    }

    /// A committed object as stored, checked without keys: the envelope
    /// names it, the data file's header matches it and its length is that
    /// of whole chunks. The plaintext size follows from that length.
    pub fn stored_object(&self, id: &FileId) -> Result<StoredObject> {
        let damaged = |what: &str| StoreError::corrupt(format!("object {}", id_hex(id)), what);
        let envelope = self.read_envelope(id)?;
        let env = EnvelopeFile::decode(&envelope)
            .map_err(|e| format_error(&self.envelope_path_shown(id), e))?;
        if &env.id != id {
            return Err(damaged("envelope belongs to another object"));
        }
        let (f, data, len) = self.open_data(id)?;
        let mut hb = [0u8; ObjectHeader::LEN as usize];
        f.read_exact_at(&mut hb, 0)
            .map_err(|_| damaged("data file truncated"))?;
        let h = ObjectHeader::decode(&hb).map_err(|e| format_error(&data, e))?;
        if &h.id != id {
            return Err(damaged("data file belongs to another object"));
        }
        let overhead = h
            .chunk_count
            .checked_mul(CHUNK_OVERHEAD as u64)
            .and_then(|o| o.checked_add(ObjectHeader::LEN))
            .ok_or_else(|| damaged("chunk count"))?;
        let size = len
            .checked_sub(overhead)
            .ok_or_else(|| damaged("data file has the wrong length"))?;
        if chunk_count(size, h.chunk_size) != h.chunk_count {
            return Err(damaged("data file has the wrong length"));
        }
        Ok(StoredObject {
            id: *id,
            size,
            chunk_size: h.chunk_size,
            data,
            envelope,
        })
    }

    /// The data file of object `id` (`<id>.one` or `<id>.obj`; the
    /// chunks are at the same offsets in both).
    pub fn data_path(&self, id: &FileId) -> PathBuf {
        self.one_or(id, self.obj_path(id))
    }

    /// The vault header as stored (for the owner's devices: it holds the
    /// vault secret key sealed under the passphrase).
    pub fn header_bytes(&self) -> Result<Vec<u8>> {
        fsutil::read_limited(&self.dir().join("header"), 4096)
    }
}

/// Opens a peer's vault key from its header with the passphrase typed on
/// this device. A wrong passphrase is [`StoreError::WrongPassphrase`].
pub fn open_remote_vault(header: &[u8], passphrase: &[u8]) -> Result<Keypair> {
    let h = HeaderFile::decode(header)
        .map_err(|e| StoreError::corrupt("the peer's vault header", e.to_string()))?;
    let kek = derive_kek(passphrase, &h.salt, h.params)?;
    open_secret(&kek, &h).map_err(|_| StoreError::WrongPassphrase)
}

/// Opens a served envelope of object `id` with a vault key pair.
pub fn open_remote_envelope(kp: &Keypair, id: &FileId, envelope: &[u8]) -> Result<EnvelopeBody> {
    let what = || format!("the peer's object {}", id_hex(id));
    let env =
        EnvelopeFile::decode(envelope).map_err(|e| StoreError::corrupt(what(), e.to_string()))?;
    if &env.id != id {
        return Err(StoreError::corrupt(what(), "envelope of another object"));
    }
    open_envelope(kp, &env).map_err(|e| StoreError::corrupt(what(), e))
}
