//! Shares (`HOME/vault/shares`, `docs/VAULT.md` *Shares*): which trusted
//! peer may retrieve which vault object, each with the object's file key
//! and metadata sealed to that peer's *node* key. The owner writes them
//! with the passphrase (`vault share`); a serving daemon reads them and
//! hands the sealed body to the peer it names, so it serves shared files
//! without the passphrase and without ever holding the vault secret key —
//! and it cannot open a share itself, since only the recipient node can.
//!
//! This module owns the share sealing ([`seal_share`], [`open_share`]) and
//! the file's layout; it never decides who may connect (that is the trust
//! store and the network layer) and never touches the vault's objects.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use super::{
    error::{Result, StoreError},
    format::{
        begin, checked, read_size, with_checksum, EnvelopeBody, FormatError, Kind,
        MAX_ENVELOPE_BODY,
    },
    fsutil,
    home::format_error,
};
use crate::{
    codec::{DecodeError, Reader},
    crypto::{
        aead::TAG_LEN,
        chunk::FileId,
        keys::{Keypair, PublicKey},
        wrap::{unwrap_key, wrap_key_for, WRAP_NONCE},
    },
};

/// Magic of the shares file.
pub const MAGIC_SHARES: &[u8; 8] = b"P2PFSSH\0";
/// HKDF info label of a share's wrap key (followed by the ids it binds).
pub const SHARE_INFO: &[u8] = b"p2pfs/share/v1";
/// Most shares kept.
pub const MAX_SHARES: usize = 100_000;
/// Longest sealed share: ephemeral key, the largest envelope body, tag.
pub const MAX_SHARE_BLOB: usize = 32 + MAX_ENVELOPE_BODY as usize + TAG_LEN;
/// Shortest sealed share (an empty body, which never opens, is still
/// refused by length first).
const MIN_SHARE_BLOB: usize = 32 + TAG_LEN;
/// Fixed part of a record: peer, id, kind, size, chunk size, added, blob length.
const RECORD_FIXED: usize = 32 + 16 + 1 + 8 + 4 + 8 + 2;
/// Largest shares file: header, count, every record at its largest, checksum.
const MAX_FILE: u64 = (10 + 4 + MAX_SHARES * (RECORD_FIXED + MAX_SHARE_BLOB) + 32) as u64;

/// `"p2pfs/share/v1" || owner || peer || id`: the HKDF info and the AEAD
/// associated data of a share, so a share opens only for the peer, owner
/// and object it was made for.
fn binding(owner: &PublicKey, peer: &PublicKey, id: &FileId) -> Vec<u8> {
    let mut v = Vec::with_capacity(SHARE_INFO.len() + 80);
    v.extend_from_slice(SHARE_INFO);
    v.extend_from_slice(owner.as_bytes());
    v.extend_from_slice(peer.as_bytes());
    v.extend_from_slice(id);
    v
}

/// Seals an object's file key and metadata to `peer`'s node key:
/// `ephemeral (32) || AES-256-GCM(body)`, the wrap key from X25519
/// ephemeral-static and HKDF-SHA256 with info
/// `"p2pfs/share/v1" || owner || peer || id`, the same bytes as
/// associated data. `owner` is this node's id.
pub fn seal_share(
    owner: &PublicKey,
    peer: &PublicKey,
    id: &FileId,
    body: &EnvelopeBody,
) -> Result<Vec<u8>> {
    let plain = body.encode();
    if plain.len() > MAX_ENVELOPE_BODY as usize {
        return Err(StoreError::Invalid("file name too long to share".into()));
    }
    let bind = binding(owner, peer, id);
    let (ephemeral, key) = wrap_key_for(peer, &bind)?;
    let sealed = key.seal(WRAP_NONCE, &bind, &plain)?;
    let mut blob = Vec::with_capacity(32 + sealed.len());
    blob.extend_from_slice(ephemeral.as_bytes());
    blob.extend_from_slice(&sealed);
    Ok(blob)
}

/// Opens a share sealed to `me` by `owner` for object `id`. A share made
/// for another peer, by another owner, for another object, or altered,
/// fails (as does a blob of impossible length, before any work).
pub fn open_share(
    me: &Keypair,
    owner: &PublicKey,
    id: &FileId,
    blob: &[u8],
) -> Result<EnvelopeBody> {
    let what = || format!("share of object {}", crate::crypto::to_hex(id));
    if !(MIN_SHARE_BLOB..=MAX_SHARE_BLOB).contains(&blob.len()) {
        return Err(StoreError::corrupt(
            what(),
            "sealed share has an impossible length",
        ));
    }
    let (eph, sealed) = blob.split_at(32);
    let mut e = [0u8; 32];
    e.copy_from_slice(eph);
    let bind = binding(owner, &me.public(), id);
    let key = unwrap_key(me, &PublicKey(e), &bind)?;
    let plain = zeroize::Zeroizing::new(key.open(WRAP_NONCE, &bind, sealed).map_err(|_| {
        StoreError::corrupt(
            what(),
            "does not open: made for another node, by another owner or for another \
             object, or altered",
        )
    })?);
    EnvelopeBody::decode(&plain).map_err(|e| StoreError::corrupt(what(), e.to_string()))
}

/// One share: what the daemon needs to find and describe it without the
/// passphrase, and the sealed body only `peer` can open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareRecord {
    /// The node it is shared with.
    pub peer: PublicKey,
    /// The vault object.
    pub id: FileId,
    /// File or (empty) directory.
    pub kind: Kind,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// When shared, unix milliseconds.
    pub added_ms: u64,
    /// [`seal_share`]'s output.
    pub blob: Vec<u8>,
}

impl ShareRecord {
    /// Shares object `id` (its `body`, from [`super::vault::Unlocked::envelope_body`])
    /// with `peer`, as this node (`owner`), now.
    pub fn seal(
        owner: &PublicKey,
        peer: &PublicKey,
        id: &FileId,
        body: &EnvelopeBody,
    ) -> Result<ShareRecord> {
        Ok(ShareRecord {
            peer: *peer,
            id: *id,
            kind: body.meta.kind,
            size: body.meta.size,
            chunk_size: body.meta.chunk_size,
            added_ms: super::vault::now_ms(),
            blob: seal_share(owner, peer, id, body)?,
        })
    }
}

/// The shares of one vault.
#[derive(Debug)]
pub struct Shares {
    path: PathBuf,
    records: Vec<ShareRecord>,
}

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
    }
}

/// Encodes the shares file (`docs/VAULT.md`, *Shares*).
pub fn encode_shares(records: &[ShareRecord]) -> Vec<u8> {
    let mut w = begin(MAGIC_SHARES);
    w.u32(records.len() as u32);
    for r in records {
        w.bytes(r.peer.as_bytes())
            .bytes(&r.id)
            .u8(kind_byte(r.kind))
            .u64(r.size)
            .u32(r.chunk_size)
            .u64(r.added_ms)
            .u16(r.blob.len() as u16)
            .bytes(&r.blob);
    }
    with_checksum(w)
}

/// Decodes the shares file: magic, version, checksum, then every record
/// with its bounds; at most [`MAX_SHARES`], each (peer, object) once.
pub fn decode_shares(bytes: &[u8]) -> Result<Vec<ShareRecord>, FormatError> {
    let body = checked(bytes, MAGIC_SHARES)?;
    let mut r = Reader::new(&body[10..]);
    let n = r.u32("share count")? as usize;
    if n > MAX_SHARES {
        return Err(DecodeError::Invalid("share count").into());
    }
    // Bound the allocation by the input as well as by the limit.
    let mut out = Vec::with_capacity(n.min(r.remaining() / (RECORD_FIXED + MIN_SHARE_BLOB)));
    let mut seen = HashSet::with_capacity(out.capacity());
    for _ in 0..n {
        let peer = PublicKey(r.array("peer")?);
        let id: FileId = r.array("object id")?;
        let kind = match r.u8("kind")? {
            0 => Kind::File,
            1 => Kind::Dir,
            _ => return Err(DecodeError::Invalid("kind").into()),
        };
        let (size, chunk_size) = read_size(&mut r)?;
        let added_ms = r.u64("added")?;
        let len = r.u16("share length")? as usize;
        if !(MIN_SHARE_BLOB..=MAX_SHARE_BLOB).contains(&len) {
            return Err(DecodeError::Invalid("share length").into());
        }
        let blob = r.bytes(len, "sealed share")?.to_vec();
        if !seen.insert((peer, id)) {
            return Err(DecodeError::Invalid("share listed twice").into());
        }
        out.push(ShareRecord {
            peer,
            id,
            kind,
            size,
            chunk_size,
            added_ms,
            blob,
        });
    }
    r.finish()?;
    Ok(out)
}

impl Shares {
    /// Loads `VAULT_DIR/shares` (empty when there is none).
    pub fn load(vault_dir: &Path) -> Result<Shares> {
        let path = vault_dir.join("shares");
        if !path.exists() {
            return Ok(Shares {
                path,
                records: Vec::new(),
            });
        }
        let bytes = fsutil::read_limited(&path, MAX_FILE)?;
        let records = decode_shares(&bytes).map_err(|e| format_error(&path, e))?;
        Ok(Shares { path, records })
    }

    /// Writes the file (0600, atomic replace).
    pub fn save(&self) -> Result<()> {
        if self.records.len() > MAX_SHARES {
            return Err(StoreError::Invalid(format!(
                "{} shares, more than the {MAX_SHARES} a vault keeps: unshare some first \
                 (`p2pfs vault shares`, `p2pfs vault unshare`)",
                self.records.len()
            )));
        }
        if let Some(r) = self
            .records
            .iter()
            .find(|r| !(MIN_SHARE_BLOB..=MAX_SHARE_BLOB).contains(&r.blob.len()))
        {
            return Err(StoreError::Invalid(format!(
                "share of {} has an impossible length",
                crate::crypto::to_hex(&r.id)
            )));
        }
        fsutil::write_atomic(&self.path, &encode_shares(&self.records))
    }

    /// Every share.
    pub fn records(&self) -> &[ShareRecord] {
        &self.records
    }

    /// Number of shares.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing is shared.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The shares of one peer.
    pub fn for_peer(&self, peer: &PublicKey) -> Vec<&ShareRecord> {
        self.records.iter().filter(|r| &r.peer == peer).collect()
    }

    /// The share of object `id` with `peer`, if any.
    pub fn get(&self, peer: &PublicKey, id: &FileId) -> Option<&ShareRecord> {
        self.records.iter().find(|r| &r.peer == peer && &r.id == id)
    }

    /// Adds a share, replacing the one of the same peer and object.
    /// [`Self::save`] refuses more than [`MAX_SHARES`].
    pub fn add(&mut self, rec: ShareRecord) {
        match self
            .records
            .iter_mut()
            .find(|r| r.peer == rec.peer && r.id == rec.id)
        {
            Some(r) => *r = rec,
            None => self.records.push(rec),
        }
    }

    /// Removes the share of object `id` with `peer`; false when there was none.
    pub fn remove(&mut self, peer: &PublicKey, id: &FileId) -> bool {
        let before = self.records.len();
        self.records.retain(|r| !(&r.peer == peer && &r.id == id));
        self.records.len() != before
    }

    /// Removes every share of object `id` (the object is gone).
    pub fn remove_object(&mut self, id: &FileId) {
        self.records.retain(|r| &r.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::keys::Secret32, store::format::Metadata};
    use proptest::prelude::*;

    fn body(name: &str) -> EnvelopeBody {
        EnvelopeBody {
            file_key: Secret32::from_bytes([7; 32]),
            meta: Metadata {
                kind: Kind::File,
                size: 5000,
                chunk_size: 4096,
                blake3: [1; 32],
                added_ms: 9,
                mtime: -3,
                mode: 0o640,
                origin: None,
                name: name.into(),
            },
        }
    }

    fn kp() -> Keypair {
        Keypair::generate().unwrap()
    }

    #[test]
    fn a_share_opens_only_for_its_peer_owner_and_object() {
        let (owner, peer, other) = (kp(), kp(), kp());
        let id = [3u8; 16];
        let blob = seal_share(&owner.public(), &peer.public(), &id, &body("a/b.txt")).unwrap();
        let b = open_share(&peer, &owner.public(), &id, &blob).unwrap();
        assert_eq!(b.meta, body("a/b.txt").meta);
        assert_eq!(b.file_key.expose(), &[7; 32]);
        // Another peer, another owner, another object.
        assert!(open_share(&other, &owner.public(), &id, &blob).is_err());
        assert!(open_share(&peer, &other.public(), &id, &blob).is_err());
        assert!(open_share(&peer, &owner.public(), &[4; 16], &blob).is_err());
        // The owner itself cannot open what it sealed to the peer.
        assert!(open_share(&owner, &owner.public(), &id, &blob).is_err());
        // Any altered byte, any cut, any extension.
        for i in [0, 31, 32, blob.len() / 2, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 0x40;
            assert!(
                open_share(&peer, &owner.public(), &id, &bad).is_err(),
                "{i}"
            );
        }
        for cut in [0, 1, 32, 47, 48, blob.len() - 1] {
            assert!(open_share(&peer, &owner.public(), &id, &blob[..cut]).is_err());
        }
        let mut long = blob.clone();
        long.push(0);
        assert!(open_share(&peer, &owner.public(), &id, &long).is_err());
        assert!(open_share(&peer, &owner.public(), &id, &vec![0; 1 << 20]).is_err());
        // A low-order ephemeral key is refused, never a panic.
        let mut weak = blob.clone();
        weak[..32].fill(0);
        assert!(open_share(&peer, &owner.public(), &id, &weak).is_err());
    }

    fn rec(peer: u8, id: u8) -> ShareRecord {
        ShareRecord {
            peer: PublicKey([peer; 32]),
            id: [id; 16],
            kind: Kind::File,
            size: 10,
            chunk_size: 4096,
            added_ms: 1,
            blob: vec![peer ^ id; 100],
        }
    }

    #[test]
    fn the_file_round_trips_and_replaces_by_peer_and_object() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Shares::load(d.path()).unwrap();
        assert!(s.is_empty());
        s.add(rec(1, 1));
        s.add(rec(1, 2));
        s.add(rec(2, 1));
        let mut again = rec(1, 1);
        again.size = 77;
        s.add(again.clone());
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(&PublicKey([1; 32]), &[1; 16]), Some(&again));
        assert_eq!(s.for_peer(&PublicKey([1; 32])).len(), 2);
        s.save().unwrap();
        let p = d.path().join("shares");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut s = Shares::load(d.path()).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.remove(&PublicKey([1; 32]), &[2; 16]));
        assert!(!s.remove(&PublicKey([1; 32]), &[2; 16]));
        s.remove_object(&[1; 16]);
        assert!(s.is_empty());
        // A newer version asks for an upgrade; damage is corruption.
        let mut bytes = encode_shares(&[rec(1, 1)]);
        bytes[9] = 2;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            Shares::load(d.path()),
            Err(StoreError::UnsupportedVersion { version: 2, .. })
        ));
        let mut bytes = encode_shares(&[rec(1, 1)]);
        bytes[20] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            Shares::load(d.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Re-encodes a hostile body under a valid header and checksum.
    fn forged(body: &[u8]) -> Vec<u8> {
        let mut w = begin(MAGIC_SHARES);
        w.bytes(body);
        with_checksum(w)
    }

    #[test]
    fn hostile_files_are_refused_by_their_bounds() {
        let one = encode_shares(&[rec(1, 1)]);
        let body = &one[10..one.len() - 32];
        // A count far beyond the input or the limit allocates nothing.
        for count in [u32::MAX, MAX_SHARES as u32 + 1, 2] {
            let mut b = body.to_vec();
            b[..4].copy_from_slice(&count.to_be_bytes());
            assert!(decode_shares(&forged(&b)).is_err(), "{count}");
        }
        // Blob lengths outside the bounds; kinds and sizes out of range.
        for (off, val) in [
            (4 + 32 + 16 + 1 + 8 + 4 + 8, vec![0xff, 0xff]),
            (4 + 32 + 16 + 1 + 8 + 4 + 8, vec![0, 47]),
            (4 + 32 + 16, vec![2]),
            (4 + 32 + 16 + 1 + 8, vec![0, 0, 0, 1]),
        ] {
            let mut b = body.to_vec();
            b[off..off + val.len()].copy_from_slice(&val);
            assert!(decode_shares(&forged(&b)).is_err(), "{off}");
        }
        // The same share twice.
        let two = encode_shares(&[rec(1, 1), rec(1, 1)]);
        assert!(decode_shares(&two).is_err());
        // Trailing bytes.
        let mut b = body.to_vec();
        b.push(0);
        assert!(decode_shares(&forged(&b)).is_err());
    }

    proptest! {
        #[test]
        fn records_round_trip(n in 0usize..6, size in 0u64..(1 << 40), blob in proptest::collection::vec(any::<u8>(), MIN_SHARE_BLOB..300)) {
            let recs: Vec<ShareRecord> = (0..n).map(|i| ShareRecord {
                peer: PublicKey([i as u8; 32]), id: [i as u8; 16], kind: if i % 2 == 0 { Kind::File } else { Kind::Dir },
                size, chunk_size: 1 << 20, added_ms: i as u64, blob: blob.clone() }).collect();
            let enc = encode_shares(&recs);
            prop_assert_eq!(decode_shares(&enc).unwrap(), recs);
            for cut in [0, 10, enc.len() / 2, enc.len() - 1] {
                prop_assert!(decode_shares(&enc[..cut]).is_err());
            }
        }

        #[test]
        fn decoding_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_shares(&data);
            let _ = decode_shares(&forged(&data));
            let k = Keypair::from_secret(Secret32::from_bytes([5; 32]));
            let _ = open_share(&k, &PublicKey([1; 32]), &[0; 16], &data);
        }
    }
}
