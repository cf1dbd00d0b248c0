//! Senders refused lately for not being trusted (`HOME/pending`, 0600):
//! their key, the address they came from, when they were last refused and
//! how often. `p2pfs trust pending` lists them; `p2pfs trust add` takes the
//! fingerprint (or a long id prefix) of one of them instead of a full id,
//! so the operator who just refused "the laptop next door" can let it in by
//! the fingerprint that laptop's `p2pfs id` shows.
//!
//! The record is a hint, not a decision: nothing in it grants a right, and
//! an entry is only ever *named* by the operator, by a fingerprint (80 bits,
//! which a peer cannot grind to match another's) or an id prefix of at least
//! [`MIN_PREFIX`] characters (as many bits). Any peer can add itself (by
//! being refused), so the record is bounded ([`MAX_ENTRIES`], the oldest go
//! first; entries older than [`MAX_AGE_SECS`] are dropped) and a damaged
//! file is replaced, never an error.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{
    error::Result,
    format::{begin_v, checked, checked_v, validate_node_name, with_checksum, MAX_NODE_NAME},
    fsutil,
};
use crate::{
    codec::{DecodeError, Reader},
    crypto::keys::PublicKey,
};

const MAGIC: &[u8; 8] = b"P2PFSPD\0";
/// Version 2 adds the name each sender gave itself; version 1 (no names)
/// is still read.
const RECORD_VERSION: u16 = 2;
/// Most entries kept; the least recently refused go first.
pub const MAX_ENTRIES: usize = 64;
/// Entries not refused again for this long are dropped (7 days).
pub const MAX_AGE_SECS: i64 = 7 * 86400;
/// Shortest node id prefix that names a pending sender (16 base32
/// characters, 80 bits: as strong as a fingerprint).
pub const MIN_PREFIX: usize = 16;
/// Longest address text kept.
const MAX_ADDR: usize = 64;

/// A sender refused lately.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its proven static key.
    pub key: PublicKey,
    /// Where it came from last (`ip:port`).
    pub addr: String,
    /// The name it gave itself last (`Hello`: unproven; empty when not
    /// known), a valid node name.
    pub name: String,
    /// When it was last refused (Unix seconds).
    pub last: i64,
    /// How often it was refused while in the record.
    pub count: u32,
}

/// The record, loaded under its lock for one read-modify-write.
pub struct Pending {
    path: PathBuf,
    /// Most recently refused last.
    entries: Vec<Seen>,
    _lock: fs::File,
}

fn decode(bytes: &[u8]) -> Result<Vec<Seen>, super::format::FormatError> {
    let (body, named) = match checked_v(bytes, MAGIC, RECORD_VERSION) {
        Ok(b) => (b, true),
        // Only a version-1 record falls back; any other error is reported as it is.
        Err(super::format::FormatError::Version(1)) => (checked(bytes, MAGIC)?, false),
        Err(e) => return Err(e),
    };
    let mut r = Reader::new(&body[10..]);
    let n = usize::from(r.u16("entry count")?);
    if n > MAX_ENTRIES {
        return Err(DecodeError::Invalid("entry count").into());
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let key = PublicKey(r.array("key")?);
        let last = r.i64("time")?;
        let count = r.u32("count")?;
        let len = usize::from(r.u8("address length")?);
        if len > MAX_ADDR {
            return Err(DecodeError::Invalid("address length").into());
        }
        let addr = std::str::from_utf8(r.bytes(len, "address")?)
            .map_err(|_| DecodeError::Invalid("address"))?
            .to_owned();
        let name = if named {
            let len = usize::from(r.u8("name length")?);
            let name = std::str::from_utf8(r.bytes(len, "name")?)
                .map_err(|_| DecodeError::Invalid("name"))?;
            if !name.is_empty() && validate_node_name(name).is_err() {
                return Err(DecodeError::Invalid("name").into());
            }
            name.to_owned()
        } else {
            String::new()
        };
        out.push(Seen {
            key,
            addr,
            name,
            last,
            count,
        });
    }
    r.finish()?;
    Ok(out)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A fingerprint as typed: lower case, without the dashes.
fn bare(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether `word`, as a user typed it, names `key`: its fingerprint (dashes
/// and case as typed) or an id prefix of at least [`MIN_PREFIX`] characters.
pub fn names_key(word: &str, key: &PublicKey) -> bool {
    let w = bare(word);
    bare(&key.fingerprint()) == w || (w.len() >= MIN_PREFIX && key.to_id().starts_with(&w))
}

impl Pending {
    /// Locks and loads the record of `home` (empty when absent or damaged;
    /// expired entries dropped).
    pub fn open(home: &Path) -> Result<Self> {
        let lock = fsutil::lock_exclusive(&home.join("pending.lock"))?;
        let path = home.join("pending");
        let limit = (MAX_ENTRIES * (32 + 8 + 4 + 1 + MAX_ADDR + 1 + MAX_NODE_NAME) + 64) as u64;
        let mut entries = fsutil::read_cache(
            &path,
            limit,
            decode,
            "the list of refused senders starts afresh",
        )?;
        let cutoff = now_secs().saturating_sub(MAX_AGE_SECS);
        entries.retain(|e| e.last >= cutoff);
        Ok(Self {
            path,
            entries,
            _lock: lock,
        })
    }

    /// The senders refused lately, the most recent last.
    pub fn entries(&self) -> &[Seen] {
        &self.entries
    }

    /// Notes that `key`, calling itself `name`, was refused, coming from
    /// `addr`, now. A name that is not a valid node name is kept empty.
    pub fn record(&mut self, key: &PublicKey, addr: &str, name: &str) {
        let count = match self.entries.iter().position(|e| e.key == *key) {
            Some(i) => self.entries.remove(i).count.saturating_add(1),
            None => 1,
        };
        // `bounded` may add `…` (3 bytes) to what it cut.
        let addr = crate::text::bounded(addr, MAX_ADDR - 3);
        let name = match validate_node_name(name) {
            Ok(()) => name.to_owned(),
            Err(_) => String::new(),
        };
        self.entries.push(Seen {
            key: *key,
            addr,
            name,
            last: now_secs(),
            count,
        });
        if self.entries.len() > MAX_ENTRIES {
            let extra = self.entries.len() - MAX_ENTRIES;
            self.entries.drain(..extra);
        }
    }

    /// Drops the entry of `key` (it was trusted or forgotten).
    pub fn remove(&mut self, key: &PublicKey) {
        self.entries.retain(|e| e.key != *key);
    }

    /// The pending senders `word` names: by fingerprint (with or without
    /// dashes, any case), or by a node id prefix of at least [`MIN_PREFIX`]
    /// characters. Several means ambiguous; none, that `word` names none.
    pub fn named(&self, word: &str) -> Vec<PublicKey> {
        self.entries
            .iter()
            .filter(|e| names_key(word, &e.key))
            .map(|e| e.key)
            .collect()
    }

    /// Writes the record atomically.
    pub fn save(&self) -> Result<()> {
        let mut w = begin_v(MAGIC, RECORD_VERSION);
        w.u16(self.entries.len() as u16);
        for e in &self.entries {
            let addr = e.addr.as_bytes();
            let name = e.name.as_bytes();
            w.bytes(e.key.as_bytes())
                .i64(e.last)
                .u32(e.count)
                .u8(addr.len() as u8)
                .bytes(addr)
                .u8(name.len() as u8)
                .bytes(name);
        }
        fsutil::write_atomic(&self.path, &with_checksum(w))
    }
}

/// Notes a refused sender (best effort: the caller logs a failure).
pub fn note_refused(home: &Path, key: &PublicKey, addr: &str, name: &str) -> Result<()> {
    let mut p = Pending::open(home)?;
    p.record(key, addr, name);
    p.save()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    #[test]
    fn refused_senders_are_kept_bounded_and_named_only_by_fingerprint_or_a_long_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(MAX_ENTRIES as u8 + 10) {
            note_refused(dir.path(), &key(i), &format!("10.0.0.{i}:5000"), "box").unwrap();
        }
        note_refused(dir.path(), &key(70), "10.0.0.99:1", "laptop").unwrap();
        let p = Pending::open(dir.path()).unwrap();
        assert_eq!(p.entries().len(), MAX_ENTRIES);
        // The oldest went first; a repeat moves to the end and counts.
        assert!(p.named(&key(0).fingerprint()).is_empty());
        let last = p.entries().last().unwrap();
        assert_eq!(
            (last.key, last.count, last.addr.as_str(), last.name.as_str()),
            (key(70), 2, "10.0.0.99:1", "laptop")
        );
        // By fingerprint, dashes and case as typed.
        let fp = key(40).fingerprint();
        assert_eq!(p.named(&fp), [key(40)]);
        assert_eq!(p.named(&fp.replace('-', "").to_uppercase()), [key(40)]);
        // By id prefix: 16 characters or more, never fewer.
        let id = key(41).to_id();
        assert_eq!(p.named(&id[..MIN_PREFIX]), [key(41)]);
        assert!(p.named(&id[..MIN_PREFIX - 1]).is_empty());
        assert!(p.named("").is_empty());
    }

    #[test]
    fn a_damaged_record_starts_afresh_and_old_entries_expire() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pending"), b"garbage").unwrap();
        assert!(Pending::open(dir.path()).unwrap().entries().is_empty());
        let mut p = Pending::open(dir.path()).unwrap();
        p.record(&key(1), "a", "x");
        p.entries[0].last -= MAX_AGE_SECS + 1;
        p.record(&key(2), "b", "bad\u{1b}[2J");
        p.save().unwrap();
        drop(p);
        let p = Pending::open(dir.path()).unwrap();
        assert_eq!(p.entries().len(), 1);
        assert_eq!(p.entries()[0].key, key(2));
        // A name that is not a valid node name is not kept.
        assert_eq!(p.entries()[0].name, "");
        let mode = std::fs::metadata(dir.path().join("pending"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_version_1_record_without_names_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = crate::store::format::begin(MAGIC);
        w.u16(1)
            .bytes(key(9).as_bytes())
            .i64(now_secs())
            .u32(3)
            .u8(4)
            .bytes(b"a:11");
        std::fs::write(dir.path().join("pending"), with_checksum(w)).unwrap();
        let p = Pending::open(dir.path()).unwrap();
        let e = &p.entries()[0];
        assert_eq!(
            (e.key, e.count, e.addr.as_str(), e.name.as_str()),
            (key(9), 3, "a:11", "")
        );
    }

    #[test]
    fn a_damaged_version_2_record_is_reported_as_damaged_not_as_version_1() {
        let dir = tempfile::tempdir().unwrap();
        note_refused(dir.path(), &key(5), "a:1", "box").unwrap();
        let mut bytes = std::fs::read(dir.path().join("pending")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode(&bytes),
            Err(crate::store::format::FormatError::Checksum)
        ));
    }
}
