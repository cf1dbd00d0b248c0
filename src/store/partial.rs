//! Resumable partial receptions: a staging data file plus a `.part` state
//! file (`docs/PROTOCOL.md`, *Resume*). The file key of a partial is kept
//! sealed to the *sender's* node key, so neither this node nor a thief of its
//! disk can read a partial; only the same sender can continue it.

use std::{fs, path::PathBuf};

use super::{
    error::{Result, StoreError},
    format::{
        begin, checked, read_name, read_size, validate_name, with_checksum, FormatError, Metadata,
    },
    fsutil,
    home::format_error,
    vault::{id_hex, ObjectWriter, Vault},
};
use crate::codec::{DecodeError, Reader};
use crate::crypto::{
    chunk::{chunk_count, chunk_plain_len, FileId, FileKey},
    keys::{Keypair, PublicKey, Secret32},
    wrap::{unwrap_key, wrap_key_for, WRAP_NONCE},
    CryptoError,
};

const MAGIC: &[u8; 8] = b"P2PFSPT\0";
/// Bytes written between two checkpoints.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;

/// What identifies a partial and how to continue it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialMeta {
    /// The sending node.
    pub sender: PublicKey,
    /// The object id.
    pub file_id: FileId,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Source version token.
    pub token: [u8; 16],
    /// Offered name.
    pub name: String,
    /// File key sealed to the sender (ephemeral ‖ ciphertext ‖ tag), once known.
    pub sealed_key: Option<Vec<u8>>,
}

/// The HKDF info and the AD of a partial's sealed key: its own label, both
/// node ids and the file id, so a sealed key opens only for the sender it
/// is sealed to, talking to the receiver that sealed it, for that file.
fn key_context(sender: &PublicKey, receiver: &PublicKey, id: &FileId) -> Vec<u8> {
    let mut c = b"p2pfs/partial-key/v2".to_vec();
    c.extend_from_slice(sender.as_bytes());
    c.extend_from_slice(receiver.as_bytes());
    c.extend_from_slice(id);
    c
}

/// Length of a sealed partial key: ephemeral 32 ‖ ciphertext 32 ‖ tag 16.
pub const SEALED_KEY_LEN: usize = 80;

/// Seals a file key to the sender's node key (done by the receiver).
pub fn seal_key_to(
    sender: &PublicKey,
    receiver: &PublicKey,
    id: &FileId,
    key: &Secret32,
) -> Result<Vec<u8>, CryptoError> {
    let ctx = key_context(sender, receiver, id);
    let (eph, k) = wrap_key_for(sender, &ctx)?;
    let mut out = eph.as_bytes().to_vec();
    out.extend(k.seal(WRAP_NONCE, &ctx, key.expose())?);
    Ok(out)
}

/// Opens a partial's sealed key with this (sending) node's identity; it
/// opens only if `receiver` sealed it for this file.
pub fn open_key(
    identity: &Keypair,
    receiver: &PublicKey,
    id: &FileId,
    sealed: &[u8],
) -> Result<FileKey, CryptoError> {
    if sealed.len() != SEALED_KEY_LEN {
        return Err(CryptoError::AuthFailed);
    }
    let ctx = key_context(&identity.public(), receiver, id);
    let mut eph = [0u8; 32];
    eph.copy_from_slice(&sealed[..32]);
    let k = unwrap_key(identity, &PublicKey(eph), &ctx)?;
    let pt = zeroize::Zeroizing::new(k.open(WRAP_NONCE, &ctx, &sealed[32..])?);
    let mut a = [0u8; 32];
    a.copy_from_slice(&pt);
    Ok(FileKey::from_secret(Secret32::from_bytes(a)))
}

fn encode_state(m: &PartialMeta, hashes: &[Option<[u8; 32]>]) -> Vec<u8> {
    let mut w = begin(MAGIC);
    w.bytes(m.sender.as_bytes())
        .bytes(&m.file_id)
        .u64(m.size)
        .u32(m.chunk_size)
        .bytes(&m.token)
        .u16(m.name.len() as u16)
        .bytes(m.name.as_bytes());
    match &m.sealed_key {
        Some(k) => w.u16(k.len() as u16).bytes(k),
        None => w.u16(0),
    };
    w.u64(hashes.len() as u64);
    for h in hashes {
        match h {
            Some(h) => w.u8(1).bytes(h),
            None => w.u8(0),
        };
    }
    with_checksum(w)
}

type State = (PartialMeta, Vec<Option<[u8; 32]>>);

fn decode_state(bytes: &[u8]) -> Result<State, FormatError> {
    let body = checked(bytes, MAGIC)?;
    let mut r = Reader::new(&body[10..]);
    let sender = PublicKey(r.array("sender")?);
    let file_id = r.array("file id")?;
    let (size, chunk_size) = read_size(&mut r)?;
    let token = r.array("token")?;
    let name = read_name(&mut r, "name", validate_name)?;
    let kl = r.u16("key length")? as usize;
    let sealed_key = match kl {
        0 => None,
        80 => Some(r.bytes(80, "sealed key")?.to_vec()),
        _ => return Err(DecodeError::Invalid("sealed key length").into()),
    };
    let count = r.u64("chunk count")?;
    if count != chunk_count(size, chunk_size) {
        return Err(DecodeError::Invalid("chunk count").into());
    }
    let mut hashes = Vec::with_capacity((count as usize).min(r.remaining()));
    for _ in 0..count {
        hashes.push(match r.u8("flag")? {
            0 => None,
            1 => Some(r.array("hash")?),
            _ => return Err(DecodeError::Invalid("flag").into()),
        });
    }
    r.finish()?;
    Ok((
        PartialMeta {
            sender,
            file_id,
            size,
            chunk_size,
            token,
            name,
            sealed_key,
        },
        hashes,
    ))
}

/// A reception in progress.
pub struct Partial<'v> {
    /// Identity and key of the partial.
    pub meta: PartialMeta,
    writer: ObjectWriter<'v>,
    state_path: PathBuf,
    since_checkpoint: u64,
    verify: Option<Verifier>,
}

/// The receiver's running end-to-end check: chunks are decrypted (in memory
/// only) in order as soon as they are present, so the final BLAKE3 is ready
/// when the last chunk lands.
struct Verifier {
    key: FileKey,
    next: u64,
    hasher: blake3::Hasher,
    /// Plaintext of chunks that arrived ahead of the cursor (bounded), so
    /// they need not be read back from disk.
    ahead: std::collections::BTreeMap<u64, Vec<u8>>,
}

/// Chunks kept in memory ahead of the verification cursor.
const AHEAD_MAX: usize = 8;

/// Makes a partial's chunks durable and records them; may run on another
/// thread while more chunks are written (it only lists chunks written before
/// it was made).
pub struct CheckpointJob {
    file: fs::File,
    state_path: PathBuf,
    state: Vec<u8>,
}

impl CheckpointJob {
    /// fsyncs the data, then atomically replaces the state file.
    pub fn run(self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("cannot sync", &self.state_path, e))?;
        fsutil::write_atomic(&self.state_path, &self.state)
    }
}

impl Vault {
    fn partial_paths(&self, id: &FileId) -> (PathBuf, PathBuf) {
        let base = self.staging_dir().join(format!("recv-{}", id_hex(id)));
        (base.with_extension("obj"), base.with_extension("part"))
    }

    /// Every readable partial in staging (unreadable ones are skipped).
    pub fn partials(&self) -> Result<Vec<PartialMeta>> {
        let dir = self.staging_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io("cannot list", &dir, e))? {
            let Ok(e) = e else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("recv-") && name.ends_with(".part") {
                if let Ok((m, _)) = fsutil::read_limited(&e.path(), 1 << 30)
                    .and_then(|b| decode_state(&b).map_err(|x| format_error(&e.path(), x)))
                {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// Removes a partial's files.
    pub fn remove_partial(&self, id: &FileId) -> Result<()> {
        let (obj, part) = self.partial_paths(id);
        fsutil::remove_if_exists(&part)?;
        fsutil::remove_if_exists(&obj)
    }

    /// Starts a new partial.
    pub fn start_partial(&self, meta: PartialMeta) -> Result<Partial<'_>> {
        let (obj, part) = self.partial_paths(&meta.file_id);
        let writer =
            ObjectWriter::create_at(self, obj, meta.file_id, meta.size, meta.chunk_size, true)?;
        let p = Partial {
            meta,
            writer,
            state_path: part,
            since_checkpoint: 0,
            verify: None,
        };
        // No state file yet: a partial becomes resumable at its first
        // checkpoint (it needs the sealed key anyway); an orphan data file
        // is removed by the next reconciliation. Small files never pay for
        // a checkpoint.
        Ok(p)
    }

    /// Reopens a partial found by [`Vault::partials`]; chunks whose data
    /// does not match the recorded hash are dropped.
    pub fn resume_partial(&self, id: &FileId) -> Result<Partial<'_>> {
        let (obj, part) = self.partial_paths(id);
        let bytes = fsutil::read_limited(&part, 1 << 30)?;
        let (meta, hashes) = decode_state(&bytes).map_err(|e| format_error(&part, e))?;
        let writer =
            ObjectWriter::reopen(self, obj, meta.file_id, meta.size, meta.chunk_size, hashes)?;
        Ok(Partial {
            meta,
            writer,
            state_path: part,
            since_checkpoint: 0,
            verify: None,
        })
    }
}

impl<'v> Partial<'v> {
    /// The vault this partial belongs to.
    pub fn vault(&self) -> &'v Vault {
        self.writer.vault()
    }

    /// Writes a (MAC-checked) sealed chunk, advances the running
    /// verification, and returns a checkpoint job every
    /// [`CHECKPOINT_BYTES`]. `sealed` is consumed as scratch space.
    pub fn write_chunk(
        &mut self,
        index: u64,
        mut sealed: Vec<u8>,
        leaf: [u8; 32],
    ) -> Result<Option<CheckpointJob>> {
        self.writer.write_chunk_hashed(index, &sealed, leaf)?;
        self.since_checkpoint += sealed.len() as u64;
        if let Some(v) = &mut self.verify {
            if v.next == index || (index > v.next && v.ahead.len() < AHEAD_MAX) {
                let n = self.writer.header().chunk_count;
                let id = self.meta.file_id;
                let len = v
                    .key
                    .open_chunk_in_place(&id, index, index + 1 == n, &mut sealed)
                    .map_err(|_| bad_chunk(&self.meta, index))?
                    .len();
                if v.next == index {
                    v.hasher.update(&sealed[12..12 + len]);
                    v.next += 1;
                } else {
                    sealed.copy_within(12..12 + len, 0);
                    sealed.truncate(len);
                    v.ahead.insert(index, sealed);
                }
            }
        }
        self.advance()?;
        if self.since_checkpoint >= CHECKPOINT_BYTES {
            return self.checkpoint_job().map(Some);
        }
        Ok(None)
    }

    /// Hashes every present chunk after the verification cursor.
    fn advance(&mut self) -> Result<()> {
        let n = self.writer.header().chunk_count;
        let id = self.meta.file_id;
        let mut buf = Vec::new();
        while let Some(v) = &mut self.verify {
            if v.next >= n || self.writer.hashes()[v.next as usize].is_none() {
                break;
            }
            if let Some(pt) = v.ahead.remove(&v.next) {
                v.hasher.update(&pt);
                v.next += 1;
                continue;
            }
            self.writer.read_chunk(v.next, &mut buf)?;
            let pt = v
                .key
                .open_chunk_in_place(&id, v.next, v.next + 1 == n, &mut buf)
                .map_err(|_| bad_chunk(&self.meta, v.next))?;
            v.hasher.update(pt);
            v.next += 1;
        }
        Ok(())
    }

    /// Sets the file key (in memory only) and starts the running verification.
    pub fn set_key(&mut self, key: FileKey) -> Result<()> {
        self.verify = Some(Verifier {
            key,
            next: 0,
            hasher: blake3::Hasher::new(),
            ahead: Default::default(),
        });
        self.advance()
    }

    /// A checkpoint of what is written now.
    pub fn checkpoint_job(&mut self) -> Result<CheckpointJob> {
        self.since_checkpoint = 0;
        Ok(CheckpointJob {
            file: self.writer.file_handle()?,
            state_path: self.state_path.clone(),
            state: encode_state(&self.meta, self.writer.hashes()),
        })
    }

    /// Makes the chunks written so far durable and records them.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.checkpoint_job()?.run()
    }

    /// Records the file key (sealed to the sender).
    pub fn set_sealed_key(&mut self, sealed: Vec<u8>) {
        self.meta.sealed_key = Some(sealed);
    }

    /// Starts over (the sender could not continue).
    pub fn reset(&mut self) {
        self.writer.reset();
        self.meta.sealed_key = None;
        self.verify = None;
    }

    /// Bitmap of chunks held (bit i = byte i/8, mask 1 << i%8).
    pub fn have(&self) -> Vec<u8> {
        let h = self.writer.hashes();
        let mut b = vec![0u8; h.len().div_ceil(8)];
        for (i, x) in h.iter().enumerate() {
            if x.is_some() {
                b[i / 8] |= 1 << (i % 8);
            }
        }
        b
    }

    /// Plaintext bytes held.
    pub fn held_bytes(&self) -> u64 {
        self.writer
            .hashes()
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_some())
            .map(|(i, _)| chunk_plain_len(self.meta.size, self.meta.chunk_size, i as u64) as u64)
            .sum()
    }

    /// True when chunk `i` is held.
    pub fn has(&self, i: u64) -> bool {
        self.writer
            .hashes()
            .get(i as usize)
            .is_some_and(Option::is_some)
    }

    /// True when every chunk is held and the key is known.
    pub fn is_complete(&self) -> bool {
        self.verify.is_some() && self.writer.is_complete()
    }

    /// Checks the whole file against the sender's `blake3` (from the running
    /// verification, or by decrypting it again) and commits it to the vault;
    /// removes the partial.
    pub fn finish(mut self, blake3: &[u8; 32], meta: &Metadata) -> Result<()> {
        let n = self.writer.header().chunk_count;
        let Some(v) = self.verify.take() else {
            return Err(StoreError::Invalid("file key missing".into()));
        };
        let got = if v.next == n {
            *v.hasher.finalize().as_bytes()
        } else {
            self.writer.verify_plaintext(&v.key)?
        };
        if &got != blake3 {
            return Err(StoreError::corrupt(
                format!("received file {}", meta.name),
                "BLAKE3 of the received data does not match the sender's",
            ));
        }
        let state = self.state_path.clone();
        self.writer.commit(v.key.secret(), meta)?;
        fsutil::remove_if_exists(&state)
    }
}

fn bad_chunk(meta: &PartialMeta, index: u64) -> StoreError {
    StoreError::corrupt(
        format!("received file {}", meta.name),
        format!("chunk {index} does not authenticate under the file key"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn state_round_trip(size in 0u64..(64 << 20), key in proptest::option::of(proptest::collection::vec(any::<u8>(), 80)),
                            seed in any::<u8>(), name in "[a-z]{1,12}(/[a-z0-9._-]{1,12}){0,2}") {
            prop_assume!(validate_name(&name).is_ok());
            let m = PartialMeta {
                sender: PublicKey([seed; 32]),
                file_id: [seed ^ 1; 16],
                size,
                chunk_size: 1 << 20,
                token: [seed ^ 2; 16],
                name,
                sealed_key: key,
            };
            let n = chunk_count(size, m.chunk_size) as usize;
            let hashes: Vec<Option<[u8; 32]>> = (0..n).map(|i| (i % 3 != 0).then_some([i as u8; 32])).collect();
            let enc = encode_state(&m, &hashes);
            let (m2, h2) = decode_state(&enc).unwrap();
            prop_assert_eq!(&m2, &m);
            prop_assert_eq!(&h2, &hashes);
            let mut bad = enc.clone();
            let i = bad.len() / 2;
            bad[i] ^= 0x40;
            prop_assert!(decode_state(&bad).is_err());
            prop_assert!(decode_state(&enc[..enc.len() - 1]).is_err());
        }
    }

    #[test]
    fn sealed_key_opens_only_for_the_sender() {
        let sender = Keypair::generate().unwrap();
        let other = Keypair::generate().unwrap();
        let receiver = Keypair::generate().unwrap().public();
        let thief = Keypair::generate().unwrap().public();
        let key = FileKey::generate().unwrap();
        let sealed = seal_key_to(&sender.public(), &receiver, &[3; 16], key.secret()).unwrap();
        let back = open_key(&sender, &receiver, &[3; 16], &sealed).unwrap();
        assert_eq!(back.secret().expose(), key.secret().expose());
        assert!(open_key(&other, &receiver, &[3; 16], &sealed).is_err());
        assert!(open_key(&sender, &receiver, &[4; 16], &sealed).is_err());
        assert!(open_key(&sender, &receiver, &[3; 16], &sealed[..79]).is_err());
        // Regression (issue 7, H3): another node presenting a stolen blob
        // gets nothing from the sender.
        assert!(open_key(&sender, &thief, &[3; 16], &sealed).is_err());
    }
}
