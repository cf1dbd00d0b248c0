//! Resumable partial receptions: a staging data file plus a `.part` state
//! file (`docs/PROTOCOL.md`, *Resume*; `docs/VAULT.md`, *Partials*).
//!
//! Nothing in a partial names the file or its sender in clear. A partial
//! lives in a *slot*, `staging/part-<slot>.{obj,part}`, where the slot is a
//! keyed hash of (sender, name) under a key derived from this node's
//! identity secret: the receiver finds the partial of an offered entry by
//! computing its slot — a connection reads only its own sender's partials —
//! and the state records only a keyed *version tag* of (sender, name, size,
//! chunk size, source token) to tell a resumable partial from a stale one.
//! The name comes from the offer again when the file is committed.
//!
//! The file key of a partial is kept sealed to the *sender's* node key and
//! bound to both node ids and the file id, so neither this node nor a thief
//! of its disk can read a partial; only the same sender, talking to this
//! receiver, can continue it.

use std::{
    fs,
    io::Seek,
    path::{Path, PathBuf},
};

use super::{
    chunks::ChunkHashes,
    error::{Result, StoreError},
    fileops,
    format::{begin_v, checked_v, with_checksum, FormatError, Metadata},
    fsutil,
    home::format_error,
    vault::{id_hex, ObjectWriter, Vault},
};
use crate::codec::{DecodeError, Reader};
use crate::crypto::{
    chunk::{chunk_count, chunk_plain_len, FileId, FileKey},
    keys::{Keypair, PublicKey, Secret32},
    wrap::{hkdf32, unwrap_key, wrap_key_for, WRAP_NONCE},
    CryptoError,
};

const MAGIC: &[u8; 8] = b"P2PFSPT\0";
/// The format version of partial state files (version 1, written by
/// c3e3ae4, kept the name in clear; such partials are dropped). Version 3
/// added the label sealed to the vault key; version 2 states are read as
/// unlabelled.
pub const STATE_VERSION: u16 = 3;
/// The state version before labels, still read.
const STATE_VERSION_UNLABELLED: u16 = 2;
/// Largest sealed label: ephemeral key, peer, kind, a name of at most
/// 4096 bytes, tag.
const MAX_LABEL: usize = 32 + 32 + 1 + 4096 + 16;
/// The HKDF info (and AD) prefix of a partial's label.
const LABEL_INFO: &[u8] = b"p2pfs/partial-label/v1";
/// Data written between two checkpoints, at least.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;
/// Checkpoints are also at least this many times the state file's size
/// apart, so rewriting the state stays a small, linear share of the work
/// even with many small chunks.
const STATE_RATIO: u64 = 64;
/// Largest state file read.
const MAX_STATE: u64 = 1 << 30;
/// Bytes of one recorded chunk: index and BLAKE3.
const RECORD_LEN: usize = 8 + 32;

/// Names a partial: a keyed hash of (sender, name). A type of its own, so
/// it is never mistaken for a file id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot(pub [u8; 16]);

/// The key that names partials and tags their versions, derived from the
/// node identity secret (so the daemon has it, unattended, after a restart;
/// nobody without the identity file can test guesses against the slots).
pub struct StagingKey(Secret32);

impl StagingKey {
    /// Derives the staging key of a node.
    pub fn from_identity(identity: &Keypair) -> Self {
        Self(hkdf32(
            &identity.secret_bytes(),
            b"p2pfs/staging-key/v1",
            b"partial slots and versions",
        ))
    }

    fn mac(&self, label: &[u8], sender: &PublicKey, name: &str, extra: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(self.0.expose());
        h.update(label);
        h.update(sender.as_bytes());
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update(extra);
        *h.finalize().as_bytes()
    }

    /// The MAC of a receipt record ([`super::received`]).
    pub fn receipt_mac(&self, record: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(self.0.expose());
        h.update(b"p2pfs/receipt/v1");
        h.update(record);
        *h.finalize().as_bytes()
    }

    /// The slot of `name` offered by `sender`.
    pub fn slot(&self, sender: &PublicKey, name: &str) -> Slot {
        let mut s = [0u8; 16];
        s.copy_from_slice(&self.mac(b"p2pfs/partial-slot/v1", sender, name, &[])[..16]);
        Slot(s)
    }

    /// The version tag of an offered entry: a partial resumes only an entry
    /// with the same tag (same sender, name, size, chunk size and source).
    pub fn version(
        &self,
        sender: &PublicKey,
        name: &str,
        size: u64,
        chunk_size: u32,
        token: &[u8; 16],
    ) -> [u8; 32] {
        let mut extra = Vec::with_capacity(28);
        extra.extend_from_slice(&size.to_be_bytes());
        extra.extend_from_slice(&chunk_size.to_be_bytes());
        extra.extend_from_slice(token);
        self.mac(b"p2pfs/partial-version/v1", sender, name, &extra)
    }
}

/// What identifies a partial and how to continue it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialMeta {
    /// Where it lives.
    pub slot: Slot,
    /// The version tag of the entry it receives.
    pub version: [u8; 32],
    /// The object id.
    pub file_id: FileId,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// File key sealed to the sender (ephemeral ‖ ciphertext ‖ tag), once known.
    pub sealed_key: Option<Vec<u8>>,
    /// Who and what the partial is, sealed to the vault key
    /// ([`PartialLabel`]); empty when not recorded (a version-2 state).
    pub label: Vec<u8>,
}

/// What a partial is, for its owner (`vault partials`): sealed to the
/// vault public key when the state is first written, so the daemon can
/// record it unattended and only the passphrase opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialLabel {
    /// The peer it comes from.
    pub peer: PublicKey,
    /// How it arrives.
    pub kind: PartialKind,
    /// The entry's name (empty for a deposit: this node never learns it).
    pub name: String,
}

/// How a partial arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialKind {
    /// Sent here (a push).
    Received,
    /// Fetched from the peer (`get`).
    Fetched,
    /// A sealed deposit of the peer.
    Deposit,
}

impl PartialKind {
    fn code(self) -> u8 {
        match self {
            PartialKind::Received => 0,
            PartialKind::Fetched => 1,
            PartialKind::Deposit => 2,
        }
    }

    /// How `vault partials` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            PartialKind::Received => "received",
            PartialKind::Fetched => "fetched",
            PartialKind::Deposit => "deposit",
        }
    }
}

fn label_info(slot: &Slot) -> Vec<u8> {
    let mut i = LABEL_INFO.to_vec();
    i.extend_from_slice(&slot.0);
    i
}

impl PartialLabel {
    /// Sealed to `vault_pk`: ephemeral (32) ‖ AES-256-GCM(peer ‖ kind ‖ name).
    pub fn seal(&self, vault_pk: &PublicKey, slot: &Slot) -> Result<Vec<u8>> {
        let info = label_info(slot);
        let mut body = zeroize::Zeroizing::new(Vec::with_capacity(33 + self.name.len()));
        body.extend_from_slice(self.peer.as_bytes());
        body.push(self.kind.code());
        body.extend_from_slice(self.name.as_bytes());
        let (eph, key) = crate::crypto::wrap::wrap_key_for(vault_pk, &info)?;
        let mut out = eph.as_bytes().to_vec();
        out.extend_from_slice(&key.seal(WRAP_NONCE, &info, &body)?);
        if out.len() > MAX_LABEL {
            return Err(StoreError::Invalid("a partial's name is too long".into()));
        }
        Ok(out)
    }

    /// Opens a sealed label with one of `keys` (the vault key and those it
    /// replaced); `None` when none opens it or it is malformed.
    pub fn open(sealed: &[u8], slot: &Slot, keys: &[&Keypair]) -> Option<PartialLabel> {
        let eph = PublicKey(sealed.get(..32)?.try_into().ok()?);
        let info = label_info(slot);
        let body = keys.iter().find_map(|kp| {
            let key = unwrap_key(kp, &eph, &info).ok()?;
            key.open(WRAP_NONCE, &info, &sealed[32..]).ok()
        })?;
        let body = zeroize::Zeroizing::new(body);
        let peer = PublicKey(body.get(..32)?.try_into().ok()?);
        let kind = match body.get(32)? {
            0 => PartialKind::Received,
            1 => PartialKind::Fetched,
            2 => PartialKind::Deposit,
            _ => return None,
        };
        let name = std::str::from_utf8(body.get(33..)?).ok()?.to_owned();
        Some(PartialLabel { peer, kind, name })
    }
}

/// A partial as `vault partials` lists it, read without the passphrase.
#[derive(Clone, Debug)]
pub struct PartialInfo {
    /// Where it lives (its id in `vault partials`).
    pub slot: Slot,
    /// Plaintext size of the file.
    pub size: u64,
    /// Plaintext bytes held (checkpointed).
    pub held: u64,
    /// When its state was last written.
    pub modified: Option<std::time::SystemTime>,
    /// The sealed label (empty: none recorded).
    pub label: Vec<u8>,
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

fn encode_state(m: &PartialMeta, hashes: &ChunkHashes) -> Vec<u8> {
    let mut w = begin_v(MAGIC, STATE_VERSION);
    w.bytes(&m.slot.0)
        .bytes(&m.version)
        .bytes(&m.file_id)
        .u64(m.size)
        .u32(m.chunk_size);
    match &m.sealed_key {
        Some(k) => w.u16(k.len() as u16).bytes(k),
        None => w.u16(0),
    };
    w.u16(m.label.len() as u16).bytes(&m.label);
    w.u64(hashes.held());
    for (i, h) in hashes.iter() {
        w.u64(i).bytes(h);
    }
    with_checksum(w)
}

type State = (PartialMeta, ChunkHashes);

fn decode_state(bytes: &[u8], slot: &Slot) -> Result<State, FormatError> {
    let labelled = bytes.get(8..10) != Some(&STATE_VERSION_UNLABELLED.to_be_bytes()[..]);
    let version = if labelled {
        STATE_VERSION
    } else {
        STATE_VERSION_UNLABELLED
    };
    let body = checked_v(bytes, MAGIC, version)?;
    let mut r = Reader::new(&body[10..]);
    if r.array::<16>("slot")? != slot.0 {
        return Err(DecodeError::Invalid("slot (state file renamed?)").into());
    }
    let version = r.array("version tag")?;
    let file_id = r.array("file id")?;
    let (size, chunk_size) = super::format::read_size(&mut r)?;
    let sealed_key = match r.u16("key length")? as usize {
        0 => None,
        SEALED_KEY_LEN => Some(r.bytes(SEALED_KEY_LEN, "sealed key")?.to_vec()),
        _ => return Err(DecodeError::Invalid("sealed key length").into()),
    };
    let label = match labelled {
        true => match r.u16("label length")? as usize {
            n if n <= MAX_LABEL => r.bytes(n, "label")?.to_vec(),
            _ => return Err(DecodeError::Invalid("label length").into()),
        },
        false => Vec::new(),
    };
    let n = chunk_count(size, chunk_size);
    let count = r.u64("chunk count")?;
    // Each record takes RECORD_LEN bytes: the count is bounded by the input.
    if count > n || count > (r.remaining() / RECORD_LEN) as u64 {
        return Err(DecodeError::Invalid("chunk count").into());
    }
    let mut hashes = ChunkHashes::new(n);
    let mut last = None;
    for _ in 0..count {
        let i = r.u64("chunk index")?;
        if i >= n || last.is_some_and(|l| i <= l) {
            return Err(DecodeError::Invalid("chunk index").into());
        }
        last = Some(i);
        hashes.insert(i, r.array("chunk hash")?);
    }
    r.finish()?;
    Ok((
        PartialMeta {
            slot: *slot,
            version,
            file_id,
            size,
            chunk_size,
            sealed_key,
            label,
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
    /// (sender, receiver) set by [`Partial::seal_key_at_checkpoint`]: the
    /// file key is sealed to the sender only when a first checkpoint needs
    /// it (two X25519 operations a small file, done before any
    /// checkpoint, never pays).
    seal_for: Option<(PublicKey, PublicKey)>,
    /// What to seal as the label at the first checkpoint, if the state has
    /// none (a small file, done before any checkpoint, never pays).
    describe: Option<Box<PartialLabel>>,
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
    /// Plaintext bytes in `ahead`.
    ahead_bytes: usize,
    /// Where the plaintext goes, in order, as it is verified (a pull to a
    /// plain file: the unnamed file it is published from).
    out: Option<fs::File>,
}

impl Verifier {
    /// The next plaintext chunk in order: hashed, and written out.
    fn take(&mut self, pt: &[u8]) -> Result<()> {
        self.hasher.update(pt);
        self.next += 1;
        if let Some(out) = &mut self.out {
            fileops::write_all(out, pt, Path::new("the destination file"))
                .map_err(|e| StoreError::io("cannot write", "the destination file", e))?;
        }
        Ok(())
    }
}

/// A received file that passed its end-to-end check, with its envelope,
/// waiting for its group's commit.
pub struct Verified<'v> {
    partial: Partial<'v>,
    key: FileKey,
    meta: Metadata,
}

impl Verified<'_> {
    /// Plaintext size.
    pub fn size(&self) -> u64 {
        self.partial.writer.size()
    }
}

/// Commits verified files of one vault together ([`vault::publish_group`]:
/// one or two directory fsyncs for the whole group) and removes their partial
/// states. One result per file, in order; a file that failed is undone
/// and its partial stays for the caller to keep or remove.
pub fn commit_group(mut files: Vec<Verified<'_>>) -> Vec<Result<()>> {
    let mut items: Vec<_> = files
        .iter_mut()
        .map(|f| (&mut f.partial.writer, f.key.secret(), &f.meta))
        .collect();
    let results = super::vault::commit_writers(&mut items);
    for (f, r) in files.iter_mut().zip(&results) {
        if r.is_ok() {
            // Committed: the file is stored whatever happens next. A state
            // file that cannot be removed now is a leftover (its data is
            // gone, so it never resumes), never a reason to report the
            // file failed (issue 12, item 4).
            if let Err(e) = fsutil::remove_if_exists(&f.partial.state_path) {
                tracing::warn!("a stored file's partial state stays behind: {e}");
            }
        }
    }
    results
}

/// Chunks kept in memory ahead of the verification cursor.
const AHEAD_MAX: usize = 8;
/// Plaintext bytes kept in memory ahead of the verification cursor.
const AHEAD_MAX_BYTES: usize = 8 << 20;

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
        fileops::sync_data(&self.file, &self.state_path)
            .map_err(|e| StoreError::io("cannot sync", &self.state_path, e))?;
        fsutil::write_atomic(&self.state_path, &self.state)
    }
}

/// File name prefix of partials in staging (`part-<slot>.obj|.part`).
const PREFIX: &str = "part-";
/// File name prefix of the partials of c3e3ae4 (state version 1, the name
/// in clear): dropped, never read.
const LEGACY_PREFIX: &str = "recv-";

impl Vault {
    fn partial_paths(&self, slot: &Slot) -> (PathBuf, PathBuf) {
        let base = self
            .staging_dir()
            .join(format!("{PREFIX}{}", id_hex(&slot.0)));
        (base.with_extension("obj"), base.with_extension("part"))
    }

    /// True when `name` (a staging file name) is the data file of a partial
    /// whose state file is missing: a reception that died before its first
    /// checkpoint, removable.
    pub(crate) fn is_orphan_partial_data(&self, name: &str) -> bool {
        name.strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix(".obj"))
            .is_some_and(|stem| {
                !self
                    .staging_dir()
                    .join(format!("{PREFIX}{stem}.part"))
                    .exists()
            })
    }

    /// Removes the partial data files whose state file is missing (a
    /// reception that died before its first checkpoint cannot resume), if
    /// no store is in progress anywhere (the store lock is free); returns
    /// how many, or `None` when a store was in progress and nothing was
    /// touched. For `serve` at start: until now only an unlock did this.
    pub fn remove_orphan_partials(&self) -> Result<Option<usize>> {
        let (lock, exclusive) = self.lock_best()?;
        if !exclusive {
            return Ok(None);
        }
        let dir = self.staging_dir();
        let mut removed = 0;
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io("cannot list", &dir, e))? {
            let e = e.map_err(|e| StoreError::io("cannot list", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if self.is_orphan_partial_data(&name) {
                fsutil::remove_if_exists(&e.path())?;
                removed += 1;
            }
        }
        drop(lock);
        Ok(Some(removed))
    }

    /// Removes the partials of the old format (c3e3ae4), whose state kept
    /// the file name in clear; returns how many transfers were dropped.
    pub fn drop_legacy_partials(&self) -> Result<usize> {
        let dir = self.staging_dir();
        let mut dropped = 0;
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io("cannot list", &dir, e))? {
            let e = e.map_err(|e| StoreError::io("cannot list", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(LEGACY_PREFIX)
                && (name.ends_with(".part") || name.ends_with(".obj"))
            {
                fsutil::remove_if_exists(&e.path())?;
                dropped += usize::from(name.ends_with(".part"));
            }
        }
        if dropped > 0 {
            fsutil::fsync_dir(&dir)?;
        }
        Ok(dropped)
    }

    /// Removes partials untouched for longer than `max_age` (their state
    /// file's modification time; a data file without state, by its own),
    /// except those `in_use` says a connection holds. Returns how many
    /// transfers were dropped. Nobody can list them (they name nothing), so
    /// without this an accepted sender could leave them forever.
    pub fn expire_partials(
        &self,
        max_age: std::time::Duration,
        in_use: &dyn Fn(&Slot) -> bool,
    ) -> Result<usize> {
        let dir = self.staging_dir();
        let now = std::time::SystemTime::now();
        let mut dropped = 0;
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io("cannot list", &dir, e))? {
            let e = e.map_err(|e| StoreError::io("cannot list", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name
                .strip_prefix(PREFIX)
                .and_then(|r| r.strip_suffix(".part").or_else(|| r.strip_suffix(".obj")))
            else {
                continue;
            };
            let Some(slot) = crate::crypto::from_hex::<16>(stem).map(Slot) else {
                continue;
            };
            let (obj, part) = self.partial_paths(&slot);
            // A partial is judged by its state file when it has one.
            if name.ends_with(".obj") && part.exists() {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > max_age);
            if old && !in_use(&slot) {
                fsutil::remove_if_exists(&part)?;
                fsutil::remove_if_exists(&obj)?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// The resumable partials (those with a state file), read without the
    /// passphrase: slot, size, bytes held, age and the sealed label. A
    /// state that does not decode is listed with nothing held and no label
    /// (it would be started over), never a failure.
    pub fn partials(&self) -> Result<Vec<PartialInfo>> {
        let dir = self.staging_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io("cannot list", &dir, e))? {
            let e = e.map_err(|e| StoreError::io("cannot list", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(slot) = name
                .strip_prefix(PREFIX)
                .and_then(|r| r.strip_suffix(".part"))
                .and_then(crate::crypto::from_hex::<16>)
                .map(Slot)
            else {
                continue;
            };
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            let state = fsutil::read_limited(&e.path(), MAX_STATE)
                .ok()
                .and_then(|b| decode_state(&b, &slot).ok());
            out.push(match state {
                Some((m, hashes)) => PartialInfo {
                    slot,
                    size: m.size,
                    held: hashes
                        .iter()
                        .map(|(i, _)| chunk_plain_len(m.size, m.chunk_size, i) as u64)
                        .sum(),
                    modified,
                    label: m.label,
                },
                None => PartialInfo {
                    slot,
                    size: 0,
                    held: 0,
                    modified,
                    label: Vec::new(),
                },
            });
        }
        out.sort_by_key(|p| p.modified);
        Ok(out)
    }

    /// Removes the partials in `slots` (`vault partials rm`), only when no
    /// store is in progress (the store lock can be taken exclusively), so
    /// never one a connection is writing. `Ok(false)`: a store was in
    /// progress and nothing was removed.
    pub fn remove_partials(&self, slots: &[Slot]) -> Result<bool> {
        let (lock, exclusive) = self.lock_best()?;
        if !exclusive {
            return Ok(false);
        }
        for s in slots {
            self.remove_partial(s)?;
        }
        fsutil::fsync_dir(&self.staging_dir())?;
        drop(lock);
        Ok(true)
    }

    /// Removes a partial's files.
    pub fn remove_partial(&self, slot: &Slot) -> Result<()> {
        let (obj, part) = self.partial_paths(slot);
        fsutil::remove_if_exists(&part)?;
        fsutil::remove_if_exists(&obj)
    }

    /// Starts a new partial in `meta.slot` (replacing whatever was there).
    pub fn start_partial(&self, meta: PartialMeta) -> Result<Partial<'_>> {
        let (obj, part) = self.partial_paths(&meta.slot);
        fsutil::remove_if_exists(&part)?;
        let writer =
            ObjectWriter::create_at(self, obj, meta.file_id, meta.size, meta.chunk_size, true)?;
        // No state file yet: a partial becomes resumable at its first
        // checkpoint (it needs the sealed key anyway); an orphan data file
        // is removed by the next reconciliation. Small files never pay for
        // a checkpoint.
        Ok(Partial {
            meta,
            writer,
            state_path: part,
            since_checkpoint: 0,
            verify: None,
            seal_for: None,
            describe: None,
        })
    }

    /// Reopens the partial in `slot`, if there is one (only this slot's
    /// state is read; its data is checked when it is decrypted).
    pub fn resume_partial(&self, slot: &Slot) -> Result<Option<Partial<'_>>> {
        let (obj, part) = self.partial_paths(slot);
        if !part.exists() {
            return Ok(None);
        }
        let bytes = fsutil::read_limited(&part, MAX_STATE)?;
        let (meta, hashes) = decode_state(&bytes, slot).map_err(|e| format_error(&part, e))?;
        let writer =
            ObjectWriter::reopen(self, obj, meta.file_id, meta.size, meta.chunk_size, hashes)?;
        Ok(Some(Partial {
            meta,
            writer,
            state_path: part,
            since_checkpoint: 0,
            verify: None,
            seal_for: None,
            describe: None,
        }))
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
            let room = v.ahead.len() < AHEAD_MAX && v.ahead_bytes + sealed.len() <= AHEAD_MAX_BYTES;
            if v.next == index || (index > v.next && room) {
                let n = self.writer.header().chunk_count;
                let id = self.meta.file_id;
                let len = v
                    .key
                    .open_chunk_in_place(&id, index, index + 1 == n, &mut sealed)
                    .map_err(|_| bad_chunk(&self.meta, index))?
                    .len();
                if v.next == index {
                    v.take(&sealed[12..12 + len])?;
                } else {
                    sealed.copy_within(12..12 + len, 0);
                    sealed.truncate(len);
                    v.ahead_bytes += len;
                    if let Some(old) = v.ahead.insert(index, sealed) {
                        v.ahead_bytes -= old.len();
                    }
                }
            }
        }
        self.advance()?;
        let state_len = self.writer.hashes().held() * RECORD_LEN as u64;
        if self.since_checkpoint >= CHECKPOINT_BYTES.max(STATE_RATIO * state_len) {
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
            if v.next >= n || !self.writer.hashes().has(v.next) {
                break;
            }
            if let Some(pt) = v.ahead.remove(&v.next) {
                v.ahead_bytes -= pt.len();
                v.take(&pt)?;
                continue;
            }
            self.writer.read_chunk(v.next, &mut buf)?;
            let pt = v
                .key
                .open_chunk_in_place(&id, v.next, v.next + 1 == n, &mut buf)
                .map_err(|_| bad_chunk(&self.meta, v.next))?;
            v.take(pt)?;
        }
        Ok(())
    }

    /// Sets the file key (in memory only) and starts the running verification.
    pub fn set_key(&mut self, key: FileKey) -> Result<()> {
        self.set_key_streaming(key, None)
    }

    /// As [`Self::set_key`], writing the plaintext in order to `out` as it
    /// is verified (from the first chunk: `out` must be empty), so a
    /// verified file needs no second pass to be published
    /// ([`Self::publish_streamed`]).
    pub fn set_key_streaming(&mut self, key: FileKey, out: Option<fs::File>) -> Result<()> {
        self.verify = Some(Verifier {
            key,
            next: 0,
            hasher: blake3::Hasher::new(),
            ahead: Default::default(),
            ahead_bytes: 0,
            out,
        });
        self.advance()
    }

    /// A checkpoint of what is written now.
    pub fn checkpoint_job(&mut self) -> Result<CheckpointJob> {
        if self
            .meta
            .sealed_key
            .as_ref()
            .is_some_and(|k| k.len() != SEALED_KEY_LEN)
        {
            // The state could not be read back: never write it.
            return Err(StoreError::Invalid(format!(
                "a partial's sealed key must be {SEALED_KEY_LEN} bytes"
            )));
        }
        if self.meta.sealed_key.is_none() {
            if let (Some((sender, receiver)), Some(v)) = (&self.seal_for, &self.verify) {
                let sealed = seal_key_to(sender, receiver, &self.meta.file_id, v.key.secret())?;
                self.meta.sealed_key = Some(sealed);
            }
        }
        if self.meta.label.is_empty() {
            if let Some(d) = self.describe.take() {
                // A label that cannot be sealed (the vault key pin is
                // unusable) only makes the partial unnamed in `vault
                // partials`: the transfer goes on.
                match self.writer.vault().sealing_key() {
                    Ok(pk) => match d.seal(&pk, &self.meta.slot) {
                        Ok(l) => self.meta.label = l,
                        Err(e) => tracing::warn!("a partial stays unlabelled: {e}"),
                    },
                    Err(e) => tracing::warn!("a partial stays unlabelled: {e}"),
                }
            }
        }
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

    /// Records the file key sealed to the sender ([`SEALED_KEY_LEN`]
    /// bytes; a checkpoint refuses any other length). For a deposit it is
    /// the sender's own sealing: this node never has the key.
    pub fn set_sealed_key(&mut self, sealed: Vec<u8>) {
        self.seal_for = None;
        self.meta.sealed_key = Some(sealed);
    }

    /// Has the first checkpoint that needs it seal the file key (set with
    /// [`Self::set_key`]) to `sender`, as [`seal_key_to`] from `receiver`:
    /// the state then records it as [`Self::set_sealed_key`] would.
    pub fn seal_key_at_checkpoint(&mut self, sender: PublicKey, receiver: PublicKey) {
        self.meta.sealed_key = None;
        self.seal_for = Some((sender, receiver));
    }

    /// Has the first checkpoint record `label` (sealed to the vault key)
    /// when the state has no label yet.
    pub fn describe_at_checkpoint(&mut self, label: PartialLabel) {
        self.describe = Some(Box::new(label));
    }

    /// True when a checkpoint can record how to resume: the key sealed to
    /// the sender is held, or will be sealed at the checkpoint.
    pub fn key_recordable(&self) -> bool {
        self.meta.sealed_key.is_some() || (self.seal_for.is_some() && self.verify.is_some())
    }

    /// Starts over (the sender could not continue).
    pub fn reset(&mut self) {
        self.writer.reset();
        self.meta.sealed_key = None;
        self.seal_for = None;
        self.verify = None;
    }

    /// Bitmap of chunks held (bit i = byte i/8, mask 1 << i%8). Its size
    /// follows the chunk count of an entry this sender offered before and
    /// that is within the offer budget.
    pub fn have(&self) -> Vec<u8> {
        let h = self.writer.hashes();
        let mut b = vec![0u8; h.count().div_ceil(8) as usize];
        for (i, _) in h.iter() {
            b[(i / 8) as usize] |= 1 << (i % 8);
        }
        b
    }

    /// Plaintext bytes held.
    pub fn held_bytes(&self) -> u64 {
        self.writer
            .hashes()
            .iter()
            .map(|(i, _)| chunk_plain_len(self.meta.size, self.meta.chunk_size, i) as u64)
            .sum()
    }

    /// True when chunk `i` is held.
    pub fn has(&self, i: u64) -> bool {
        self.writer.hashes().has(i)
    }

    /// True once the file key is known (a `FileStart` was handled).
    pub fn has_key(&self) -> bool {
        self.verify.is_some()
    }

    /// True when every chunk is held (whether or not the key is known: a
    /// deposit's never is).
    pub fn has_every_chunk(&self) -> bool {
        self.writer.is_complete()
    }

    /// The BLAKE3 of each held sealed chunk, in index order (what a
    /// depositor needs to seal its envelope after a resume).
    pub fn held_leaves(&self) -> Vec<[u8; 32]> {
        self.writer.hashes().iter().map(|(_, h)| *h).collect()
    }

    /// True when every chunk is held and the key is known.
    pub fn is_complete(&self) -> bool {
        self.verify.is_some() && self.writer.is_complete()
    }

    /// Checks the whole file against the sender's `blake3` (from the running
    /// verification, or by decrypting it again); returns the file key.
    fn verified(&mut self, blake3: &[u8; 32], name: &str) -> Result<FileKey> {
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
                format!("received file {name}"),
                "BLAKE3 of the received data does not match the sender's",
            ));
        }
        Ok(v.key)
    }

    /// Checks the whole file against the sender's `blake3` and commits it
    /// to the vault; removes the partial.
    pub fn finish(self, blake3: &[u8; 32], meta: &Metadata) -> Result<()> {
        let ready = self.verify_for_vault(blake3, meta)?;
        commit_group(vec![ready])
            .pop()
            .unwrap_or_else(|| Err(StoreError::Invalid("nothing to commit".into())))
    }

    /// Checks the whole file against the sender's `blake3` and seals its
    /// envelope: a file ready for [`commit_group`].
    pub fn verify_for_vault(mut self, blake3: &[u8; 32], meta: &Metadata) -> Result<Verified<'v>> {
        let key = self.verified(blake3, &meta.name)?;
        Ok(Verified {
            partial: self,
            key,
            meta: meta.clone(),
        })
    }

    /// Checks the whole file against `blake3` and publishes `out`, into
    /// which the running verification wrote the plaintext
    /// ([`Self::set_key_streaming`]); where it could not (it did not start
    /// at the first chunk), the file is decrypted into `out` again first.
    /// Removes the partial.
    pub fn publish_streamed<D: std::ops::Deref<Target = fsutil::Dir>>(
        mut self,
        blake3: &[u8; 32],
        meta: &Metadata,
        out: fsutil::NewFile<D>,
        force: bool,
    ) -> Result<()> {
        let n = self.writer.header().chunk_count;
        let streamed = self
            .verify
            .as_ref()
            .is_some_and(|v| v.out.is_some() && v.next == n);
        let key = self.verified(blake3, &meta.name)?;
        if !streamed {
            let mut f = out.file();
            fileops::set_len(f, 0, Path::new("the destination file"))
                .and_then(|_| f.rewind())
                .map_err(|e| StoreError::io("cannot write", "the destination file", e))?;
            self.decrypt_checked(&key, blake3, meta, &mut f)?;
        }
        super::vault::finish_plain(out, meta, force)?;
        self.published();
        Ok(())
    }

    /// Checks the whole file against `blake3`, then decrypts it into a
    /// plain file `name` in `dir`, published atomically as an export is
    /// (never over an existing file without `force`; no plaintext left if
    /// interrupted); removes the partial. A directory entry is created as
    /// a directory.
    pub fn publish(
        mut self,
        blake3: &[u8; 32],
        meta: &Metadata,
        dir: &fsutil::Dir,
        name: &std::ffi::OsStr,
        force: bool,
    ) -> Result<()> {
        let key = self.verified(blake3, &meta.name)?;
        if meta.kind == crate::store::format::Kind::Dir {
            dir.child_dir(name)?;
        } else {
            super::vault::publish_plain(dir, name, force, &mut |w| {
                self.decrypt_checked(&key, blake3, meta, w)?;
                Ok(meta.clone())
            })?;
        }
        self.published();
        Ok(())
    }

    /// Checks the whole file against `blake3`, then decrypts it from the
    /// partial (ciphertext) into `out` (`get PEER NAME -`): nothing reaches
    /// `out` before the whole file is verified, and no plaintext touches
    /// the disk. Removes the partial once all of it is written; if `out`
    /// fails, the partial stays (a rerun fetches nothing again).
    pub fn stream_out(
        mut self,
        blake3: &[u8; 32],
        meta: &Metadata,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        let key = self.verified(blake3, &meta.name)?;
        self.decrypt_checked(&key, blake3, meta, out)?;
        out.flush()
            .map_err(|e| StoreError::io("cannot write", "the output", e))?;
        self.published();
        Ok(())
    }

    /// Decrypts the verified partial into `w`, checking its BLAKE3 again
    /// (the data on disk may have changed since it was verified).
    fn decrypt_checked(
        &self,
        key: &FileKey,
        blake3: &[u8; 32],
        meta: &Metadata,
        w: &mut dyn std::io::Write,
    ) -> Result<()> {
        if &self.writer.decrypt_into(key, w)? != blake3 {
            return Err(StoreError::corrupt(
                format!("received file {}", meta.name),
                "the data changed on disk while it was published",
            ));
        }
        Ok(())
    }

    /// Removes a published partial: what is left of it now is a leftover,
    /// not a failure of the file.
    fn published(self) {
        let (slot, vault) = (self.meta.slot, self.vault());
        drop(self);
        if let Err(e) = vault.remove_partial(&slot) {
            tracing::warn!("a published file's partial stays behind: {e}");
        }
    }
}

impl Partial<'_> {
    /// Commits the partial as a sealed deposit of `depositor`, without any
    /// key (`docs/VAULT.md`, *Deposits*): `envelope` is the depositor's
    /// own, sealed to its vault key; only its clear fields are checked
    /// (the id, and the ciphertext digest against the chunks recorded and
    /// against the data on disk). Removes the partial. A deposit partial
    /// never has a file key: the sender keeps its own, sealed to itself,
    /// in [`PartialMeta::sealed_key`] ([`Partial::set_sealed_key`]).
    pub fn finish_deposit(self, depositor: &PublicKey, envelope: &[u8]) -> Result<()> {
        let state = self.state_path;
        self.writer.commit_deposit(depositor, envelope)?;
        // Committed: a state file left now is a leftover, not a failure.
        if let Err(e) = fsutil::remove_if_exists(&state) {
            tracing::warn!("a stored deposit's partial state stays behind: {e}");
        }
        Ok(())
    }
}

fn bad_chunk(meta: &PartialMeta, index: u64) -> StoreError {
    StoreError::corrupt(
        format!("received file {}", id_hex(&meta.file_id)),
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
                            seed in any::<u8>()) {
            let m = PartialMeta {
                slot: Slot([seed; 16]),
                version: [seed ^ 2; 32],
                file_id: [seed ^ 1; 16],
                size,
                chunk_size: 1 << 20,
                sealed_key: key,
                label: vec![seed; usize::from(seed) * 3],
            };
            let n = chunk_count(size, m.chunk_size);
            let mut hashes = ChunkHashes::new(n);
            for i in (0..n).filter(|i| i % 3 != 0) {
                hashes.insert(i, [i as u8; 32]);
            }
            let enc = encode_state(&m, &hashes);
            let (m2, h2) = decode_state(&enc, &m.slot).unwrap();
            prop_assert_eq!(&m2, &m);
            prop_assert_eq!(&h2, &hashes);
            let mut bad = enc.clone();
            let i = bad.len() / 2;
            bad[i] ^= 0x40;
            prop_assert!(decode_state(&bad, &m.slot).is_err());
            prop_assert!(decode_state(&enc[..enc.len() - 1], &m.slot).is_err());
            prop_assert!(decode_state(&enc, &Slot([seed ^ 0xff; 16])).is_err());
        }

        #[test]
        fn state_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_state(&data, &Slot([0; 16]));
        }
    }

    /// Regression (issue 11): the state kept the name (and sender) in clear.
    #[test]
    fn state_holds_no_name_and_slots_are_keyed_by_sender_and_name() {
        let id = Keypair::generate().unwrap();
        let k = StagingKey::from_identity(&id);
        let (s1, s2) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let name = "Secret-Merger-Plan-2027.bin";
        assert_ne!(k.slot(&s1, name), k.slot(&s2, name));
        assert_ne!(k.slot(&s1, name), k.slot(&s1, "other"));
        assert_eq!(k.slot(&s1, name), k.slot(&s1, name));
        let other = StagingKey::from_identity(&Keypair::generate().unwrap());
        assert_ne!(k.slot(&s1, name), other.slot(&s1, name));
        let v = k.version(&s1, name, 10, 4096, &[0; 16]);
        assert_ne!(v, k.version(&s1, name, 11, 4096, &[0; 16]));
        assert_ne!(v, k.version(&s1, name, 10, 4096, &[1; 16]));
        let m = PartialMeta {
            slot: k.slot(&s1, name),
            version: v,
            file_id: [5; 16],
            size: 10,
            chunk_size: 4096,
            sealed_key: Some(vec![9; 80]),
            label: Vec::new(),
        };
        // The label names sender and file, sealed to the vault key: only
        // that key (not another, not for another slot) opens it.
        let vault_kp = Keypair::generate().unwrap();
        let label = PartialLabel {
            peer: s1,
            kind: PartialKind::Received,
            name: name.to_owned(),
        };
        let sealed = label.seal(&vault_kp.public(), &m.slot).unwrap();
        assert_eq!(
            PartialLabel::open(&sealed, &m.slot, &[&vault_kp]),
            Some(label)
        );
        let other_kp = Keypair::generate().unwrap();
        assert_eq!(PartialLabel::open(&sealed, &m.slot, &[&other_kp]), None);
        assert_eq!(
            PartialLabel::open(&sealed, &Slot([1; 16]), &[&vault_kp]),
            None
        );
        assert_eq!(
            PartialLabel::open(&sealed[..40], &m.slot, &[&vault_kp]),
            None
        );
        let m = PartialMeta { label: sealed, ..m };
        let enc = encode_state(&m, &ChunkHashes::new(1));
        assert_eq!(decode_state(&enc, &m.slot).unwrap().0, m);
        for needle in [name.as_bytes(), &b"Secret"[..], s1.as_bytes()] {
            assert!(!enc.windows(needle.len()).any(|w| w == needle));
        }
    }

    /// Review of issue 7: partials nobody can list must not stay forever.
    #[test]
    fn untouched_partials_expire_unless_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let vdir = dir.path().join("vault");
        let params = crate::crypto::kdf::KdfParams {
            m_kib: 8192,
            t: 1,
            p: 1,
        };
        Vault::create(&vdir, b"pw", params).unwrap();
        let v = Vault::open(&vdir).unwrap();
        let staging = vdir.join("staging");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 86400);
        let mut slots = Vec::new();
        for b in 1..=3u8 {
            let slot = Slot([b; 16]);
            let (obj, part) = v.partial_paths(&slot);
            std::fs::write(&obj, b"data").unwrap();
            if b != 3 {
                std::fs::write(&part, b"state").unwrap();
            }
            for f in [&obj, &part] {
                if let Ok(h) = std::fs::File::options().write(true).open(f) {
                    h.set_modified(old).unwrap();
                }
            }
            slots.push(slot);
        }
        // A fresh one stays.
        let fresh = Slot([9; 16]);
        std::fs::write(v.partial_paths(&fresh).1, b"state").unwrap();
        let week = std::time::Duration::from_secs(7 * 86400);
        let in_use = |s: &Slot| *s == Slot([2; 16]);
        assert_eq!(v.expire_partials(week, &in_use).unwrap(), 2);
        let left: Vec<String> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(v.partial_paths(&Slot([2; 16])).1.exists());
        assert!(v.partial_paths(&fresh).1.exists());
        assert!(!v.partial_paths(&Slot([1; 16])).0.exists());
        assert!(!v.partial_paths(&Slot([3; 16])).0.exists());
    }

    /// A state written before labels (version 2) still resumes, unlabelled.
    #[test]
    fn a_version_2_state_reads_as_unlabelled() {
        let m = PartialMeta {
            slot: Slot([4; 16]),
            version: [5; 32],
            file_id: [6; 16],
            size: 10_000,
            chunk_size: 4096,
            sealed_key: None,
            label: Vec::new(),
        };
        let mut hashes = ChunkHashes::new(3);
        hashes.insert(1, [8; 32]);
        let v3 = encode_state(&m, &hashes);
        // Version 2: no label length after the (empty) key length.
        let at = 10 + 16 + 32 + 16 + 8 + 4 + 2;
        let mut body = v3[..v3.len() - 32].to_vec();
        assert_eq!(&body[at..at + 2], &[0, 0]);
        body.drain(at..at + 2);
        body[8..10].copy_from_slice(&STATE_VERSION_UNLABELLED.to_be_bytes());
        let sum = blake3::hash(&body);
        body.extend_from_slice(sum.as_bytes());
        let (m2, h2) = decode_state(&body, &m.slot).unwrap();
        assert_eq!((m2, h2), (m, hashes));
        // Version 1 (names in clear) and unknown versions are refused.
        let mut v1 = body.clone();
        v1[8..10].copy_from_slice(&1u16.to_be_bytes());
        assert!(decode_state(&v1, &Slot([4; 16])).is_err());
    }

    /// Regression (issue 7, H1): the decoder sized its buffer 33× the file.
    #[test]
    fn a_huge_declared_count_allocates_nothing() {
        let m = PartialMeta {
            slot: Slot([0; 16]),
            version: [0; 32],
            file_id: [0; 16],
            size: (1 << 44) - 1,
            chunk_size: 4096,
            sealed_key: None,
            label: Vec::new(),
        };
        let mut enc = encode_state(&m, &ChunkHashes::new(1 << 32));
        // Claim 2^32 records in a file that holds none.
        let at = enc.len() - 32 - 8;
        enc[at..at + 8].copy_from_slice(&(1u64 << 32).to_be_bytes());
        let n = enc.len() - 32;
        let sum = blake3::hash(&enc[..n]);
        enc[n..].copy_from_slice(sum.as_bytes());
        assert!(decode_state(&enc, &Slot([0; 16])).is_err());
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
