//! Encoding and decoding of every on-disk structure in `docs/VAULT.md`:
//! identity, vault header, object data header, envelope (and its sealed
//! body), index (and its sealed body), the old vault keys (`vault/keys`),
//! deposit records (`deposits/<id>.dep`), plus the rules for stored names.
//!
//! Decoders check, in this order: magic, version, checksum, then fields with
//! their bounds. They never panic and never allocate more than their input.

use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::crypto::{
    chunk::{chunk_count, FileId, MAX_CHUNK_COUNT, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE},
    kdf::KdfParams,
    keys::{PublicKey, Secret32},
};

/// The format version this build writes and reads.
pub const VERSION: u16 = 1;

/// Magic of the identity file.
pub const MAGIC_IDENTITY: &[u8; 8] = b"P2PFSID\0";
/// Magic of the vault header.
pub const MAGIC_HEADER: &[u8; 8] = b"P2PFSVH\0";
/// Magic of an object data file.
pub const MAGIC_OBJECT: &[u8; 8] = b"P2PFSOB\0";
/// Magic of an envelope.
pub const MAGIC_ENVELOPE: &[u8; 8] = b"P2PFSEN\0";
/// Format version of the envelopes written now (`docs/VAULT.md`,
/// *Envelope*); version 1 is still read.
pub const ENVELOPE_VERSION: u16 = 2;
/// Magic of the index.
pub const MAGIC_INDEX: &[u8; 8] = b"P2PFSIX\0";
/// Magic of the old vault keys file.
pub const MAGIC_KEYS: &[u8; 8] = b"P2PFSVK\0";
/// Magic of a deposit record.
pub const MAGIC_DEPOSIT: &[u8; 8] = b"P2PFSDP\0";

/// Largest envelope body.
pub const MAX_ENVELOPE_BODY: u32 = 8192;
/// Largest index body.
pub const MAX_INDEX_BODY: u32 = 256 << 20;
/// Largest stored name in bytes.
pub const MAX_NAME: usize = 4096;
/// Largest name component in bytes.
pub const MAX_COMPONENT: usize = 255;
/// Largest node name in bytes.
pub const MAX_NODE_NAME: usize = 64;
/// Most old vault keys kept in `vault/keys` (one per rekey).
pub const MAX_OLD_KEYS: usize = 1024;

const CHECKSUM_LEN: usize = 32;

/// Why a structure could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The magic bytes are not the expected ones.
    #[error("not a p2pfs file of this kind (bad magic)")]
    BadMagic,
    /// A version this build does not know.
    #[error("unsupported format version {0}")]
    Version(u16),
    /// The integrity checksum does not match.
    #[error("checksum mismatch (damaged or altered)")]
    Checksum,
    /// A field is truncated or malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

fn start(r: &mut Reader<'_>, magic: &[u8; 8]) -> Result<(), FormatError> {
    start_v(r, magic, VERSION)
}

fn start_v(r: &mut Reader<'_>, magic: &[u8; 8], version: u16) -> Result<(), FormatError> {
    if r.bytes(8, "magic").map_err(|_| FormatError::BadMagic)? != magic {
        return Err(FormatError::BadMagic);
    }
    match r.u16("version")? {
        v if v == version => Ok(()),
        v => Err(FormatError::Version(v)),
    }
}

/// Checks magic and version, then the trailing checksum; returns the bytes it covers.
pub(crate) fn checked<'a>(bytes: &'a [u8], magic: &[u8; 8]) -> Result<&'a [u8], FormatError> {
    checked_v(bytes, magic, VERSION)
}

/// As [`checked`], for a structure with its own format version.
pub(crate) fn checked_v<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    version: u16,
) -> Result<&'a [u8], FormatError> {
    start_v(&mut Reader::new(bytes), magic, version)?;
    if bytes.len() < 10 + CHECKSUM_LEN {
        return Err(DecodeError::Truncated("file").into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if blake3::hash(body).as_bytes() != sum {
        return Err(FormatError::Checksum);
    }
    Ok(body)
}

/// Appends the BLAKE3 checksum of everything written.
pub(crate) fn with_checksum(w: Writer) -> Vec<u8> {
    let mut v = w.into_vec();
    let sum = blake3::hash(&v);
    v.extend_from_slice(sum.as_bytes());
    v
}

/// A writer that starts with `magic` and the format version.
pub(crate) fn begin(magic: &[u8; 8]) -> Writer {
    begin_v(magic, VERSION)
}

/// As [`begin`], for a structure with its own format version.
pub(crate) fn begin_v(magic: &[u8; 8], version: u16) -> Writer {
    let mut w = Writer::new();
    w.bytes(magic).u16(version);
    w
}

/// Reads a `u16`-length-prefixed UTF-8 name and checks it with `validate`.
pub(crate) fn read_name(
    r: &mut Reader<'_>,
    what: &'static str,
    validate: fn(&str) -> Result<(), &'static str>,
) -> Result<String, FormatError> {
    let n = r.u16("name length")? as usize;
    let name = std::str::from_utf8(r.bytes(n, what)?).map_err(|_| DecodeError::Invalid(what))?;
    validate(name).map_err(|_| DecodeError::Invalid(what))?;
    Ok(name.to_owned())
}

/// Reads a plaintext size and chunk size, bounded as in `docs/VAULT.md`.
pub(crate) fn read_size(r: &mut Reader<'_>) -> Result<(u64, u32), FormatError> {
    let size = r.u64("size")?;
    let chunk_size = r.u32("chunk size")?;
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        || chunk_count(size, chunk_size) > MAX_CHUNK_COUNT
    {
        return Err(DecodeError::Invalid("size or chunk size").into());
    }
    Ok((size, chunk_size))
}

/// Checks a stored (relative, `/`-separated) name; returns why it is refused.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_NAME {
        return Err("name too long");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    if name.chars().any(crate::text::is_forbidden_in_name) {
        return Err("control character or invisible (bidi, zero-width) character in name");
    }
    for comp in name.split('/') {
        match comp {
            "" => return Err("empty path component"),
            "." | ".." => return Err("`.` or `..` in path"),
            c if c.len() > MAX_COMPONENT => return Err("path component too long"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a node name.
pub fn validate_node_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NODE_NAME {
        return Err("node name must be 1 to 64 bytes");
    }
    if name.chars().any(crate::text::is_forbidden_in_name) {
        return Err("control character or invisible (bidi, zero-width) character in node name");
    }
    Ok(())
}

// ---------------------------------------------------------------- identity

/// The identity file: the node's static secret and its name.
pub struct IdentityFile {
    /// X25519 static secret.
    pub secret: Secret32,
    /// Human-readable node name.
    pub name: String,
}

impl IdentityFile {
    /// Encodes the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = begin(MAGIC_IDENTITY);
        w.bytes(self.secret.expose())
            .u16(self.name.len() as u16)
            .bytes(self.name.as_bytes());
        with_checksum(w)
    }

    /// Decodes the file.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let body = checked(bytes, MAGIC_IDENTITY)?;
        let mut r = Reader::new(&body[10..]);
        let secret = Secret32::from_bytes(r.array("secret")?);
        let name = read_name(&mut r, "node name", validate_node_name)?;
        r.finish()?;
        Ok(Self { secret, name })
    }
}

// ---------------------------------------------------------------- header

/// The vault header: KDF parameters and the vault key pair, secret half sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderFile {
    /// Argon2id parameters.
    pub params: KdfParams,
    /// Argon2id salt.
    pub salt: [u8; 16],
    /// Vault public key.
    pub vault_pk: PublicKey,
    /// Nonce of the sealed secret.
    pub nonce: [u8; 12],
    /// AES-256-GCM(KEK, vault secret key).
    pub sealed_sk: [u8; 48],
}

impl HeaderFile {
    /// The associated data of the sealed secret: every byte before the nonce.
    pub fn ad(&self) -> Vec<u8> {
        let mut w = begin(MAGIC_HEADER);
        w.u8(1)
            .u32(self.params.m_kib)
            .u32(self.params.t)
            .u32(self.params.p)
            .bytes(&self.salt)
            .bytes(self.vault_pk.as_bytes());
        w.into_vec()
    }

    /// Encodes the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.ad())
            .bytes(&self.nonce)
            .bytes(&self.sealed_sk);
        with_checksum(w)
    }

    /// Decodes the file, bounding the KDF parameters.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let body = checked(bytes, MAGIC_HEADER)?;
        let mut r = Reader::new(&body[10..]);
        if r.u8("kdf")? != 1 {
            return Err(DecodeError::Invalid("key-derivation function").into());
        }
        let params = KdfParams {
            m_kib: r.u32("m")?,
            t: r.u32("t")?,
            p: r.u32("p")?,
        };
        params
            .validate()
            .map_err(|_| DecodeError::Invalid("key-derivation parameters"))?;
        let h = HeaderFile {
            params,
            salt: r.array("salt")?,
            vault_pk: PublicKey(r.array("vault key")?),
            nonce: r.array("nonce")?,
            sealed_sk: r.array("sealed key")?,
        };
        r.finish()?;
        Ok(h)
    }
}

// ---------------------------------------------------------------- object data

/// The fixed header at the start of an object data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    /// Object (= file) id.
    pub id: FileId,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunk_count: u64,
}

impl ObjectHeader {
    /// Encoded length; chunk 0 starts here.
    pub const LEN: u64 = 40;

    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = begin(MAGIC_OBJECT);
        w.u16(0)
            .bytes(&self.id)
            .u32(self.chunk_size)
            .u64(self.chunk_count);
        w.into_vec()
    }

    /// Decodes the header from the first [`Self::LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        start(&mut r, MAGIC_OBJECT)?;
        if r.u16("flags")? != 0 {
            return Err(DecodeError::Invalid("object flags").into());
        }
        let h = ObjectHeader {
            id: r.array("object id")?,
            chunk_size: r.u32("chunk size")?,
            chunk_count: r.u64("chunk count")?,
        };
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&h.chunk_size) {
            return Err(DecodeError::Invalid("chunk size").into());
        }
        if h.chunk_count == 0 || h.chunk_count > MAX_CHUNK_COUNT {
            return Err(DecodeError::Invalid("chunk count").into());
        }
        Ok(h)
    }

    /// Offset of chunk `i` in the data file.
    pub fn chunk_offset(&self, i: u64) -> u64 {
        Self::LEN + i * (u64::from(self.chunk_size) + crate::crypto::chunk::CHUNK_OVERHEAD as u64)
    }
}

// ---------------------------------------------------------------- one-file object

/// The last bytes of a one-file object `objects/<id>.one`.
pub const MAGIC_ONE: &[u8; 8] = b"P2PFSO1\0";

/// A one-file object's trailer: the envelope's length (u32) and [`MAGIC_ONE`].
pub const ONE_TRAILER_LEN: u64 = 12;

/// The largest envelope a one-file object may carry (as for `<id>.env`).
pub const MAX_ENVELOPE_FILE: u64 = 64 * 1024;

const CHUNK_OVERHEAD_U64: u64 = crate::crypto::chunk::CHUNK_OVERHEAD as u64;

/// The trailer that follows an envelope of `env_len` bytes.
pub fn one_trailer(env_len: usize) -> [u8; ONE_TRAILER_LEN as usize] {
    let mut t = [0u8; ONE_TRAILER_LEN as usize];
    t[..4].copy_from_slice(&(env_len as u32).to_be_bytes());
    t[4..].copy_from_slice(MAGIC_ONE);
    t
}

/// Splits a one-file object of `file_len` bytes ending in `trailer` into
/// (data length, envelope length): the data file's bytes come first, the
/// envelope's next, then the trailer. Any length that does not fit is
/// refused, and so is a data part longer than one chunk of the largest
/// chunk size (a one-file object holds one chunk): no reader allocates
/// more than that for it.
pub fn split_one(file_len: u64, trailer: &[u8]) -> Result<(u64, u64), FormatError> {
    if trailer.len() as u64 != ONE_TRAILER_LEN || &trailer[4..] != MAGIC_ONE {
        return Err(FormatError::BadMagic);
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&trailer[..4]);
    let env_len = u64::from(u32::from_be_bytes(n));
    if env_len == 0 || env_len > MAX_ENVELOPE_FILE {
        return Err(DecodeError::Invalid("envelope length").into());
    }
    let most = ObjectHeader::LEN + u64::from(MAX_CHUNK_SIZE) + CHUNK_OVERHEAD_U64;
    match file_len.checked_sub(env_len + ONE_TRAILER_LEN) {
        Some(data) if (ObjectHeader::LEN..=most).contains(&data) => Ok((data, env_len)),
        _ => Err(DecodeError::Invalid("one-file object length").into()),
    }
}

// ---------------------------------------------------------------- metadata

/// What an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// An (empty) directory kept as such.
    Dir,
}

/// The encrypted metadata of an object (envelope body and index record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// File or directory.
    pub kind: Kind,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// BLAKE3 of the plaintext.
    pub blake3: [u8; 32],
    /// When stored, unix milliseconds.
    pub added_ms: u64,
    /// Source modification time, unix seconds.
    pub mtime: i64,
    /// Source permission bits.
    pub mode: u32,
    /// The peer it came from, if received.
    pub origin: Option<PublicKey>,
    /// Relative `/`-separated name.
    pub name: String,
}

impl Metadata {
    /// Number of chunks of this object.
    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.size, self.chunk_size)
    }

    fn encode_into(&self, w: &mut Writer) {
        w.u8(match self.kind {
            Kind::File => 0,
            Kind::Dir => 1,
        })
        .u64(self.size)
        .u32(self.chunk_size)
        .bytes(&self.blake3)
        .u64(self.added_ms)
        .i64(self.mtime)
        .u32(self.mode & 0o777);
        match &self.origin {
            None => w.u8(0),
            Some(pk) => w.u8(1).bytes(pk.as_bytes()),
        };
        w.u16(self.name.len() as u16).bytes(self.name.as_bytes());
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        let kind = match r.u8("kind")? {
            0 => Kind::File,
            1 => Kind::Dir,
            _ => return Err(DecodeError::Invalid("kind").into()),
        };
        let (size, chunk_size) = read_size(r)?;
        let blake3 = r.array("blake3")?;
        let added_ms = r.u64("added")?;
        let mtime = r.i64("mtime")?;
        let mode = r.u32("mode")?;
        if mode & !0o777 != 0 {
            return Err(DecodeError::Invalid("mode").into());
        }
        let origin = match r.u8("origin")? {
            0 => None,
            1 => Some(PublicKey(r.array("origin")?)),
            _ => return Err(DecodeError::Invalid("origin").into()),
        };
        let name = read_name(r, "name", validate_name)?;
        Ok(Metadata {
            kind,
            size,
            chunk_size,
            blake3,
            added_ms,
            mtime,
            mode,
            origin,
            name,
        })
    }
}

// ---------------------------------------------------------------- envelope

/// The plaintext of an envelope: the file key and the metadata.
pub struct EnvelopeBody {
    /// AES-256-GCM key of the chunks.
    pub file_key: Secret32,
    /// Everything else about the object.
    pub meta: Metadata,
}

impl EnvelopeBody {
    /// Encodes the body (to be sealed).
    pub fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.bytes(self.file_key.expose());
        self.meta.encode_into(&mut w);
        zeroize::Zeroizing::new(w.into_vec())
    }

    /// Decodes an opened body.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let file_key = Secret32::from_bytes(r.array("file key")?);
        let meta = Metadata::decode_from(&mut r)?;
        r.finish()?;
        Ok(Self { file_key, meta })
    }
}

/// An envelope file: the object's key and metadata sealed to the vault key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeFile {
    /// Format version: 1 (one ephemeral key per envelope, read only) or
    /// [`ENVELOPE_VERSION`] (the wrap key bound to the object id).
    pub version: u16,
    /// Object id.
    pub id: FileId,
    /// The vault public key it is sealed to.
    pub recipient: PublicKey,
    /// Ephemeral public key of the sealing.
    pub ephemeral: PublicKey,
    /// Ciphertext digest of the data file.
    pub ct_digest: [u8; 32],
    /// The sealed body (ciphertext || tag).
    pub sealed_body: Vec<u8>,
}

impl EnvelopeFile {
    /// Associated data of the sealed body: every byte before it.
    pub fn ad(&self) -> Vec<u8> {
        let mut w = begin_v(MAGIC_ENVELOPE, self.version);
        w.bytes(&self.id)
            .bytes(self.recipient.as_bytes())
            .bytes(self.ephemeral.as_bytes())
            .bytes(&self.ct_digest)
            .u32(self.sealed_body.len().saturating_sub(16) as u32);
        w.into_vec()
    }

    /// Encodes the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.ad()).bytes(&self.sealed_body);
        with_checksum(w)
    }

    /// Decodes the file.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let (version, body) = match checked_v(bytes, MAGIC_ENVELOPE, ENVELOPE_VERSION) {
            Ok(body) => (ENVELOPE_VERSION, body),
            Err(FormatError::Version(1)) => (1, checked_v(bytes, MAGIC_ENVELOPE, 1)?),
            Err(e) => return Err(e),
        };
        let mut r = Reader::new(&body[10..]);
        let id = r.array("object id")?;
        let recipient = PublicKey(r.array("recipient")?);
        let ephemeral = PublicKey(r.array("ephemeral key")?);
        let ct_digest = r.array("ciphertext digest")?;
        let n = r.u32("body length")?;
        if n > MAX_ENVELOPE_BODY {
            return Err(DecodeError::Invalid("envelope body length").into());
        }
        let sealed_body = r.bytes(n as usize + 16, "sealed body")?.to_vec();
        r.finish()?;
        Ok(Self {
            version,
            id,
            recipient,
            ephemeral,
            ct_digest,
            sealed_body,
        })
    }
}

// ---------------------------------------------------------------- index

/// The index file: sealed list of records, keyed to one vault key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    /// The vault key this index is keyed to.
    pub vault_pk: PublicKey,
    /// Rewrite counter.
    pub generation: u64,
    /// Nonce of the sealed body.
    pub nonce: [u8; 12],
    /// The sealed body.
    pub sealed_body: Vec<u8>,
}

impl IndexFile {
    /// Associated data of the sealed body.
    pub fn ad(&self) -> Vec<u8> {
        let mut w = begin(MAGIC_INDEX);
        w.bytes(self.vault_pk.as_bytes())
            .u64(self.generation)
            .bytes(&self.nonce)
            .u32(self.sealed_body.len().saturating_sub(16) as u32);
        w.into_vec()
    }

    /// Encodes the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.ad()).bytes(&self.sealed_body);
        with_checksum(w)
    }

    /// Decodes the file.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let body = checked(bytes, MAGIC_INDEX)?;
        let mut r = Reader::new(&body[10..]);
        let vault_pk = PublicKey(r.array("vault key")?);
        let generation = r.u64("generation")?;
        let nonce = r.array("nonce")?;
        let n = r.u32("body length")?;
        if n > MAX_INDEX_BODY {
            return Err(DecodeError::Invalid("index body length").into());
        }
        let sealed_body = r.bytes(n as usize + 16, "sealed body")?.to_vec();
        r.finish()?;
        Ok(Self {
            vault_pk,
            generation,
            nonce,
            sealed_body,
        })
    }
}

/// The state of an index record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// A stored object.
    Live {
        /// BLAKE3 of the envelope file.
        env_digest: [u8; 32],
        /// Ciphertext digest of the data file.
        ct_digest: [u8; 32],
        /// The object's metadata.
        meta: Metadata,
    },
    /// A deleted object (tombstone).
    Deleted,
}

/// One index record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    /// Object id.
    pub id: FileId,
    /// Live or deleted.
    pub state: RecordState,
}

/// Encodes the index body.
pub fn encode_records(records: &[IndexRecord]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut w = Writer::new();
    w.u32(records.len() as u32);
    for rec in records {
        w.bytes(&rec.id);
        match &rec.state {
            RecordState::Deleted => {
                w.u8(1);
            }
            RecordState::Live {
                env_digest,
                ct_digest,
                meta,
            } => {
                w.u8(0).bytes(env_digest).bytes(ct_digest);
                meta.encode_into(&mut w);
            }
        }
    }
    zeroize::Zeroizing::new(w.into_vec())
}

/// Decodes the index body.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<IndexRecord>, FormatError> {
    let mut r = Reader::new(bytes);
    let n = r.u32("record count")? as usize;
    // Each record takes at least 17 bytes: bound the allocation by the input.
    let mut out = Vec::with_capacity(n.min(r.remaining() / 17));
    for _ in 0..n {
        let id = r.array("object id")?;
        let state = match r.u8("record state")? {
            0 => RecordState::Live {
                env_digest: r.array("envelope digest")?,
                ct_digest: r.array("ciphertext digest")?,
                meta: Metadata::decode_from(&mut r)?,
            },
            1 => RecordState::Deleted,
            _ => return Err(DecodeError::Invalid("record state").into()),
        };
        out.push(IndexRecord { id, state });
    }
    r.finish()?;
    Ok(out)
}

// ---------------------------------------------------------------- old vault keys

/// One old vault secret key, sealed to the vault key that replaced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldKeyEntry {
    /// The old vault public key.
    pub old_pk: PublicKey,
    /// The vault public key the old secret key is sealed to.
    pub sealed_to: PublicKey,
    /// Ephemeral public key of the sealing.
    pub ephemeral: PublicKey,
    /// AES-256-GCM(wrap key, nonce 0, old secret key, AD = [`Self::ad`]).
    pub sealed_sk: [u8; 48],
}

impl OldKeyEntry {
    /// Encoded length of one entry.
    pub const LEN: usize = 32 * 3 + 48;

    /// The HKDF info and the AD of the sealing: the label, the old and the
    /// new vault public keys, so an entry opens only as what it says it is.
    pub fn context(old_pk: &PublicKey, sealed_to: &PublicKey) -> Vec<u8> {
        let mut c = b"p2pfs/old-vault-key/v1".to_vec();
        c.extend_from_slice(old_pk.as_bytes());
        c.extend_from_slice(sealed_to.as_bytes());
        c
    }
}

/// `vault/keys`: the old vault secret keys, oldest first; entry `i` is
/// sealed to entry `i + 1`'s old key, the newest to the current one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysFile {
    /// The entries, oldest first (at most [`MAX_OLD_KEYS`]).
    pub entries: Vec<OldKeyEntry>,
}

impl KeysFile {
    /// Largest encoded file.
    pub const MAX_LEN: u64 = 10 + 2 + (MAX_OLD_KEYS * OldKeyEntry::LEN) as u64 + 32;

    /// Encodes the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = begin(MAGIC_KEYS);
        w.u16(self.entries.len() as u16);
        for e in &self.entries {
            w.bytes(e.old_pk.as_bytes())
                .bytes(e.sealed_to.as_bytes())
                .bytes(e.ephemeral.as_bytes())
                .bytes(&e.sealed_sk);
        }
        with_checksum(w)
    }

    /// Decodes the file, bounding the entry count.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let body = checked(bytes, MAGIC_KEYS)?;
        let mut r = Reader::new(&body[10..]);
        let n = r.u16("entry count")? as usize;
        if n > MAX_OLD_KEYS || n > r.remaining() / OldKeyEntry::LEN {
            return Err(DecodeError::Invalid("entry count").into());
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(OldKeyEntry {
                old_pk: PublicKey(r.array("old key")?),
                sealed_to: PublicKey(r.array("sealed-to key")?),
                ephemeral: PublicKey(r.array("ephemeral key")?),
                sealed_sk: r.array("sealed key")?,
            });
        }
        r.finish()?;
        Ok(Self { entries })
    }
}

// ---------------------------------------------------------------- deposits

/// `deposits/<id>.dep`: what the storing node knows, in clear, about a
/// sealed deposit (its envelope it cannot open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositRecord {
    /// Object id (also the file names and the data file's id).
    pub id: FileId,
    /// Node id of the depositor.
    pub depositor: PublicKey,
    /// Plaintext size (as the data file's length shows it).
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Ciphertext digest of the data file.
    pub ct_digest: [u8; 32],
    /// When stored, unix milliseconds.
    pub added_ms: u64,
}

impl DepositRecord {
    /// Encoded length.
    pub const LEN: usize = 10 + 16 + 32 + 8 + 4 + 8 + 32 + 8 + 32;

    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = begin(MAGIC_DEPOSIT);
        w.bytes(&self.id)
            .bytes(self.depositor.as_bytes())
            .u64(self.size)
            .u32(self.chunk_size)
            .u64(chunk_count(self.size, self.chunk_size))
            .bytes(&self.ct_digest)
            .u64(self.added_ms);
        with_checksum(w)
    }

    /// Decodes a record, checking sizes and the chunk count.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let body = checked(bytes, MAGIC_DEPOSIT)?;
        let mut r = Reader::new(&body[10..]);
        let id = r.array("object id")?;
        let depositor = PublicKey(r.array("depositor")?);
        let (size, chunk_size) = read_size(&mut r)?;
        if r.u64("chunk count")? != chunk_count(size, chunk_size) {
            return Err(DecodeError::Invalid("chunk count").into());
        }
        let d = Self {
            id,
            depositor,
            size,
            chunk_size,
            ct_digest: r.array("ciphertext digest")?,
            added_ms: r.u64("added")?,
        };
        r.finish()?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta_strategy() -> impl Strategy<Value = Metadata> {
        (
            any::<bool>(),
            0u64..(1 << 40),
            MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE,
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<i64>(),
            0u32..0o777,
            proptest::option::of(any::<[u8; 32]>()),
            "[a-z0-9]{1,20}(/[a-zA-Z0-9 ._-]{1,20}){0,3}",
        )
            .prop_map(|(d, size, cs, b, a, m, mode, o, name)| Metadata {
                kind: if d { Kind::Dir } else { Kind::File },
                size,
                chunk_size: cs,
                blake3: b,
                added_ms: a,
                mtime: m,
                mode,
                origin: o.map(PublicKey),
                name,
            })
            .prop_filter("valid", |m| validate_name(&m.name).is_ok())
    }

    proptest! {
        #[test]
        fn envelope_body_round_trip(meta in meta_strategy(), key in any::<[u8;32]>()) {
            let b = EnvelopeBody { file_key: Secret32::from_bytes(key), meta: meta.clone() };
            let enc = b.encode();
            let d = EnvelopeBody::decode(&enc).unwrap();
            prop_assert_eq!(d.meta, meta);
            prop_assert_eq!(d.file_key.expose(), &key);
            // every strict prefix fails cleanly
            for cut in [0, 1, enc.len() / 2, enc.len() - 1] {
                prop_assert!(EnvelopeBody::decode(&enc[..cut]).is_err());
            }
        }

        #[test]
        fn records_round_trip(metas in proptest::collection::vec(meta_strategy(), 0..5), ids in any::<[u8;16]>()) {
            let mut recs: Vec<IndexRecord> = metas.into_iter().map(|m| IndexRecord {
                id: ids, state: RecordState::Live { env_digest: [1;32], ct_digest: [2;32], meta: m }}).collect();
            recs.push(IndexRecord { id: [9;16], state: RecordState::Deleted });
            let enc = encode_records(&recs);
            prop_assert_eq!(decode_records(&enc).unwrap(), recs);
        }

        #[test]
        fn envelope_file_round_trip(id in any::<[u8;16]>(), body in proptest::collection::vec(any::<u8>(), 16..200)) {
            let e = EnvelopeFile { version: ENVELOPE_VERSION, id, recipient: PublicKey([3;32]), ephemeral: PublicKey([4;32]), ct_digest: [5;32], sealed_body: body };
            let enc = e.encode();
            prop_assert_eq!(EnvelopeFile::decode(&enc).unwrap(), e);
            let mut bad = enc.clone();
            let i = bad.len() / 2;
            bad[i] ^= 1;
            prop_assert_eq!(EnvelopeFile::decode(&bad), Err(FormatError::Checksum));
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = IdentityFile::decode(&data);
            let _ = HeaderFile::decode(&data);
            let _ = ObjectHeader::decode(&data);
            let _ = EnvelopeFile::decode(&data);
            let _ = EnvelopeBody::decode(&data);
            let _ = IndexFile::decode(&data);
            let _ = decode_records(&data);
            let _ = KeysFile::decode(&data);
            let _ = DepositRecord::decode(&data);
        }

        #[test]
        fn keys_file_round_trip(raw in proptest::collection::vec(any::<[u8; 32]>(), 0..12)) {
            let entries: Vec<OldKeyEntry> = raw.chunks(3).map(|c| OldKeyEntry {
                old_pk: PublicKey(c[0]),
                sealed_to: PublicKey(*c.last().unwrap_or(&c[0])),
                ephemeral: PublicKey(c[c.len() / 2]),
                sealed_sk: [c[0][0]; 48],
            }).collect();
            let f = KeysFile { entries };
            let enc = f.encode();
            prop_assert_eq!(enc.len(), 10 + 2 + f.entries.len() * OldKeyEntry::LEN + 32);
            prop_assert_eq!(&KeysFile::decode(&enc).unwrap(), &f);
            let mut bad = enc.clone();
            let i = bad.len() / 2;
            bad[i] ^= 1;
            prop_assert_eq!(KeysFile::decode(&bad), Err(FormatError::Checksum));
        }

        #[test]
        fn deposit_record_round_trip(id in any::<[u8; 16]>(), dep in any::<[u8; 32]>(),
                                     size in 0u64..(1 << 40), ct in any::<[u8; 32]>(), added in any::<u64>()) {
            let d = DepositRecord { id, depositor: PublicKey(dep), size, chunk_size: 1 << 20, ct_digest: ct, added_ms: added };
            let enc = d.encode();
            prop_assert_eq!(enc.len(), DepositRecord::LEN);
            prop_assert_eq!(&DepositRecord::decode(&enc).unwrap(), &d);
            for cut in [0, 9, 10, enc.len() - 1] {
                prop_assert!(DepositRecord::decode(&enc[..cut]).is_err());
            }
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "a/b", "dir/file.txt", "日本/ファイル", "a b/c"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../../b",
            "a//b",
            "a/",
            "./a",
            "a\u{1b}[31m",
            "a\nb",
            "a\0b",
            "invoice\u{202E}fdp.exe",
            "zero\u{200B}width",
            "bom\u{FEFF}",
            "iso\u{2066}late",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
        assert!(validate_name(&["a"; 3000].join("/")).is_err());
    }

    #[test]
    fn a_one_file_trailer_splits_exactly_and_refuses_what_does_not_fit() {
        let t = one_trailer(200);
        assert_eq!(split_one(40 + 4124 + 200 + 12, &t).unwrap(), (4164, 200));
        // The smallest data part is the bare header.
        assert_eq!(split_one(40 + 200 + 12, &t).unwrap(), (40, 200));
        assert!(
            split_one(39 + 200 + 12, &t).is_err(),
            "data shorter than a header"
        );
        assert!(split_one(100, &t).is_err(), "envelope longer than the file");
        assert!(
            split_one(u64::MAX, &t).is_err(),
            "no overflow on a huge length"
        );
        let most = 40 + u64::from(MAX_CHUNK_SIZE) + 28;
        assert_eq!(split_one(most + 212, &t).unwrap(), (most, 200));
        assert!(
            split_one(most + 213, &t).is_err(),
            "data longer than one chunk"
        );
        let mut bad = t;
        bad[11] ^= 1;
        assert!(matches!(
            split_one(10_000, &bad),
            Err(FormatError::BadMagic)
        ));
        assert!(split_one(10_000, &t[..11]).is_err(), "short trailer");
        for n in [0u32, MAX_ENVELOPE_FILE as u32 + 1, u32::MAX] {
            let mut t = one_trailer(0);
            t[..4].copy_from_slice(&n.to_be_bytes());
            assert!(split_one(100_000, &t).is_err(), "envelope length {n}");
        }
    }

    proptest! {
        #[test]
        fn split_one_never_panics_and_stays_within_the_file(len in any::<u64>(), n in any::<u32>()) {
            let mut t = one_trailer(0);
            t[..4].copy_from_slice(&n.to_be_bytes());
            if let Ok((d, e)) = split_one(len, &t) {
                prop_assert_eq!(e, u64::from(n));
                prop_assert_eq!(d + e + ONE_TRAILER_LEN, len);
                prop_assert!(d >= ObjectHeader::LEN && (1..=MAX_ENVELOPE_FILE).contains(&e));
                prop_assert!(d <= 40 + u64::from(MAX_CHUNK_SIZE) + 28);
            }
        }
    }
}
