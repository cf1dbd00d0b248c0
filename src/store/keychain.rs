//! Old vault keys (`vault/keys`, `docs/VAULT.md`, *Old vault keys*): at
//! every rekey the replaced vault secret key is sealed to the new vault
//! public key and appended, so whoever can unlock the vault can still open
//! what was sealed to any earlier key of it — above all the deposits this
//! node left on other nodes, which it cannot rewrap there.
//!
//! The file is a chain: the current key opens the newest entry, which gives
//! the previous key, which opens the entry before, and so on. A chain that
//! does not open link by link is refused as corrupt, never skipped: a key
//! silently lost is a deposit silently stranded. This module never writes
//! anything but `vault/keys`, and only by atomic replace.

use std::path::{Path, PathBuf};

use super::{
    error::{Result, StoreError},
    format::{KeysFile, OldKeyEntry, MAX_OLD_KEYS},
    fsutil,
    home::format_error,
};
use crate::crypto::{
    keys::{Keypair, PublicKey, Secret32},
    wrap::{unwrap_key_from, wrap_key_from, WRAP_NONCE},
};

/// The keys file of the vault in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join("keys")
}

fn corrupt(dir: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::corrupt(
        path(dir).display().to_string(),
        format!(
            "{}: the old vault keys do not open as a chain (altered, reordered or truncated). \
             Restore vault/keys from a backup; deposits sealed to older vault keys cannot be \
             opened without it",
            detail.into()
        ),
    )
}

/// Seals `old`'s secret key to `to`, authenticated by `old` itself: a
/// sealing anyone could make to the (public) vault key would let whoever
/// can write `vault/keys` slip in an "old key" of their own at the oldest
/// end of the chain, which links correctly.
fn seal(old: &Keypair, to: &PublicKey) -> Result<OldKeyEntry> {
    let ctx = OldKeyEntry::context(&old.public(), to);
    let (ephemeral, key) = wrap_key_from(old, to, &ctx)?;
    let sealed = key.seal(WRAP_NONCE, &ctx, old.secret_bytes().expose())?;
    let mut sealed_sk = [0u8; 48];
    sealed_sk.copy_from_slice(&sealed);
    Ok(OldKeyEntry {
        old_pk: old.public(),
        sealed_to: *to,
        ephemeral,
        sealed_sk,
    })
}

/// Opens an entry with the key it is sealed to; the key found must be the
/// one the entry names.
fn open(holder: &Keypair, e: &OldKeyEntry) -> Result<Keypair, &'static str> {
    if e.sealed_to != holder.public() {
        return Err("an entry is not sealed to the key after it");
    }
    let ctx = OldKeyEntry::context(&e.old_pk, &e.sealed_to);
    let key = unwrap_key_from(holder, &e.old_pk, &e.ephemeral, &ctx)
        .map_err(|_| "an entry does not open")?;
    let sk = zeroize::Zeroizing::new(
        key.open(WRAP_NONCE, &ctx, &e.sealed_sk)
            .map_err(|_| "an entry does not open")?,
    );
    let mut a = [0u8; 32];
    a.copy_from_slice(&sk[..32]);
    let kp = Keypair::from_secret(Secret32::from_bytes(a));
    zeroize::Zeroize::zeroize(&mut a);
    if kp.public() != e.old_pk {
        return Err("an entry holds another key than it names");
    }
    Ok(kp)
}

/// Reads `vault/keys` (empty when absent: a vault never rekeyed, or made
/// before the file existed).
pub(crate) fn load(dir: &Path) -> Result<KeysFile> {
    let p = path(dir);
    if !p.exists() {
        return Ok(KeysFile::default());
    }
    let bytes = fsutil::read_limited(&p, KeysFile::MAX_LEN)?;
    KeysFile::decode(&bytes).map_err(|e| format_error(&p, e))
}

/// Opens every old key of `file`, newest first, starting from `current`
/// (the key `vault/header` holds). `next` is the key of a rekey still in
/// progress (`header.next`): its entry, which holds `current` itself, is
/// checked with it and then passed over.
pub(crate) fn open_chain(
    dir: &Path,
    file: &KeysFile,
    current: &Keypair,
    next: Option<&Keypair>,
) -> Result<Vec<Keypair>> {
    let mut entries = file.entries.as_slice();
    if let (Some(n), Some((last, rest))) = (next, entries.split_last()) {
        if last.sealed_to == n.public() {
            let kp = open(n, last).map_err(|w| corrupt(dir, w))?;
            if kp.public() != current.public() {
                return Err(corrupt(dir, "the newest entry is not the current key"));
            }
            entries = rest;
        }
    }
    let mut keys: Vec<Keypair> = Vec::with_capacity(entries.len());
    for e in entries.iter().rev() {
        let holder = keys.last().unwrap_or(current);
        let kp = open(holder, e).map_err(|w| corrupt(dir, w))?;
        keys.push(kp);
    }
    Ok(keys)
}

/// True when one more old key fits.
pub(crate) fn has_room(dir: &Path) -> Result<bool> {
    Ok(load(dir)?.entries.len() < MAX_OLD_KEYS)
}

/// Records that `old` is replaced by `new`: appends `old` sealed to `new`
/// (atomic replace) unless the newest entry already says so (a resumed
/// rekey). Written before anything names `new` as the current key.
pub(crate) fn record(dir: &Path, old: &Keypair, new: &Keypair) -> Result<()> {
    let mut file = load(dir)?;
    if let Some(last) = file.entries.last() {
        if last.old_pk == old.public() && last.sealed_to == new.public() {
            // Written before a crash; it was checked to open when the vault
            // was unlocked (`open_chain` with `header.next`).
            return Ok(());
        }
    }
    if file.entries.len() >= MAX_OLD_KEYS {
        return Err(StoreError::Invalid(format!(
            "vault/keys already holds {MAX_OLD_KEYS} old vault keys, the most a vault keeps: \
             rekey refused"
        )));
    }
    file.entries.push(seal(old, &new.public())?);
    fsutil::write_atomic(&path(dir), &file.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> (tempfile::TempDir, Vec<Keypair>) {
        let d = tempfile::tempdir().unwrap();
        let keys: Vec<Keypair> = (0..=n).map(|_| Keypair::generate().unwrap()).collect();
        for w in keys.windows(2) {
            record(d.path(), &w[0], &w[1]).unwrap();
        }
        (d, keys)
    }

    #[test]
    fn the_current_key_opens_every_older_one() {
        let (d, keys) = chain(3);
        let file = load(d.path()).unwrap();
        assert_eq!(file.entries.len(), 3);
        let cur = keys.last().unwrap();
        let opened = open_chain(d.path(), &file, cur, None).unwrap();
        let want: Vec<PublicKey> = keys[..3].iter().rev().map(Keypair::public).collect();
        let got: Vec<PublicKey> = opened.iter().map(Keypair::public).collect();
        assert_eq!(got, want);
        // Recording the same step again (a resumed rekey) adds nothing.
        record(d.path(), &keys[2], &keys[3]).unwrap();
        assert_eq!(load(d.path()).unwrap().entries.len(), 3);
        // Another key opens nothing.
        let other = Keypair::generate().unwrap();
        assert!(open_chain(d.path(), &file, &other, None).is_err());
    }

    #[test]
    fn reordered_altered_or_foreign_entries_are_refused() {
        let (d, keys) = chain(3);
        let cur = keys.last().unwrap();
        let file = load(d.path()).unwrap();
        let mut shuffled = file.clone();
        shuffled.entries.swap(0, 1);
        let mut altered = file.clone();
        altered.entries[0].sealed_sk[5] ^= 1;
        let mut renamed = file.clone();
        renamed.entries[1].old_pk = PublicKey([7; 32]);
        // A key of someone else's, sealed to the vault's (public) key the
        // way anyone can, at the oldest end where it links.
        let mut foreign = file.clone();
        let x = Keypair::generate().unwrap();
        let ctx = OldKeyEntry::context(&x.public(), &keys[1].public());
        let (ephemeral, k) = crate::crypto::wrap::wrap_key_for(&keys[1].public(), &ctx).unwrap();
        let mut sealed_sk = [0u8; 48];
        sealed_sk.copy_from_slice(&k.seal(WRAP_NONCE, &ctx, x.secret_bytes().expose()).unwrap());
        foreign.entries[0] = OldKeyEntry {
            old_pk: x.public(),
            sealed_to: keys[1].public(),
            ephemeral,
            sealed_sk,
        };
        for bad in [shuffled, altered, renamed, foreign] {
            let err = open_chain(d.path(), &bad, cur, None).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        }
        // A flipped byte on disk fails the checksum.
        let p = path(d.path());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(load(d.path()), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_pending_rekeys_entry_opens_with_the_next_key() {
        let (d, keys) = chain(2);
        let next = Keypair::generate().unwrap();
        record(d.path(), &keys[2], &next).unwrap();
        let file = load(d.path()).unwrap();
        let opened = open_chain(d.path(), &file, &keys[2], Some(&next)).unwrap();
        assert_eq!(opened.len(), 2);
        assert_eq!(opened[1].public(), keys[0].public());
        // Without the next key, that newest entry is a key this vault lacks.
        assert!(open_chain(d.path(), &file, &keys[2], None).is_err());
    }

    use crate::crypto::chunk::{chunk_count, chunk_plain_len, FileKey, CHUNK_OVERHEAD};
    use crate::store::{
        deposit::tests::{content, deposit, new_vault},
        format::{EnvelopeFile, Kind, Metadata, ObjectHeader},
        vault::{seal_envelope, Vault, CRASH_AT},
    };

    /// An envelope sealed to `to`, as a deposit's or an old object's.
    fn envelope_to(to: &PublicKey) -> (EnvelopeFile, FileKey) {
        let key = FileKey::generate().unwrap();
        let meta = Metadata {
            kind: Kind::File,
            size: 0,
            chunk_size: 4096,
            blake3: crate::crypto::blake3(b""),
            added_ms: 0,
            mtime: 0,
            mode: 0o600,
            origin: None,
            name: "old".into(),
        };
        let bytes = seal_envelope(to, [9; 16], [1; 32], key.secret(), &meta).unwrap();
        (EnvelopeFile::decode(&bytes).unwrap(), key)
    }

    fn opens(v: &Vault, env: &EnvelopeFile, key: &FileKey) {
        let u = v.unlock(b"pw").unwrap();
        let Ok(body) = u.open_envelope_any(env) else {
            panic!("the envelope sealed to an old key does not open");
        };
        assert_eq!(body.file_key.expose(), key.secret().expose());
    }

    #[test]
    fn rekey_twice_an_envelope_sealed_to_the_first_key_still_opens() {
        let d = tempfile::tempdir().unwrap();
        let v = new_vault(&d.path().join("v"));
        let k0 = v.public_key();
        let (env, key) = envelope_to(&k0);
        v.import_dir("d", 0o700, 0).unwrap();
        for _ in 0..2 {
            let mut u = v.unlock(b"pw").unwrap();
            assert_eq!(u.rekey().unwrap(), 1);
        }
        let u = v.unlock(b"pw").unwrap();
        let known = u.known_public_keys();
        assert_eq!(known.len(), 3);
        assert_eq!(known[2], k0);
        assert_ne!(known[0], k0);
        assert_eq!(u.entries().len(), 1);
        drop(u);
        opens(&v, &env, &key);
        assert_eq!(load(&d.path().join("v")).unwrap().entries.len(), 2);
        // Not a key of this vault: a clear error.
        let (foreign, _) = envelope_to(&Keypair::generate().unwrap().public());
        let u = v.unlock(b"pw").unwrap();
        assert!(matches!(
            u.open_envelope_any(&foreign),
            Err(StoreError::ForeignEnvelope { .. })
        ));
    }

    #[test]
    fn a_tampered_or_shuffled_keys_file_fails_the_unlock_as_corrupt() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let v = new_vault(&dir);
        for _ in 0..3 {
            v.unlock(b"pw").unwrap().rekey().unwrap();
        }
        let good = std::fs::read(path(&dir)).unwrap();
        let mut file = load(&dir).unwrap();
        file.entries.swap(0, 2);
        let shuffled = file.encode();
        let mut flipped = good.clone();
        flipped[100] ^= 4;
        let mut truncated = load(&dir).unwrap();
        truncated.entries.pop();
        for bad in [shuffled, flipped, truncated.encode(), b"junk".to_vec()] {
            std::fs::write(path(&dir), &bad).unwrap();
            match v.unlock(b"pw") {
                Err(StoreError::Corrupt { .. }) => {}
                Err(e) => panic!("expected corrupt, got {e}"),
                Ok(_) => panic!("a damaged keys file was accepted"),
            }
        }
        std::fs::write(path(&dir), &good).unwrap();
        assert_eq!(v.unlock(b"pw").unwrap().known_public_keys().len(), 4);
    }

    /// A kill at each step of a rekey (after it, nothing runs): the next
    /// unlock finishes the rekey, no key is lost, and the chain opens.
    #[test]
    fn a_crash_at_every_rekey_step_loses_no_key() {
        for step in [
            "header.next",
            "keys",
            "pin next",
            "rewrap",
            "index",
            "header",
        ] {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("v");
            let v = new_vault(&dir);
            let k0 = v.public_key();
            let (env, key) = envelope_to(&k0);
            v.import_dir("a", 0o700, 0).unwrap();
            v.import_dir("b", 0o700, 0).unwrap();
            v.unlock(b"pw").unwrap().rekey().unwrap();
            let k1 = Vault::open(&dir).unwrap().public_key();
            CRASH_AT.with(|c| c.set(Some(step)));
            let res = v.unlock(b"pw").unwrap().rekey();
            CRASH_AT.with(|c| c.set(None));
            assert!(res.is_err(), "{step}: no crash");
            // The unlock after the crash finishes the rekey.
            let v = Vault::open(&dir).unwrap();
            let u = v.unlock(b"pw").unwrap();
            assert!(!dir.join("header.next").exists(), "{step}");
            let known = u.known_public_keys();
            assert_eq!(known.len(), 3, "{step}");
            assert_eq!(&known[1..], &[k1, k0], "{step}");
            assert_eq!(u.entries().len(), 2, "{step}");
            assert!(u.problems().is_empty(), "{step}: {:?}", u.problems());
            drop(u);
            opens(&v, &env, &key);
            // And the vault rekeys on from there.
            v.unlock(b"pw").unwrap().rekey().unwrap();
            let u = Vault::open(&dir).unwrap();
            let u = u.unlock(b"pw").unwrap();
            assert_eq!(u.known_public_keys().len(), 4, "{step}");
            assert_eq!(load(&dir).unwrap().entries.len(), 3, "{step}");
        }
    }

    /// The A side: a deposit left on B before A rekeys opens with A's
    /// passphrase after it, and its chunks decrypt to the original bytes.
    #[test]
    fn a_rekeyed_depositor_still_opens_its_deposit() {
        let d = tempfile::tempdir().unwrap();
        let a = new_vault(&d.path().join("a"));
        let b = new_vault(&d.path().join("b"));
        let a_node = Keypair::generate().unwrap().public();
        let data = content(10_000);
        let s = deposit(&b, &a_node, &a.public_key(), &data);
        for _ in 0..2 {
            a.unlock(b"pw").unwrap().rekey().unwrap();
        }
        let u = a.unlock(b"pw").unwrap();
        let Ok(body) = u.open_envelope_bytes(&b.deposit_envelope(&s.id).unwrap()) else {
            panic!("A cannot open its own deposit after a rekey");
        };
        assert_eq!(body.meta.size, data.len() as u64);
        let key = FileKey::from_secret(body.file_key.clone());
        let bytes = std::fs::read(b.deposit_data_path(&s.id)).unwrap();
        let h = ObjectHeader::decode(&bytes[..40]).unwrap();
        let (size, cs) = (body.meta.size, body.meta.chunk_size);
        let n = chunk_count(size, cs);
        let mut out = Vec::new();
        for i in 0..n {
            let at = h.chunk_offset(i) as usize;
            let mut c = bytes[at..at + chunk_plain_len(size, cs, i) + CHUNK_OVERHEAD].to_vec();
            out.extend_from_slice(
                key.open_chunk_in_place(&s.id, i, i + 1 == n, &mut c)
                    .unwrap(),
            );
        }
        assert_eq!(out, data);
        assert_eq!(crate::crypto::blake3(&out), body.meta.blake3);
    }
}
