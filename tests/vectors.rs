//! Known-answer vectors for the chunk format and the vault header
//! (`docs/VAULT.md`), committed as files in `tests/vectors/`, including the
//! malformed cases with the error each must give.
//!
//! The normal tests only read the committed files: a change that alters a
//! byte of either format fails here. The sealed chunks are checked against
//! two implementations of AES-256-GCM (ring, which p2pfs uses, and
//! RustCrypto's `aes-gcm`), and the header KEK against the `argon2` crate
//! called directly.
//!
//! To regenerate after a deliberate format change (then bump the version
//! and say so in VAULT.md):
//! `cargo test --test vectors -- --ignored generate_vectors`.

use std::{fs, path::PathBuf};

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Key, Nonce,
};
use p2pfs::{
    codec::Writer,
    crypto::{
        aead::AeadKey,
        chunk::{chunk_ad, FileKey},
        kdf::{derive_kek, KdfParams},
        keys::{Keypair, PublicKey, Secret32},
        wrap::hkdf32,
        CryptoError,
    },
    store::{
        format::{encode_records, HeaderFile, IndexFile},
        vault::Vault,
        StoreError,
    },
};
use serde::{Deserialize, Serialize};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let p = vectors_dir().join(name);
    let s = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    unhex(s)
        .try_into()
        .unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

// ---------------------------------------------------------------- chunk

#[derive(Serialize, Deserialize)]
struct ChunkFile {
    description: String,
    /// Plain AES-256-GCM anchors from the GCM specification (McGrew &
    /// Viega, test cases 13–16), so both implementations are tied to a
    /// published answer and not only to each other.
    gcm: Vec<GcmCase>,
    valid: Vec<ChunkCase>,
    invalid: Vec<BadChunk>,
}

#[derive(Serialize, Deserialize)]
struct GcmCase {
    name: String,
    key: String,
    nonce: String,
    aad: String,
    plaintext: String,
    /// ciphertext || tag
    sealed: String,
}

#[derive(Serialize, Deserialize)]
struct ChunkCase {
    name: String,
    key: String,
    file_id: String,
    index: u64,
    #[serde(rename = "final")]
    is_final: bool,
    nonce: String,
    plaintext: String,
    /// The associated data: "p2pfs/chunk/v1" || file_id || index (u64 BE) || flags.
    ad: String,
    /// nonce || ciphertext || tag
    sealed: String,
}

#[derive(Serialize, Deserialize)]
struct BadChunk {
    name: String,
    key: String,
    file_id: String,
    index: u64,
    #[serde(rename = "final")]
    is_final: bool,
    sealed: String,
    /// `Debug` of the `CryptoError` opening must return.
    error: String,
}

fn rustcrypto_seal(key: &[u8], nonce: &[u8], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
        .encrypt(Nonce::from_slice(nonce), Payload { msg: pt, aad })
        .unwrap()
}

fn rustcrypto_open(key: &[u8], nonce: &[u8], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

fn p2pfs_seal_chunk(c: &ChunkCase) -> Vec<u8> {
    let key = FileKey::from_secret(Secret32::from_bytes(arr(&c.key)));
    let pt = unhex(&c.plaintext);
    let mut buf = vec![0u8; pt.len() + 28];
    buf[12..12 + pt.len()].copy_from_slice(&pt);
    key.seal_chunk_with_nonce(
        arr(&c.nonce),
        &arr(&c.file_id),
        c.index,
        c.is_final,
        &mut buf,
    )
    .unwrap();
    buf
}

#[test]
fn gcm_anchors_agree_with_ring_and_rustcrypto() {
    let f: ChunkFile = load("chunk.json");
    assert!(f.gcm.len() >= 2);
    for c in &f.gcm {
        let (key, nonce, aad, pt) = (
            unhex(&c.key),
            unhex(&c.nonce),
            unhex(&c.aad),
            unhex(&c.plaintext),
        );
        let k = AeadKey::new(&Secret32::from_bytes(key.clone().try_into().unwrap()));
        let ring = k
            .seal(nonce.clone().try_into().unwrap(), &aad, &pt)
            .unwrap();
        assert_eq!(hex::encode(&ring), c.sealed, "{}: ring", c.name);
        let rc = rustcrypto_seal(&key, &nonce, &aad, &pt);
        assert_eq!(hex::encode(&rc), c.sealed, "{}: aes-gcm", c.name);
        assert_eq!(
            k.open(nonce.clone().try_into().unwrap(), &aad, &ring)
                .unwrap(),
            pt
        );
    }
}

#[test]
fn chunk_vectors_seal_to_the_committed_bytes() {
    let f: ChunkFile = load("chunk.json");
    assert!(f.valid.len() >= 5, "chunk.json lost valid cases");
    for c in &f.valid {
        let id: [u8; 16] = arr(&c.file_id);
        let ad = chunk_ad(&id, c.index, c.is_final);
        assert_eq!(hex::encode(ad), c.ad, "{}: associated data", c.name);
        // The AD, built by hand from the spec.
        let mut spec_ad = b"p2pfs/chunk/v1".to_vec();
        spec_ad.extend_from_slice(&id);
        spec_ad.extend_from_slice(&c.index.to_be_bytes());
        spec_ad.push(u8::from(c.is_final));
        assert_eq!(hex::encode(&spec_ad), c.ad, "{}: AD layout", c.name);

        // p2pfs (ring).
        let sealed = p2pfs_seal_chunk(c);
        assert_eq!(hex::encode(&sealed), c.sealed, "{}: p2pfs", c.name);
        // RustCrypto, with the same AD.
        let (key, nonce, pt) = (unhex(&c.key), unhex(&c.nonce), unhex(&c.plaintext));
        let rc = rustcrypto_seal(&key, &nonce, &ad, &pt);
        let expected = unhex(&c.sealed);
        assert_eq!(&expected[..12], &nonce[..], "{}: nonce prefix", c.name);
        assert_eq!(rc, expected[12..], "{}: aes-gcm", c.name);

        // Both open it back.
        let fk = FileKey::from_secret(Secret32::from_bytes(arr(&c.key)));
        let mut buf = expected.clone();
        let opened = fk
            .open_chunk_in_place(&id, c.index, c.is_final, &mut buf)
            .unwrap_or_else(|e| panic!("{}: {e:?}", c.name));
        assert_eq!(opened, &pt[..], "{}", c.name);
        assert_eq!(
            rustcrypto_open(&key, &nonce, &ad, &expected[12..]).as_deref(),
            Some(&pt[..])
        );
    }
}

#[test]
fn malformed_chunks_fail_to_open() {
    let f: ChunkFile = load("chunk.json");
    for needed in [
        "wrong index",
        "wrong final flag",
        "truncated",
        "flipped bit",
    ] {
        assert!(
            f.invalid.iter().any(|c| c.name.contains(needed)),
            "chunk.json has no {needed:?} case"
        );
    }
    for c in &f.invalid {
        let id: [u8; 16] = arr(&c.file_id);
        let fk = FileKey::from_secret(Secret32::from_bytes(arr(&c.key)));
        let mut buf = unhex(&c.sealed);
        let err = fk
            .open_chunk_in_place(&id, c.index, c.is_final, &mut buf)
            .map(|p| p.to_vec())
            .expect_err(&c.name);
        assert_eq!(format!("{err:?}"), c.error, "{}", c.name);
        // RustCrypto agrees that it does not open.
        let sealed = unhex(&c.sealed);
        if sealed.len() >= 28 {
            let ad = chunk_ad(&id, c.index, c.is_final);
            assert!(
                rustcrypto_open(&unhex(&c.key), &sealed[..12], &ad, &sealed[12..]).is_none(),
                "{}: aes-gcm opens it",
                c.name
            );
        }
    }
}

// ---------------------------------------------------------------- header

#[derive(Serialize, Deserialize)]
struct HeaderVectors {
    description: String,
    valid: ValidHeader,
    invalid: Vec<BadHeader>,
}

#[derive(Serialize, Deserialize)]
struct ValidHeader {
    passphrase: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
    vault_sk: String,
    vault_pk: String,
    nonce: String,
    /// Argon2id(passphrase, salt, m_kib, t, p), 32 bytes.
    kek: String,
    /// The whole `vault/header` file.
    file: String,
}

#[derive(Serialize, Deserialize)]
struct BadHeader {
    name: String,
    file: String,
    /// "decode": `HeaderFile::decode` fails with `error` (`Debug` of the
    /// `FormatError`); "open": it decodes, and opening with `passphrase`
    /// fails with `error` (`Debug` of the `CryptoError`).
    stage: String,
    passphrase: Option<String>,
    error: String,
}

/// A vault directory around a header file, with an empty index keyed to
/// `kp` (when known), so the store's own unlock path can be driven.
fn vault_dir_with(header: &[u8], kp: Option<&Keypair>) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let v = d.path();
    fs::create_dir(v.join("objects")).unwrap();
    fs::create_dir(v.join("staging")).unwrap();
    fs::write(v.join("lock"), b"").unwrap();
    fs::write(v.join("header"), header).unwrap();
    if let Some(kp) = kp {
        let body = encode_records(&[]);
        let mut f = IndexFile {
            vault_pk: kp.public(),
            generation: 0,
            nonce: [7; 12],
            sealed_body: vec![0; body.len() + 16],
        };
        let key = AeadKey::new(&hkdf32(
            &kp.secret_bytes(),
            kp.public().as_bytes(),
            b"p2pfs/index/v1",
        ));
        f.sealed_body = key.seal(f.nonce, &f.ad(), &body).unwrap();
        fs::write(v.join("index"), f.encode()).unwrap();
    }
    d
}

#[test]
fn header_vector_decodes_and_opens() {
    let f: HeaderVectors = load("header.json");
    let v = &f.valid;
    let file = unhex(&v.file);
    let h = HeaderFile::decode(&file).unwrap();
    let params = KdfParams {
        m_kib: v.m_kib,
        t: v.t,
        p: v.p,
    };
    assert_eq!(h.params, params);
    assert_eq!(h.salt, arr::<16>(&v.salt));
    assert_eq!(h.vault_pk, PublicKey(arr(&v.vault_pk)));
    assert_eq!(h.nonce, arr::<12>(&v.nonce));
    assert_eq!(h.encode(), file, "re-encoding changed the bytes");

    // The KEK, through p2pfs and through the argon2 crate directly.
    let kek = derive_kek(v.passphrase.as_bytes(), &h.salt, h.params).unwrap();
    assert_eq!(hex::encode(kek.expose()), v.kek);
    let mut direct = [0u8; 32];
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(v.m_kib, v.t, v.p, Some(32)).unwrap(),
    )
    .hash_password_into(v.passphrase.as_bytes(), &h.salt, &mut direct)
    .unwrap();
    assert_eq!(hex::encode(direct), v.kek);

    // The sealed secret key: AD = every byte before the nonce.
    let ad = &file[..file.len() - 32 - 48 - 12];
    assert_eq!(h.ad(), ad);
    let sk = AeadKey::new(&kek).open(h.nonce, ad, &h.sealed_sk).unwrap();
    assert_eq!(hex::encode(&sk), v.vault_sk);
    let rc = rustcrypto_open(&direct, &h.nonce, ad, &h.sealed_sk).unwrap();
    assert_eq!(rc, sk);
    let kp = Keypair::from_secret(Secret32::from_bytes(arr(&v.vault_sk)));
    assert_eq!(kp.public(), h.vault_pk);

    // Through the store: the header opens a vault with the passphrase and
    // reports a wrong one as such.
    let dir = vault_dir_with(&file, Some(&kp));
    let vault = Vault::open(dir.path()).unwrap();
    assert_eq!(vault.public_key(), h.vault_pk);
    let u = vault.unlock(v.passphrase.as_bytes()).unwrap();
    assert!(u.entries().is_empty());
    assert!(u.problems().is_empty());
    drop(u);
    assert!(matches!(
        vault.unlock(b"not the passphrase"),
        Err(StoreError::WrongPassphrase)
    ));
}

#[test]
fn malformed_headers_give_the_expected_errors() {
    let f: HeaderVectors = load("header.json");
    for needed in [
        "BadMagic",
        "Version(2)",
        "Checksum",
        "Truncated",
        "key-derivation parameters",
        "AuthFailed",
    ] {
        assert!(
            f.invalid.iter().any(|c| c.error.contains(needed)),
            "header.json has no case failing with {needed}"
        );
    }
    let kp = Keypair::from_secret(Secret32::from_bytes(arr(&f.valid.vault_sk)));
    for c in &f.invalid {
        let file = unhex(&c.file);
        match c.stage.as_str() {
            "decode" => {
                let err = HeaderFile::decode(&file).expect_err(&c.name);
                assert_eq!(format!("{err:?}"), c.error, "{}", c.name);
                // The store reports it before any passphrase is asked for:
                // an unknown version as such, everything else as corrupt.
                let dir = vault_dir_with(&file, None);
                match (Vault::open(dir.path()), err) {
                    (
                        Err(StoreError::UnsupportedVersion { version, .. }),
                        p2pfs::store::format::FormatError::Version(v),
                    ) => assert_eq!(version, v),
                    (Err(StoreError::Corrupt { .. }), e)
                        if !matches!(e, p2pfs::store::format::FormatError::Version(_)) => {}
                    (r, _) => panic!("{}: store gave {:?}", c.name, r.err()),
                }
            }
            "open" => {
                let h = HeaderFile::decode(&file).unwrap_or_else(|e| panic!("{}: {e:?}", c.name));
                let pass = c.passphrase.as_deref().unwrap();
                let kek = derive_kek(pass.as_bytes(), &h.salt, h.params).unwrap();
                let err = AeadKey::new(&kek)
                    .open(h.nonce, &h.ad(), &h.sealed_sk)
                    .expect_err(&c.name);
                assert_eq!(format!("{err:?}"), c.error, "{}", c.name);
                // Through the store it is a wrong passphrase: the checksum
                // is good, so it cannot be told from one.
                let dir = vault_dir_with(&file, Some(&kp));
                let vault = Vault::open(dir.path()).unwrap();
                assert!(
                    matches!(
                        vault.unlock(pass.as_bytes()),
                        Err(StoreError::WrongPassphrase)
                    ),
                    "{}",
                    c.name
                );
            }
            other => panic!("{}: unknown stage {other}", c.name),
        }
    }
}

#[test]
fn out_of_bounds_kdf_parameters_never_reach_argon2() {
    // Each of these would allocate gigabytes (or fail inside Argon2) if it
    // were not refused first.
    for (p, what) in [
        ((u32::MAX, 1, 1), "memory"),
        ((KdfParams::MAX_M_KIB + 1, 1, 1), "memory"),
        ((KdfParams::MIN_M_KIB - 1, 1, 1), "memory"),
        ((8192, 0, 1), "passes"),
        ((8192, u32::MAX, 1), "passes"),
        ((8192, 1, 0), "lanes"),
        ((8192, 1, KdfParams::MAX_P + 1), "lanes"),
        // Each parameter within its bound, the product far over the budget:
        // the header the security review forged (52.7 s, 1.05 GB before).
        (
            (KdfParams::MAX_M_KIB, KdfParams::MAX_T, KdfParams::MAX_P),
            "total cost (memory × passes)",
        ),
        ((KdfParams::MAX_M_KIB, 3, 1), "total cost (memory × passes)"),
    ] {
        let params = KdfParams {
            m_kib: p.0,
            t: p.1,
            p: p.2,
        };
        let started = std::time::Instant::now();
        let err = derive_kek(b"pw", &[0; 16], params).err();
        assert_eq!(err, Some(CryptoError::KdfParams(what)), "{params:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------- generator

/// Deterministic bytes for a labelled input (so regenerating gives the same
/// files unless the format changed).
fn det(label: &str, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut h = blake3::Hasher::new();
    h.update(b"p2pfs test vectors/");
    h.update(label.as_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

fn det_arr<const N: usize>(label: &str) -> [u8; N] {
    det(label, N).try_into().unwrap()
}

fn write_json<T: Serialize>(name: &str, v: &T) {
    let p = vectors_dir().join(name);
    fs::create_dir_all(vectors_dir()).unwrap();
    let mut s = serde_json::to_string_pretty(v).unwrap();
    s.push('\n');
    fs::write(&p, s).unwrap();
    eprintln!("wrote {}", p.display());
}

/// Builds a header file from its fields, with the checksum.
fn header_bytes(fields: &[u8]) -> Vec<u8> {
    let mut v = fields.to_vec();
    v.extend_from_slice(blake3::hash(fields).as_bytes());
    v
}

#[test]
#[ignore = "writes tests/vectors/*.json; run only after a deliberate format change"]
fn generate_vectors() {
    // --- chunk
    let gcm = vec![
        GcmCase {
            name: "GCM spec test case 13 (AES-256, empty)".into(),
            key: "00".repeat(32),
            nonce: "00".repeat(12),
            aad: String::new(),
            plaintext: String::new(),
            sealed: "530f8afbc74536b9a963b4f1c4cb738b".into(),
        },
        GcmCase {
            name: "GCM spec test case 14 (AES-256, one zero block)".into(),
            key: "00".repeat(32),
            nonce: "00".repeat(12),
            aad: String::new(),
            plaintext: "00".repeat(16),
            sealed: "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919".into(),
        },
        GcmCase {
            name: "GCM spec test case 16 (AES-256, with AAD)".into(),
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308".into(),
            nonce: "cafebabefacedbaddecaf888".into(),
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2".into(),
            plaintext: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
                .into(),
            sealed: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                     8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
                     76fc6ece0f4e1768cddf8853bb2d551b"
                .into(),
        },
    ];
    // The anchors are published values: check them, never compute them.
    for c in &gcm {
        let rc = rustcrypto_seal(
            &unhex(&c.key),
            &unhex(&c.nonce),
            &unhex(&c.aad),
            &unhex(&c.plaintext),
        );
        assert_eq!(hex::encode(rc), c.sealed, "{}", c.name);
    }

    let key = det("chunk key", 32);
    let id = det("file id", 16);
    let mk = |name: &str, index: u64, is_final: bool, pt: Vec<u8>| -> ChunkCase {
        let nonce = det(&format!("nonce {name}"), 12);
        let id16: [u8; 16] = id.clone().try_into().unwrap();
        let ad = chunk_ad(&id16, index, is_final);
        let mut sealed = nonce.clone();
        sealed.extend(rustcrypto_seal(&key, &nonce, &ad, &pt));
        let c = ChunkCase {
            name: name.into(),
            key: hex::encode(&key),
            file_id: hex::encode(&id),
            index,
            is_final,
            nonce: hex::encode(&nonce),
            plaintext: hex::encode(&pt),
            ad: hex::encode(ad),
            sealed: hex::encode(&sealed),
        };
        assert_eq!(
            hex::encode(p2pfs_seal_chunk(&c)),
            c.sealed,
            "ring disagrees"
        );
        c
    };
    let valid = vec![
        mk("empty file: one empty final chunk", 0, true, Vec::new()),
        mk("short single chunk", 0, true, b"hello, p2pfs\n".to_vec()),
        mk("first of several chunks", 0, false, det("pt first", 64)),
        mk(
            "middle chunk, length not a block multiple",
            7,
            false,
            det("pt mid", 100),
        ),
        mk(
            "last possible index, final",
            (1 << 32) - 1,
            true,
            det("pt last", 33),
        ),
        mk("full minimum-size chunk", 3, false, det("pt 4096", 4096)),
    ];
    let base = &valid[3];
    let bad = |name: &str, f: &dyn Fn(&mut BadChunk)| -> BadChunk {
        let mut b = BadChunk {
            name: name.into(),
            key: base.key.clone(),
            file_id: base.file_id.clone(),
            index: base.index,
            is_final: base.is_final,
            sealed: base.sealed.clone(),
            error: format!("{:?}", CryptoError::AuthFailed),
        };
        f(&mut b);
        b
    };
    let edit = |s: &str, g: &dyn Fn(&mut Vec<u8>)| {
        let mut v = unhex(s);
        g(&mut v);
        hex::encode(v)
    };
    let last = &valid[1];
    let invalid = vec![
        bad("wrong index (chunk moved)", &|b| b.index = 8),
        bad("wrong index (chunk swapped with its neighbour)", &|b| {
            b.index = 6
        }),
        bad(
            "wrong final flag (non-final chunk presented as the last)",
            &|b| b.is_final = true,
        ),
        bad(
            "wrong final flag (final chunk presented as non-final: file truncated)",
            &|b| {
                b.sealed = last.sealed.clone();
                b.index = 0;
                b.is_final = false;
            },
        ),
        bad("other file id (chunk spliced from another file)", &|b| {
            b.file_id = edit(&b.file_id, &|v| v[0] ^= 1)
        }),
        bad("wrong key", &|b| b.key = hex::encode(det("other key", 32))),
        bad("truncated by one byte", &|b| {
            b.sealed = edit(&b.sealed, &|v| {
                v.pop();
            })
        }),
        bad("truncated to nonce and tag only", &|b| {
            b.sealed = edit(&b.sealed, &|v| {
                let tag = v[v.len() - 16..].to_vec();
                v.truncate(12);
                v.extend(tag);
            })
        }),
        bad("truncated below nonce + tag (27 bytes)", &|b| {
            b.sealed = edit(&b.sealed, &|v| v.truncate(27))
        }),
        bad("truncated to nothing", &|b| b.sealed = String::new()),
        bad("extended by one byte", &|b| {
            b.sealed = edit(&b.sealed, &|v| v.push(0))
        }),
        bad("flipped bit in the nonce", &|b| {
            b.sealed = edit(&b.sealed, &|v| v[3] ^= 0x01)
        }),
        bad("flipped bit in the ciphertext", &|b| {
            b.sealed = edit(&b.sealed, &|v| v[12 + 50] ^= 0x20)
        }),
        bad("flipped bit in the tag", &|b| {
            b.sealed = edit(&b.sealed, &|v| {
                let n = v.len() - 1;
                v[n] ^= 0x80
            })
        }),
    ];
    write_json(
        "chunk.json",
        &ChunkFile {
            description: "p2pfs chunk format v1 (docs/VAULT.md, Chunk format): sealed = nonce || \
                          AES-256-GCM(key, nonce, plaintext, ad) (ciphertext || 16-byte tag), \
                          ad = \"p2pfs/chunk/v1\" || file_id || index (u64 BE) || flags \
                          (bit 0 = final). All byte strings in hex. `invalid` cases must \
                          fail to open with `error` (Debug of p2pfs::crypto::CryptoError)."
                .into(),
            gcm,
            valid,
            invalid,
        },
    );

    // --- header
    let passphrase = "correct horse battery staple";
    let params = KdfParams {
        m_kib: 8192,
        t: 1,
        p: 1,
    };
    let salt: [u8; 16] = det_arr("salt");
    let sk: [u8; 32] = det_arr("vault secret key");
    let nonce: [u8; 12] = det_arr("header nonce");
    let kp = Keypair::from_secret(Secret32::from_bytes(sk));
    let kek = derive_kek(passphrase.as_bytes(), &salt, params).unwrap();
    // Fields by hand from the spec table.
    let fields =
        |magic: &[u8], version: u16, kdf: u8, m: u32, t: u32, p: u32, salt: &[u8], pk: &[u8]| {
            let mut w = Writer::new();
            w.bytes(magic)
                .u16(version)
                .u8(kdf)
                .u32(m)
                .u32(t)
                .u32(p)
                .bytes(salt)
                .bytes(pk);
            w.into_vec()
        };
    let ad = fields(
        b"P2PFSVH\0",
        1,
        1,
        8192,
        1,
        1,
        &salt,
        kp.public().as_bytes(),
    );
    let sealed = rustcrypto_seal(kek.expose(), &nonce, &ad, &sk);
    assert_eq!(sealed.len(), 48);
    let mut body = ad.clone();
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&sealed);
    let file = header_bytes(&body);
    let h = HeaderFile {
        params,
        salt,
        vault_pk: kp.public(),
        nonce,
        sealed_sk: sealed.clone().try_into().unwrap(),
    };
    assert_eq!(h.encode(), file, "p2pfs encodes the header differently");

    // A header with different fields, checksum recomputed (well-formed).
    let reforged = |m: u32, t: u32, p: u32, kdf: u8, salt: &[u8], pk: &[u8]| {
        let mut b = fields(b"P2PFSVH\0", 1, kdf, m, t, p, salt, pk);
        b.extend_from_slice(&nonce);
        b.extend_from_slice(&sealed);
        header_bytes(&b)
    };
    let with = |g: &dyn Fn(&mut Vec<u8>)| {
        let mut v = file.clone();
        g(&mut v);
        v
    };
    let pk = *kp.public().as_bytes();
    let decode = |name: &str, bytes: Vec<u8>| BadHeader {
        name: name.into(),
        error: format!("{:?}", HeaderFile::decode(&bytes).expect_err(name)),
        file: hex::encode(bytes),
        stage: "decode".into(),
        passphrase: None,
    };
    let mut other_salt = salt;
    other_salt[0] ^= 1;
    let mut other_pk = pk;
    other_pk[5] ^= 1;
    let invalid = vec![
        decode("bad magic", with(&|v| v[0] = b'X')),
        decode(
            "magic of another p2pfs file (identity)",
            with(&|v| v[5] = b'I'),
        ),
        decode(
            "version 2 (checksum not updated: version is checked first)",
            with(&|v| v[8..10].copy_from_slice(&2u16.to_be_bytes())),
        ),
        decode(
            "version 0",
            with(&|v| v[8..10].copy_from_slice(&0u16.to_be_bytes())),
        ),
        decode("flipped byte in the sealed key", with(&|v| v[100] ^= 0x01)),
        decode("flipped byte in the salt", with(&|v| v[25] ^= 0x40)),
        decode(
            "flipped byte in the checksum",
            with(&|v| {
                let n = v.len() - 1;
                v[n] ^= 0x01
            }),
        ),
        decode(
            "truncated by one byte",
            with(&|v| {
                v.pop();
            }),
        ),
        decode("truncated to nothing", Vec::new()),
        decode("truncated to the magic", file[..8].to_vec()),
        decode("truncated to magic and version", file[..10].to_vec()),
        decode(
            "truncated body with a valid checksum",
            header_bytes(&body[..body.len() - 1]),
        ),
        decode(
            "trailing byte with a valid checksum",
            header_bytes(&[&body[..], &[0]].concat()),
        ),
        decode("unknown kdf 2", reforged(8192, 1, 1, 2, &salt, &pk)),
        decode(
            "KDF memory huge (u32::MAX KiB), refused before Argon2 runs",
            reforged(u32::MAX, 1, 1, 1, &salt, &pk),
        ),
        decode(
            "KDF memory above 1 GiB",
            reforged(KdfParams::MAX_M_KIB + 1, 1, 1, 1, &salt, &pk),
        ),
        decode(
            "KDF memory below 8 MiB",
            reforged(8191, 1, 1, 1, &salt, &pk),
        ),
        decode("KDF passes 0", reforged(8192, 0, 1, 1, &salt, &pk)),
        decode("KDF passes 65", reforged(8192, 65, 1, 1, &salt, &pk)),
        decode("KDF lanes 17", reforged(8192, 1, 17, 1, &salt, &pk)),
        decode(
            "KDF total cost over the budget (1 GiB, 64 passes, 16 lanes: each within its bound)",
            reforged(
                KdfParams::MAX_M_KIB,
                KdfParams::MAX_T,
                KdfParams::MAX_P,
                1,
                &salt,
                &pk,
            ),
        ),
        BadHeader {
            name: "wrong passphrase".into(),
            file: hex::encode(&file),
            stage: "open".into(),
            passphrase: Some("Correct horse battery staple".into()),
            error: format!("{:?}", CryptoError::AuthFailed),
        },
        BadHeader {
            name: "salt changed, checksum recomputed (the AD binds it)".into(),
            file: hex::encode(reforged(8192, 1, 1, 1, &other_salt, &pk)),
            stage: "open".into(),
            passphrase: Some(passphrase.into()),
            error: format!("{:?}", CryptoError::AuthFailed),
        },
        BadHeader {
            name: "vault public key changed, checksum recomputed (the AD binds it)".into(),
            file: hex::encode(reforged(8192, 1, 1, 1, &salt, &other_pk)),
            stage: "open".into(),
            passphrase: Some(passphrase.into()),
            error: format!("{:?}", CryptoError::AuthFailed),
        },
    ];
    write_json(
        "header.json",
        &HeaderVectors {
            description: "p2pfs vault header v1 (docs/VAULT.md, Vault header). kek = \
                          Argon2id v1.3(passphrase, salt, m_kib, t, p, 32 bytes); sealed_sk = \
                          AES-256-GCM(kek, nonce, vault_sk, AD = every byte before the nonce); \
                          checksum = BLAKE3 of every byte before it. `invalid` cases: stage \
                          \"decode\" must fail HeaderFile::decode with `error` (Debug of \
                          FormatError); stage \"open\" decode but fail to open with \
                          `passphrase` (Debug of CryptoError)."
                .into(),
            valid: ValidHeader {
                passphrase: passphrase.into(),
                m_kib: params.m_kib,
                t: params.t,
                p: params.p,
                salt: hex::encode(salt),
                vault_sk: hex::encode(sk),
                vault_pk: hex::encode(pk),
                nonce: hex::encode(nonce),
                kek: hex::encode(kek.expose()),
                file: hex::encode(&file),
            },
            invalid,
        },
    );
}
