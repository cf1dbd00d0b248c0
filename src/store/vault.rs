//! The encrypted vault: storing objects without the passphrase, unlocking,
//! reconciling the authenticated index, listing and resolving names by
//! origin, export, removal (with the object's shares), verification,
//! passphrase change and crash-safe rekey (`docs/VAULT.md`, *Procedures*);
//! the entry points of the access log ([`Vault::log`] appends without the
//! passphrase, [`Unlocked::read_log`] reads), whose format is in
//! [`super::log`]. A rekey keeps the replaced key, sealed to the new one
//! ([`super::keychain`]), so envelopes sealed to any earlier key of this
//! vault still open ([`Unlocked::open_envelope_any`]).
//!
//! Storing takes a shared lock on `vault/lock`; anything unlocked takes it
//! exclusively, so reconciliation never races a store in progress.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, File},
    io::{Read, Write},
    os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    chunks::ChunkHashes,
    error::{Result, StoreError},
    fileops,
    format::{
        decode_records, encode_records, one_trailer, split_one, EnvelopeBody, EnvelopeFile,
        HeaderFile, IndexFile, IndexRecord, Kind, Metadata, ObjectHeader, RecordState,
        ENVELOPE_VERSION, MAX_ENVELOPE_BODY, MAX_ENVELOPE_FILE, MAX_INDEX_BODY, ONE_TRAILER_LEN,
    },
    fsutil,
    home::format_error,
    keychain,
    log::{self, LogAction, LogRecord},
    pin::{self, Pin, PinKey},
    shares::Shares,
};
use crate::crypto::{
    aead::{random_nonce, AeadKey, NONCE_LEN, TAG_LEN},
    chunk::{
        chunk_count, chunk_plain_len, ct_digest, sealed_chunk_hash, FileId, FileKey,
        CHUNK_OVERHEAD, DEFAULT_CHUNK_SIZE,
    },
    kdf::{derive_kek, KdfParams},
    keys::{Keypair, PublicKey, Secret32},
    random, to_hex,
    wrap::{hkdf32, unwrap_key, Agreement, ENVELOPE_INFO, ENVELOPE_INFO_V2, WRAP_NONCE},
    CryptoError,
};

// Test hook: `Err` at the named step of a rekey, as if the process had
// been killed there (nothing after it runs, nothing is cleaned up).
#[cfg(test)]
thread_local! {
    pub(crate) static CRASH_AT: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

fn crash_point(step: &'static str) -> Result<()> {
    #[cfg(test)]
    if CRASH_AT.with(|c| c.get()) == Some(step) {
        return Err(StoreError::Invalid(format!("simulated crash after {step}")));
    }
    let _ = step;
    Ok(())
}

/// An object id as its 32-digit hex file name.
pub fn id_hex(id: &FileId) -> String {
    to_hex(id)
}

/// Now, in unix milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A problem found with one object, named by id (and name when known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The object id.
    pub id: FileId,
    /// Its name, when the index knows it.
    pub name: Option<String>,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{} ({}): {}", id_hex(&self.id), n, self.what),
            None => write!(f, "{}: {}", id_hex(&self.id), self.what),
        }
    }
}

/// A live object as listed.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Object id.
    pub id: FileId,
    /// Its metadata.
    pub meta: Metadata,
}

impl Entry {
    /// Where it came from.
    pub fn origin(&self) -> Origin {
        Origin::of(&self.meta)
    }
}

/// Where a stored object came from: imported on this node, or received from
/// a peer (named by its node key). Received files are never merged silently
/// with the owner's own: listing shows the origin, and exporting a folder
/// that mixes origins needs one to be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// `vault import` on this node.
    Local,
    /// Received from the peer with this node key.
    Peer(PublicKey),
}

impl Origin {
    /// The origin recorded in an object's metadata.
    pub fn of(meta: &Metadata) -> Self {
        meta.origin.map_or(Origin::Local, Origin::Peer)
    }
}

impl std::fmt::Display for Origin {
    /// `local`, or the sender's fingerprint.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Local => f.write_str("local"),
            Origin::Peer(pk) => f.write_str(&pk.fingerprint()),
        }
    }
}

/// The result of a verification pass.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Objects checked.
    pub checked: usize,
    /// Damaged objects.
    pub problems: Vec<Problem>,
    /// Leftovers of interrupted stores (not damage).
    pub leftovers: usize,
}

/// The vault in `HOME/vault`.
pub struct Vault {
    dir: PathBuf,
    header: HeaderFile,
    /// With the node's identity: the pin that says which vault keys the
    /// owner set, and the key new objects are sealed to now.
    pinned: Option<Pinned>,
    /// The shared store lock while any [`ObjectWriter`] of this handle
    /// lives: taken by the first, released with the last (a flock per
    /// writer costs a scan of every lock held, per file received).
    store_lock: std::sync::Mutex<std::sync::Weak<File>>,
}

struct Pinned {
    key: PinKey,
    path: PathBuf,
    /// The key new objects are sealed to, and the pin generation that
    /// allowed it; `None` until a valid pin allows the header's key.
    sealing: std::sync::Mutex<Option<(PublicKey, u64)>>,
}

pub(crate) fn read_header(path: &Path) -> Result<HeaderFile> {
    let bytes = fsutil::read_limited(path, 4096)?;
    HeaderFile::decode(&bytes).map_err(|e| format_error(path, e))
}

fn seal_secret(
    kek: &Secret32,
    params: KdfParams,
    salt: [u8; 16],
    kp: &Keypair,
) -> Result<HeaderFile> {
    let mut h = HeaderFile {
        params,
        salt,
        vault_pk: kp.public(),
        nonce: random_nonce()?,
        sealed_sk: [0; 48],
    };
    let sealed = AeadKey::new(kek).seal(h.nonce, &h.ad(), kp.secret_bytes().expose())?;
    h.sealed_sk.copy_from_slice(&sealed);
    Ok(h)
}

pub(crate) fn open_secret(kek: &Secret32, h: &HeaderFile) -> Result<Keypair, CryptoError> {
    let mut sk = zeroize::Zeroizing::new(AeadKey::new(kek).open(h.nonce, &h.ad(), &h.sealed_sk)?);
    let mut a = [0u8; 32];
    a.copy_from_slice(&sk[..32]);
    zeroize::Zeroize::zeroize(&mut *sk);
    let kp = Keypair::from_secret(Secret32::from_bytes(a));
    zeroize::Zeroize::zeroize(&mut a);
    Ok(kp)
}

fn index_key(kp: &Keypair) -> AeadKey {
    AeadKey::new(&hkdf32(
        &kp.secret_bytes(),
        kp.public().as_bytes(),
        b"p2pfs/index/v1",
    ))
}

fn seal_index(kp: &Keypair, generation: u64, records: &[IndexRecord]) -> Result<Vec<u8>> {
    let body = encode_records(records);
    let mut f = IndexFile {
        vault_pk: kp.public(),
        generation,
        nonce: random_nonce()?,
        sealed_body: vec![0; body.len() + TAG_LEN],
    };
    // The AD covers the body length, which is known before sealing.
    let ad = f.ad();
    f.sealed_body = index_key(kp).seal(f.nonce, &ad, &body)?;
    Ok(f.encode())
}

/// Seals an envelope for `meta` and `file_key` to `recipient` (the vault
/// key of the node that will open it: this vault's, or, for a sealed
/// deposit, the depositor's own). Returns the encoded envelope file.
pub fn seal_envelope(
    recipient: &PublicKey,
    id: FileId,
    ct: [u8; 32],
    file_key: &Secret32,
    meta: &Metadata,
) -> Result<Vec<u8>> {
    EnvelopeSealer::new(recipient)?.seal(id, ct, file_key, meta)
}

/// Seals the envelopes of several objects to one recipient with one
/// ephemeral key (format 2, `docs/VAULT.md`, *Envelope*): one X25519
/// agreement for a whole group commit instead of two X25519 per file, the
/// largest cost of storing a small file. Each envelope's wrap key is
/// derived with its object id, so no two envelopes share a key.
pub struct EnvelopeSealer {
    agreement: Agreement,
}

impl EnvelopeSealer {
    /// A fresh ephemeral key agreed with `recipient`.
    pub fn new(recipient: &PublicKey) -> Result<Self> {
        Ok(Self {
            agreement: Agreement::seal_to(recipient)?,
        })
    }

    /// The envelope of object `id` (each id once per sealer: its wrap key
    /// seals once).
    pub fn seal(
        &self,
        id: FileId,
        ct: [u8; 32],
        file_key: &Secret32,
        meta: &Metadata,
    ) -> Result<Vec<u8>> {
        let body = zeroize::Zeroizing::new(
            EnvelopeBody {
                file_key: file_key.clone(),
                meta: meta.clone(),
            }
            .encode(),
        );
        if body.len() > MAX_ENVELOPE_BODY as usize {
            return Err(StoreError::Invalid("file name too long".into()));
        }
        let mut env = EnvelopeFile {
            version: ENVELOPE_VERSION,
            id,
            recipient: self.agreement.recipient(),
            ephemeral: self.agreement.ephemeral(),
            ct_digest: ct,
            sealed_body: vec![0; body.len() + TAG_LEN],
        };
        let ad = env.ad();
        let key = self.agreement.key(&envelope_info_v2(&id));
        env.sealed_body = key.seal(WRAP_NONCE, &ad, &body)?;
        Ok(env.encode())
    }
}

/// The HKDF info of a format-2 envelope's wrap key.
fn envelope_info_v2(id: &FileId) -> Vec<u8> {
    let mut info = ENVELOPE_INFO_V2.to_vec();
    info.extend_from_slice(id);
    info
}

/// Agreements of recently opened envelopes, by ephemeral key: opening the
/// envelopes of one group commit costs one X25519, not one each.
#[derive(Default)]
pub(crate) struct Agreements(HashMap<PublicKey, Agreement>);

impl Agreements {
    /// More agreements than a few thousand group commits are not kept.
    const MAX: usize = 4096;
}

pub(crate) fn open_envelope(kp: &Keypair, env: &EnvelopeFile) -> Result<EnvelopeBody, String> {
    open_envelope_with(kp, env, &mut Agreements::default())
}

/// [`open_envelope`], reusing and keeping agreements in `seen`.
pub(crate) fn open_envelope_with(
    kp: &Keypair,
    env: &EnvelopeFile,
    seen: &mut Agreements,
) -> Result<EnvelopeBody, String> {
    if env.recipient != kp.public() {
        return Err("envelope sealed to another vault key".into());
    }
    let key = match env.version {
        1 => unwrap_key(kp, &env.ephemeral, ENVELOPE_INFO).map_err(|e| e.to_string())?,
        _ => {
            if !seen.0.contains_key(&env.ephemeral) {
                let a = Agreement::open_with(kp, &env.ephemeral).map_err(|e| e.to_string())?;
                if seen.0.len() >= Agreements::MAX {
                    seen.0.clear();
                }
                seen.0.insert(env.ephemeral, a);
            }
            match seen.0.get(&env.ephemeral) {
                Some(a) => a.key(&envelope_info_v2(&env.id)),
                None => return Err("envelope key agreement lost".into()),
            }
        }
    };
    let body = zeroize::Zeroizing::new(
        key.open(WRAP_NONCE, &env.ad(), &env.sealed_body)
            .map_err(|_| "envelope does not open (altered)".to_string())?,
    );
    EnvelopeBody::decode(&body).map_err(|e| format!("envelope body: {e}"))
}

/// Checks a data file's ciphertext against a ciphertext digest, without
/// keys; with `shape` (plaintext size, chunk size), also its header and its
/// exact length.
pub(crate) fn check_ciphertext(
    path: &Path,
    id: &FileId,
    expected: &[u8; 32],
    shape: Option<(u64, u32)>,
) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("data file unreadable: {e}"))?;
    let len = f
        .metadata()
        .map_err(|e| format!("data file unreadable: {e}"))?
        .len();
    check_ciphertext_of(f, len, id, expected, shape)
}

/// [`check_ciphertext`] of the first `len` bytes of an open data file.
pub(crate) fn check_ciphertext_of(
    mut f: File,
    len: u64,
    id: &FileId,
    expected: &[u8; 32],
    shape: Option<(u64, u32)>,
) -> Result<(), String> {
    let mut hb = [0u8; ObjectHeader::LEN as usize];
    f.read_exact(&mut hb)
        .map_err(|_| "data file truncated".to_string())?;
    let h = ObjectHeader::decode(&hb).map_err(|e| format!("data file header: {e}"))?;
    if &h.id != id {
        return Err("data file belongs to another object (swapped)".into());
    }
    if let Some((size, chunk_size)) = shape {
        let n = chunk_count(size, chunk_size);
        if h.chunk_size != chunk_size || h.chunk_count != n {
            return Err("data file header does not match".into());
        }
        if Some(len) != size.checked_add(ObjectHeader::LEN + n * CHUNK_OVERHEAD as u64) {
            return Err("data file has the wrong length (truncated or extended)".into());
        }
    }
    let full = u64::from(h.chunk_size) + CHUNK_OVERHEAD as u64;
    let last_start = h.chunk_offset(h.chunk_count - 1);
    if len < last_start + CHUNK_OVERHEAD as u64 || len > last_start + full {
        return Err("data file has the wrong length (truncated or extended)".into());
    }
    let mut buf = vec![0u8; full as usize];
    let mut hashes = Vec::with_capacity(h.chunk_count.min(1 << 20) as usize);
    for i in 0..h.chunk_count {
        let n = if i + 1 == h.chunk_count {
            (len - last_start) as usize
        } else {
            full as usize
        };
        f.read_exact(&mut buf[..n])
            .map_err(|e| format!("data file unreadable: {e}"))?;
        hashes.push(sealed_chunk_hash(&buf[..n]));
    }
    if &ct_digest(&hashes) != expected {
        return Err("ciphertext digest mismatch (data damaged or altered)".into());
    }
    Ok(())
}

/// (data length, envelope length) of the one-file object `f` at `path`,
/// from its trailer.
fn one_split(f: &File, path: &Path) -> Result<(u64, u64)> {
    let len = f
        .metadata()
        .map_err(|e| StoreError::io("cannot read", path, e))?
        .len();
    let mut t = [0u8; ONE_TRAILER_LEN as usize];
    if len < ONE_TRAILER_LEN {
        return Err(StoreError::corrupt(path.display().to_string(), "truncated"));
    }
    f.read_exact_at(&mut t, len - ONE_TRAILER_LEN)
        .map_err(|e| StoreError::io("cannot read", path, e))?;
    split_one(len, &t).map_err(|e| format_error(path, e))
}

/// Parses `<32 hex>.obj` / `.env` / `.one` file names.
fn parse_object_name(name: &str) -> Option<(FileId, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 32 || !(ext == "obj" || ext == "env" || ext == "one") {
        return None;
    }
    Some((crate::crypto::from_hex(stem)?, ext))
}

#[derive(Default)]
pub(crate) struct Scan {
    pub(crate) env: BTreeMap<FileId, ()>,
    pub(crate) obj: BTreeMap<FileId, ()>,
    /// `<id>.obj` and `<id>.env` files beside a `<id>.one` of the same id:
    /// never read (every reader takes the `.one`), removed by reconcile.
    /// (A build from before one-file objects that fetched an object a
    /// newer build then stored again would leave them.)
    pub(crate) stray: Vec<PathBuf>,
}

impl Vault {
    /// Creates an empty vault in `dir`, its secret key sealed under `passphrase`.
    pub fn create(dir: &Path, passphrase: &[u8], params: KdfParams) -> Result<()> {
        if passphrase.is_empty() {
            return Err(StoreError::Invalid(
                "the passphrase must not be empty".into(),
            ));
        }
        fsutil::create_private_dir(dir)?;
        fsutil::create_private_dir(&dir.join("objects"))?;
        fsutil::create_private_dir(&dir.join("staging"))?;
        fsutil::create_private_dir(&dir.join("deposits"))?;
        let salt = random()?;
        let kek = derive_kek(passphrase, &salt, params)?;
        let kp = Keypair::generate()?;
        let header = seal_secret(&kek, params, salt, &kp)?;
        fsutil::write_atomic(&dir.join("index"), &seal_index(&kp, 0, &[])?)?;
        fsutil::write_atomic(&dir.join("lock"), b"")?;
        fsutil::write_atomic(&dir.join("header"), &header.encode())?;
        fsutil::fsync_dir(&fsutil::parent_of(dir))
    }

    /// Opens the vault in `dir` (reads the public header only).
    pub fn open(dir: &Path) -> Result<Self> {
        let hp = dir.join("header");
        if !hp.exists() {
            return Err(StoreError::corrupt(
                hp.display().to_string(),
                "vault header missing",
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            header: read_header(&hp)?,
            pinned: None,
            store_lock: Default::default(),
        })
    }

    /// Opens the vault of a node: new objects are sealed only to a vault
    /// key the owner set (the pin at `pin_path`, authenticated with a key
    /// derived from `identity`). Opening never fails on the pin — the owner
    /// can always unlock, which repairs it — but storing does while the pin
    /// is missing, invalid, or does not allow the header's key.
    pub fn open_pinned(dir: &Path, identity: &Keypair, pin_path: PathBuf) -> Result<Self> {
        let mut v = Self::open(dir)?;
        let key = PinKey::from_identity(identity);
        let found = v.header.vault_pk;
        let sealing = match Pin::load(&pin_path, &key) {
            Ok(Some(p)) if p.allows(&found) => Some((found, p.generation)),
            _ => None,
        };
        v.pinned = Some(Pinned {
            key,
            path: pin_path,
            sealing: std::sync::Mutex::new(sealing),
        });
        Ok(v)
    }

    /// Checks that storing may seal to the header's key now (`serve` and
    /// `import` check it before they start).
    pub fn check_pin(&self) -> Result<()> {
        self.sealing_key().map(|_| ())
    }

    /// The key new objects are sealed to: the header's, checked against
    /// the pin at every store. A header that changed is followed only when
    /// a pin of the same or a higher generation than the last one seen
    /// allows its key (a `vault rekey`): never back to an older pin.
    pub(crate) fn sealing_key(&self) -> Result<PublicKey> {
        let found = read_header(&self.dir.join("header"))?.vault_pk;
        let Some(p) = &self.pinned else {
            return Ok(found);
        };
        let mut sealing = p.sealing.lock().unwrap_or_else(|e| e.into_inner());
        let pin = match Pin::load(&p.path, &p.key) {
            Ok(Some(pin)) => pin,
            Ok(None) => return Err(StoreError::VaultNotPinned),
            Err(e) => {
                tracing::error!("the vault key pin is unusable: {e}");
                return Err(StoreError::VaultNotPinned);
            }
        };
        let forward = sealing.is_none_or(|(_, g)| pin.generation >= g);
        if forward && pin.allows(&found) {
            if sealing.is_some_and(|(k, _)| k != found) {
                tracing::info!(
                    "vault key rotated (vault rekey): new files are sealed to {}",
                    found.fingerprint()
                );
            }
            *sealing = Some((found, pin.generation));
            return Ok(found);
        }
        tracing::error!(
            "vault/header or the vault key pin was replaced or rolled back: refusing to seal new files"
        );
        Err(pin::changed(
            &found,
            sealing.as_ref().map(|(k, _)| k).or(Some(&pin.current)),
        ))
    }

    /// Records the vault keys the owner set (when opened with the
    /// identity), one generation up.
    fn write_pin(&self, current: PublicKey, next: Option<PublicKey>) -> Result<()> {
        let Some(p) = &self.pinned else {
            return Ok(());
        };
        let generation = match Pin::load(&p.path, &p.key) {
            Ok(Some(old)) => old.generation + 1,
            _ => 1,
        };
        Pin {
            generation,
            current,
            next,
        }
        .save(&p.path, &p.key)
    }

    /// After an unlock with the passphrase (which proves the header is the
    /// owner's): pins its key when the pin is missing, invalid, does not
    /// allow it, or still names a finished rekey's next key.
    fn repair_pin(&self, header_key: PublicKey, rekey_pending: bool) -> Result<()> {
        let Some(p) = &self.pinned else {
            return Ok(());
        };
        let pin = Pin::load(&p.path, &p.key).ok().flatten();
        let fine =
            pin.is_some_and(|pin| pin.allows(&header_key) && (rekey_pending || pin.next.is_none()));
        if !fine {
            if pin.is_none() {
                tracing::info!(
                    "pinned vault key {} (after unlocking with the passphrase)",
                    header_key.fingerprint()
                );
            }
            self.write_pin(header_key, None)?;
        }
        Ok(())
    }

    /// The vault public key new objects are sealed to.
    pub fn public_key(&self) -> PublicKey {
        self.header.vault_pk
    }

    /// The vault directory (`HOME/vault`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shares file (`HOME/vault/shares`, see [`Shares`]).
    pub fn shares_path(&self) -> PathBuf {
        self.dir.join("shares")
    }

    /// The current access-log file (`HOME/vault/log`).
    pub fn log_path(&self) -> PathBuf {
        log::log_path(&self.dir)
    }

    /// Appends one record to the access log, sealed to the key new objects
    /// are sealed to (the one the pin allows); no passphrase needed.
    pub fn log(&self, rec: &LogRecord) -> Result<()> {
        self.log_all(std::slice::from_ref(rec))
    }

    /// Appends several records (one `write` each, one `fsync`).
    pub fn log_all(&self, recs: &[LogRecord]) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        log::append(&self.dir, &self.sealing_key()?, recs)
    }

    pub(crate) fn objects(&self) -> PathBuf {
        self.dir.join("objects")
    }

    fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }

    /// The staging directory (partials live there).
    pub(crate) fn staging_dir(&self) -> PathBuf {
        self.staging()
    }

    pub(crate) fn obj_path(&self, id: &FileId) -> PathBuf {
        self.objects().join(format!("{}.obj", id_hex(id)))
    }

    pub(crate) fn env_path(&self, id: &FileId) -> PathBuf {
        self.objects().join(format!("{}.env", id_hex(id)))
    }

    /// `objects/<id>.one`: data and envelope of an object of one chunk.
    pub(crate) fn one_path(&self, id: &FileId) -> PathBuf {
        self.objects().join(format!("{}.one", id_hex(id)))
    }

    /// `<id>.one` when object `id` is a one-file object, else `two`.
    pub(crate) fn one_or(&self, id: &FileId, two: PathBuf) -> PathBuf {
        let one = self.one_path(id);
        if one.is_file() {
            one
        } else {
            two
        }
    }

    /// The file holding object `id`'s envelope, to name in a message.
    pub(crate) fn envelope_path_shown(&self, id: &FileId) -> PathBuf {
        self.one_or(id, self.env_path(id))
    }

    /// Every file that can hold part of object `id`.
    pub(crate) fn object_paths(&self, id: &FileId) -> [PathBuf; 3] {
        [self.env_path(id), self.one_path(id), self.obj_path(id)]
    }

    /// True when object `id` is stored: its envelope and its data file are
    /// there (`vault rm` removes the envelope first).
    pub fn has_object(&self, id: &FileId) -> bool {
        self.one_path(id).is_file() || (self.env_path(id).is_file() && self.obj_path(id).is_file())
    }

    /// Object `id`'s one-file object, opened, with its data and envelope
    /// lengths from its trailer; `None` when it has none (two files).
    fn open_one(&self, id: &FileId) -> Result<Option<(File, PathBuf, u64, u64)>> {
        let one = self.one_path(id);
        match File::open(&one) {
            Ok(f) => {
                let (data_len, env_len) = one_split(&f, &one)?;
                Ok(Some((f, one, data_len, env_len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("cannot open", &one, e)),
        }
    }

    /// The bytes of object `id`'s envelope: `<id>.env`, or the envelope in
    /// `<id>.one`. At most [`MAX_ENVELOPE_FILE`] bytes.
    pub(crate) fn read_envelope(&self, id: &FileId) -> Result<Vec<u8>> {
        let Some((f, one, data_len, env_len)) = self.open_one(id)? else {
            return fsutil::read_limited(&self.env_path(id), MAX_ENVELOPE_FILE);
        };
        let mut b = vec![0u8; env_len as usize];
        f.read_exact_at(&mut b, data_len)
            .map_err(|e| StoreError::io("cannot read", &one, e))?;
        Ok(b)
    }

    /// Replaces object `id`'s envelope by `env`, atomically: `<id>.env`
    /// rewritten, or `<id>.one` rewritten whole (its data is one chunk).
    pub(crate) fn replace_envelope(&self, id: &FileId, env: &[u8]) -> Result<()> {
        let Some((f, one, data_len, _)) = self.open_one(id)? else {
            return fsutil::write_atomic(&self.env_path(id), env);
        };
        let mut b = vec![0u8; data_len as usize];
        f.read_exact_at(&mut b, 0)
            .map_err(|e| StoreError::io("cannot read", &one, e))?;
        b.extend_from_slice(env);
        b.extend_from_slice(&one_trailer(env.len()));
        fsutil::write_atomic(&one, &b)
    }

    /// Object `id`'s data file, opened, with its path and the length of
    /// its data (all of `<id>.obj`, the part of `<id>.one` before the
    /// envelope).
    pub(crate) fn open_data(&self, id: &FileId) -> Result<(File, PathBuf, u64)> {
        if let Some((f, one, data_len, _)) = self.open_one(id)? {
            return Ok((f, one, data_len));
        }
        let p = self.obj_path(id);
        let f = File::open(&p).map_err(|e| StoreError::io("cannot open", &p, e))?;
        let len = f
            .metadata()
            .map_err(|e| StoreError::io("cannot read", &p, e))?
            .len();
        Ok((f, p, len))
    }

    /// The record of what this vault received, by slot
    /// ([`super::received`]).
    pub fn receipts(&self) -> super::received::Receipts {
        super::received::Receipts::new(&self.dir)
    }

    fn lock_file(&self, name: &str) -> Result<(File, PathBuf)> {
        let p = self.dir.join(name);
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&p)
            .map_err(|e| StoreError::io("cannot open", &p, e))?;
        Ok((f, p))
    }

    /// Takes the store lock: shared for storing, exclusive for cleanup and rekey.
    fn lock(&self, exclusive: bool) -> Result<File> {
        let (f, p) = self.lock_file("lock")?;
        if exclusive { f.lock() } else { f.lock_shared() }
            .map_err(|e| StoreError::io("cannot lock", &p, e))?;
        Ok(f)
    }

    /// The shared store lock, one for every writer of this handle.
    fn writer_lock(&self) -> Result<Arc<File>> {
        let mut held = self
            .store_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = held.upgrade() {
            return Ok(f);
        }
        let f = Arc::new(self.lock(false)?);
        *held = Arc::downgrade(&f);
        Ok(f)
    }

    /// Takes the store lock exclusively if no store is in progress, else shared.
    pub(crate) fn lock_best(&self) -> Result<(File, bool)> {
        let (f, p) = self.lock_file("lock")?;
        match f.try_lock() {
            Ok(()) => Ok((f, true)),
            Err(fs::TryLockError::WouldBlock) => {
                f.lock_shared()
                    .map_err(|e| StoreError::io("cannot lock", &p, e))?;
                Ok((f, false))
            }
            Err(fs::TryLockError::Error(e)) => Err(StoreError::io("cannot lock", &p, e)),
        }
    }

    pub(crate) fn scan(&self) -> Result<Scan> {
        let dir = self.objects();
        let mut s = Scan::default();
        let (mut one, mut two) = (BTreeMap::new(), Vec::new());
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io("cannot list", &dir, e))? {
            let e = e.map_err(|e| StoreError::io("cannot list", &dir, e))?;
            let name = e.file_name();
            if let Some((id, ext)) = name.to_str().and_then(parse_object_name) {
                if ext != "obj" {
                    s.env.insert(id, ());
                }
                if ext != "env" {
                    s.obj.insert(id, ());
                }
                if ext == "one" {
                    one.insert(id, ());
                } else {
                    two.push((id, e.path()));
                }
            }
        }
        s.stray = two
            .into_iter()
            .filter(|(id, _)| one.contains_key(id))
            .map(|(_, p)| p)
            .collect();
        Ok(s)
    }

    /// True when any object, deposit (or leftover of either) is stored.
    pub fn has_objects(&self) -> Result<bool> {
        let s = self.scan()?;
        Ok(!s.env.is_empty() || !s.obj.is_empty() || self.has_deposit_files()?)
    }

    /// Starts storing a new object of `size` bytes (see [`ObjectWriter`]).
    pub fn writer(&self, id: FileId, size: u64, chunk_size: u32) -> Result<ObjectWriter<'_>> {
        ObjectWriter::new(self, id, size, chunk_size)
    }

    /// Imports a local file (sealed to the vault public key; no passphrase):
    /// [`Self::stage_file`], then [`commit_staged`] of that one file.
    pub fn import_file(
        &self,
        src: &Path,
        name: &str,
        expected: Option<fsutil::FileIdentity>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Entry> {
        let staged = self.stager()?.file(src, name, expected, progress)?;
        commit_one(staged)
    }

    /// Stores an (empty) directory entry named `name`.
    pub fn import_dir(&self, name: &str, mode: u32, mtime: i64) -> Result<Entry> {
        commit_one(self.stager()?.dir(name, mode, mtime)?)
    }

    /// Stages imported objects for [`commit_staged`]: holds the shared
    /// store lock (no rekey meanwhile) and the vault key of the moment,
    /// read once, that their envelopes are sealed to.
    pub fn stager(&self) -> Result<Stager<'_>> {
        let lock = self.writer_lock()?;
        Ok(Stager {
            vault: self,
            sealer: EnvelopeSealer::new(&self.sealing_key()?)?,
            _lock: lock,
        })
    }
}

/// Writes imported objects to staging, each sealed and with its envelope,
/// ready for [`commit_staged`] (see [`Vault::stager`]).
pub struct Stager<'v> {
    vault: &'v Vault,
    sealer: EnvelopeSealer,
    _lock: Arc<File>,
}

impl<'v> Stager<'v> {
    /// Writes a local file, sealed, to staging, with its envelope, for
    /// [`commit_staged`] to commit with others. The file is opened without following links and
    /// must be a regular file, and, when `expected` is given, the one a
    /// directory walk saw ([`fsutil::open_source`]); a file that changed
    /// while it was read is refused. `progress` is called with the
    /// plaintext bytes done so far. Nothing is visible before the commit,
    /// and a dropped [`Staged`] removes its staging file.
    pub fn file(
        &self,
        src: &Path,
        name: &str,
        expected: Option<fsutil::FileIdentity>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Staged<'v>> {
        let (mut file, before) = fsutil::open_source(src, expected)?;
        let size = before.len();
        let chunk_size = DEFAULT_CHUNK_SIZE;
        let id: FileId = random()?;
        let key = FileKey::generate()?;
        let mut w = self.vault.writer(id, size, chunk_size)?;
        let read_res = if chunk_count(size, chunk_size) <= 1 {
            // One chunk: a reader thread would cost more than it saves.
            seal_one_chunk(&mut file, &mut w, &key, size, progress)?
        } else {
            seal_pipelined(&mut file, &mut w, &key, size, progress)?
        };
        let blake3 = match read_res {
            Ok(h) => h,
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    || e.to_string() == "file grew" =>
            {
                return Err(StoreError::SourceChanged {
                    path: src.to_path_buf(),
                })
            }
            Err(e) => return Err(StoreError::io("cannot read", src, e)),
        };
        // Checked on what was read (the descriptor), not on whatever the
        // path names now.
        let after = file
            .metadata()
            .map_err(|e| StoreError::io("cannot read", src, e))?;
        if after.len() != size || after.modified().ok() != before.modified().ok() {
            return Err(StoreError::SourceChanged {
                path: src.to_path_buf(),
            });
        }
        let meta = Metadata {
            kind: Kind::File,
            size,
            chunk_size,
            blake3,
            added_ms: now_ms(),
            mtime: mtime_secs(&before),
            mode: before.permissions().mode() & 0o777,
            origin: None,
            name: name.to_owned(),
        };
        self.staged(w, &key, meta)
    }

    /// An (empty) directory entry named `name`, staged like a file.
    pub fn dir(&self, name: &str, mode: u32, mtime: i64) -> Result<Staged<'v>> {
        let id: FileId = random()?;
        let key = FileKey::generate()?;
        let mut w = self.vault.writer(id, 0, DEFAULT_CHUNK_SIZE)?;
        let sealed = key.seal_chunk(&id, 0, true, &[])?;
        w.write_chunk(0, &sealed)?;
        let meta = Metadata {
            kind: Kind::Dir,
            size: 0,
            chunk_size: DEFAULT_CHUNK_SIZE,
            blake3: *blake3::hash(&[]).as_bytes(),
            added_ms: now_ms(),
            mtime,
            mode: mode & 0o777,
            origin: None,
            name: name.to_owned(),
        };
        self.staged(w, &key, meta)
    }

    /// The envelope of a written object, sealed here: on the thread that
    /// stages, while another commits (two X25519 per object, the largest
    /// cost of a small file's commit).
    fn staged(
        &self,
        writer: ObjectWriter<'v>,
        key: &FileKey,
        meta: Metadata,
    ) -> Result<Staged<'v>> {
        let envelope = writer.envelope_by(&self.sealer, key.secret(), &meta)?;
        Ok(Staged {
            writer,
            envelope,
            meta,
        })
    }
}

impl Vault {
    /// Checks every object's ciphertext integrity without any key.
    pub fn verify_ciphertext(
        &self,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<VerifyReport> {
        let _lock = self.lock(false)?;
        let scan = self.scan()?;
        let mut report = VerifyReport::default();
        let total = scan.env.len();
        for (n, id) in scan.env.keys().enumerate() {
            progress(n, total);
            report.checked += 1;
            let p = self.envelope_path_shown(id);
            let env = match self
                .read_envelope(id)
                .and_then(|b| EnvelopeFile::decode(&b).map_err(|e| format_error(&p, e)))
            {
                Ok(e) => e,
                Err(e) => {
                    report.problems.push(Problem {
                        id: *id,
                        name: None,
                        what: format!("envelope: {e}"),
                    });
                    continue;
                }
            };
            if &env.id != id {
                report.problems.push(Problem {
                    id: *id,
                    name: None,
                    what: "envelope belongs to another object (swapped)".into(),
                });
                continue;
            }
            let checked = self
                .open_data(id)
                .map_err(|e| format!("data file unreadable: {e}"))
                .and_then(|(f, _, len)| check_ciphertext_of(f, len, id, &env.ct_digest, None));
            if let Err(what) = checked {
                report.problems.push(Problem {
                    id: *id,
                    name: None,
                    what,
                });
            }
        }
        report.leftovers = scan
            .obj
            .keys()
            .filter(|k| !scan.env.contains_key(*k))
            .count();
        self.verify_deposits(&mut report)?;
        Ok(report)
    }

    /// Unlocks the vault with the passphrase: finishes an interrupted rekey,
    /// then reconciles the index with the stored objects.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<Unlocked<'_>> {
        // Index writers exclude each other; stores in progress (shared store
        // lock) only prevent leftover cleanup and rekey.
        let (index_lock, ip) = self.lock_file("index.lock")?;
        index_lock
            .lock()
            .map_err(|e| StoreError::io("cannot lock", &ip, e))?;
        let (lock, exclusive) = self.lock_best()?;
        let header = read_header(&self.dir.join("header"))?;
        let kek = derive_kek(passphrase, &header.salt, header.params)?;
        let keypair = open_secret(&kek, &header).map_err(|_| StoreError::WrongPassphrase)?;
        if keypair.public() != header.vault_pk {
            return Err(StoreError::corrupt(
                "vault header",
                "key pair does not match",
            ));
        }
        let next_path = self.dir.join("header.next");
        let next = if next_path.exists() {
            let h = read_header(&next_path)?;
            let k = if h.salt == header.salt && h.params == header.params {
                kek.clone()
            } else {
                derive_kek(passphrase, &h.salt, h.params)?
            };
            let kp = open_secret(&k, &h)
                .map_err(|_| StoreError::corrupt("vault/header.next", "does not open"))?;
            Some((h, kp))
        } else {
            None
        };

        let ip = self.dir.join("index");
        if !ip.exists() {
            return Err(StoreError::corrupt(
                ip.display().to_string(),
                "index missing",
            ));
        }
        let bytes = fsutil::read_limited(&ip, u64::from(MAX_INDEX_BODY) + 4096)?;
        let file = IndexFile::decode(&bytes).map_err(|e| format_error(&ip, e))?;
        let ikp = if file.vault_pk == keypair.public() {
            &keypair
        } else {
            match &next {
                Some((_, kp)) if kp.public() == file.vault_pk => kp,
                _ => {
                    return Err(StoreError::corrupt(
                        ip.display().to_string(),
                        "index keyed to an unknown vault key",
                    ))
                }
            }
        };
        let body = zeroize::Zeroizing::new(
            index_key(ikp)
                .open(file.nonce, &file.ad(), &file.sealed_body)
                .map_err(|_| {
                    StoreError::corrupt(ip.display().to_string(), "index does not authenticate")
                })?,
        );
        let records = decode_records(&body)
            .map_err(|e| StoreError::corrupt(ip.display().to_string(), e.to_string()))?;
        // Every older key must open, link by link (a rekey in progress
        // may already have sealed the current key to the next one).
        let old_keys = keychain::open_chain(
            &self.dir,
            &keychain::load(&self.dir)?,
            &keypair,
            next.as_ref().map(|(_, kp)| kp),
        )?;
        let mut u = Unlocked {
            vault: self,
            keypair,
            old_keys,
            kek,
            records,
            generation: file.generation,
            problems: Vec::new(),
            exclusive,
            _lock: lock,
            _index_lock: index_lock,
        };
        if let Some((h, kp)) = next {
            if !u.exclusive {
                // Finishing a rekey must not race a store: wait for it.
                u._lock
                    .lock()
                    .map_err(|e| StoreError::io("cannot lock", self.dir.join("lock"), e))?;
                u.exclusive = true;
            }
            u.finish_rekey(h, kp)?;
        } else {
            // The passphrase opened this header: it is the owner's. A pin
            // that is missing (a vault made by c3e3ae4), damaged, or left by
            // a rekey that died after its last rename is made right.
            self.repair_pin(header.vault_pk, false)?;
        }
        u.reconcile()?;
        // Cleanup done: let stores (a receiving daemon) go on while this
        // command works, for as long as it takes.
        if u.exclusive {
            u._lock
                .lock_shared()
                .map_err(|e| StoreError::io("cannot lock", self.dir.join("lock"), e))?;
            u.exclusive = false;
        }
        Ok(u)
    }
}

/// A stored modification time (unix seconds, any i64) as a `SystemTime`,
/// if the platform can represent it.
fn unix_time(secs: i64) -> Option<SystemTime> {
    let d = std::time::Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

fn mtime_secs(m: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime()
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match f.read(&mut buf[off..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shrank",
                ))
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes one object's sealed chunks into staging, in any order, then
/// commits it (`docs/VAULT.md`, *Commit of a new object*). Dropped without
/// commit, it removes its staging file.
pub struct ObjectWriter<'v> {
    vault: &'v Vault,
    header: ObjectHeader,
    size: u64,
    file: File,
    tmp: PathBuf,
    hashes: ChunkHashes,
    committed: bool,
    keep: bool,
    unflushed: u64,
    _lock: Arc<File>,
}

impl<'v> ObjectWriter<'v> {
    fn new(vault: &'v Vault, id: FileId, size: u64, chunk_size: u32) -> Result<Self> {
        let tmp = vault.staging().join(format!("import-{}.obj", id_hex(&id)));
        Self::create_at(vault, tmp, id, size, chunk_size, false)
    }

    /// A new staging file at `tmp`; with `keep` it survives a drop (a
    /// resumable partial).
    pub(crate) fn create_at(
        vault: &'v Vault,
        tmp: PathBuf,
        id: FileId,
        size: u64,
        chunk_size: u32,
        keep: bool,
    ) -> Result<Self> {
        let lock = vault.writer_lock()?;
        let n = chunk_count(size, chunk_size);
        let header = ObjectHeader {
            id,
            chunk_size,
            chunk_count: n,
        };
        let file = fsutil::create_private(&tmp)?;
        let w = ObjectWriter {
            vault,
            header,
            size,
            file,
            tmp,
            hashes: ChunkHashes::new(n),
            committed: false,
            keep,
            unflushed: 0,
            _lock: lock,
        };
        fileops::write_all_at(&w.file, &header.encode(), 0, &w.tmp)
            .map_err(|e| StoreError::io("cannot write", &w.tmp, e))?;
        Ok(w)
    }

    /// Reopens a kept staging file; `hashes` are the chunks recorded as
    /// written (durable: the state listing them was written after an fsync).
    pub(crate) fn reopen(
        vault: &'v Vault,
        tmp: PathBuf,
        id: FileId,
        size: u64,
        chunk_size: u32,
        hashes: ChunkHashes,
    ) -> Result<Self> {
        let lock = vault.writer_lock()?;
        let n = chunk_count(size, chunk_size);
        if hashes.count() != n {
            return Err(StoreError::corrupt(
                tmp.display().to_string(),
                "chunk count mismatch",
            ));
        }
        let file = fileops::open(fs::OpenOptions::new().read(true).write(true), &tmp)
            .map_err(|e| StoreError::io("cannot open", &tmp, e))?;
        let header = ObjectHeader {
            id,
            chunk_size,
            chunk_count: n,
        };
        let w = ObjectWriter {
            vault,
            header,
            size,
            file,
            tmp,
            hashes,
            committed: false,
            keep: true,
            unflushed: 0,
            _lock: lock,
        };
        // The recorded chunks are not re-hashed: they were fsynced before
        // the state that lists them, and every one is decrypted (AEAD) on
        // its way to the end-to-end BLAKE3 before the file is committed, so
        // damaged data fails there. Re-reading the whole partial at every
        // reconnect would let a sender make the receiver redo that work
        // without bound.
        Ok(w)
    }

    /// The vault written to.
    pub fn vault(&self) -> &'v Vault {
        self.vault
    }

    /// Which chunks are written (`Some(hash)`).
    pub fn hashes(&self) -> &ChunkHashes {
        &self.hashes
    }

    /// Forgets every written chunk (a transfer starting over).
    pub fn reset(&mut self) {
        self.hashes.clear();
    }

    /// True when every chunk is written.
    pub fn is_complete(&self) -> bool {
        self.hashes.is_complete()
    }

    /// The object header.
    pub fn header(&self) -> &ObjectHeader {
        &self.header
    }

    /// Plaintext size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A second handle on the staging file (for syncing from another thread).
    pub fn file_handle(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(|e| StoreError::io("cannot reopen", &self.tmp, e))
    }

    /// Reads sealed chunk `index` back into `buf` (resized to fit).
    pub fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<()> {
        let len = chunk_plain_len(self.size, self.header.chunk_size, index) + CHUNK_OVERHEAD;
        buf.resize(len, 0);
        self.file
            .read_exact_at(buf, self.header.chunk_offset(index))
            .map_err(|e| StoreError::io("cannot read", &self.tmp, e))
    }

    /// Flushes the data to disk.
    pub fn sync(&self) -> Result<()> {
        fileops::sync_data(&self.file, &self.tmp)
            .map_err(|e| StoreError::io("cannot sync", &self.tmp, e))
    }

    /// Decrypts every written chunk in order (in memory only) and returns
    /// the BLAKE3 of the plaintext: the receiver's end-to-end check.
    pub fn verify_plaintext(&self, key: &FileKey) -> Result<[u8; 32]> {
        self.decrypt_into(key, &mut std::io::sink())
    }

    /// Decrypts every written chunk in order into `out`; returns the
    /// BLAKE3 of the plaintext.
    pub fn decrypt_into(&self, key: &FileKey, out: &mut dyn Write) -> Result<[u8; 32]> {
        let n = self.header.chunk_count;
        let id = self.header.id;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; self.header.chunk_size as usize + CHUNK_OVERHEAD];
        for i in 0..n {
            let len = chunk_plain_len(self.size, self.header.chunk_size, i) + CHUNK_OVERHEAD;
            self.file
                .read_exact_at(&mut buf[..len], self.header.chunk_offset(i))
                .map_err(|e| StoreError::io("cannot read", &self.tmp, e))?;
            let pt = key
                .open_chunk_in_place(&id, i, i + 1 == n, &mut buf[..len])
                .map_err(|_| {
                    StoreError::corrupt(
                        format!("received file {}", id_hex(&id)),
                        format!("chunk {i} does not authenticate under the file key"),
                    )
                })?;
            hasher.update(pt);
            out.write_all(pt)
                .map_err(|e| StoreError::io("cannot write", "output", e))?;
        }
        Ok(*hasher.finalize().as_bytes())
    }

    /// Writes sealed chunk `index` at its place. Its length must be exact.
    pub fn write_chunk(&mut self, index: u64, sealed: &[u8]) -> Result<()> {
        self.write_chunk_hashed(index, sealed, sealed_chunk_hash(sealed))
    }

    /// As [`Self::write_chunk`], with the chunk's BLAKE3 already computed
    /// (by the MAC check of a received chunk).
    pub fn write_chunk_hashed(&mut self, index: u64, sealed: &[u8], leaf: [u8; 32]) -> Result<()> {
        let want = chunk_plain_len(self.size, self.header.chunk_size, index) + CHUNK_OVERHEAD;
        if index >= self.header.chunk_count || sealed.len() != want {
            return Err(StoreError::Invalid(format!(
                "chunk {index} has length {} (expected {want})",
                sealed.len()
            )));
        }
        fileops::write_all_at(
            &self.file,
            sealed,
            self.header.chunk_offset(index),
            &self.tmp,
        )
        .map_err(|e| StoreError::io("cannot write", &self.tmp, e))?;
        self.hashes.insert(index, leaf);
        // Start writeback early so the final fsync finds little left to do
        // and the disk works while we compute.
        self.unflushed += sealed.len() as u64;
        if self.unflushed >= fsutil::WRITEBACK_BYTES {
            self.unflushed = 0;
            fsutil::start_writeback(&self.file);
        }
        Ok(())
    }

    /// The ciphertext digest of the written chunks, when every one is.
    pub(crate) fn ct_digest(&self) -> Result<[u8; 32]> {
        match self.hashes.complete() {
            Some(hashes) => Ok(ct_digest(&hashes)),
            None => Err(StoreError::Invalid("object is missing chunks".into())),
        }
    }

    /// The staging data file.
    pub(crate) fn staging_path(&self) -> &Path {
        &self.tmp
    }

    /// The envelope that commits this object: `file_key` and `meta`
    /// sealed to the vault key, with the ciphertext digest of every chunk.
    pub(crate) fn envelope(&self, file_key: &Secret32, meta: &Metadata) -> Result<Vec<u8>> {
        self.envelope_by(
            &EnvelopeSealer::new(&self.vault.sealing_key()?)?,
            file_key,
            meta,
        )
    }

    /// [`Self::envelope`] sealed by `sealer` (one agreement with the vault
    /// key for a group of objects).
    pub(crate) fn envelope_by(
        &self,
        sealer: &EnvelopeSealer,
        file_key: &Secret32,
        meta: &Metadata,
    ) -> Result<Vec<u8>> {
        let ct = self.ct_digest()?;
        if meta.size != self.size || meta.chunk_size != self.header.chunk_size {
            return Err(StoreError::Invalid(
                "metadata does not match the data".into(),
            ));
        }
        sealer.seal(self.header.id, ct, file_key, meta)
    }

    /// The key new objects of this vault are sealed to now.
    pub(crate) fn sealing_key_now(&self) -> Result<PublicKey> {
        self.vault.sealing_key()
    }

    /// Makes the object durable and visible: fsync, envelope, renames.
    pub fn commit(mut self, file_key: &Secret32, meta: &Metadata) -> Result<()> {
        let env = self.envelope(file_key, meta)?;
        // The envelope's rename is the commit.
        self.publish(&env, &self.vault.objects())?;
        self.committed = true;
        Ok(())
    }

    /// Moves the data file and `env` into `dir` as `<id>.obj` and
    /// `<id>.env`, or as one `<id>.one`: [`publish_group`] of this one
    /// object.
    pub(crate) fn publish(&mut self, env: &[u8], dir: &Path) -> Result<()> {
        publish_group(&mut [(self, env)], dir)
            .pop()
            .unwrap_or_else(|| Err(StoreError::Invalid("nothing to publish".into())))
    }

    /// Length of the data file: header and every sealed chunk.
    fn data_len(&self) -> u64 {
        ObjectHeader::LEN + self.size + self.header.chunk_count * CHUNK_OVERHEAD as u64
    }

    /// Appends `env` and the trailer of a one-file object after the data
    /// (`docs/VAULT.md`, *One-file object*); the file is cut to exactly
    /// that, so a commit retried after a failed one leaves no stale tail.
    fn append_envelope(&mut self, env: &[u8]) -> Result<()> {
        let at = self.data_len();
        let mut tail = Vec::with_capacity(env.len() + ONE_TRAILER_LEN as usize);
        tail.extend_from_slice(env);
        tail.extend_from_slice(&one_trailer(env.len()));
        fileops::write_all_at(&self.file, &tail, at, &self.tmp)
            .and_then(|()| fileops::set_len(&self.file, at + tail.len() as u64, &self.tmp))
            .map_err(|e| StoreError::io("cannot write", &self.tmp, e))
    }

    /// Marks the staging file as moved (nothing for a drop to remove).
    pub(crate) fn mark_committed(&mut self) {
        self.committed = true;
    }
}

/// An object written to staging by [`Vault::stage_file`] or
/// [`Vault::stage_dir`], not yet committed.
pub struct Staged<'v> {
    writer: ObjectWriter<'v>,
    envelope: Vec<u8>,
    meta: Metadata,
}

impl Staged<'_> {
    /// Its plaintext size.
    pub fn size(&self) -> u64 {
        self.meta.size
    }
}

/// Commits staged objects together ([`commit_writers`]: one group
/// commit). One result per object, in order.
pub fn commit_staged(mut staged: Vec<Staged<'_>>) -> Vec<Result<Entry>> {
    let Some(first) = staged.first() else {
        return Vec::new();
    };
    let dir = first.writer.vault.objects();
    let mut items: Vec<_> = staged
        .iter_mut()
        .map(|s| (&mut s.writer, s.envelope.as_slice()))
        .collect();
    let results = publish_and_mark(&mut items, &dir);
    staged
        .into_iter()
        .zip(results)
        .map(|(s, r)| {
            r.map(|()| Entry {
                id: s.writer.header.id,
                meta: s.meta,
            })
        })
        .collect()
}

fn commit_one(staged: Staged<'_>) -> Result<Entry> {
    commit_staged(vec![staged])
        .pop()
        .unwrap_or_else(|| Err(StoreError::Invalid("nothing to commit".into())))
}

/// Commits objects written to staging together: each envelope sealed to
/// the vault key of the moment (read once for the group), then
/// [`publish_group`] into `objects/`; the committed writers are marked.
/// One result per object, in order.
pub(crate) fn commit_writers(
    items: &mut [(&mut ObjectWriter<'_>, &Secret32, &Metadata)],
) -> Vec<Result<()>> {
    let Some((first, ..)) = items.first() else {
        return Vec::new();
    };
    let dir = first.vault.objects();
    let sealer = match first
        .sealing_key_now()
        .and_then(|to| EnvelopeSealer::new(&to))
    {
        Ok(s) => s,
        Err(e) => {
            let mut out: Vec<Result<()>> = (1..items.len()).map(|_| Err(same_error(&e))).collect();
            out.insert(0, Err(e));
            return out;
        }
    };
    let mut results: Vec<Result<()>> = Vec::with_capacity(items.len());
    let mut envelopes = Vec::with_capacity(items.len());
    for (w, key, meta) in items.iter() {
        match w.envelope_by(&sealer, key, meta) {
            Ok(env) => {
                envelopes.push(Some(env));
                results.push(Ok(()));
            }
            Err(e) => {
                envelopes.push(None);
                results.push(Err(e));
            }
        }
    }
    let mut group = Vec::with_capacity(items.len());
    let mut at = Vec::with_capacity(items.len());
    for (i, ((w, ..), env)) in items.iter_mut().zip(&envelopes).enumerate() {
        if let Some(env) = env {
            group.push((&mut **w, env.as_slice()));
            at.push(i);
        }
    }
    for (i, r) in at.into_iter().zip(publish_and_mark(&mut group, &dir)) {
        results[i] = r;
    }
    results
}

/// [`publish_group`], then each committed writer marked as such.
fn publish_and_mark(items: &mut [(&mut ObjectWriter<'_>, &[u8])], dir: &Path) -> Vec<Result<()>> {
    let results = publish_group(items, dir);
    for ((w, _), r) in items.iter_mut().zip(&results) {
        if r.is_ok() {
            w.mark_committed();
        }
    }
    results
}

/// The same failure again, for each of several objects one shared step
/// failed (a store error is not `Clone`: it may hold an `io::Error`).
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io { action, path, .. } => StoreError::Io {
            action,
            path: path.clone(),
            error: io_of(e),
        },
        StoreError::DiskFull { path } => StoreError::DiskFull { path: path.clone() },
        other => StoreError::Invalid(other.to_string()),
    }
}

/// Reads, hashes and seals a file of at most one chunk on this thread.
/// The outer error is the store's; the inner one the source's.
fn seal_one_chunk(
    file: &mut File,
    w: &mut ObjectWriter<'_>,
    key: &FileKey,
    size: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<std::io::Result<[u8; 32]>> {
    let len = size as usize;
    let mut buf = vec![0u8; len + CHUNK_OVERHEAD];
    let body = &mut buf[NONCE_LEN..NONCE_LEN + len];
    if let Err(e) = read_full(file, body) {
        return Ok(Err(e));
    }
    let hash = *blake3::hash(body).as_bytes();
    let mut probe = [0u8; 1];
    match file.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => return Ok(Err(std::io::Error::other("file grew"))),
        Err(e) => return Ok(Err(e)),
    }
    let id = w.header.id;
    key.seal_chunk_in_place(&id, 0, true, &mut buf)?;
    w.write_chunk(0, &buf)?;
    progress(size);
    Ok(Ok(hash))
}

/// Reads, hashes and seals a file of several chunks in a two-stage
/// pipeline balanced for two cores: a reader thread reads, hashes the
/// plaintext and seals; this thread hashes the ciphertext and writes.
/// Buffers circulate. The outer error is the store's; the inner one the
/// source's.
fn seal_pipelined(
    file: &mut File,
    w: &mut ObjectWriter<'_>,
    key: &FileKey,
    size: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<std::io::Result<[u8; 32]>> {
    let chunk_size = w.header.chunk_size;
    let id = w.header.id;
    let n = chunk_count(size, chunk_size);
    let cs = chunk_size as usize;
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(4);
    for _ in 0..3 {
        let _ = empty_tx.send(vec![0u8; cs + CHUNK_OVERHEAD]);
    }
    let reader = move |file: &mut File| -> std::io::Result<[u8; 32]> {
        let mut hasher = blake3::Hasher::new();
        for i in 0..n {
            let Ok(mut buf) = empty_rx.recv() else {
                break;
            };
            let want = chunk_plain_len(size, chunk_size, i);
            let body = &mut buf[NONCE_LEN..NONCE_LEN + want];
            read_full(file, body)?;
            hasher.update(body);
            key.seal_chunk_in_place(&id, i, i + 1 == n, &mut buf[..want + CHUNK_OVERHEAD])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if full_tx.send((buf, want)).is_err() {
                break;
            }
        }
        drop(full_tx);
        // Anything past the declared size means the file grew meanwhile.
        let mut probe = [0u8; 1];
        if file.read(&mut probe)? != 0 {
            return Err(std::io::Error::other("file grew"));
        }
        Ok(*hasher.finalize().as_bytes())
    };
    let (read_res, write_res) = std::thread::scope(|s| {
        let h = s.spawn(move || reader(file));
        let mut done = 0u64;
        let mut res = Ok(());
        for i in 0..n {
            let Ok((buf, len)) = full_rx.recv() else {
                break;
            };
            res = w.write_chunk(i, &buf[..len + CHUNK_OVERHEAD]);
            if res.is_err() {
                break;
            }
            done += len as u64;
            progress(done);
            let _ = empty_tx.send(buf);
        }
        drop(full_rx);
        drop(empty_tx);
        let r = h
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked")));
        (r, res)
    });
    write_res?;
    Ok(read_res)
}

/// The fewest objects a group commit makes durable with one `syncfs`
/// rather than an fsync of each file (a lone big file is fsynced: a
/// `syncfs` would also wait for unrelated data of the file system).
const SYNCFS_GROUP: usize = 4;

/// Moves several objects' data files and envelopes from staging into
/// `dir`, together (`docs/VAULT.md`, *Commit of a new object*, *Group
/// commit*; an object of one chunk in `objects/` becomes one file
/// `<id>.one` instead, its envelope appended to its data, its rename the
/// commit, with no envelope steps): for each, fsync the data and write and
/// fsync its envelope in staging; rename every data file into `dir`; fsync
/// `dir` once; rename every envelope (each rename commits its object);
/// fsync `dir` once. So a
/// group of N small files costs two directory fsyncs, not 2N. A failure of
/// one object's own step fails that object only; a failed directory fsync
/// fails every object it covered. A failed object is undone, never half:
/// its envelope goes first (never a listed object without its data), then
/// its staged envelope and its moved data file. Returns one result per
/// object, in order; the caller marks the committed ones.
pub(crate) fn publish_group(
    items: &mut [(&mut ObjectWriter<'_>, &[u8])],
    dir: &Path,
) -> Vec<Result<()>> {
    struct Step {
        obj: PathBuf,
        env_path: PathBuf,
        env_tmp: PathBuf,
        env_file: Option<File>,
        /// A one-file object (`<id>.one`): the envelope is appended to the
        /// data file, whose rename is the commit.
        one: bool,
        moved: bool,
        env_in_place: bool,
        err: Option<StoreError>,
    }
    let one_ok = items.first().is_some_and(|(w, _)| w.vault.objects() == dir);
    let mut steps: Vec<Step> = items
        .iter()
        .map(|(w, _)| {
            let name = id_hex(&w.header.id);
            let one = one_ok && w.header.chunk_count <= 1;
            Step {
                obj: dir.join(format!("{name}.{}", if one { "one" } else { "obj" })),
                env_path: dir.join(format!("{name}.env")),
                env_tmp: w.tmp.with_extension("env"),
                env_file: None,
                one,
                moved: false,
                env_in_place: false,
                err: None,
            }
        })
        .collect();
    // A group of several files is made durable by one `syncfs` (every data
    // file, envelope and inode, in one plugged batch, and one flush of the
    // device cache), then each file is checked for a write-back error
    // without further I/O: one fsync after another, each writing its inode
    // and flushing the cache, costs several times as much per small file
    // (docs/VAULT.md, *Group commit*). Otherwise every file's writeback is
    // started before the first fsync waits.
    let batch = items.len() >= SYNCFS_GROUP && fsutil::syncfs_reports_errors();
    for ((w, env), st) in items.iter_mut().zip(&mut steps) {
        if !batch {
            fsutil::start_writeback(&w.file);
        }
        if st.one {
            if let Err(e) = w.append_envelope(env) {
                st.err = Some(e);
            }
            continue;
        }
        let written = fsutil::create_private(&st.env_tmp).and_then(|f| {
            fileops::write_all(&f, env, &st.env_tmp)
                .map_err(|e| StoreError::io("cannot write", &st.env_tmp, e))?;
            if !batch {
                fsutil::start_writeback(&f);
            }
            Ok(f)
        });
        match written {
            Ok(f) => st.env_file = Some(f),
            Err(e) => st.err = Some(e),
        }
    }
    let live = |st: &Step| st.err.is_none();
    if batch && steps.iter().any(live) {
        let synced = File::open(dir)
            .and_then(|d| fileops::syncfs(&d, dir))
            .map_err(|e| StoreError::io("cannot sync the file system of", dir, e));
        if let Err(e) = synced {
            for st in steps.iter_mut().filter(|s| live(s)) {
                st.err = Some(StoreError::io("cannot sync", dir, io_of(&e)));
            }
        }
    }
    for ((w, _), st) in items.iter_mut().zip(&mut steps) {
        if st.err.is_some() {
            continue;
        }
        let sync = |f: &File, p: &Path| {
            if batch {
                fileops::wait_written(f, p)
            } else {
                fileops::sync_all(f, p)
            }
            .map_err(|e| StoreError::io("cannot sync", p, e))
        };
        if st.one {
            // Data and envelope in one file: its rename is the commit.
            match sync(&w.file, &w.tmp).and_then(|_| fsutil::rename(&w.tmp, &st.obj)) {
                Ok(()) => {
                    st.moved = true;
                    st.env_in_place = true;
                }
                Err(e) => st.err = Some(e),
            }
            continue;
        }
        let Some(env_file) = st.env_file.take() else {
            continue;
        };
        let staged = sync(&w.file, &w.tmp)
            .and_then(|_| sync(&env_file, &st.env_tmp))
            .and_then(|_| fsutil::rename(&w.tmp, &st.obj));
        match staged {
            Ok(()) => st.moved = true,
            Err(e) => st.err = Some(e),
        }
    }
    // One fsync for every data file moved: each object's data is in `dir`
    // before any envelope names it (not needed when every object is a
    // one-file object, whose data and envelope arrive together).
    if steps.iter().any(|st| live(st) && !st.one) {
        if let Err(e) = fsutil::fsync_dir(dir) {
            for st in steps.iter_mut().filter(|s| live(s)) {
                st.err = Some(StoreError::io("cannot sync directory", dir, io_of(&e)));
            }
        }
    }
    for st in steps.iter_mut().filter(|s| live(s) && !s.one) {
        match fsutil::rename(&st.env_tmp, &st.env_path) {
            Ok(()) => st.env_in_place = true,
            Err(e) => st.err = Some(e),
        }
    }
    if steps.iter().any(live) {
        if let Err(e) = fsutil::fsync_dir(dir) {
            for st in steps.iter_mut().filter(|s| live(s)) {
                st.err = Some(StoreError::io("cannot sync directory", dir, io_of(&e)));
            }
        }
    }
    let mut undone = false;
    for st in steps.iter().filter(|s| !live(s)) {
        if st.one {
            // A one-file object is undone by its removal: moved, it is
            // `<id>.one`; not moved, the staging file stays the writer's.
            if st.moved {
                let _ = fileops::remove_file(&st.obj);
            }
            undone = true;
            continue;
        }
        if st.env_in_place {
            let _ = fileops::remove_file(&st.env_path);
        }
        let _ = fileops::remove_file(&st.env_tmp);
        // Without an envelope (or a deposit record) a moved data file is
        // a leftover the next unlock removes, should this fail too.
        if st.moved {
            let _ = fileops::remove_file(&st.obj);
        }
        undone = true;
    }
    if undone {
        let _ = fsutil::fsync_dir(dir);
    }
    steps
        .into_iter()
        .map(|st| match st.err {
            None => Ok(()),
            Some(e) => Err(e),
        })
        .collect()
}

/// An I/O error with the same OS error as a store error's (for the
/// several objects one failed directory fsync fails).
fn io_of(e: &StoreError) -> std::io::Error {
    match e {
        StoreError::Io { error, .. } => error.raw_os_error().map_or_else(
            || std::io::Error::other(error.to_string()),
            std::io::Error::from_raw_os_error,
        ),
        StoreError::DiskFull { .. } => std::io::Error::from_raw_os_error(libc::ENOSPC),
        other => std::io::Error::other(other.to_string()),
    }
}

/// Publishes plaintext as `name` in `dir` (`docs/VAULT.md`, *Export*):
/// `fill` writes it into an unnamed file there (or a named temporary one
/// where the file system cannot) and returns its metadata after checking
/// its BLAKE3; then the mode is set (the stored mode within 0777, less the
/// umask), the time, an fsync, and the name: a link (never replacing
/// anything) or, with `force`, a rename over it; directory fsynced. An
/// interruption at any point leaves no file.
pub(crate) fn publish_plain(
    dir: &fsutil::Dir,
    name: &std::ffi::OsStr,
    force: bool,
    fill: &mut dyn FnMut(&mut dyn Write) -> Result<Metadata>,
) -> Result<Metadata> {
    if !force && dir.contains(name)? {
        return Err(StoreError::DestinationExists {
            path: dir.shown(name),
        });
    }
    let shown = dir.shown(name);
    let out = fsutil::NewFile::create(dir, name)?;
    let meta = {
        let mut w = fsutil::WritebackWriter::new(out.file());
        let m = fill(&mut w)?;
        w.flush()
            .map_err(|e| StoreError::io("cannot write", &shown, e))?;
        m
    };
    finish_plain(out, &meta, force)?;
    Ok(meta)
}

/// The last steps of publishing a plain file: its time and mode (the
/// stored mode within 0777, less the umask), an fsync, then its name.
pub(crate) fn finish_plain<D: std::ops::Deref<Target = fsutil::Dir>>(
    out: fsutil::NewFile<D>,
    meta: &Metadata,
    force: bool,
) -> Result<()> {
    let f = out.file();
    let shown = "the published file";
    if let Some(t) = unix_time(meta.mtime) {
        // Best effort: a time the file system cannot hold is left out.
        let _ = f.set_modified(t);
    }
    // The sender's (or source's) mode is a wish, not an order: never
    // setuid, setgid or sticky, and never more than the umask allows.
    let mode = meta.mode & 0o777 & !fsutil::umask();
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::io("cannot set permissions on", shown, e))?;
    fileops::sync_all(f, Path::new(shown)).map_err(|e| StoreError::io("cannot sync", shown, e))?;
    out.publish(force)
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        if !self.committed && !self.keep {
            let _ = fileops::remove_file(&self.tmp);
        }
    }
}

/// An unlocked vault: holds the vault key pair and the exclusive lock.
pub struct Unlocked<'v> {
    vault: &'v Vault,
    keypair: Keypair,
    /// The vault's earlier key pairs, newest first (`vault/keys`).
    old_keys: Vec<Keypair>,
    kek: Secret32,
    records: Vec<IndexRecord>,
    generation: u64,
    problems: Vec<Problem>,
    exclusive: bool,
    _lock: File,
    _index_lock: File,
}

impl Unlocked<'_> {
    fn save_index(&mut self) -> Result<()> {
        let g = self.generation + 1;
        let bytes = seal_index(&self.keypair, g, &self.records)?;
        fsutil::write_atomic(&self.vault.dir.join("index"), &bytes)?;
        self.generation = g;
        Ok(())
    }

    fn problem(&mut self, id: FileId, name: Option<String>, what: impl Into<String>) {
        self.problems.push(Problem {
            id,
            name,
            what: what.into(),
        });
    }

    fn reconcile(&mut self) -> Result<()> {
        let v = self.vault;
        let scan = v.scan()?;
        let mut changed = false;
        let mut removed = false;
        let known: HashMap<FileId, usize> = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i))
            .collect();
        let mut probs = Vec::new();
        for rec in &self.records {
            match &rec.state {
                RecordState::Deleted if self.exclusive => {
                    for p in v.object_paths(&rec.id) {
                        if p.exists() {
                            fsutil::remove_if_exists(&p)?;
                            removed = true;
                        }
                    }
                }
                RecordState::Deleted => {}
                RecordState::Live {
                    env_digest, meta, ..
                } => {
                    let name = Some(meta.name.clone());
                    if !scan.env.contains_key(&rec.id) {
                        probs.push((
                            rec.id,
                            name,
                            "envelope missing (object dropped)".to_string(),
                        ));
                        continue;
                    }
                    match v.read_envelope(&rec.id) {
                        Ok(b) if &crate::crypto::blake3(&b) == env_digest => {}
                        Ok(_) => probs.push((
                            rec.id,
                            name.clone(),
                            "envelope altered, swapped or rolled back".into(),
                        )),
                        Err(e) => {
                            probs.push((rec.id, name.clone(), format!("envelope unreadable: {e}")))
                        }
                    }
                    if !scan.obj.contains_key(&rec.id) {
                        probs.push((rec.id, name, "data file missing".into()));
                    }
                }
            }
        }
        for (id, name, what) in probs {
            self.problem(id, name, what);
        }
        let mut seen = Agreements::default();
        for id in scan.env.keys() {
            if known.contains_key(id) {
                continue;
            }
            let p = v.envelope_path_shown(id);
            let opened = v.read_envelope(id).and_then(|b| {
                let env = EnvelopeFile::decode(&b).map_err(|e| format_error(&p, e))?;
                Ok((crate::crypto::blake3(&b), env))
            });
            let (digest, env) = match opened {
                Ok(x) => x,
                Err(e) => {
                    self.problem(*id, None, format!("envelope: {e}"));
                    continue;
                }
            };
            if &env.id != id {
                self.problem(*id, None, "envelope belongs to another object (swapped)");
                continue;
            }
            match open_envelope_with(&self.keypair, &env, &mut seen) {
                Ok(body) => {
                    if !scan.obj.contains_key(id) {
                        self.problem(*id, Some(body.meta.name.clone()), "data file missing");
                    }
                    self.records.push(IndexRecord {
                        id: *id,
                        state: RecordState::Live {
                            env_digest: digest,
                            ct_digest: env.ct_digest,
                            meta: body.meta,
                        },
                    });
                    changed = true;
                }
                Err(what) => self.problem(*id, None, what),
            }
        }
        if self.exclusive {
            for p in &scan.stray {
                fsutil::remove_if_exists(p)?;
                removed = true;
            }
        }
        for id in scan.obj.keys() {
            if self.exclusive && !scan.env.contains_key(id) && !known.contains_key(id) {
                // A store that died between its two renames.
                fsutil::remove_if_exists(&v.obj_path(id))?;
                removed = true;
            }
        }
        // Leftovers of an interrupted envelope rewrite (rekey).
        if self.exclusive {
            if let Ok(rd) = fs::read_dir(v.objects()) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().ends_with(".tmp") {
                        fsutil::remove_if_exists(&e.path())?;
                        removed = true;
                    }
                }
            }
            // Atomic replacements a kill interrupted (`index.tmp`,
            // `header.tmp`, `header.next.tmp`, `shares.tmp`, `keys.tmp`):
            // none took effect, and a `header.tmp` holds the vault secret
            // sealed under a passphrase that never did. Every writer of
            // these holds the exclusive lock, as this does.
            if let Ok(rd) = fs::read_dir(&v.dir) {
                let mut any = false;
                for e in rd.flatten() {
                    let is_file = e.file_type().is_ok_and(|t| t.is_file());
                    if is_file && e.file_name().to_string_lossy().ends_with(".tmp") {
                        fsutil::remove_if_exists(&e.path())?;
                        any = true;
                    }
                }
                if any {
                    fsutil::fsync_dir(&v.dir)?;
                }
            }
        }
        let staging = v.staging();
        if let Some(rd) = self
            .exclusive
            .then(|| fs::read_dir(&staging).ok())
            .flatten()
        {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // Interrupted imports, and receptions that died before their
                // first checkpoint (data without a `.part` cannot resume).
                let orphan = v.is_orphan_partial_data(&name);
                if name.starts_with("import-") || orphan || name.ends_with(".env") {
                    fsutil::remove_if_exists(&e.path())?;
                }
            }
            // Partials of the old format kept the file name in clear.
            v.drop_legacy_partials()?;
            // Deposit commits that died before their record's rename.
            v.clean_deposit_leftovers()?;
        }
        if removed {
            fsutil::fsync_dir(&v.objects())?;
        }
        if changed {
            // The records just adopted are rebuilt from their envelopes on
            // every open until an index holds them: saving them is an
            // optimisation, and a full disk must not stop `vault list` or
            // `export` from reading what is stored. Other errors still stop.
            match self.save_index() {
                Err(StoreError::DiskFull { .. }) => {
                    tracing::warn!(
                        "disk full: the vault index was not updated (read from envelopes)"
                    )
                }
                r => r?,
            }
        }
        Ok(())
    }

    /// Problems found while unlocking (dropped, altered or unreadable objects).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Live objects, sorted by name.
    pub fn entries(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .records
            .iter()
            .filter_map(|r| match &r.state {
                RecordState::Live { meta, .. } => Some(Entry {
                    id: r.id,
                    meta: meta.clone(),
                }),
                RecordState::Deleted => None,
            })
            .collect();
        v.sort_by(|a, b| a.meta.name.cmp(&b.meta.name).then(a.id.cmp(&b.id)));
        v
    }

    /// The version of each live object. Objects of one origin under one
    /// name are versions of one file (a changed file sent or imported
    /// again), numbered from 1, the oldest, by the time they were added
    /// (then by id); the highest is the newest. `(version, newest)` by id.
    pub fn versions(&self) -> HashMap<FileId, (u32, bool)> {
        let mut groups: HashMap<(Origin, String), Vec<(u64, FileId)>> = HashMap::new();
        for e in self.entries() {
            groups
                .entry((e.origin(), e.meta.name.clone()))
                .or_default()
                .push((e.meta.added_ms, e.id));
        }
        let mut out = HashMap::new();
        for mut g in groups.into_values() {
            g.sort_unstable();
            let n = g.len();
            for (i, (_, id)) in g.into_iter().enumerate() {
                out.insert(id, (i as u32 + 1, i + 1 == n));
            }
        }
        out
    }

    /// The newest version of each file, sorted by name.
    pub fn latest(&self) -> Vec<Entry> {
        let v = self.versions();
        self.entries()
            .into_iter()
            .filter(|e| v.get(&e.id).is_some_and(|(_, newest)| *newest))
            .collect()
    }

    /// The versions beyond the newest `keep` of each file (what `vault
    /// prune --keep KEEP` removes), sorted by name. `keep` 0 is taken as 1:
    /// the newest version of a file is never pruned.
    pub fn older_versions(&self, keep: u32) -> Vec<Entry> {
        let v = self.versions();
        let mut count: HashMap<(Origin, &str), u32> = HashMap::new();
        let entries = self.entries();
        for e in &entries {
            *count.entry((e.origin(), e.meta.name.as_str())).or_default() += 1;
        }
        entries
            .iter()
            .filter(|e| {
                let total = count[&(e.origin(), e.meta.name.as_str())];
                // No overflow: a huge `keep` keeps everything (a sum
                // would wrap and remove every version).
                v.get(&e.id)
                    .is_some_and(|(n, _)| *n <= total.saturating_sub(keep.max(1)))
            })
            .cloned()
            .collect()
    }

    /// Finds one object by full id, unique id prefix (≥ 8 hex digits) or exact name.
    pub fn resolve(&self, query: &str) -> Result<Entry> {
        self.resolve_from(query, None)
    }

    /// As [`Self::resolve`], among the objects of one origin when `from` is
    /// given. A name matching objects of several origins (or several
    /// objects of one) is ambiguous: the candidates are listed with their
    /// origins, never picked.
    pub fn resolve_from(&self, query: &str, from: Option<Origin>) -> Result<Entry> {
        let entries: Vec<Entry> = self
            .entries()
            .into_iter()
            .filter(|e| from.is_none_or(|o| e.origin() == o))
            .collect();
        let q = query.to_ascii_lowercase();
        let by_name: Vec<&Entry> = entries.iter().filter(|e| e.meta.name == query).collect();
        let by_id: Vec<&Entry> = if q.len() >= 8 && q.chars().all(|c| c.is_ascii_hexdigit()) {
            entries
                .iter()
                .filter(|e| id_hex(&e.id).starts_with(&q))
                .collect()
        } else {
            Vec::new()
        };
        // A name names the newest version of a file (one per origin: the
        // same name from two origins stays ambiguous); an older version is
        // named by its id.
        let by_name: Vec<&Entry> = {
            let v = self.versions();
            by_name
                .into_iter()
                .filter(|e| v.get(&e.id).is_some_and(|(_, newest)| *newest))
                .collect()
        };
        let hits = if by_name.is_empty() { by_id } else { by_name };
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::NotFound {
                query: match from {
                    Some(o) => format!("{query} (from {o})"),
                    None => query.to_owned(),
                },
            }),
            many => Err(StoreError::Ambiguous {
                query: query.to_owned(),
                candidates: many
                    .iter()
                    .map(|e| format!("  {}  {:<19}  {}", id_hex(&e.id), e.origin(), e.meta.name))
                    .collect(),
            }),
        }
    }

    /// Every object under the stored folder `folder` (names starting with
    /// `folder/`), of one origin: `from`, or the only one there is. A folder
    /// that mixes origins without `from` is refused
    /// ([`StoreError::MixedOrigins`]), so a sender cannot slip files into
    /// the owner's folders.
    pub fn folder(&self, folder: &str, from: Option<Origin>) -> Result<Vec<Entry>> {
        let prefix = format!("{}/", folder.trim_end_matches('/'));
        // The newest version of each file: a folder never fails on its
        // own versions.
        let under: Vec<Entry> = self
            .latest()
            .into_iter()
            .filter(|e| e.meta.name.starts_with(&prefix))
            .collect();
        let origins: std::collections::BTreeSet<Origin> = under.iter().map(Entry::origin).collect();
        match from {
            Some(o) if origins.contains(&o) => {
                Ok(under.into_iter().filter(|e| e.origin() == o).collect())
            }
            Some(o) => Err(StoreError::NotFound {
                query: format!("{folder} (from {o})"),
            }),
            None if origins.len() > 1 => Err(StoreError::MixedOrigins {
                folder: folder.to_owned(),
                origins: origins.iter().map(Origin::to_string).collect(),
            }),
            None if under.is_empty() => Err(StoreError::NotFound {
                query: folder.to_owned(),
            }),
            None => Ok(under),
        }
    }

    /// The origin a user names: `local`, a full node id, or, among the
    /// senders of stored objects, a unique node id prefix (≥ 8 characters)
    /// or a fingerprint as listed.
    pub fn origin(&self, query: &str) -> Result<Origin> {
        let q = query.trim().to_ascii_lowercase();
        if q == "local" {
            return Ok(Origin::Local);
        }
        if let Some(pk) = PublicKey::parse_id(&q) {
            return Ok(Origin::Peer(pk));
        }
        let senders: std::collections::BTreeSet<PublicKey> = self
            .entries()
            .iter()
            .filter_map(|e| e.meta.origin)
            .collect();
        let hits: Vec<&PublicKey> = senders
            .iter()
            .filter(|pk| pk.fingerprint() == q || (q.len() >= 8 && pk.to_id().starts_with(&q)))
            .collect();
        match hits.as_slice() {
            [one] => Ok(Origin::Peer(**one)),
            [] => Err(StoreError::UnknownOrigin {
                query: query.to_owned(),
            }),
            many => Err(StoreError::Invalid(format!(
                "{query:?} matches several senders; give more of the node id:\n{}",
                many.iter()
                    .map(|pk| format!("  {}  {}", pk.fingerprint(), pk.to_id()))
                    .collect::<Vec<_>>()
                    .join("\n")
            ))),
        }
    }

    fn live(&self, id: &FileId) -> Result<(&[u8; 32], &[u8; 32], &Metadata)> {
        self.records
            .iter()
            .find_map(|r| match &r.state {
                RecordState::Live {
                    env_digest,
                    ct_digest,
                    meta,
                } if &r.id == id => Some((env_digest, ct_digest, meta)),
                _ => None,
            })
            .ok_or_else(|| StoreError::NotFound { query: id_hex(id) })
    }

    fn damaged(&self, id: &FileId, name: &str, what: impl Into<String>) -> StoreError {
        StoreError::Damaged {
            problems: vec![Problem {
                id: *id,
                name: Some(name.to_owned()),
                what: what.into(),
            }
            .to_string()],
        }
    }

    /// Reads an object's envelope and opens it, checked against the
    /// authenticated index: envelope digest, id, ciphertext digest and
    /// metadata must all be what the index recorded.
    fn open_indexed(&self, id: &FileId) -> Result<(EnvelopeBody, &Metadata)> {
        let (env_digest, ct, meta) = self.live(id)?;
        let name = meta.name.as_str();
        let bytes = self
            .vault
            .read_envelope(id)
            .map_err(|e| self.damaged(id, name, format!("envelope: {e}")))?;
        if &crate::crypto::blake3(&bytes) != env_digest {
            return Err(self.damaged(id, name, "envelope altered, swapped or rolled back"));
        }
        let env =
            EnvelopeFile::decode(&bytes).map_err(|e| self.damaged(id, name, e.to_string()))?;
        let body = open_envelope(&self.keypair, &env).map_err(|e| self.damaged(id, name, e))?;
        if &body.meta != meta || &env.ct_digest != ct || &env.id != id {
            return Err(self.damaged(id, name, "envelope does not match the index"));
        }
        Ok((body, meta))
    }

    /// An object's file key and metadata (for sealing a share to a peer),
    /// from its envelope checked against the index as for a decryption.
    pub fn envelope_body(&self, id: &FileId) -> Result<EnvelopeBody> {
        self.open_indexed(id).map(|(body, _)| body)
    }

    /// Decrypts an object into `out`, checking every chunk and the final
    /// BLAKE3; returns the metadata.
    pub fn decrypt_to(
        &self,
        id: &FileId,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Metadata> {
        let (body, meta) = self.open_indexed(id)?;
        let name = meta.name.as_str();
        let key = FileKey::from_secret(body.file_key.clone());
        let (f, _, len) = self
            .vault
            .open_data(id)
            .map_err(|e| self.damaged(id, name, format!("data file: {e}")))?;
        let mut hb = [0u8; ObjectHeader::LEN as usize];
        f.read_exact_at(&mut hb, 0)
            .map_err(|_| self.damaged(id, name, "data file truncated"))?;
        let h = ObjectHeader::decode(&hb).map_err(|e| self.damaged(id, name, e.to_string()))?;
        let n = meta.chunk_count();
        if h.id != *id || h.chunk_size != meta.chunk_size || h.chunk_count != n {
            return Err(self.damaged(id, name, "data file header does not match"));
        }
        if len != ObjectHeader::LEN + meta.size + n * CHUNK_OVERHEAD as u64 {
            return Err(self.damaged(id, name, "data file has the wrong length"));
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; meta.chunk_size as usize + CHUNK_OVERHEAD];
        let mut done = 0u64;
        for i in 0..n {
            let sl = chunk_plain_len(meta.size, meta.chunk_size, i) + CHUNK_OVERHEAD;
            f.read_exact_at(&mut buf[..sl], h.chunk_offset(i))
                .map_err(|e| self.damaged(id, name, format!("data file: {e}")))?;
            let pt = key
                .open_chunk_in_place(id, i, i + 1 == n, &mut buf[..sl])
                .map_err(|_| self.damaged(id, name, format!("chunk {i} fails authentication")))?;
            hasher.update(pt);
            out.write_all(pt)
                .map_err(|e| StoreError::io("cannot write", "output", e))?;
            done += pt.len() as u64;
            progress(done);
        }
        if hasher.finalize().as_bytes() != &meta.blake3 {
            return Err(self.damaged(id, name, "BLAKE3 mismatch"));
        }
        Ok(meta.clone())
    }

    /// Exports an object to `dest` (a file path, as the user named it):
    /// see [`Self::export_at`].
    pub fn export(
        &self,
        id: &FileId,
        dest: &Path,
        force: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Metadata> {
        let Some(name) = dest.file_name() else {
            return Err(StoreError::Invalid(format!(
                "{} does not name a file: give a destination file name",
                super::error::shown(dest)
            )));
        };
        let dir = fsutil::Dir::open(&fsutil::parent_of(dest))?;
        self.export_at(id, &dir, name, force, progress)
    }

    /// Exports an object of a stored folder below `root`, at `rel` (its name
    /// relative to the folder, `/`-separated). Every directory on the way
    /// is created or entered relative to its parent's descriptor and never
    /// through a symbolic link ([`StoreError::DestinationLink`]); only
    /// `root` itself is the user's to choose, links included.
    pub fn export_under(
        &self,
        id: &FileId,
        root: &fsutil::Dir,
        rel: &str,
        force: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Metadata> {
        let mut parts: Vec<&str> = rel.split('/').collect();
        let Some(last) = parts.pop() else {
            return Err(StoreError::Invalid(format!("{rel:?} is not a name")));
        };
        let mut dir: Option<fsutil::Dir> = None;
        for p in parts {
            let next = dir.as_ref().unwrap_or(root).child_dir(p.as_ref())?;
            dir = Some(next);
        }
        self.export_at(
            id,
            dir.as_ref().unwrap_or(root),
            last.as_ref(),
            force,
            progress,
        )
    }

    /// Exports an object as `name` in `dir` (`docs/VAULT.md`, *Export*):
    /// decrypted into an unnamed file there (or a named temporary one where
    /// the file system cannot), BLAKE3 checked, mode set (the stored mode
    /// within 0777, less the umask), fsynced, then given its name: a link
    /// (never replacing anything) or, with `force`, a rename over it;
    /// directory fsynced. An interruption at any point leaves no file.
    pub fn export_at(
        &self,
        id: &FileId,
        dir: &fsutil::Dir,
        name: &std::ffi::OsStr,
        force: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Metadata> {
        let (_, _, meta) = self.live(id)?;
        if meta.kind == Kind::Dir {
            dir.child_dir(name)?;
            return Ok(meta.clone());
        }
        publish_plain(dir, name, force, &mut |w| self.decrypt_to(id, w, progress))
    }

    /// Removes an object: tombstone in the index first (the commit), then
    /// the files, then its shares (each withdrawal logged).
    pub fn remove(&mut self, id: &FileId) -> Result<()> {
        self.remove_all(std::slice::from_ref(id))
    }

    /// Removes objects (`vault rm` of a folder) with one commit: every
    /// tombstone is in the index before any file goes, so a crash leaves
    /// all of them listed or none; then their files, then their shares.
    /// An unknown id refuses the whole call before anything changes.
    pub fn remove_all(&mut self, ids: &[FileId]) -> Result<()> {
        let known: HashSet<FileId> = self.records.iter().map(|r| r.id).collect();
        if let Some(id) = ids.iter().find(|id| !known.contains(*id)) {
            return Err(StoreError::NotFound { query: id_hex(id) });
        }
        let want: HashSet<&FileId> = ids.iter().collect();
        let mut names = Vec::with_capacity(ids.len());
        for rec in self.records.iter_mut().filter(|r| want.contains(&r.id)) {
            names.push((
                rec.id,
                match &rec.state {
                    RecordState::Live { meta, .. } => meta.name.clone(),
                    RecordState::Deleted => id_hex(&rec.id),
                },
            ));
            rec.state = RecordState::Deleted;
        }
        // The tombstones are the commit: from here on the objects are gone,
        // and what cannot be removed now is a leftover the next unlock
        // removes (a warning, not a failure that would say it is kept).
        self.save_index()?;
        let mut removed = true;
        for (id, name) in &names {
            let files = self.vault.object_paths(id);
            if let Err(e) = files.iter().try_for_each(|p| fsutil::remove_if_exists(p)) {
                removed = false;
                tracing::warn!(
                    "{e}: {name} is removed from the vault; its files go at the next unlock"
                );
            }
        }
        if removed {
            fsutil::sync_dir_after_commit(&self.vault.objects());
        }
        let mut shares = Shares::load(&self.vault.dir)?;
        let recs: Vec<LogRecord> = names
            .iter()
            .flat_map(|(id, name)| {
                shares
                    .records()
                    .iter()
                    .filter(|r| &r.id == id)
                    .map(|r| {
                        LogRecord::now(
                            Some(r.peer),
                            LogAction::Unshare,
                            name,
                            &format!("object {} removed from the vault", id_hex(id)),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if recs.is_empty() {
            return Ok(());
        }
        for (id, _) in &names {
            shares.remove_object(id);
        }
        shares.save()?;
        if let Err(e) = self.vault.log_all(&recs) {
            // The objects and their shares are gone; only the record is missing.
            tracing::warn!("cannot write the access log: {e}");
        }
        Ok(())
    }

    /// Opens a partial's label (`vault partials`) with the vault key or one
    /// it replaced; `None` for a partial without one, or one no key opens.
    pub fn partial_label(
        &self,
        p: &super::partial::PartialInfo,
    ) -> Option<super::partial::PartialLabel> {
        if p.label.is_empty() {
            return None;
        }
        let keys: Vec<&Keypair> = std::iter::once(&self.keypair)
            .chain(&self.old_keys)
            .collect();
        super::partial::PartialLabel::open(&p.label, &p.slot, &keys)
    }

    /// Reads the access log (`log.1`, then `log`): the records this vault
    /// key opens, and how many frames it could not (torn by a crash,
    /// altered, or sealed to a vault key replaced by `vault rekey`).
    pub fn read_log(&self) -> Result<(Vec<LogRecord>, usize)> {
        // Records sealed before a rekey open with the older keys.
        let keys: Vec<&Keypair> = std::iter::once(&self.keypair)
            .chain(&self.old_keys)
            .collect();
        log::read(&self.vault.dir, &keys)
    }

    /// Full verification: reconciliation problems, ciphertext digests, and a
    /// decryption of every object with its BLAKE3 checked; deposits (which
    /// no key here opens) by their ciphertext digests.
    pub fn verify_full(&self, progress: &mut dyn FnMut(usize, usize)) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            problems: self.problems.clone(),
            ..Default::default()
        };
        let entries = self.entries();
        for (n, e) in entries.iter().enumerate() {
            progress(n, entries.len());
            report.checked += 1;
            if report.problems.iter().any(|p| p.id == e.id) {
                continue;
            }
            let res = self.live(&e.id).and_then(|(_, ct, _)| {
                self.vault
                    .open_data(&e.id)
                    .map_err(|err| format!("data file unreadable: {err}"))
                    .and_then(|(f, _, len)| check_ciphertext_of(f, len, &e.id, ct, None))
                    .map_err(|w| self.damaged(&e.id, &e.meta.name, w))
            });
            let res = res.and_then(|_| self.decrypt_to(&e.id, &mut std::io::sink(), &mut |_| {}));
            if let Err(err) = res {
                let what = match err {
                    StoreError::Damaged { problems } => problems.join("; "),
                    other => other.to_string(),
                };
                report.problems.push(Problem {
                    id: e.id,
                    name: Some(e.meta.name.clone()),
                    what,
                });
            }
        }
        self.vault.verify_deposits(&mut report)?;
        Ok(report)
    }

    /// Changes the passphrase: the vault secret key sealed under a new KEK
    /// (fresh salt), header replaced atomically.
    pub fn change_passphrase(&mut self, new: &[u8]) -> Result<()> {
        if new.is_empty() {
            return Err(StoreError::Invalid(
                "the passphrase must not be empty".into(),
            ));
        }
        let params = KdfParams::DEFAULT;
        let salt = random()?;
        let kek = derive_kek(new, &salt, params)?;
        let h = seal_secret(&kek, params, salt, &self.keypair)?;
        fsutil::write_atomic(&self.vault.dir.join("header"), &h.encode())?;
        self.kek = kek;
        Ok(())
    }

    /// Replaces the vault key pair and rewraps every file key, crash-safely.
    /// Returns the number of envelopes rewrapped.
    pub fn rekey(&mut self) -> Result<usize> {
        // No store may run while envelopes are rewrapped.
        match self._lock.try_lock() {
            Ok(()) => self.exclusive = true,
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Busy),
            Err(fs::TryLockError::Error(e)) => {
                return Err(StoreError::io(
                    "cannot lock",
                    self.vault.dir.join("lock"),
                    e,
                ))
            }
        }
        // Refused before anything is written: a rekey must be able to keep
        // the key it replaces.
        if !keychain::has_room(&self.vault.dir)? {
            return Err(StoreError::Invalid(format!(
                "vault/keys already holds {} old vault keys, the most a vault keeps: rekey refused",
                super::format::MAX_OLD_KEYS
            )));
        }
        let cur = read_header(&self.vault.dir.join("header"))?;
        let kp = Keypair::generate()?;
        let next = seal_secret(&self.kek, cur.params, cur.salt, &kp)?;
        fsutil::write_atomic(&self.vault.dir.join("header.next"), &next.encode())?;
        crash_point("header.next")?;
        self.finish_rekey(next, kp)
    }

    /// Steps (2) to (6) of a rekey (`docs/VAULT.md`, *Rekey*); also the
    /// resumption of one that was interrupted, so every step is idempotent.
    fn finish_rekey(&mut self, next: HeaderFile, new: Keypair) -> Result<usize> {
        let v = self.vault;
        let old = self.keypair.clone();
        // The old key stays available, sealed to the new one, before
        // anything is sealed to the new key or names it as the current one.
        keychain::record(&v.dir, &old, &new)?;
        crash_point("keys")?;
        // Storing follows the rotation only to keys the pin allows: name
        // the new key there before the header does.
        v.write_pin(old.public(), Some(new.public()))?;
        crash_point("pin next")?;
        let scan = v.scan()?;
        let mut count = 0;
        let sealer = EnvelopeSealer::new(&new.public())?;
        let (mut seen_new, mut seen_old) = (Agreements::default(), Agreements::default());
        for id in scan.env.keys() {
            // A damaged envelope (or one-file object) is left as it is, for
            // reconcile to report: one bad object must not stop the rekey,
            // which every unlock resumes. Only an I/O error stops it.
            let bytes = match v.read_envelope(id) {
                Ok(b) => b,
                Err(e @ (StoreError::Io { .. } | StoreError::DiskFull { .. })) => return Err(e),
                Err(_) => continue,
            };
            let Ok(env) = EnvelopeFile::decode(&bytes) else {
                continue; // reported by reconcile
            };
            let rec = self.records.iter_mut().find(|r| &r.id == id);
            if env.recipient == new.public() {
                // Rewrapped before a crash: accept it only if it says exactly
                // what the authenticated index says.
                if let Some(IndexRecord {
                    state:
                        RecordState::Live {
                            env_digest,
                            ct_digest,
                            meta,
                        },
                    ..
                }) = rec
                {
                    if let Ok(body) = open_envelope_with(&new, &env, &mut seen_new) {
                        if &body.meta == meta && &env.ct_digest == ct_digest {
                            *env_digest = crate::crypto::blake3(&bytes);
                        }
                    }
                }
                continue;
            }
            if env.recipient != old.public() || env.id != *id {
                continue;
            }
            if let Some(IndexRecord {
                state: RecordState::Live { env_digest, .. },
                ..
            }) = &rec
            {
                if env_digest != &crate::crypto::blake3(&bytes) {
                    continue; // altered: left for reconcile to report
                }
            }
            let Ok(body) = open_envelope_with(&old, &env, &mut seen_old) else {
                continue;
            };
            let fresh = sealer.seal(*id, env.ct_digest, &body.file_key, &body.meta)?;
            v.replace_envelope(id, &fresh)?;
            if let Some(IndexRecord {
                state: RecordState::Live { env_digest, .. },
                ..
            }) = rec
            {
                *env_digest = crate::crypto::blake3(&fresh);
            }
            count += 1;
            crash_point("rewrap")?;
        }
        self.keypair = new;
        self.old_keys.insert(0, old);
        self.save_index()?;
        crash_point("index")?;
        let _ = next;
        fsutil::rename(&v.dir.join("header.next"), &v.dir.join("header"))?;
        fsutil::fsync_dir(&v.dir)?;
        crash_point("header")?;
        v.write_pin(self.keypair.public(), None)?;
        Ok(count)
    }

    /// Every public key of this vault that it can still open envelopes
    /// for: the current one first, then the older ones, newest first.
    pub fn known_public_keys(&self) -> Vec<PublicKey> {
        std::iter::once(&self.keypair)
            .chain(&self.old_keys)
            .map(Keypair::public)
            .collect()
    }

    /// Opens an envelope sealed to this vault's current key or to any older
    /// one (`vault/keys`): for instance the envelope of a deposit this node
    /// left elsewhere before a rekey.
    pub fn open_envelope_any(&self, env: &EnvelopeFile) -> Result<EnvelopeBody> {
        let Some(kp) = std::iter::once(&self.keypair)
            .chain(&self.old_keys)
            .find(|k| k.public() == env.recipient)
        else {
            return Err(StoreError::ForeignEnvelope {
                id: id_hex(&env.id),
                recipient: env.recipient.fingerprint(),
            });
        };
        open_envelope(kp, env)
            .map_err(|what| StoreError::corrupt(format!("envelope {}", id_hex(&env.id)), what))
    }

    /// As [`Self::open_envelope_any`], from an envelope file's bytes.
    pub fn open_envelope_bytes(&self, bytes: &[u8]) -> Result<EnvelopeBody> {
        let env = EnvelopeFile::decode(bytes)
            .map_err(|e| StoreError::corrupt("envelope", e.to_string()))?;
        self.open_envelope_any(&env)
    }

    /// The vault public key (after a rekey, the new one).
    pub fn public_key(&self) -> PublicKey {
        self.keypair.public()
    }
}
