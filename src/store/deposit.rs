//! Sealed deposits at rest (`vault/deposits/`, `docs/VAULT.md`,
//! *Deposits*): files another node left here sealed to *its own* vault
//! key. This node keeps the ciphertext (`<id>.obj`, the object data
//! format), the depositor's envelope (`<id>.env`, opaque: only its clear
//! fields are read) and a clear record (`<id>.dep`: depositor, size, chunk
//! size, ciphertext digest, time). It can list, count, verify and remove
//! them without any key or passphrase — the daemon does — and can never
//! open them: nothing here may ever try a key of this vault on a deposit.
//!
//! The rename of `<id>.dep` into `deposits/` is the commit: a `.obj` or
//! `.env` without its `.dep` is a leftover of an interrupted commit,
//! never listed, removed by the next unlock that runs cleanup.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::PathBuf,
};

use super::{
    error::{Result, StoreError},
    fileops,
    format::{DepositRecord, EnvelopeFile},
    fsutil,
    home::format_error,
    vault::{check_ciphertext, id_hex, now_ms, ObjectWriter, Problem, Vault, VerifyReport},
};
use crate::crypto::{chunk::FileId, keys::PublicKey};

/// Largest envelope file read.
const MAX_ENVELOPE_FILE: u64 = 64 * 1024;

/// A sealed deposit as listed: what this node knows of it in clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deposit {
    /// Object id.
    pub id: FileId,
    /// The node that deposited it (the only one that can open it).
    pub depositor: PublicKey,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// When stored here, unix milliseconds.
    pub added_ms: u64,
    /// Ciphertext digest of the data file.
    pub ct_digest: [u8; 32],
}

impl From<DepositRecord> for Deposit {
    fn from(r: DepositRecord) -> Self {
        Self {
            id: r.id,
            depositor: r.depositor,
            size: r.size,
            chunk_size: r.chunk_size,
            added_ms: r.added_ms,
            ct_digest: r.ct_digest,
        }
    }
}

/// The deposits found, and the records that could not be read.
#[derive(Debug, Default)]
pub struct DepositList {
    /// Committed deposits, oldest first.
    pub deposits: Vec<Deposit>,
    /// Damaged or unreadable `.dep` records (skipped).
    pub problems: Vec<Problem>,
}

/// The files of `deposits/`, by id.
#[derive(Default)]
struct Files {
    dep: BTreeMap<FileId, ()>,
    other: BTreeMap<FileId, Vec<PathBuf>>,
}

impl Vault {
    /// The deposits directory (`vault/deposits`).
    pub(crate) fn deposits_dir(&self) -> PathBuf {
        self.dir().join("deposits")
    }

    fn deposit_file(&self, id: &FileId, ext: &str) -> PathBuf {
        self.deposits_dir().join(format!("{}.{ext}", id_hex(id)))
    }

    /// The data file of a deposit (sealed chunks, object data format),
    /// for serving it back to its depositor.
    pub fn deposit_data_path(&self, id: &FileId) -> PathBuf {
        self.deposit_file(id, "obj")
    }

    /// Serialises deposit commits and removals (an exclusive `flock` on
    /// the directory itself): held only for renames and unlinks.
    fn lock_deposits(&self) -> Result<File> {
        let dir = self.deposits_dir();
        fsutil::create_private_dir(&dir)?;
        let f = File::open(&dir).map_err(|e| StoreError::io("cannot open", &dir, e))?;
        f.lock()
            .map_err(|e| StoreError::io("cannot lock", &dir, e))?;
        Ok(f)
    }

    fn deposit_files(&self) -> Result<Files> {
        let dir = self.deposits_dir();
        let mut files = Files::default();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            // A vault made before deposits existed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
            Err(e) => return Err(StoreError::io("cannot list", &dir, e)),
        };
        for e in rd {
            let e = e.map_err(|e| StoreError::io("cannot list", &dir, e))?;
            let name = e.file_name();
            let Some((stem, ext)) = name.to_str().and_then(|n| n.split_once('.')) else {
                continue;
            };
            let Some(id) = (stem.len() == 32)
                .then(|| crate::crypto::from_hex::<16>(stem))
                .flatten()
            else {
                continue;
            };
            match ext {
                "dep" => {
                    files.dep.insert(id, ());
                }
                "obj" | "env" => files.other.entry(id).or_default().push(e.path()),
                _ => {}
            }
        }
        Ok(files)
    }

    /// True when `deposits/` holds any deposit file (committed or not).
    pub(crate) fn has_deposit_files(&self) -> Result<bool> {
        let f = self.deposit_files()?;
        Ok(!f.dep.is_empty() || !f.other.is_empty())
    }

    /// Reads one committed deposit's record.
    pub fn deposit(&self, id: &FileId) -> Result<Deposit> {
        let p = self.deposit_file(id, "dep");
        if !p.exists() {
            return Err(StoreError::NotFound { query: id_hex(id) });
        }
        let bytes = fsutil::read_limited(&p, 4096)?;
        let rec = DepositRecord::decode(&bytes).map_err(|e| format_error(&p, e))?;
        if &rec.id != id {
            return Err(StoreError::corrupt(
                p.display().to_string(),
                "record of another deposit (renamed or swapped)",
            ));
        }
        Ok(rec.into())
    }

    /// Every committed deposit, oldest first, and the records that could
    /// not be read (named by id; never a reason to fail).
    pub fn deposit_scan(&self) -> Result<DepositList> {
        let mut list = DepositList::default();
        for id in self.deposit_files()?.dep.keys() {
            match self.deposit(id) {
                Ok(d) => list.deposits.push(d),
                Err(e) => list.problems.push(Problem {
                    id: *id,
                    name: None,
                    what: format!("sealed deposit record unreadable: {e}"),
                }),
            }
        }
        list.deposits
            .sort_by(|a, b| a.added_ms.cmp(&b.added_ms).then(a.id.cmp(&b.id)));
        Ok(list)
    }

    /// Every committed deposit, oldest first; damaged records are skipped
    /// (with a warning; [`Self::deposit_scan`] names them).
    pub fn deposits(&self) -> Result<Vec<Deposit>> {
        let list = self.deposit_scan()?;
        for p in &list.problems {
            tracing::warn!("skipped damaged deposit {p}");
        }
        Ok(list.deposits)
    }

    /// The deposits of one depositor, oldest first.
    pub fn deposits_of(&self, depositor: &PublicKey) -> Result<Vec<Deposit>> {
        let mut all = self.deposits()?;
        all.retain(|d| &d.depositor == depositor);
        Ok(all)
    }

    /// Plaintext bytes a depositor keeps here (for its quota).
    pub fn deposit_usage(&self, depositor: &PublicKey) -> Result<u64> {
        self.deposits_of(depositor)?
            .iter()
            .try_fold(0u64, |sum, d| sum.checked_add(d.size))
            .ok_or_else(|| StoreError::corrupt("vault/deposits", "deposit sizes overflow"))
    }

    /// The deposit a user names: its full id or a unique id prefix (8+ hex
    /// digits). `None` when no deposit matches.
    pub fn resolve_deposit(&self, query: &str) -> Result<Option<Deposit>> {
        let q = query.trim().to_ascii_lowercase();
        if q.len() < 8 || q.len() > 32 || !q.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let hits: Vec<Deposit> = self
            .deposits()?
            .into_iter()
            .filter(|d| id_hex(&d.id).starts_with(&q))
            .collect();
        match hits.len() {
            0 | 1 => Ok(hits.into_iter().next()),
            _ => Err(StoreError::Ambiguous {
                query: query.to_owned(),
                candidates: hits
                    .iter()
                    .map(|d| {
                        format!(
                            "  {}  sealed deposit from {}",
                            id_hex(&d.id),
                            d.depositor.fingerprint()
                        )
                    })
                    .collect(),
            }),
        }
    }

    /// The depositor's envelope of a committed deposit, as stored (for
    /// serving it back). Its clear fields are checked against the id.
    pub fn deposit_envelope(&self, id: &FileId) -> Result<Vec<u8>> {
        let d = self.deposit(id)?;
        let p = self.deposit_file(id, "env");
        let bytes = fsutil::read_limited(&p, MAX_ENVELOPE_FILE)?;
        let env = EnvelopeFile::decode(&bytes).map_err(|e| format_error(&p, e))?;
        if &env.id != id || env.ct_digest != d.ct_digest {
            return Err(StoreError::corrupt(
                p.display().to_string(),
                "envelope of another deposit (swapped)",
            ));
        }
        Ok(bytes)
    }

    /// Checks a deposit without any key: its record, its envelope's clear
    /// fields (id, ciphertext digest) and the ciphertext digest, header and
    /// length of its data file. Damage is [`StoreError::Damaged`].
    pub fn verify_deposit(&self, id: &FileId) -> Result<()> {
        if !self.deposit_file(id, "dep").exists() {
            return Err(StoreError::NotFound { query: id_hex(id) });
        }
        self.check_deposit(id).map_err(|what| StoreError::Damaged {
            problems: vec![Problem {
                id: *id,
                name: None,
                what,
            }
            .to_string()],
        })
    }

    /// What is wrong with a deposit, if anything.
    fn check_deposit(&self, id: &FileId) -> Result<(), String> {
        let d = self
            .deposit(id)
            .map_err(|e| format!("sealed deposit record: {e}"))?;
        let from = format!("sealed deposit from {}", d.depositor.fingerprint());
        let p = self.deposit_file(id, "env");
        let env = fsutil::read_limited(&p, MAX_ENVELOPE_FILE)
            .and_then(|b| EnvelopeFile::decode(&b).map_err(|e| format_error(&p, e)))
            .map_err(|e| format!("{from}: envelope: {e}"))?;
        if &env.id != id || env.ct_digest != d.ct_digest {
            return Err(format!(
                "{from}: envelope belongs to another deposit (swapped)"
            ));
        }
        check_ciphertext(
            &self.deposit_data_path(id),
            id,
            &d.ct_digest,
            Some((d.size, d.chunk_size)),
        )
        .map_err(|w| format!("{from}: {w}"))
    }

    /// Adds every deposit's check to a verification report; deposit files
    /// without a record count as leftovers.
    pub(crate) fn verify_deposits(&self, report: &mut VerifyReport) -> Result<()> {
        let files = self.deposit_files()?;
        for id in files.dep.keys() {
            report.checked += 1;
            if let Err(what) = self.check_deposit(id) {
                report.problems.push(Problem {
                    id: *id,
                    name: None,
                    what,
                });
            }
        }
        report.leftovers += files
            .other
            .keys()
            .filter(|id| !files.dep.contains_key(*id))
            .count();
        Ok(())
    }

    /// Removes a deposit: its record first (after that it is not listed;
    /// a crash leaves leftovers that cleanup removes), then its files.
    pub fn remove_deposit(&self, id: &FileId) -> Result<()> {
        let _guard = self.lock_deposits()?;
        let dep = self.deposit_file(id, "dep");
        if !dep.exists() {
            return Err(StoreError::NotFound { query: id_hex(id) });
        }
        let dir = self.deposits_dir();
        fsutil::remove_if_exists(&dep)?;
        fsutil::fsync_dir(&dir)?;
        fsutil::remove_if_exists(&self.deposit_file(id, "env"))?;
        fsutil::remove_if_exists(&self.deposit_data_path(id))?;
        fsutil::fsync_dir(&dir)
    }

    /// Removes the leftovers of interrupted deposit commits and removals
    /// (`.obj` or `.env` without `.dep`, `*.tmp`). Only while no store is
    /// in progress (the caller holds the store lock exclusively). Returns
    /// how many files went.
    pub(crate) fn clean_deposit_leftovers(&self) -> Result<usize> {
        let files = self.deposit_files()?;
        let mut removed = 0;
        for (id, paths) in &files.other {
            if files.dep.contains_key(id) {
                continue;
            }
            for p in paths {
                fsutil::remove_if_exists(p)?;
                removed += 1;
            }
        }
        let dir = self.deposits_dir();
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    fsutil::remove_if_exists(&e.path())?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            fsutil::fsync_dir(&dir)?;
        }
        Ok(removed)
    }
}

impl ObjectWriter<'_> {
    /// Commits a complete object as a sealed deposit of `depositor`,
    /// without any key: `envelope` (the depositor's, sealed to its own
    /// vault key) must name this object and its ciphertext digest, which
    /// is computed both from the recorded chunk hashes and from the data on
    /// disk (a resumed partial's bytes are not trusted), and the data file
    /// must have its exact length. Then: data file and envelope into
    /// `deposits/` ([`ObjectWriter::publish`]), and the record by atomic
    /// replace — its rename is the commit.
    pub(crate) fn commit_deposit(mut self, depositor: &PublicKey, envelope: &[u8]) -> Result<()> {
        let id = self.header().id;
        let env = EnvelopeFile::decode(envelope).map_err(|e| {
            StoreError::corrupt(format!("deposit {}", id_hex(&id)), format!("envelope: {e}"))
        })?;
        let bad = |what: &str| StoreError::corrupt(format!("deposit {}", id_hex(&id)), what);
        if env.id != id {
            return Err(bad("the envelope names another object"));
        }
        if self.ct_digest()? != env.ct_digest {
            return Err(bad(
                "the ciphertext digest of the chunks received does not match the envelope",
            ));
        }
        let (size, chunk_size) = (self.size(), self.header().chunk_size);
        check_ciphertext(
            self.staging_path(),
            &id,
            &env.ct_digest,
            Some((size, chunk_size)),
        )
        .map_err(|w| bad(&format!("data on disk: {w}")))?;
        let v = self.vault();
        let guard = v.lock_deposits()?;
        if v.deposit_file(&id, "dep").exists() {
            return Err(StoreError::Invalid(format!(
                "a deposit with id {} is already stored here",
                id_hex(&id)
            )));
        }
        let dir = v.deposits_dir();
        self.publish(envelope, &dir)?;
        self.mark_committed();
        let rec = DepositRecord {
            id,
            depositor: *depositor,
            size,
            chunk_size,
            ct_digest: env.ct_digest,
            added_ms: now_ms(),
        };
        if let Err(e) = fsutil::write_atomic(&v.deposit_file(&id, "dep"), &rec.encode()) {
            // Never half: a record whose rename took effect before its
            // directory fsync failed goes too, with what it describes.
            let _ = fileops::remove_file(&v.deposit_file(&id, "dep"));
            let _ = fileops::remove_file(&v.deposit_file(&id, "env"));
            let _ = fileops::remove_file(&v.deposit_data_path(&id));
            return Err(e);
        }
        drop(guard);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::{
        chunk::{chunk_count, chunk_plain_len, sealed_chunk_hash, FileKey},
        kdf::KdfParams,
        keys::Keypair,
    };
    use crate::store::{
        format::{Kind, Metadata, ObjectHeader},
        partial::{PartialMeta, Slot},
        vault::seal_envelope,
    };
    use std::path::Path;

    /// A plaintext marker that must never appear on the storing node.
    pub(crate) const MARKER: &[u8] = b"TOP-SECRET-DEPOSIT-MARKER";
    pub(crate) const NAME: &str = "Merger-Plan-Deposit.txt";

    pub(crate) fn new_vault(dir: &Path) -> Vault {
        let params = KdfParams {
            m_kib: 8192,
            t: 1,
            p: 1,
        };
        Vault::create(dir, b"pw", params).unwrap();
        Vault::open(dir).unwrap()
    }

    pub(crate) fn content(n: usize) -> Vec<u8> {
        let mut v: Vec<u8> = MARKER.iter().copied().cycle().take(n).collect();
        v.extend_from_slice(MARKER);
        v
    }

    /// What a depositor sends: the chunks sealed under a fresh file key,
    /// and an envelope sealed to `to` (the depositor's own vault key).
    pub(crate) struct Sealed {
        pub id: FileId,
        pub chunks: Vec<Vec<u8>>,
        pub envelope: Vec<u8>,
        pub size: u64,
    }

    pub(crate) fn seal_for(to: &PublicKey, data: &[u8]) -> Sealed {
        let id: FileId = crate::crypto::random().unwrap();
        let key = FileKey::generate().unwrap();
        let (size, cs) = (data.len() as u64, 4096u32);
        let n = chunk_count(size, cs);
        let mut chunks = Vec::new();
        let mut at = 0;
        for i in 0..n {
            let len = chunk_plain_len(size, cs, i);
            chunks.push(
                key.seal_chunk(&id, i, i + 1 == n, &data[at..at + len])
                    .unwrap(),
            );
            at += len;
        }
        let hashes: Vec<[u8; 32]> = chunks.iter().map(|c| sealed_chunk_hash(c)).collect();
        let meta = Metadata {
            kind: Kind::File,
            size,
            chunk_size: cs,
            blake3: crate::crypto::blake3(data),
            added_ms: 1,
            mtime: 2,
            mode: 0o600,
            origin: None,
            name: NAME.into(),
        };
        let envelope = seal_envelope(
            to,
            id,
            crate::crypto::chunk::ct_digest(&hashes),
            key.secret(),
            &meta,
        )
        .unwrap();
        Sealed {
            id,
            chunks,
            envelope,
            size,
        }
    }

    /// Receives `s` into `b` through a keyless partial (as the daemon
    /// will), without committing it.
    pub(crate) fn receive<'v>(b: &'v Vault, s: &Sealed) -> crate::store::partial::Partial<'v> {
        let mut p = b
            .start_partial(PartialMeta {
                slot: Slot(s.id),
                version: [0; 32],
                file_id: s.id,
                size: s.size,
                chunk_size: 4096,
                sealed_key: None,
                label: Vec::new(),
            })
            .unwrap();
        // The sender's own key, sealed to itself, for resume: opaque here.
        p.set_sealed_key(vec![0x5a; crate::store::partial::SEALED_KEY_LEN]);
        for (i, c) in s.chunks.iter().enumerate().rev() {
            let leaf = sealed_chunk_hash(c);
            p.write_chunk(i as u64, c.clone(), leaf).unwrap();
        }
        assert!(!p.has_key());
        p
    }

    /// Stores `data` in `b` as a deposit of `depositor` sealed to `to`.
    pub(crate) fn deposit(b: &Vault, depositor: &PublicKey, to: &PublicKey, data: &[u8]) -> Sealed {
        let s = seal_for(to, data);
        receive(b, &s)
            .finish_deposit(depositor, &s.envelope)
            .unwrap();
        s
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                all_files(&p, out);
            } else {
                out.push(p);
            }
        }
    }

    #[test]
    fn a_deposit_is_listed_counted_and_verified_without_any_key() {
        let d = tempfile::tempdir().unwrap();
        let b = new_vault(&d.path().join("b"));
        let (a, c) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
        let s1 = deposit(&b, &a.public(), &a.public(), &content(10_000));
        let s2 = deposit(&b, &a.public(), &a.public(), &content(0));
        let s3 = deposit(&b, &c.public(), &c.public(), &content(5000));
        let all = b.deposits().unwrap();
        assert_eq!(all.len(), 3);
        let mine = b.deposits_of(&a.public()).unwrap();
        assert_eq!(mine.len(), 2);
        assert_eq!(b.deposit_usage(&a.public()).unwrap(), s1.size + s2.size);
        assert_eq!(b.deposit_usage(&c.public()).unwrap(), s3.size);
        let nobody = Keypair::generate().unwrap().public();
        assert_eq!(b.deposit_usage(&nobody).unwrap(), 0);
        for s in [&s1, &s2, &s3] {
            b.verify_deposit(&s.id).unwrap();
            assert_eq!(b.deposit_envelope(&s.id).unwrap(), s.envelope);
            let dep = b.deposit(&s.id).unwrap();
            assert_eq!(dep.size, s.size);
            assert_eq!(dep.chunk_size, 4096);
        }
        // Staging holds nothing once committed.
        assert!(names(&d.path().join("b/staging")).is_empty());
        let report = b.verify_ciphertext(&mut |_, _| {}).unwrap();
        assert_eq!((report.checked, report.leftovers), (3, 0));
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // The same id twice is refused, and the first stays intact.
        let again = Sealed {
            id: s1.id,
            chunks: s1.chunks.clone(),
            envelope: s1.envelope.clone(),
            size: s1.size,
        };
        assert!(receive(&b, &again)
            .finish_deposit(&a.public(), &again.envelope)
            .is_err());
        b.verify_deposit(&s1.id).unwrap();
        let prefix = &id_hex(&s1.id)[..10];
        assert_eq!(b.resolve_deposit(prefix).unwrap().unwrap().id, s1.id);
        b.remove_deposit(&s1.id).unwrap();
        assert!(matches!(
            b.remove_deposit(&s1.id),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(b.deposits().unwrap().len(), 2);
        assert!(!b.deposit_data_path(&s1.id).exists());
    }

    #[test]
    fn the_storing_node_cannot_open_a_deposit_and_keeps_no_plaintext() {
        let d = tempfile::tempdir().unwrap();
        let bdir = d.path().join("b");
        let b = new_vault(&bdir);
        let a = Keypair::generate().unwrap();
        let s = deposit(&b, &a.public(), &a.public(), &content(20_000));
        let u = b.unlock(b"pw").unwrap();
        // Not an object of B's, not a problem, and no key of B's opens it.
        assert!(u.entries().is_empty());
        assert!(u.problems().is_empty(), "{:?}", u.problems());
        let Err(err) = u.open_envelope_bytes(&s.envelope) else {
            panic!("B opened A's deposit");
        };
        assert!(matches!(err, StoreError::ForeignEnvelope { .. }), "{err}");
        assert!(u.known_public_keys() == vec![b.public_key()]);
        drop(u);
        let mut files = Vec::new();
        all_files(&bdir, &mut files);
        assert!(files.len() >= 6, "{files:?}");
        for f in files {
            let bytes = fs::read(&f).unwrap();
            for needle in [MARKER, NAME.as_bytes()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds plaintext",
                    f.display()
                );
            }
        }
    }

    #[test]
    fn verify_detects_a_flipped_byte_and_a_swapped_envelope() {
        let d = tempfile::tempdir().unwrap();
        let b = new_vault(&d.path().join("b"));
        let a = Keypair::generate().unwrap();
        let s1 = deposit(&b, &a.public(), &a.public(), &content(9000));
        let s2 = deposit(&b, &a.public(), &a.public(), &content(3000));
        let obj = b.deposit_data_path(&s1.id);
        let mut bytes = fs::read(&obj).unwrap();
        bytes[ObjectHeader::LEN as usize + 100] ^= 1;
        fs::write(&obj, &bytes).unwrap();
        let err = b.verify_deposit(&s1.id).unwrap_err();
        assert!(
            matches!(&err, StoreError::Damaged { problems } if problems[0].contains("digest")),
            "{err}"
        );
        // s2's envelope replaced by s1's.
        fs::copy(b.deposit_file(&s1.id, "env"), b.deposit_file(&s2.id, "env")).unwrap();
        let err = b.verify_deposit(&s2.id).unwrap_err();
        assert!(
            matches!(&err, StoreError::Damaged { problems } if problems[0].contains("swapped")),
            "{err}"
        );
        assert!(b.deposit_envelope(&s2.id).is_err());
        let report = b.verify_ciphertext(&mut |_, _| {}).unwrap();
        assert_eq!(report.checked, 2);
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        // A truncated data file too.
        let f = fs::OpenOptions::new().write(true).open(&obj).unwrap();
        f.set_len(bytes.len() as u64 - 1).unwrap();
        assert!(b.verify_deposit(&s1.id).is_err());
        // Deposits are damage for verify, never for an unlock.
        let u = b.unlock(b"pw").unwrap();
        assert!(u.problems().is_empty());
        assert_eq!(u.verify_full(&mut |_, _| {}).unwrap().problems.len(), 2);
    }

    #[test]
    fn leftovers_of_each_commit_step_are_never_listed_and_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let bdir = d.path().join("b");
        let b = new_vault(&bdir);
        let a = Keypair::generate().unwrap().public();
        let kept = deposit(&b, &a, &a, &content(100));
        let dir = b.deposits_dir();
        // Each step of a commit, stopped just before its end.
        let steps: [&[&str]; 4] = [&[], &["obj"], &["obj", "env"], &["obj", "env", "dep.tmp"]];
        for step in steps {
            let s = seal_for(&a, &content(5000));
            let mut p = receive(&b, &s);
            // The data is in staging and made durable, the envelope staged.
            p.checkpoint().unwrap();
            fs::write(
                bdir.join("staging")
                    .join(format!("part-{}.env", id_hex(&s.id))),
                &s.envelope,
            )
            .unwrap();
            drop(p);
            let stem = id_hex(&s.id);
            for ext in step {
                let from = match *ext {
                    "obj" => bdir.join("staging").join(format!("part-{stem}.obj")),
                    "env" => bdir.join("staging").join(format!("part-{stem}.env")),
                    _ => {
                        let tmp = dir.join(format!("{stem}.dep.tmp"));
                        fs::write(&tmp, b"half a record").unwrap();
                        continue;
                    }
                };
                fs::rename(from, dir.join(format!("{stem}.{ext}"))).unwrap();
            }
            assert_eq!(b.deposits().unwrap(), vec![b.deposit(&kept.id).unwrap()]);
            assert!(b.resolve_deposit(&stem).unwrap().is_none());
            assert!(b.deposit_envelope(&s.id).is_err());
            let r = b.verify_ciphertext(&mut |_, _| {}).unwrap();
            assert!(r.problems.is_empty() && r.checked == 1, "{:?}", r.problems);
            drop(b.unlock(b"pw").unwrap());
            let stem = id_hex(&kept.id);
            assert_eq!(
                names(&dir),
                vec![
                    format!("{stem}.dep"),
                    format!("{stem}.env"),
                    format!("{stem}.obj")
                ],
                "after {step:?}"
            );
            b.verify_deposit(&kept.id).unwrap();
        }
        // Removed records (a crash after the record's unlink) clean up too.
        fs::remove_file(b.deposit_file(&kept.id, "dep")).unwrap();
        assert!(b.deposits().unwrap().is_empty());
        drop(b.unlock(b"pw").unwrap());
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    }

    #[test]
    fn hostile_records_are_refused_without_panic() {
        let d = tempfile::tempdir().unwrap();
        let b = new_vault(&d.path().join("b"));
        let a = Keypair::generate().unwrap().public();
        let good = deposit(&b, &a, &a, &content(5000));
        let rec = fs::read(b.deposit_file(&good.id, "dep")).unwrap();
        let fix = |mut v: Vec<u8>| {
            let n = v.len() - 32;
            let sum = blake3::hash(&v[..n]);
            v[n..].copy_from_slice(sum.as_bytes());
            v
        };
        let at = |off: usize, b: &[u8]| {
            let mut v = rec.clone();
            v[off..off + b.len()].copy_from_slice(b);
            fix(v)
        };
        // Offsets: magic 8, version 2, id 16, depositor 32, size 8, chunk size 4, count 8.
        let hostile: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"P2PFSDP\0".to_vec(),
            rec[..rec.len() - 1].to_vec(),
            at(8, &[0, 2]),                  // unknown version
            at(58, &u64::MAX.to_be_bytes()), // size
            at(66, &1u32.to_be_bytes()),     // chunk size
            at(70, &7u64.to_be_bytes()),     // chunk count
            at(10, &[0xee; 16]),             // another deposit's id
            fix([rec.clone(), vec![0; 9]].concat()),
            vec![0xff; 4097],
        ];
        for (i, bytes) in hostile.iter().enumerate() {
            let id: FileId = [i as u8 + 1; 16];
            fs::write(b.deposit_file(&id, "dep"), bytes).unwrap();
        }
        let list = b.deposit_scan().unwrap();
        assert_eq!(list.deposits.len(), 1);
        assert_eq!(list.problems.len(), hostile.len(), "{:?}", list.problems);
        assert!(b.deposit_usage(&a).is_ok());
        let r = b.verify_ciphertext(&mut |_, _| {}).unwrap();
        assert_eq!(r.problems.len(), hostile.len());
        // An unlock neither fails nor counts them as its problems.
        assert!(b.unlock(b"pw").unwrap().problems().is_empty());
    }

    #[test]
    fn a_commit_checks_the_envelope_and_the_bytes_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let bdir = d.path().join("b");
        let b = new_vault(&bdir);
        let a = Keypair::generate().unwrap().public();
        let s = seal_for(&a, &content(9000));
        let other = seal_for(&a, &content(9000));
        // Another object's envelope; a damaged one.
        assert!(receive(&b, &s).finish_deposit(&a, &other.envelope).is_err());
        let mut bad = s.envelope.clone();
        bad[20] ^= 1;
        assert!(receive(&b, &s).finish_deposit(&a, &bad).is_err());
        // Missing chunks.
        let mut short = receive(&b, &s);
        short.reset();
        assert!(short.finish_deposit(&a, &s.envelope).is_err());
        // Bytes changed on disk after they were recorded (a resumed
        // partial's data is not trusted).
        let p = receive(&b, &s);
        let staged = bdir
            .join("staging")
            .join(format!("part-{}.obj", id_hex(&s.id)));
        let mut bytes = fs::read(&staged).unwrap();
        bytes[ObjectHeader::LEN as usize + 40] ^= 1;
        fs::write(&staged, &bytes).unwrap();
        let err = p.finish_deposit(&a, &s.envelope).unwrap_err();
        assert!(err.to_string().contains("on disk"), "{err}");
        // A longer data file.
        let p = receive(&b, &s);
        let f = fs::OpenOptions::new().append(true).open(&staged).unwrap();
        std::io::Write::write_all(&mut &f, b"x").unwrap();
        assert!(p.finish_deposit(&a, &s.envelope).is_err());
        assert!(b.deposits().unwrap().is_empty());
        // And the right one commits.
        receive(&b, &s).finish_deposit(&a, &s.envelope).unwrap();
        assert_eq!(b.deposits().unwrap().len(), 1);
    }
}
