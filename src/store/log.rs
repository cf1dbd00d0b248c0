//! The access log (`HOME/vault/log`, `docs/VAULT.md` *Access log*): one
//! record per retrieval, listing, share, unshare, deposit and refused
//! request, each sealed on its own to the vault public key, so the serving
//! daemon appends without the passphrase and only the owner reads it back.
//!
//! This module owns the record and frame layouts, appending (one `write`
//! per record, `O_APPEND`), rotation to `log.1`, and reading back with
//! damaged frames counted and skipped, never a panic. It does not decide
//! what gets logged (the callers do) and never prints.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    error::{Result, StoreError},
    fileops,
    format::FormatError,
    fsutil,
    home::format_error,
};
use crate::{
    codec::{DecodeError, Reader, Writer},
    crypto::{
        aead::TAG_LEN,
        keys::{Keypair, PublicKey},
        random, to_hex,
        wrap::{unwrap_key, wrap_key_for, WRAP_NONCE},
    },
};

/// Magic at the start of a log file.
pub const MAGIC_LOG: &[u8; 8] = b"P2PFSLG\0";
/// Format version of the log files.
pub const LOG_VERSION: u16 = 1;
/// HKDF info of a log record's wrap key.
pub const LOG_INFO: &[u8] = b"p2pfs/log/v1";
/// A log file this long or longer is rotated to `log.1` at the next append.
pub const ROTATE_AT: u64 = 16 << 20;
/// Longest `object` and `outcome` text of a record, in bytes.
pub const MAX_FIELD: usize = 1024;

/// The largest log file read back: appends that raced a rotation can take
/// a file a little past [`ROTATE_AT`], never this far.
const READ_LIMIT: u64 = 2 * ROTATE_AT;
const HEADER_LEN: usize = 10;
/// Record plaintext: time, peer flag (+ key), action, two length-prefixed texts.
const MIN_BODY: usize = 8 + 1 + 1 + 2 + 2;
const MAX_BODY: usize = MIN_BODY + 32 + 2 * MAX_FIELD;
/// Bounds of a frame's length field (ephemeral key, sealed body).
const MIN_FRAME: usize = 32 + MIN_BODY + TAG_LEN;
const MAX_FRAME: usize = 32 + MAX_BODY + TAG_LEN;

/// What a logged request did.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogAction {
    /// A peer retrieved (or tried to retrieve) an object.
    Get,
    /// A peer listed what it may retrieve.
    List,
    /// The owner shared an object with a peer.
    Share,
    /// A share was withdrawn (by the owner, or because the object was removed).
    Unshare,
    /// A peer deposited a sealed file.
    Deposit,
    /// A request was refused.
    Refused,
}

impl LogAction {
    const ALL: [LogAction; 6] = [
        LogAction::Get,
        LogAction::List,
        LogAction::Share,
        LogAction::Unshare,
        LogAction::Deposit,
        LogAction::Refused,
    ];

    fn code(self) -> u8 {
        match self {
            LogAction::Get => 0,
            LogAction::List => 1,
            LogAction::Share => 2,
            LogAction::Unshare => 3,
            LogAction::Deposit => 4,
            LogAction::Refused => 5,
        }
    }

    /// The lower-case name (as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            LogAction::Get => "get",
            LogAction::List => "list",
            LogAction::Share => "share",
            LogAction::Unshare => "unshare",
            LogAction::Deposit => "deposit",
            LogAction::Refused => "refused",
        }
    }
}

/// One access-log record. `object` and `outcome` are free text (they may
/// come from a peer): at most [`MAX_FIELD`] bytes each are kept, and they
/// must be escaped when shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// When, unix milliseconds.
    pub time_ms: u64,
    /// The peer concerned, if any.
    pub peer: Option<PublicKey>,
    /// What was done.
    pub action: LogAction,
    /// What it was done to (a name or an object id).
    pub object: String,
    /// How it ended (`ok`, or the reason of a refusal or failure).
    pub outcome: String,
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl LogRecord {
    /// A record stamped now, its texts cut to [`MAX_FIELD`] bytes.
    pub fn now(peer: Option<PublicKey>, action: LogAction, object: &str, outcome: &str) -> Self {
        Self {
            time_ms: super::vault::now_ms(),
            peer,
            action,
            object: cut(object, MAX_FIELD).to_owned(),
            outcome: cut(outcome, MAX_FIELD).to_owned(),
        }
    }

    /// Encodes the plaintext of a record (texts over the bound are cut).
    pub fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u64(self.time_ms);
        match &self.peer {
            None => w.u8(0),
            Some(pk) => w.u8(1).bytes(pk.as_bytes()),
        };
        w.u8(self.action.code());
        for t in [&self.object, &self.outcome] {
            let t = cut(t, MAX_FIELD);
            w.u16(t.len() as u16).bytes(t.as_bytes());
        }
        zeroize::Zeroizing::new(w.into_vec())
    }

    /// Decodes an opened record.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let time_ms = r.u64("time")?;
        let peer = match r.u8("peer flag")? {
            0 => None,
            1 => Some(PublicKey(r.array("peer")?)),
            _ => return Err(DecodeError::Invalid("peer flag").into()),
        };
        let code = r.u8("action")?;
        let action = LogAction::ALL
            .into_iter()
            .find(|a| a.code() == code)
            .ok_or(DecodeError::Invalid("action"))?;
        let mut text = || -> Result<String, FormatError> {
            let n = r.u16("text length")? as usize;
            if n > MAX_FIELD {
                return Err(DecodeError::Invalid("text length").into());
            }
            let b = r.bytes(n, "text")?;
            Ok(std::str::from_utf8(b)
                .map_err(|_| DecodeError::Invalid("text"))?
                .to_owned())
        };
        let object = text()?;
        let outcome = text()?;
        r.finish()?;
        Ok(Self {
            time_ms,
            peer,
            action,
            object,
            outcome,
        })
    }
}

fn frame_ad(len: u32, ephemeral: &PublicKey) -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes(LOG_INFO).u32(len).bytes(ephemeral.as_bytes());
    w.into_vec()
}

/// Seals one record to `recipient` (the vault public key):
/// `len (u32) || ephemeral (32) || AES-256-GCM(record)`, where `len`
/// counts the bytes after it.
pub fn seal_frame(recipient: &PublicKey, rec: &LogRecord) -> Result<Vec<u8>> {
    let body = rec.encode();
    let len = (32 + body.len() + TAG_LEN) as u32;
    let (ephemeral, key) = wrap_key_for(recipient, LOG_INFO)?;
    let sealed = key.seal(WRAP_NONCE, &frame_ad(len, &ephemeral), &body)?;
    let mut w = Writer::new();
    w.u32(len).bytes(ephemeral.as_bytes()).bytes(&sealed);
    Ok(w.into_vec())
}

/// The end of a plausible frame at `o`: its length field in bounds and the
/// whole frame inside `buf`.
fn extent(buf: &[u8], o: usize) -> Option<usize> {
    let field: [u8; 4] = buf.get(o..o.checked_add(4)?)?.try_into().ok()?;
    let len = u32::from_be_bytes(field) as usize;
    if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
        return None;
    }
    let end = o + 4 + len;
    (end <= buf.len()).then_some(end)
}

/// The record of the frame at `o` and where the next frame starts, if the
/// frame is whole and opens under one of `keys`.
fn open_at(buf: &[u8], o: usize, keys: &[&Keypair]) -> Option<(LogRecord, usize)> {
    let end = extent(buf, o)?;
    let frame = &buf[o..end];
    let len = (frame.len() - 4) as u32;
    let mut e = [0u8; 32];
    e.copy_from_slice(&frame[4..36]);
    let ephemeral = PublicKey(e);
    let ad = frame_ad(len, &ephemeral);
    keys.iter().find_map(|kp| {
        let key = unwrap_key(kp, &ephemeral, LOG_INFO).ok()?;
        let plain = zeroize::Zeroizing::new(key.open(WRAP_NONCE, &ad, &frame[36..]).ok()?);
        LogRecord::decode(&plain).ok().map(|r| (r, end))
    })
}

/// Reads the frames that follow a log file's header. A frame that does not
/// open — torn by a crash mid-append, altered, or sealed to a key not in
/// `keys` — counts as one damaged record and is skipped: by its length
/// when that is plausible, unless a frame that opens starts inside it (a
/// torn frame followed by later appends); else up to the next frame that
/// opens. Never panics, whatever the bytes.
pub fn read_frames(buf: &[u8], keys: &[&Keypair]) -> (Vec<LogRecord>, usize) {
    let mut out = Vec::new();
    let mut damaged = 0;
    let mut o = 0;
    while o < buf.len() {
        if let Some((rec, next)) = open_at(buf, o, keys) {
            out.push(rec);
            o = next;
            continue;
        }
        damaged += 1;
        let limit = extent(buf, o).unwrap_or(buf.len());
        o = (o + 1..limit)
            .find(|&p| open_at(buf, p, keys).is_some())
            .unwrap_or(limit);
    }
    (out, damaged)
}

fn header() -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes(MAGIC_LOG).u16(LOG_VERSION);
    w.into_vec()
}

/// Decodes a whole log file: its header, then [`read_frames`].
pub fn parse_log(bytes: &[u8], keys: &[&Keypair]) -> Result<(Vec<LogRecord>, usize), FormatError> {
    if bytes.len() < HEADER_LEN {
        // Only a crash while the file was created leaves less than a
        // header (it is created whole, then linked into place).
        return if MAGIC_LOG.starts_with(&bytes[..bytes.len().min(8)]) {
            Ok((Vec::new(), usize::from(!bytes.is_empty())))
        } else {
            Err(FormatError::BadMagic)
        };
    }
    if &bytes[..8] != MAGIC_LOG {
        return Err(FormatError::BadMagic);
    }
    match u16::from_be_bytes([bytes[8], bytes[9]]) {
        LOG_VERSION => Ok(read_frames(&bytes[HEADER_LEN..], keys)),
        v => Err(FormatError::Version(v)),
    }
}

/// The current log file of a vault directory.
pub fn log_path(vault_dir: &Path) -> PathBuf {
    vault_dir.join("log")
}

/// The previous generation, kept after a rotation.
pub fn old_log_path(vault_dir: &Path) -> PathBuf {
    vault_dir.join("log.1")
}

/// Creates the log file with its header, whole or not at all: written to
/// a temporary name, then linked into place (never replacing a log that
/// another appender created meanwhile).
fn create(vault_dir: &Path) -> Result<()> {
    let path = log_path(vault_dir);
    let tmp = vault_dir.join(format!("log.new-{}", to_hex(&random::<6>()?)));
    let res = (|| {
        let f = fsutil::create_new_private(&tmp)?;
        fileops::write_all(&f, &header(), &tmp)
            .and_then(|_| fileops::sync_all(&f, &tmp))
            .map_err(|e| StoreError::io("cannot write", &tmp, e))?;
        match fileops::hit(fileops::Op::Link, &path).and_then(|_| fs::hard_link(&tmp, &path)) {
            Ok(()) => fsutil::fsync_dir(vault_dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(StoreError::io("cannot create", &path, e)),
        }
    })();
    let _ = fileops::remove_file(&tmp);
    res
}

/// Moves a full log to `log.1` (replacing the generation before). Under
/// an exclusive lock on the file, and only if the path still names it, so
/// two appenders that both find it full rotate it once.
fn rotate(vault_dir: &Path, f: &File) -> Result<()> {
    let path = log_path(vault_dir);
    f.lock()
        .map_err(|e| StoreError::io("cannot lock", &path, e))?;
    let mine = f
        .metadata()
        .map_err(|e| StoreError::io("cannot read", &path, e))?;
    let same = fs::metadata(&path)
        .map(|m| m.dev() == mine.dev() && m.ino() == mine.ino())
        .unwrap_or(false);
    if same && mine.len() >= ROTATE_AT {
        fsutil::rename(&path, &old_log_path(vault_dir))?;
        fsutil::fsync_dir(vault_dir)?;
    }
    Ok(())
}

/// Opens the log for appending, creating or rotating it as needed.
fn open_append(vault_dir: &Path) -> Result<File> {
    let path = log_path(vault_dir);
    for _ in 0..4 {
        match fileops::open(OpenOptions::new().append(true).mode(0o600), &path) {
            Ok(f) => {
                let len = f
                    .metadata()
                    .map_err(|e| StoreError::io("cannot read", &path, e))?
                    .len();
                if len < ROTATE_AT {
                    return Ok(f);
                }
                rotate(vault_dir, &f)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => create(vault_dir)?,
            Err(e) => return Err(StoreError::io("cannot open", &path, e)),
        }
    }
    Err(StoreError::Invalid(format!(
        "{} keeps changing (rotated or removed) while appending to it",
        super::error::shown(&path)
    )))
}

/// Appends records sealed to `recipient`: each frame in one `write` on an
/// `O_APPEND` descriptor (so concurrent appenders never interleave inside
/// a record), then one `fsync`.
pub fn append(vault_dir: &Path, recipient: &PublicKey, recs: &[LogRecord]) -> Result<()> {
    if recs.is_empty() {
        return Ok(());
    }
    let frames = recs
        .iter()
        .map(|r| seal_frame(recipient, r))
        .collect::<Result<Vec<_>>>()?;
    let path = log_path(vault_dir);
    let mut f = open_append(vault_dir)?;
    for frame in &frames {
        let n = loop {
            match fileops::hit(fileops::Op::Write, &path).and_then(|_| f.write(frame)) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other.map_err(|e| StoreError::io("cannot write", &path, e))?,
            }
        };
        if n != frame.len() {
            // The disk filled up mid-record: the torn frame is skipped
            // (and counted as damaged) when the log is read.
            return Err(StoreError::DiskFull { path });
        }
    }
    fileops::sync_data(&f, &path).map_err(|e| StoreError::io("cannot sync", &path, e))
}

fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("cannot read", path, e)),
    };
    let mut buf = Vec::new();
    f.take(READ_LIMIT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| StoreError::io("cannot read", path, e))?;
    if buf.len() as u64 > READ_LIMIT {
        return Err(StoreError::corrupt(
            path.display().to_string(),
            format!("more than the {READ_LIMIT} bytes a log file can reach"),
        ));
    }
    Ok(Some(buf))
}

/// Reads `log.1` then `log` with `keys`: the records in order, and how many
/// frames could not be opened.
pub fn read(vault_dir: &Path, keys: &[&Keypair]) -> Result<(Vec<LogRecord>, usize)> {
    let mut all = Vec::new();
    let mut damaged = 0;
    for path in [old_log_path(vault_dir), log_path(vault_dir)] {
        if let Some(bytes) = read_bounded(&path)? {
            let (recs, bad) = parse_log(&bytes, keys).map_err(|e| format_error(&path, e))?;
            all.extend(recs);
            damaged += bad;
        }
    }
    Ok((all, damaged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    fn rec(i: u64) -> LogRecord {
        LogRecord {
            time_ms: i,
            peer: i.is_multiple_of(2).then_some(PublicKey([i as u8; 32])),
            action: LogAction::ALL[(i % 6) as usize],
            object: format!("object {i}"),
            outcome: "ok".into(),
        }
    }

    fn setup() -> (tempfile::TempDir, Keypair) {
        (tempfile::tempdir().unwrap(), Keypair::generate().unwrap())
    }

    #[test]
    fn records_append_and_read_back_only_with_the_vault_key() {
        let (d, kp) = setup();
        append(d.path(), &kp.public(), &[rec(1), rec(2)]).unwrap();
        append(d.path(), &kp.public(), &[rec(3)]).unwrap();
        let (recs, bad) = read(d.path(), &[&kp]).unwrap();
        assert_eq!((recs, bad), (vec![rec(1), rec(2), rec(3)], 0));
        let p = log_path(d.path());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let bytes = fs::read(&p).unwrap();
        assert!(!bytes.windows(8).any(|w| w == b"object 1"));
        // Another key opens nothing: every frame counts as damaged.
        let other = Keypair::generate().unwrap();
        assert_eq!(read(d.path(), &[&other]).unwrap(), (vec![], 3));
        // Both keys at hand: the right one is found.
        assert_eq!(read(d.path(), &[&other, &kp]).unwrap().0.len(), 3);
        // No temporary files are left.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["log"]);
    }

    #[test]
    fn texts_are_bounded() {
        let long = "é".repeat(MAX_FIELD);
        let r = LogRecord::now(None, LogAction::Refused, &long, &long);
        assert!(r.object.len() <= MAX_FIELD && r.object.len() >= MAX_FIELD - 1);
        let mut raw = r.clone();
        raw.outcome = "x".repeat(5000);
        let back = LogRecord::decode(&raw.encode()).unwrap();
        assert_eq!(back.outcome.len(), MAX_FIELD);
        let (d, kp) = setup();
        append(d.path(), &kp.public(), &[raw]).unwrap();
        assert_eq!(read(d.path(), &[&kp]).unwrap().0.len(), 1);
    }

    #[test]
    fn a_torn_last_frame_is_counted_not_fatal() {
        let (d, kp) = setup();
        append(d.path(), &kp.public(), &[rec(1), rec(2)]).unwrap();
        let p = log_path(d.path());
        let full = fs::read(&p).unwrap();
        let frame = seal_frame(&kp.public(), &rec(3)).unwrap();
        for keep in [1, 3, 4, 20, frame.len() - 1] {
            let mut torn = full.clone();
            torn.extend_from_slice(&frame[..keep]);
            fs::write(&p, &torn).unwrap();
            assert_eq!(
                read(d.path(), &[&kp]).unwrap(),
                (vec![rec(1), rec(2)], 1),
                "{keep}"
            );
            // Appends after a torn frame (a crash, then a restart) are
            // found again.
            append(d.path(), &kp.public(), &[rec(4), rec(5)]).unwrap();
            let (recs, bad) = read(d.path(), &[&kp]).unwrap();
            assert_eq!(recs, vec![rec(1), rec(2), rec(4), rec(5)], "{keep}");
            assert_eq!(bad, 1, "{keep}");
        }
        // An altered frame in the middle is skipped by its length.
        let mut bad = full.clone();
        bad[HEADER_LEN + 40] ^= 1;
        fs::write(&p, &bad).unwrap();
        assert_eq!(read(d.path(), &[&kp]).unwrap(), (vec![rec(2)], 1));
        // A file cut inside its header, or not a log at all.
        fs::write(&p, &full[..5]).unwrap();
        assert_eq!(read(d.path(), &[&kp]).unwrap(), (vec![], 1));
        fs::write(&p, b"hello world, not a log").unwrap();
        assert!(matches!(
            read(d.path(), &[&kp]),
            Err(StoreError::Corrupt { .. })
        ));
        let mut newer = header();
        newer[9] = 9;
        fs::write(&p, &newer).unwrap();
        assert!(matches!(
            read(d.path(), &[&kp]),
            Err(StoreError::UnsupportedVersion { version: 9, .. })
        ));
    }

    #[test]
    fn a_full_log_rotates_to_one_old_generation() {
        let (d, kp) = setup();
        let p = log_path(d.path());
        append(d.path(), &kp.public(), &[rec(1)]).unwrap();
        // Pad the file past the threshold with one long run of damage.
        let mut bytes = fs::read(&p).unwrap();
        bytes.resize(ROTATE_AT as usize, 0);
        fs::write(&p, &bytes).unwrap();
        append(d.path(), &kp.public(), &[rec(2)]).unwrap();
        assert_eq!(
            fs::metadata(old_log_path(d.path())).unwrap().len(),
            ROTATE_AT
        );
        let (recs, bad) = read(d.path(), &[&kp]).unwrap();
        assert_eq!((recs, bad), (vec![rec(1), rec(2)], 1));
        // A second rotation replaces the first generation.
        let mut bytes = fs::read(&p).unwrap();
        bytes.resize(ROTATE_AT as usize + 7, 0);
        fs::write(&p, &bytes).unwrap();
        append(d.path(), &kp.public(), &[rec(3)]).unwrap();
        let (recs, _) = read(d.path(), &[&kp]).unwrap();
        assert_eq!(recs, vec![rec(2), rec(3)]);
        assert_eq!(
            fs::metadata(old_log_path(d.path()))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    proptest! {
        #[test]
        fn record_round_trip(t in any::<u64>(), peer in proptest::option::of(any::<[u8; 32]>()), a in 0usize..6, o in ".{0,40}", c in ".{0,40}") {
            let r = LogRecord { time_ms: t, peer: peer.map(PublicKey), action: LogAction::ALL[a], object: o, outcome: c };
            let enc = r.encode();
            prop_assert_eq!(LogRecord::decode(&enc).unwrap(), r);
            for cut in [0, 1, enc.len() / 2, enc.len() - 1] {
                prop_assert!(LogRecord::decode(&enc[..cut]).is_err());
            }
        }

        #[test]
        fn reading_hostile_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let kp = Keypair::from_secret(crate::crypto::keys::Secret32::from_bytes([9; 32]));
            let _ = LogRecord::decode(&data);
            let _ = parse_log(&data, &[&kp]);
            let mut with_header = header();
            with_header.extend_from_slice(&data);
            let (recs, _) = parse_log(&with_header, &[&kp]).unwrap();
            prop_assert!(recs.is_empty());
        }
    }
}
