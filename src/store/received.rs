//! The receiver's record of what it committed (`vault/received`, 0600):
//! for each slot (a keyed hash of sender and name, [`StagingKey::slot`]),
//! the version tag of the entry last committed there and its object id.
//! A sender that offers the same entry again (same name, size, chunk size
//! and source version) gets `Unchanged` instead of a second copy, as long
//! as that object is still in the vault (`docs/PROTOCOL.md`, *Unchanged
//! entries*; `docs/VAULT.md`, *Receipts*).
//!
//! Like a partial's state, a record names neither the file nor the sender
//! in clear, and the daemon writes it without any passphrase. Each record
//! carries a MAC under the staging key, so a record planted by anyone
//! without the identity secret is ignored. The file is append-only (one
//! write per committed group, made durable with the group); later records
//! win; it is rewritten with one record per slot once it grows past
//! [`COMPACT_BYTES`]. It is a cache of the vault: a lost or damaged record
//! only means an unchanged file is stored again, as a new version.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::{
    error::{Result, StoreError},
    fileops, fsutil,
    partial::{Slot, StagingKey},
};
use crate::crypto::chunk::FileId;

/// Bytes of one record: slot, version, object id, MAC.
pub const RECORD_LEN: usize = 16 + 32 + 16 + 16;
/// Size past which the record is rewritten with one record per slot.
pub const COMPACT_BYTES: u64 = 16 << 20;
/// Slots a rewrite keeps at most (the most recent): about 10 MiB of records.
pub const MAX_SLOTS: usize = 1 << 17;

/// One committed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Where the entry's partial lived.
    pub slot: Slot,
    /// The entry's version tag.
    pub version: [u8; 32],
    /// The object it was committed as.
    pub object: FileId,
}

fn mac(key: &StagingKey, slot: &Slot, version: &[u8; 32], object: &FileId) -> [u8; 16] {
    let full = key.receipt_mac(&[&slot.0[..], &version[..], &object[..]].concat());
    let mut m = [0u8; 16];
    m.copy_from_slice(&full[..16]);
    m
}

fn encode(key: &StagingKey, r: &Receipt, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.slot.0);
    out.extend_from_slice(&r.version);
    out.extend_from_slice(&r.object);
    out.extend_from_slice(&mac(key, &r.slot, &r.version, &r.object));
}

/// A record that authenticates, else None (planted, damaged or torn).
fn decode(key: &StagingKey, b: &[u8]) -> Option<Receipt> {
    let b: &[u8; RECORD_LEN] = b.try_into().ok()?;
    let slot = Slot(b[..16].try_into().ok()?);
    let version: [u8; 32] = b[16..48].try_into().ok()?;
    let object: FileId = b[48..64].try_into().ok()?;
    let want = mac(key, &slot, &version, &object);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &b[64..])) {
        return None;
    }
    Some(Receipt {
        slot,
        version,
        object,
    })
}

/// The record of one vault.
pub struct Receipts {
    path: PathBuf,
}

impl Receipts {
    /// The record at `vault_dir/received`.
    pub fn new(vault_dir: &Path) -> Self {
        Self {
            path: vault_dir.join("received"),
        }
    }

    fn open(&self) -> Result<fs::File> {
        let mut o = fs::OpenOptions::new();
        o.read(true).write(true).create(true).mode(0o600);
        fileops::open(&o, &self.path).map_err(|e| StoreError::io("cannot open", &self.path, e))
    }

    /// The record, locked exclusively: reopened when a rewrite replaced
    /// the file while this one waited for the lock.
    fn open_locked(&self) -> Result<fs::File> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let f = self.open()?;
            f.lock()
                .map_err(|e| StoreError::io("cannot lock", &self.path, e))?;
            let held = f
                .metadata()
                .map_err(|e| StoreError::io("cannot read", &self.path, e))?;
            match fs::metadata(&self.path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(f),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("cannot read", &self.path, e)),
            }
        }
    }

    /// The latest receipt of each of `slots` (records that do not
    /// authenticate are skipped). Reads the record once, in pieces;
    /// memory is bounded by the number of slots asked for. An absent record
    /// is empty.
    pub fn lookup(
        &self,
        key: &StagingKey,
        slots: &HashSet<Slot>,
    ) -> Result<HashMap<Slot, Receipt>> {
        let mut found = HashMap::new();
        if slots.is_empty() || !self.path.exists() {
            return Ok(found);
        }
        let f = self.open()?;
        f.lock_shared()
            .map_err(|e| StoreError::io("cannot lock", &self.path, e))?;
        self.scan(&f, key, |r| {
            if slots.contains(&r.slot) {
                found.insert(r.slot, r);
            }
        })?;
        Ok(found)
    }

    /// Calls `each` on every authentic record, oldest first.
    fn scan(
        &self,
        mut f: &fs::File,
        key: &StagingKey,
        mut each: impl FnMut(Receipt),
    ) -> Result<()> {
        let read_err = |e| StoreError::io("cannot read", &self.path, e);
        f.seek(SeekFrom::Start(0)).map_err(read_err)?;
        let mut buf = vec![0u8; RECORD_LEN * 4096];
        let mut have = 0usize;
        loop {
            let n = f.read(&mut buf[have..]).map_err(read_err)?;
            have += n;
            let whole = have - have % RECORD_LEN;
            for rec in buf[..whole].chunks_exact(RECORD_LEN) {
                if let Some(r) = decode(key, rec) {
                    each(r);
                }
            }
            buf.copy_within(whole..have, 0);
            have -= whole;
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// Appends `receipts` in one write (a torn tail of an earlier crash is
    /// cut first, so records stay aligned) and makes them durable;
    /// rewrites the record first when it has grown past [`COMPACT_BYTES`].
    pub fn append(&self, key: &StagingKey, receipts: &[Receipt]) -> Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let mut f = self.open_locked()?;
        let size = |f: &fs::File| {
            f.metadata()
                .map(|m| m.len())
                .map_err(|e| StoreError::io("cannot read", &self.path, e))
        };
        if size(&f)? >= COMPACT_BYTES {
            // A rewrite that fails (a full disk) must not stop the appends:
            // the record only grows past the threshold meanwhile.
            match self.compact(&f, key) {
                Ok(()) => f = self.open_locked()?,
                Err(e) => tracing::warn!("cannot rewrite the receipts ({e}); appending"),
            }
        }
        let len = size(&f)?;
        let aligned = len - len % RECORD_LEN as u64;
        if aligned != len {
            fileops::set_len(&f, aligned, &self.path)
                .map_err(|e| StoreError::io("cannot write", &self.path, e))?;
        }
        let mut out = Vec::with_capacity(receipts.len() * RECORD_LEN);
        for r in receipts {
            encode(key, r, &mut out);
        }
        let mut w = &f;
        w.seek(SeekFrom::Start(aligned))
            .and_then(|_| w.write_all(&out))
            .map_err(|e| StoreError::io("cannot write", &self.path, e))?;
        fileops::sync_data(&f, &self.path).map_err(|e| StoreError::io("cannot sync", &self.path, e))
    }

    /// Replaces the record (atomically) with the latest record of each
    /// slot, the [`MAX_SLOTS`] most recent, under the caller's exclusive
    /// lock on the old file.
    fn compact(&self, f: &fs::File, key: &StagingKey) -> Result<()> {
        let mut latest: HashMap<Slot, (u64, Receipt)> = HashMap::new();
        let mut seq = 0u64;
        self.scan(f, key, |r| {
            seq += 1;
            latest.insert(r.slot, (seq, r));
        })?;
        let mut keep: Vec<(u64, Receipt)> = latest.into_values().collect();
        keep.sort_unstable_by_key(|(s, _)| *s);
        let skip = keep.len().saturating_sub(MAX_SLOTS);
        let mut out = Vec::with_capacity((keep.len() - skip) * RECORD_LEN);
        for (_, r) in &keep[skip..] {
            encode(key, r, &mut out);
        }
        fsutil::write_atomic(&self.path, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::Keypair;

    fn key() -> StagingKey {
        StagingKey::from_identity(&Keypair::generate().unwrap())
    }

    fn receipt(n: u8, v: u8) -> Receipt {
        Receipt {
            slot: Slot([n; 16]),
            version: [v; 32],
            object: [n ^ v; 16],
        }
    }

    fn wanted(slots: &[u8]) -> HashSet<Slot> {
        slots.iter().map(|n| Slot([*n; 16])).collect()
    }

    #[test]
    fn the_latest_receipt_of_a_slot_wins_and_only_asked_slots_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (r, k) = (Receipts::new(dir.path()), key());
        assert!(
            r.lookup(&k, &wanted(&[1])).unwrap().is_empty(),
            "no record yet"
        );
        r.append(&k, &[receipt(1, 1), receipt(2, 1)]).unwrap();
        r.append(&k, &[receipt(1, 2)]).unwrap();
        let got = r.lookup(&k, &wanted(&[1, 3])).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[&Slot([1; 16])], receipt(1, 2));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("received"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn records_under_another_key_or_damaged_count_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (r, k) = (Receipts::new(dir.path()), key());
        r.append(&key(), &[receipt(1, 1)]).unwrap();
        assert!(
            r.lookup(&k, &wanted(&[1])).unwrap().is_empty(),
            "another node's key"
        );
        r.append(&k, &[receipt(2, 1)]).unwrap();
        let path = dir.path().join("received");
        let mut b = fs::read(&path).unwrap();
        b[RECORD_LEN + 20] ^= 1;
        fs::write(&path, &b).unwrap();
        assert!(
            r.lookup(&k, &wanted(&[2])).unwrap().is_empty(),
            "a flipped bit"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let (r, k) = (Receipts::new(dir.path()), key());
        r.append(&k, &[receipt(1, 1)]).unwrap();
        let path = dir.path().join("received");
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[7; 33]).unwrap();
        drop(f);
        r.append(&k, &[receipt(2, 1)]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * RECORD_LEN as u64);
        assert_eq!(r.lookup(&k, &wanted(&[1, 2])).unwrap().len(), 2);
    }

    #[test]
    fn a_grown_record_is_rewritten_with_one_receipt_per_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (r, k) = (Receipts::new(dir.path()), key());
        let path = dir.path().join("received");
        // Past the threshold with few slots: 16 MiB of rewrites of 4 slots.
        let batch: Vec<Receipt> = (0..4096u32)
            .map(|i| receipt((i % 4) as u8, (i / 4 % 251) as u8))
            .collect();
        let per = (batch.len() * RECORD_LEN) as u64;
        for _ in 0..=(COMPACT_BYTES / per) {
            r.append(&k, &batch).unwrap();
        }
        assert!(fs::metadata(&path).unwrap().len() >= COMPACT_BYTES);
        r.append(&k, &[receipt(9, 9)]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 5 * RECORD_LEN as u64);
        let got = r.lookup(&k, &wanted(&[0, 1, 2, 3, 9])).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[&Slot([3; 16])], *batch.last().unwrap());
    }
}
