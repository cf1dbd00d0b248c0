//! The sender's record of transfers it started (`HOME/sent`, 0600): which
//! file ids it was given by which receiver, for which offered entry. A
//! receiver may offer to resume a partial (its file key sealed to us); the
//! sender opens that key only when this record says the transfer is one it
//! started with *that* receiver for *that* entry (`docs/PROTOCOL.md`,
//! *Resume*). Anyone else's blob, or a blob replayed for another file, is
//! refused and the file is sent afresh.
//!
//! The record is a cache: losing it only means interrupted transfers start
//! over. A damaged file is therefore replaced, never an error.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    path::{Path, PathBuf},
};

use super::{
    error::Result,
    format::{begin, checked, with_checksum},
    fsutil,
};
use crate::{
    codec::{DecodeError, Reader},
    crypto::{chunk::FileId, keys::PublicKey},
};

const MAGIC: &[u8; 8] = b"P2PFSSL\0";
/// Most entries kept; the oldest go first.
pub const MAX_ENTRIES: usize = 65536;
const ENTRY_LEN: usize = 32 + 16 + 32;

/// Identifies an offered entry (name, size, source version, chunk size).
pub type EntryTag = [u8; 32];

/// The tag of an offered entry.
pub fn entry_tag(name: &str, size: u64, token: &[u8; 16], chunk_size: u32) -> EntryTag {
    let mut h = blake3::Hasher::new();
    h.update(b"p2pfs/sent-entry/v1");
    h.update(&(name.len() as u64).to_be_bytes());
    h.update(name.as_bytes());
    h.update(&size.to_be_bytes());
    h.update(token);
    h.update(&chunk_size.to_be_bytes());
    *h.finalize().as_bytes()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Entry {
    receiver: PublicKey,
    file_id: FileId,
    tag: EntryTag,
}

type Key = (PublicKey, EntryTag);

/// The record, loaded under its lock for one read-modify-write. Lookups
/// are by (receiver, entry); the oldest entries go first when it is full.
pub struct SentLog {
    path: PathBuf,
    /// (receiver, entry) → (file id, sequence number of its record).
    map: HashMap<Key, (FileId, u64)>,
    /// Records in the order they were made (stale ones skipped).
    order: VecDeque<(Key, u64)>,
    seq: u64,
    _lock: fs::File,
}

fn decode(bytes: &[u8]) -> Result<Vec<Entry>, super::format::FormatError> {
    let body = checked(bytes, MAGIC)?;
    let mut r = Reader::new(&body[10..]);
    let n = r.u32("entry count")? as usize;
    if n > MAX_ENTRIES || n * ENTRY_LEN != r.remaining() {
        return Err(DecodeError::Invalid("entry count").into());
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Entry {
            receiver: PublicKey(r.array("receiver")?),
            file_id: r.array("file id")?,
            tag: r.array("entry tag")?,
        });
    }
    r.finish()?;
    Ok(out)
}

impl SentLog {
    /// Locks and loads the record of `home` (empty when absent or damaged).
    pub fn open(home: &Path) -> Result<Self> {
        let lock = fsutil::lock_exclusive(&home.join("sent.lock"))?;
        let path = home.join("sent");
        let limit = (MAX_ENTRIES * ENTRY_LEN + 64) as u64;
        let entries =
            fsutil::read_cache(&path, limit, decode, "interrupted sends will start over")?;
        let mut log = Self {
            path,
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            _lock: lock,
        };
        for e in entries {
            log.record(&e.receiver, &e.file_id, &e.tag);
        }
        Ok(log)
    }

    /// True when this node started the transfer of `tag` to `receiver`
    /// under `file_id`.
    pub fn contains(&self, receiver: &PublicKey, file_id: &FileId, tag: &EntryTag) -> bool {
        self.map
            .get(&(*receiver, *tag))
            .is_some_and(|(id, _)| id == file_id)
    }

    /// Records a transfer started (replacing an older record of the entry).
    pub fn record(&mut self, receiver: &PublicKey, file_id: &FileId, tag: &EntryTag) {
        self.seq += 1;
        let key = (*receiver, *tag);
        self.map.insert(key, (*file_id, self.seq));
        self.order.push_back((key, self.seq));
        while self.map.len() > MAX_ENTRIES {
            let Some((k, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, s)| *s == seq) {
                self.map.remove(&k);
            }
        }
        if self.order.len() > 2 * MAX_ENTRIES {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|(_, s)| s == seq));
        }
    }

    /// Forgets a finished transfer.
    pub fn forget(&mut self, receiver: &PublicKey, tag: &EntryTag) {
        self.map.remove(&(*receiver, *tag));
    }

    /// Writes the record atomically, oldest first.
    pub fn save(&self) -> Result<()> {
        let live: Vec<(Key, FileId)> = self
            .order
            .iter()
            .filter_map(|(k, seq)| match self.map.get(k) {
                Some((id, s)) if s == seq => Some((*k, *id)),
                _ => None,
            })
            .collect();
        let mut w = begin(MAGIC);
        w.u32(live.len() as u32);
        for ((receiver, tag), id) in &live {
            w.bytes(receiver.as_bytes()).bytes(id).bytes(tag);
        }
        fsutil::write_atomic(&self.path, &with_checksum(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reload_and_are_bound_to_receiver_id_and_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (r1, r2) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let t = entry_tag("a", 1, &[0; 16], 4096);
        {
            let mut log = SentLog::open(dir.path()).unwrap();
            log.record(&r1, &[7; 16], &t);
            log.save().unwrap();
        }
        let mut log = SentLog::open(dir.path()).unwrap();
        assert!(log.contains(&r1, &[7; 16], &t));
        assert!(!log.contains(&r2, &[7; 16], &t));
        assert!(!log.contains(&r1, &[8; 16], &t));
        assert!(!log.contains(&r1, &[7; 16], &entry_tag("b", 1, &[0; 16], 4096)));
        log.forget(&r1, &t);
        assert!(!log.contains(&r1, &[7; 16], &t));
        drop(log);
        // A damaged record is replaced, not an error.
        std::fs::write(dir.path().join("sent"), b"garbage").unwrap();
        assert!(SentLog::open(dir.path()).unwrap().map.is_empty());
    }

    #[test]
    fn the_oldest_records_go_first_and_recording_is_not_quadratic() {
        let dir = tempfile::tempdir().unwrap();
        let r = PublicKey([1; 32]);
        let mut log = SentLog::open(dir.path()).unwrap();
        let t0 = std::time::Instant::now();
        for i in 0..(MAX_ENTRIES as u64 + 1000) {
            log.record(&r, &[0; 16], &entry_tag("f", i, &[0; 16], 4096));
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(log.map.len(), MAX_ENTRIES);
        assert!(!log.contains(&r, &[0; 16], &entry_tag("f", 0, &[0; 16], 4096)));
        assert!(log.contains(&r, &[0; 16], &entry_tag("f", 66000, &[0; 16], 4096)));
        log.save().unwrap();
        drop(log);
        assert_eq!(SentLog::open(dir.path()).unwrap().map.len(), MAX_ENTRIES);
    }
}
