//! Frames of the wire protocol (`docs/PROTOCOL.md`): control messages
//! (length-prefixed postcard) and chunk frames on data streams. Every length
//! and count a peer declares is bounded here, before anything is allocated.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::NetError;
use crate::crypto::chunk::{chunk_count, FileId, MAX_CHUNK_COUNT, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::store::format::{validate_name, validate_node_name};
use crate::text::MAX_MESSAGE;

/// Largest control frame.
pub const MAX_FRAME: u32 = 64 << 20;
/// Largest number of entries in one offer.
pub const MAX_FILES: usize = 100_000;
/// Largest declared file size (2^52 bytes).
pub const MAX_FILE_SIZE: u64 = 1 << 52;
/// Budget of declared plaintext bytes of one offer (16 TiB). A connection
/// carries one offer, so this is also the per-connection budget.
pub const MAX_OFFER_BYTES: u64 = 1 << 44;
/// Budget of declared chunks of one offer (and connection): 2^24, that is
/// 16 TiB at the default 1 MiB chunks, 64 GiB at the smallest (4 KiB).
pub const MAX_OFFER_CHUNKS: u64 = 1 << 24;
pub use crate::store::partial::SEALED_KEY_LEN;
/// Length of a file key under the session's key-transport key (`FileStart`).
pub const WRAPPED_KEY_LEN: usize = 48;
/// Longest software version string in `Welcome`.
pub const MAX_VERSION: usize = 64;
/// Magic at the start of every data stream.
pub const DATA_MAGIC: &[u8; 4] = b"P2D2";
/// The stop notice: a one-way stream that a node whose user pressed
/// Ctrl-C opens and at once resets with this code (`close::INTERRUPTED`),
/// before any byte. A RESET_STREAM is retransmitted until it arrives,
/// unlike a CONNECTION_CLOSE datagram, which a busy peer may miss, and it
/// needs no flow-control credit, which a stalled peer's full window leaves
/// none of. The peer answers by closing with `close::INTERRUPTED`.
pub const STOP_CODE: u32 = super::close::INTERRUPTED;
/// What a node reports when its peer sent a stop notice (a close with
/// `close::INTERRUPTED` reads the same, with the peer's reason:
/// `engine::closed_error`).
pub const PEER_STOPPED: &str = "the peer stopped it (Ctrl-C)";
/// Length of a chunk frame header.
pub const CHUNK_HEADER_LEN: usize = 4 + 8 + 4 + 32;
/// Largest number of data streams.
pub const MAX_STREAMS: usize = 16;
/// Largest number of one-way streams a peer may open: the data streams
/// and a stop notice ([`STOP_CODE`]).
pub const MAX_UNI_STREAMS: usize = MAX_STREAMS + 1;

/// What an offered entry is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// An empty directory.
    Dir,
}

/// One entry of an offer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileOffer {
    /// Relative `/`-separated name.
    pub name: String,
    /// File or empty directory.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, unix seconds.
    pub mtime: i64,
    /// Permission bits.
    pub mode: u32,
    /// Identifies the source version (for resume).
    pub token: [u8; 16],
}

/// The receiver's plan for one offered entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FilePlan {
    /// Send everything.
    New {
        /// The id the receiver assigned.
        file_id: FileId,
    },
    /// Continue a partial transfer.
    Resume {
        /// The partial's id.
        file_id: FileId,
        /// The partial's file key sealed to the sender's node key.
        sealed_key: Vec<u8>,
        /// Bitmap of chunks already verified.
        have: Vec<u8>,
    },
    /// Not accepted.
    Reject {
        /// Why.
        reason: String,
    },
    /// Continue a partial deposit: as `Resume`, with the BLAKE3 of each
    /// held sealed chunk (in index order), which the depositor needs for
    /// the envelope's ciphertext digest.
    ResumeSealed {
        /// The partial's id.
        file_id: FileId,
        /// The key the depositor sealed to itself.
        sealed_key: Vec<u8>,
        /// Bitmap of chunks held.
        have: Vec<u8>,
        /// BLAKE3 of each held sealed chunk, in index order.
        leaves: Vec<[u8; 32]>,
    },
    /// Already committed from this sender, unchanged (same name, size,
    /// chunk size and source version), and still stored: nothing is sent,
    /// and no result follows.
    Unchanged {
        /// The stored object.
        file_id: FileId,
    },
}

/// Why a receiver refuses.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// The sender is not trusted.
    Untrusted,
    /// The receiver's user declined.
    Declined,
    /// The offer is invalid or hostile.
    BadOffer,
    /// The receiver is busy.
    Busy,
    /// The receiver's disk is full.
    DiskFull,
    /// The depositor's quota here would be exceeded.
    Quota,
    /// The receiver's storage failed (not a full disk, not tampering).
    Storage,
    /// Pairing: the joiner's proof does not match the code shown here
    /// (a wrong or mistyped code; `docs/PROTOCOL.md`, *Pairing by code*).
    WrongCode,
}

/// Control-stream messages. Variants are only ever appended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Server → client: authorised.
    Welcome {
        /// Software version.
        version: String,
        /// Receiver's node name.
        name: String,
    },
    /// Either way: refused; the connection closes.
    Refused {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Human-readable explanation with what to do.
        message: String,
    },
    /// Client → server: what it wants to send.
    Offer {
        /// Store every entry again, even one the server already holds
        /// unchanged (`send --again`).
        again: bool,
        /// Plaintext bytes per chunk.
        chunk_size: u32,
        /// The entries.
        files: Vec<FileOffer>,
    },
    /// Server → client: per-entry plan, same order as the offer.
    Plan {
        /// One plan per offered entry.
        files: Vec<FilePlan>,
    },
    /// Client → server: the key of file `file`.
    FileStart {
        /// Index in the offer.
        file: u32,
        /// The file key under the session's key-transport key.
        wrapped_key: Vec<u8>,
        /// True when a partial is discarded and the file starts over.
        fresh: bool,
    },
    /// Client → server: every chunk of `file` was sent.
    FileEnd {
        /// Index in the offer.
        file: u32,
        /// BLAKE3 of the plaintext.
        blake3: [u8; 32],
    },
    /// Server → client: outcome of one file.
    FileResult {
        /// Index in the offer.
        file: u32,
        /// Committed and verified.
        ok: bool,
        /// Error code when not ok (a `RefuseCode`-like number, 0 when ok).
        code: u8,
        /// Human-readable detail.
        message: String,
    },
    /// Client → server: all results received.
    Done,
    /// Client → server (request): what this node may fetch here.
    List,
    /// Server → client: one page of the listing; `more` until the last.
    Listing {
        /// The vault header, once, to a peer with the `owner` capability
        /// (its device opens the vault key with the passphrase typed there).
        header: Option<Vec<u8>>,
        /// The entries of this page.
        files: Vec<RemoteFile>,
        /// True when another page follows.
        more: bool,
    },
    /// Client → server (request): send these objects (pull); the server
    /// answers `Serving` and becomes the source of the transfer.
    Fetch {
        /// Object ids, each at most once.
        ids: Vec<FileId>,
        /// Data streams the server may open (1 ..= 16).
        streams: u8,
    },
    /// Server → client: the objects of a `Fetch`, in its order; then the
    /// transfer runs as a push the other way (`Plan`, chunks, results).
    Serving {
        /// The vault header, to an `owner` peer (as in `Listing`).
        header: Option<Vec<u8>>,
        /// One entry per requested id.
        files: Vec<RemoteFile>,
    },
    /// Client → server (request): deposit these files sealed to the
    /// client's own vault key (`send --sealed`); no name crosses the wire.
    Deposit {
        /// Plaintext bytes per chunk.
        chunk_size: u32,
        /// The entries.
        files: Vec<SealedOffer>,
    },
    /// Client → server: a deposited file starts: its key sealed to the
    /// client itself (for resume), never the key.
    DepositStart {
        /// Index in the offer.
        file: u32,
        /// The file key sealed to the depositor's node key, bound to both
        /// node ids and the file id (`SEALED_KEY_LEN` bytes).
        sealed_key: Vec<u8>,
        /// True when a partial is discarded and the file starts over.
        fresh: bool,
    },
    /// Client → server: every chunk of a deposited file was sent; its
    /// envelope, sealed to the depositor's vault key.
    DepositEnd {
        /// Index in the offer.
        file: u32,
        /// The envelope (`docs/VAULT.md`, *Envelope*).
        envelope: Vec<u8>,
    },
    /// Pairing, either way: this side's SPAKE2 message (`docs/PROTOCOL.md`,
    /// *Pairing by code*).
    PairStart {
        /// The SPAKE2 message (33 bytes).
        pake: Vec<u8>,
    },
    /// Pairing, either way: proof of the SPAKE2 key, bound to the Noise
    /// transcript and both static keys. The joiner sends it first.
    PairProof {
        /// HMAC-SHA256 under a key derived from the SPAKE2 key.
        proof: [u8; 32],
    },
    /// Pairing, either way, after both proofs: who this side is and what it
    /// now lets the other do.
    Paired {
        /// This side's node name.
        name: String,
        /// Capabilities granted to the peer (bit 0 send, 1 get, 2 owner).
        granted: u8,
    },
    /// Client → server, the first message after the key confirmation
    /// (since `p2pfs/4`): who the connecting node says it is. The name is
    /// what the node calls itself, for prompts and logs only: it grants
    /// nothing and is shown as claimed, next to the proven fingerprint.
    Hello {
        /// Software version.
        version: String,
        /// The connecting node's name (a valid node name).
        name: String,
    },
}

/// One entry of a deposit: what the storing node may know of it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SealedOffer {
    /// An opaque tag of the entry, keyed by the depositor (stable across
    /// reruns, so a resumed deposit finds its partial; never the name).
    pub tag: [u8; 16],
    /// File or empty directory.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Identifies the source version (for resume).
    pub token: [u8; 16],
}

/// Why a peer may fetch an object.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The owner shared it with that peer: `key` is sealed to its node key.
    Share,
    /// The peer is one of the owner's devices: `key` is the object's
    /// envelope, sealed to the vault key.
    Owner,
    /// The peer's own sealed deposit: `key` is its envelope, sealed to the
    /// depositor's vault key.
    Deposit,
}

/// An object a peer may fetch, as listed or served: everything clear
/// except what `key` seals (file key, name, BLAKE3, times).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The object id (also the chunks' file id).
    pub id: FileId,
    /// File or directory.
    pub kind: EntryKind,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Why the peer may fetch it.
    pub access: Access,
    /// The sealed key and metadata (see [`Access`]).
    pub key: Vec<u8>,
}

/// Largest sealed key blob of a [`RemoteFile`] (an envelope is at most
/// 8 KiB of body plus its header).
pub const MAX_REMOTE_KEY: usize = 16 << 10;
/// Largest vault header sent to an owner.
pub const MAX_REMOTE_HEADER: usize = 4096;
/// Entries per listing page.
pub const LIST_PAGE: usize = 1024;

/// `FileResult.code` values.
pub mod result_code {
    /// Committed and verified.
    pub const OK: u8 = 0;
    /// The received data did not verify (BLAKE3 or AEAD).
    pub const VERIFY: u8 = 1;
    /// The receiver's disk is full.
    pub const DISK_FULL: u8 = 2;
    /// Another storage failure on the receiver.
    pub const STORE: u8 = 3;
}

/// Writes one control frame.
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &Msg) -> Result<(), NetError> {
    let body =
        postcard::to_allocvec(msg).map_err(|e| NetError::Protocol(format!("encode: {e}")))?;
    if body.len() > MAX_FRAME as usize {
        return Err(NetError::Protocol("message too large".into()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await.map_err(NetError::io)?;
    Ok(())
}

/// What a peer sent that is not a valid message of its kind.
fn invalid(what: &str) -> NetError {
    NetError::Protocol(format!("the peer sent an invalid message ({what})"))
}

fn bounded_text(s: &str, what: &str) -> Result<(), NetError> {
    if s.len() > MAX_MESSAGE {
        return Err(invalid(&format!(
            "{what} of {} bytes, more than {MAX_MESSAGE}",
            s.len()
        )));
    }
    Ok(())
}

impl Msg {
    /// The message's kind, for errors (never its peer-controlled content).
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Welcome { .. } => "Welcome",
            Msg::Refused { .. } => "Refused",
            Msg::Offer { .. } => "Offer",
            Msg::Plan { .. } => "Plan",
            Msg::FileStart { .. } => "FileStart",
            Msg::FileEnd { .. } => "FileEnd",
            Msg::FileResult { .. } => "FileResult",
            Msg::Done => "Done",
            Msg::List => "List",
            Msg::Listing { .. } => "Listing",
            Msg::Fetch { .. } => "Fetch",
            Msg::Serving { .. } => "Serving",
            Msg::Deposit { .. } => "Deposit",
            Msg::DepositStart { .. } => "DepositStart",
            Msg::DepositEnd { .. } => "DepositEnd",
            Msg::PairStart { .. } => "PairStart",
            Msg::PairProof { .. } => "PairProof",
            Msg::Paired { .. } => "Paired",
            Msg::Hello { .. } => "Hello",
        }
    }

    /// Checks every field a peer controls against its kind and bounds
    /// (`docs/PROTOCOL.md`, *Control messages*): names are valid node
    /// names, free text is at most 1 KiB, keys have their exact length.
    /// Run on every decoded message, so nothing unvalidated gets further.
    /// Offers are checked against the budgets by [`validate_offer`].
    pub fn check(&self) -> Result<(), NetError> {
        match self {
            Msg::Welcome { version, name } | Msg::Hello { version, name } => {
                if version.len() > MAX_VERSION
                    || version.chars().any(crate::text::is_forbidden_in_name)
                {
                    return Err(invalid("software version"));
                }
                validate_node_name(name).map_err(|why| invalid(&format!("node name: {why}")))
            }
            Msg::Refused { message, .. } => bounded_text(message, "refusal message"),
            Msg::FileResult { message, .. } => bounded_text(message, "result message"),
            Msg::Plan { files } => {
                for p in files {
                    match p {
                        FilePlan::Reject { reason } => bounded_text(reason, "rejection reason")?,
                        // Empty in a pull: the source needs no key.
                        FilePlan::Resume { sealed_key, .. }
                            if !sealed_key.is_empty() && sealed_key.len() != SEALED_KEY_LEN =>
                        {
                            return Err(invalid("sealed key length"))
                        }
                        FilePlan::ResumeSealed {
                            sealed_key,
                            have,
                            leaves,
                            ..
                        } => {
                            let held: u32 = have.iter().map(|b| b.count_ones()).sum();
                            if sealed_key.len() != SEALED_KEY_LEN || held as usize != leaves.len() {
                                return Err(invalid("resumed deposit"));
                            }
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Msg::FileStart { wrapped_key, .. } if wrapped_key.len() != WRAPPED_KEY_LEN => {
                Err(invalid("wrapped key length"))
            }
            Msg::Listing { header, files, .. } | Msg::Serving { header, files } => {
                if header.as_ref().is_some_and(|h| h.len() > MAX_REMOTE_HEADER) {
                    return Err(invalid("vault header length"));
                }
                if files.len() > MAX_FILES {
                    return Err(invalid("too many entries"));
                }
                for f in files {
                    check_remote(f)?;
                }
                Ok(())
            }
            Msg::DepositStart { sealed_key, .. } if sealed_key.len() != SEALED_KEY_LEN => {
                Err(invalid("sealed key length"))
            }
            Msg::DepositEnd { envelope, .. } if envelope.len() > MAX_REMOTE_KEY => {
                Err(invalid("envelope length"))
            }
            Msg::Fetch { ids, streams } => {
                if !(1..=MAX_STREAMS).contains(&usize::from(*streams)) {
                    return Err(invalid("number of data streams"));
                }
                if ids.is_empty() || ids.len() > MAX_FILES {
                    return Err(invalid("number of requested objects"));
                }
                let mut seen = std::collections::HashSet::with_capacity(ids.len());
                if !ids.iter().all(|id| seen.insert(*id)) {
                    return Err(invalid("an object requested twice"));
                }
                Ok(())
            }
            Msg::PairStart { pake } if pake.len() != super::pair::PAKE_MSG_LEN => {
                Err(invalid("SPAKE2 message length"))
            }
            Msg::Paired { name, granted } => {
                if *granted > 0b111 {
                    return Err(invalid("granted capabilities"));
                }
                validate_node_name(name).map_err(|why| invalid(&format!("node name: {why}")))
            }
            _ => Ok(()),
        }
    }
}

/// Checks one listed or served object: sizes within the limits of an
/// offered file, a key blob of bounded length.
fn check_remote(f: &RemoteFile) -> Result<(), NetError> {
    if f.key.len() > MAX_REMOTE_KEY || f.key.is_empty() {
        return Err(invalid("sealed key length"));
    }
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&f.chunk_size) {
        return Err(invalid("chunk size"));
    }
    if f.size >= MAX_FILE_SIZE || chunk_count(f.size, f.chunk_size) > MAX_CHUNK_COUNT {
        return Err(invalid("object size"));
    }
    if f.kind == EntryKind::Dir && f.size != 0 {
        return Err(invalid("a directory with a size"));
    }
    Ok(())
}

/// Checks a deposit against the limits and budgets of a push (no names:
/// the tags must be unique).
pub fn validate_deposit(chunk_size: u32, files: &[SealedOffer]) -> Result<OfferTotals, String> {
    let as_offers: Vec<FileOffer> = files
        .iter()
        .map(|f| FileOffer {
            name: crate::crypto::to_hex(&f.tag),
            kind: f.kind,
            size: f.size,
            mtime: 0,
            mode: 0,
            token: f.token,
        })
        .collect();
    validate_offer(chunk_size, &as_offers)
}

/// Checks what a server serves against the budgets of one transfer (as
/// [`validate_offer`] does for a push); returns the totals.
pub fn validate_served(files: &[RemoteFile]) -> Result<OfferTotals, String> {
    let mut totals = OfferTotals::default();
    for f in files {
        totals.bytes = totals
            .bytes
            .checked_add(f.size)
            .filter(|b| *b <= MAX_OFFER_BYTES)
            .ok_or("more than the byte budget of one transfer")?;
        totals.chunks = totals
            .chunks
            .checked_add(chunk_count(f.size, f.chunk_size))
            .filter(|c| *c <= MAX_OFFER_CHUNKS)
            .ok_or("more than the chunk budget of one transfer")?;
    }
    Ok(totals)
}

/// Reads one control frame; `None` at a clean end of stream.
///
/// Not cancel-safe: a read dropped half-way (a `select!` whose other
/// branch won) loses the bytes it took. Loops that select use
/// [`ControlRecv`].
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Msg>, NetError> {
    ControlRecv::new(r).read_msg().await
}

/// Capacity of a frame buffer kept between frames.
const KEEP_BUFFER: usize = 64 << 10;

/// The receive half of a control stream and the part of a frame read so
/// far. [`ControlRecv::read_msg`] is cancel-safe: it keeps every byte it
/// took until its frame is whole, so a `select!` may drop it at any point
/// (a `read_exact` there once lost half a frame and read the rest of the
/// stream as garbage lengths). The buffer holds the frame it is reading:
/// its 4-byte length, then the size that declares, at most [`MAX_FRAME`].
pub struct ControlRecv<R = quinn::RecvStream> {
    /// The stream.
    pub stream: R,
    buf: Vec<u8>,
    /// Bytes of `buf` filled so far.
    filled: usize,
    /// True once `buf` is sized for the whole frame.
    sized: bool,
}

impl<R: AsyncRead + Unpin> ControlRecv<R> {
    /// Wraps a stream at a frame boundary.
    pub fn new(stream: R) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            filled: 0,
            sized: false,
        }
    }

    /// The next message; None at the end of the stream between frames.
    pub async fn read_msg(&mut self) -> Result<Option<Msg>, NetError> {
        loop {
            if !self.sized {
                self.buf.resize(4, 0);
                if self.filled == 4 {
                    let n =
                        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                    if n > MAX_FRAME {
                        return Err(NetError::Protocol(format!(
                            "frame of {n} bytes exceeds the limit"
                        )));
                    }
                    // Bounded above; still, an allocation the peer asks
                    // for fails cleanly.
                    self.buf.try_reserve_exact(n as usize).map_err(|_| {
                        NetError::Protocol(format!("no memory for a frame of {n} bytes"))
                    })?;
                    self.buf.resize(4 + n as usize, 0);
                    self.sized = true;
                }
            }
            if self.sized && self.filled == self.buf.len() {
                let m = decode_msg(&self.buf[4..]);
                self.filled = 0;
                self.sized = false;
                // A large frame's buffer is not kept for the connection's
                // lifetime.
                if self.buf.capacity() > KEEP_BUFFER {
                    self.buf = Vec::new();
                }
                return m.map(Some);
            }
            // Straight into the frame, as much as has arrived (so the
            // stream's buffers drain as fast as with one big read), never
            // past it: nothing of the next frame is taken.
            let k = self
                .stream
                .read(&mut self.buf[self.filled..])
                .await
                .map_err(NetError::io)?;
            if k == 0 {
                if self.filled == 0 {
                    return Ok(None);
                }
                return Err(NetError::io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.filled += k;
        }
    }
}

/// Decodes a control message body and checks its fields (also the fuzzing
/// entry point).
pub fn decode_msg(body: &[u8]) -> Result<Msg, NetError> {
    let m: Msg = postcard::from_bytes(body)
        .map_err(|e| NetError::Protocol(format!("undecodable message: {e}")))?;
    m.check()?;
    Ok(m)
}

/// What an accepted offer declares in total (checked arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OfferTotals {
    /// Declared plaintext bytes.
    pub bytes: u64,
    /// Declared chunks.
    pub chunks: u64,
}

/// Checks an offer against the limits and the budgets before anything is
/// allocated for it; returns its totals, or a reason to refuse it.
pub fn validate_offer(chunk_size: u32, files: &[FileOffer]) -> Result<OfferTotals, String> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(format!("chunk size {chunk_size} out of range"));
    }
    if files.is_empty() {
        return Err("empty offer".into());
    }
    if files.len() > MAX_FILES {
        return Err(format!("{} entries (at most {MAX_FILES})", files.len()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut totals = OfferTotals::default();
    for f in files {
        if let Err(why) = validate_name(&f.name) {
            return Err(format!(
                "refused name \"{}\": {why}",
                crate::text::name_from_peer(&f.name)
            ));
        }
        let shown = crate::text::name_from_peer(&f.name);
        if f.size >= MAX_FILE_SIZE {
            return Err(format!("{shown}: declared size {} is absurd", f.size));
        }
        if f.kind == EntryKind::Dir && f.size != 0 {
            return Err(format!("{shown}: a directory with a size"));
        }
        let chunks = chunk_count(f.size, chunk_size);
        if chunks > MAX_CHUNK_COUNT {
            return Err(format!(
                "{shown}: {chunks} chunks of {chunk_size} bytes (at most {MAX_CHUNK_COUNT} per file)"
            ));
        }
        totals.bytes = totals
            .bytes
            .checked_add(f.size)
            .filter(|b| *b <= MAX_OFFER_BYTES)
            .ok_or_else(|| {
                format!("the offer declares more than {MAX_OFFER_BYTES} bytes in total (the budget of one transfer)")
            })?;
        totals.chunks = totals
            .chunks
            .checked_add(chunks)
            .filter(|c| *c <= MAX_OFFER_CHUNKS)
            .ok_or_else(|| {
                format!("the offer declares more than {MAX_OFFER_CHUNKS} chunks in total (the budget of one transfer; use larger chunks)")
            })?;
        if !seen.insert(f.name.as_str()) {
            return Err(format!("{shown}: offered twice"));
        }
    }
    Ok(totals)
}

/// The header of a chunk frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// File index in the offer.
    pub file: u32,
    /// Chunk index.
    pub index: u64,
    /// Sealed chunk length.
    pub len: u32,
    /// HMAC-SHA256 of the chunk.
    pub mac: [u8; 32],
}

impl ChunkHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[..4].copy_from_slice(&self.file.to_be_bytes());
        b[4..12].copy_from_slice(&self.index.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b[16..].copy_from_slice(&self.mac);
        b
    }

    /// Decodes the header.
    pub fn decode(b: &[u8; CHUNK_HEADER_LEN]) -> Self {
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&b[16..]);
        Self {
            file: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            index: u64::from_be_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]),
            len: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            mac,
        }
    }
}

/// Bitmap helpers for `FilePlan::Resume::have`.
pub mod bitmap {
    /// An all-zero bitmap for `n` bits.
    pub fn new(n: u64) -> Vec<u8> {
        vec![0u8; n.div_ceil(8) as usize]
    }
    /// Reads bit `i` (false when out of range).
    pub fn get(b: &[u8], i: u64) -> bool {
        b.get((i / 8) as usize)
            .is_some_and(|x| x & (1 << (i % 8)) != 0)
    }
    /// Sets bit `i` (ignored when out of range).
    pub fn set(b: &mut [u8], i: u64) {
        if let Some(x) = b.get_mut((i / 8) as usize) {
            *x |= 1 << (i % 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn offer(name: &str) -> FileOffer {
        FileOffer {
            name: name.into(),
            kind: EntryKind::File,
            size: 1,
            mtime: 0,
            mode: 0o644,
            token: [0; 16],
        }
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let m = Msg::Offer {
            again: false,
            chunk_size: 1 << 20,
            files: vec![offer("a/b")],
        };
        write_msg(&mut a, &m).await.unwrap();
        drop(a);
        assert_eq!(read_msg(&mut b).await.unwrap(), Some(m));
        assert_eq!(read_msg(&mut b).await.unwrap(), None);
    }

    /// A read dropped half-way through a frame (a `select!` whose other
    /// branch won) loses nothing: the next read returns the whole message,
    /// then the one after it.
    #[tokio::test]
    async fn a_control_read_dropped_mid_frame_loses_nothing() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let m = Msg::Offer {
            again: false,
            chunk_size: 1 << 20,
            files: vec![offer("a/b"), offer("c")],
        };
        let mut bytes = Vec::new();
        write_msg(&mut bytes, &m).await.unwrap();
        write_msg(&mut bytes, &Msg::Done).await.unwrap();
        let mut r = ControlRecv::new(b);
        // Half of the first frame, then a read that times out.
        let half = bytes.len() / 3;
        a.write_all(&bytes[..half]).await.unwrap();
        let t = tokio::time::timeout(Duration::from_millis(50), r.read_msg()).await;
        assert!(t.is_err(), "a frame cannot be complete yet");
        a.write_all(&bytes[half..]).await.unwrap();
        drop(a);
        assert_eq!(r.read_msg().await.unwrap(), Some(m));
        assert_eq!(r.read_msg().await.unwrap(), Some(Msg::Done));
        assert_eq!(r.read_msg().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_frame_refused_before_allocation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read_msg(&mut b).await, Err(NetError::Protocol(_))));
    }

    #[test]
    fn hostile_offers_refused() {
        for bad in [
            "../x",
            "/etc/x",
            "a/../../b",
            "a\u{1b}[2Jb",
            "",
            &"x".repeat(5000),
        ] {
            assert!(validate_offer(1 << 20, &[offer(bad)]).is_err(), "{bad:?}");
        }
        let mut big = offer("big");
        big.size = u64::MAX;
        assert!(validate_offer(1 << 20, &[big]).is_err());
        assert!(validate_offer(1 << 20, &[offer("a"), offer("a")]).is_err());
        assert!(validate_offer(1, &[offer("a")]).is_err());
        assert!(validate_offer(1 << 20, &[offer("ok/name.txt")]).is_ok());
    }

    /// Regression (issue 7, H1 and M4): one 2^52−1-byte file at 4 KiB
    /// chunks (2^40 chunks) made the daemon try to allocate 36 TB, and sizes
    /// summed in u64 wrapped to a harmless-looking total.
    #[test]
    fn offers_beyond_the_budgets_are_refused() {
        let mut huge = offer("huge");
        huge.size = (1 << 52) - 1;
        let e = validate_offer(4096, std::slice::from_ref(&huge)).unwrap_err();
        assert!(e.contains("chunks"), "{e}");
        assert!(validate_offer(1 << 20, &[huge]).is_err());
        // 4096 × (2^52 − 1) + 5096 = 2^64 + 1000: shown as "1000 B" before.
        let mut wrapping: Vec<FileOffer> = (0..4097)
            .map(|i| {
                let mut o = offer(&format!("f{i}"));
                o.size = (1 << 52) - 1;
                o
            })
            .collect();
        wrapping[4096].size = 5096;
        let total: u64 = wrapping.iter().fold(0u64, |a, f| a.wrapping_add(f.size));
        assert_eq!(total, 1000, "the sizes wrap u64");
        let e = validate_offer(16 << 20, &wrapping).unwrap_err();
        assert!(e.contains("bytes in total"), "{e}");
        // Many small files at the smallest chunk size exceed the chunk budget.
        let mut many: Vec<FileOffer> = (0..2).map(|i| offer(&format!("g{i}"))).collect();
        many[0].size = MAX_OFFER_CHUNKS * 4096;
        assert!(validate_offer(4096, &many)
            .unwrap_err()
            .contains("chunks in total"));
        let ok = validate_offer(1 << 20, &[offer("a"), offer("b")]).unwrap();
        assert_eq!(
            ok,
            OfferTotals {
                bytes: 2,
                chunks: 2
            }
        );
    }

    /// Regression (issue 7, H4): a receiver's name and messages reached the
    /// sender's terminal and trust store raw.
    #[test]
    fn hostile_strings_in_messages_are_refused_at_decode() {
        let enc = |m: &Msg| postcard::to_allocvec(m).unwrap();
        let bad = [
            Msg::Welcome {
                version: "2".into(),
                name: "real\r\u{1b}[8m".into(),
            },
            Msg::Welcome {
                version: "2".into(),
                name: "x".repeat(20 << 20),
            },
            Msg::Welcome {
                version: "2".into(),
                name: "rtl\u{202E}".into(),
            },
            Msg::Welcome {
                version: "\u{1b}[2J".into(),
                name: "ok".into(),
            },
            Msg::Refused {
                code: RefuseCode::Busy,
                message: "m".repeat(MAX_MESSAGE + 1),
            },
            Msg::FileResult {
                file: 0,
                ok: false,
                code: 1,
                message: "m".repeat(4096),
            },
            Msg::Plan {
                files: vec![FilePlan::Reject {
                    reason: "r".repeat(2000),
                }],
            },
            Msg::Plan {
                files: vec![FilePlan::Resume {
                    file_id: [0; 16],
                    sealed_key: vec![0; 81],
                    have: vec![],
                }],
            },
            Msg::FileStart {
                file: 0,
                wrapped_key: vec![0; 47],
                fresh: false,
            },
            Msg::Hello {
                version: "4".into(),
                name: "laptop\u{1b}]0;owned\u{7}".into(),
            },
            Msg::Hello {
                version: "4".into(),
                name: "n".repeat(4096),
            },
            Msg::Hello {
                version: "v".repeat(MAX_VERSION + 1),
                name: "ok".into(),
            },
        ];
        for m in &bad {
            assert!(
                matches!(decode_msg(&enc(m)), Err(NetError::Protocol(_))),
                "{m:?}"
            );
        }
        let good = Msg::Refused {
            code: RefuseCode::Busy,
            message: "try again \u{1b}".into(),
        };
        assert_eq!(decode_msg(&enc(&good)).unwrap(), good);
    }

    /// The bounds of the retrieval messages, checked at decode.
    #[test]
    fn listings_fetches_and_deposits_are_bounded_at_decode() {
        let enc = |m: &Msg| postcard::to_allocvec(m).unwrap();
        let remote = |key: usize, chunk_size: u32, size: u64| RemoteFile {
            id: [1; 16],
            kind: EntryKind::File,
            size,
            chunk_size,
            access: Access::Share,
            key: vec![0; key],
        };
        let bad = [
            Msg::Fetch {
                ids: vec![[0; 16]],
                streams: 0,
            },
            Msg::Fetch {
                ids: vec![[0; 16]],
                streams: 17,
            },
            Msg::Fetch {
                ids: vec![[0; 16], [0; 16]],
                streams: 4,
            },
            Msg::Fetch {
                ids: vec![],
                streams: 4,
            },
            Msg::Listing {
                header: Some(vec![0; MAX_REMOTE_HEADER + 1]),
                files: vec![],
                more: false,
            },
            Msg::Serving {
                header: None,
                files: vec![remote(MAX_REMOTE_KEY + 1, 1 << 20, 1)],
            },
            Msg::Serving {
                header: None,
                files: vec![remote(0, 1 << 20, 1)],
            },
            Msg::Serving {
                header: None,
                files: vec![remote(100, 1, 1)],
            },
            Msg::Listing {
                header: None,
                files: vec![remote(100, 4096, MAX_FILE_SIZE)],
                more: false,
            },
            Msg::DepositStart {
                file: 0,
                sealed_key: vec![0; 79],
                fresh: false,
            },
            Msg::DepositEnd {
                file: 0,
                envelope: vec![0; MAX_REMOTE_KEY + 1],
            },
            Msg::Plan {
                files: vec![FilePlan::ResumeSealed {
                    file_id: [0; 16],
                    sealed_key: vec![0; SEALED_KEY_LEN],
                    have: vec![0b11],
                    leaves: vec![[0; 32]],
                }],
            },
        ];
        for m in &bad {
            assert!(
                matches!(decode_msg(&enc(m)), Err(NetError::Protocol(_))),
                "{m:?}"
            );
        }
        let good = Msg::Fetch {
            ids: vec![[0; 16], [1; 16]],
            streams: 16,
        };
        assert_eq!(decode_msg(&enc(&good)).unwrap(), good);
        let totals = validate_served(&[remote(10, 4096, 8192)]).unwrap();
        assert_eq!((totals.bytes, totals.chunks), (8192, 2));
    }

    #[test]
    fn chunk_header_round_trip() {
        let h = ChunkHeader {
            file: 7,
            index: 1 << 40,
            len: 1 << 20,
            mac: [9; 32],
        };
        assert_eq!(ChunkHeader::decode(&h.encode()), h);
    }

    #[test]
    fn garbage_never_panics() {
        for i in 0..2000u32 {
            let bytes: Vec<u8> = (0..(i % 97))
                .map(|j| (i.wrapping_mul(31) ^ (j * 7)) as u8)
                .collect();
            let _ = decode_msg(&bytes);
        }
    }
}
