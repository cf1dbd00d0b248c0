//! Integration tests of the `p2pfs` binary: every test runs the real
//! executable as a separate process against fresh temporary homes, and
//! checks exit codes, messages, and the bytes on disk (`docs/VAULT.md`).

mod util;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    fs,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use p2pfs::{
    crypto::{
        aead::AeadKey,
        chunk::{chunk_count, chunk_plain_len, FileId, FileKey},
        kdf::{derive_kek, KdfParams},
        keys::{Keypair, PublicKey, Secret32},
        wrap::{hkdf32, unwrap_key, WRAP_NONCE},
    },
    store::{
        format::{EnvelopeBody, EnvelopeFile, HeaderFile, Kind, Metadata},
        vault::Vault,
    },
};
use util::{
    blake3_file, exit, files_containing, files_under, fix_checksum, flip_byte, patch, random_bytes,
    random_hex, snapshot, wait_until, write_bytes, write_random, Cmd, Listed, Node, Serving,
};

const MIB: u64 = 1 << 20;
/// Default chunk size and sealed chunk overhead (nonce + tag).
const CHUNK: u64 = MIB;
const OVERHEAD: u64 = 28;
/// Offset of chunk `i` in an object data file.
fn chunk_offset(i: u64) -> u64 {
    40 + i * (CHUNK + OVERHEAD)
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

fn same_content(a: &Path, b: &Path) -> bool {
    fs::read(a).unwrap() == fs::read(b).unwrap()
}

/// Names → (size, blake3) of the listed files.
fn by_name(list: &[Listed]) -> BTreeMap<String, (u64, String)> {
    list.iter()
        .map(|e| (e.name.clone(), (e.size, e.blake3.clone())))
        .collect()
}

// ---------------------------------------------------------------- init, id

#[test]
fn init_creates_a_private_node_and_id_reports_it() {
    let n = Node::new();
    // A permissive umask: p2pfs must set every mode itself.
    let out = n.cmd(["init", "--name", "alpha"]).umask(0).run().ok();
    write_random(&n.path("f.bin"), 1000);
    n.cmd(["vault", "import", "f.bin"]).umask(0).run().ok();
    n.cmd(["vault", "list"]).umask(0).run().ok();
    let id = n.id();
    assert_eq!(id.name, "alpha");
    assert_eq!(id.id.len(), 52, "{id:?}");
    assert!(id
        .id
        .bytes()
        .all(|c| matches!(c, b'a'..=b'z' | b'2'..=b'7')));
    let pk = PublicKey::parse_id(&id.id).expect("node id parses");
    assert_eq!(pk.fingerprint(), id.fingerprint);
    let groups: Vec<&str> = id.fingerprint.split('-').collect();
    assert_eq!(groups.len(), 4, "{}", id.fingerprint);
    assert!(groups.iter().all(|g| g.len() == 4));
    assert!(out.stdout.contains(&id.id) && out.stdout.contains(&id.fingerprint));
    assert_ne!(id.vault_key, id.id, "vault key and node key must differ");
    let v: serde_json::Value = n.run(["id", "--json"]).ok().json();
    for k in ["id", "fingerprint", "name"] {
        assert!(v.get(k).is_some_and(|x| x.is_string()), "no {k} in {v}");
    }

    // Every directory 0700 and every file 0600, whatever the umask.
    for d in [
        n.home.clone(),
        n.vault(),
        n.objects(),
        n.vault().join("staging"),
    ] {
        assert_eq!(mode_of(&d), 0o700, "{}", d.display());
    }
    let files = files_under(&n.home);
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        assert_eq!(mode_of(&f), 0o600, "{}", f.display());
    }

    // A second init refuses and changes nothing.
    let before = snapshot(&n.home);
    n.run(["init", "--name", "beta"])
        .code_is(exit::EXISTS)
        .says("already exists");
    assert_eq!(snapshot(&n.home), before);
    assert_eq!(n.id().name, "alpha");
}

#[test]
fn commands_without_a_node_exit_5_with_a_hint() {
    let n = Node::new();
    let cases: &[&[&str]] = &[
        &["id"],
        &["id", "--json"],
        &["vault", "list"],
        &["vault", "import", "whatever"],
        &["vault", "export", "whatever"],
        &["vault", "rm", "whatever"],
        &["vault", "verify"],
        &["vault", "verify", "--full"],
        &["vault", "passwd"],
        &["vault", "rekey"],
    ];
    for args in cases {
        n.run(*args)
            .code_is(exit::NOT_INITIALISED)
            .says("p2pfs init");
    }
    assert!(!n.home.exists(), "a failed command created the home");
    // An existing but empty directory is not a node either; --home works too.
    fs::create_dir(&n.home).unwrap();
    let args = [OsStr::new("--home"), n.home.as_os_str(), OsStr::new("id")];
    Cmd::new(None, args)
        .run()
        .code_is(exit::NOT_INITIALISED)
        .says("p2pfs init");
    assert_eq!(fs::read_dir(&n.home).unwrap().count(), 0);
}

#[test]
fn no_passphrase_and_no_terminal_fails_fast_and_clearly() {
    let mut n = Node::new();
    let pass = n.passphrase.take().unwrap();
    let r = n
        .cmd(["init", "--name", "x"])
        .timeout(Duration::from_secs(30))
        .run();
    assert!(!r.status.success(), "{r}");
    let r = r.says("no terminal").says("P2PFS_PASSPHRASE");
    assert!(r.elapsed < Duration::from_secs(10), "{r}");
    assert!(!n.home.exists(), "init without a passphrase left files");

    n.passphrase = Some(pass.clone());
    n.init("x");
    n.passphrase = None;
    for args in [
        &["vault", "list"][..],
        &["vault", "verify", "--full"],
        &["vault", "rekey"],
    ] {
        let r = n.cmd(args).timeout(Duration::from_secs(30)).run();
        assert!(!r.status.success(), "{r}");
        r.says("passphrase").says("--passphrase-file");
    }
    // passwd with the old passphrase but no source for the new one.
    let r = n
        .cmd(["vault", "passwd"])
        .passphrase(&pass)
        .timeout(Duration::from_secs(30))
        .run();
    assert!(!r.status.success(), "{r}");
    r.says("P2PFS_NEW_PASSPHRASE");
    n.passphrase = Some(pass.clone());
    n.list();

    // The other passphrase sources: --passphrase-file (trailing newline
    // dropped) and P2PFS_PASSPHRASE_FILE.
    let pf = n.path("pass.txt");
    fs::write(&pf, format!("{pass}\n")).unwrap();
    let pf_arg = pf.to_str().unwrap();
    Cmd::new(
        Some(&n.home),
        ["--passphrase-file", pf_arg, "vault", "list"],
    )
    .run()
    .ok();
    Cmd::new(Some(&n.home), ["vault", "list"])
        .env("P2PFS_PASSPHRASE_FILE", &pf)
        .run()
        .ok();
    fs::write(&pf, "not it\n").unwrap();
    Cmd::new(
        Some(&n.home),
        ["--passphrase-file", pf_arg, "vault", "list"],
    )
    .run()
    .code_is(exit::WRONG_PASSPHRASE);
}

// ---------------------------------------------------------------- round trip

#[test]
fn import_list_export_round_trip() {
    let n = Node::new();
    n.init("n");
    let mut want: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut add = |name: &str, path: &Path, h: String| {
        want.insert(name.into(), (fs::metadata(path).unwrap().len(), h));
    };
    let big = n.path("src/big.bin");
    add("big.bin", &big, write_random(&big, 5 * MIB + 12345));
    let t = n.path("src/tree");
    let files = [
        ("a.txt", b"hello vault\n".to_vec()),
        ("empty.txt", Vec::new()),
        ("sub/exact.bin", random_bytes(MIB as usize)),
        ("sub/over.bin", random_bytes(MIB as usize + 1)),
    ];
    for (rel, data) in &files {
        let p = t.join(rel);
        add(&format!("tree/{rel}"), &p, write_bytes(&p, data));
    }
    fs::set_permissions(t.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(t.join("emptydir")).unwrap();
    std::os::unix::fs::symlink("a.txt", t.join("link")).unwrap();

    let t0 = SystemTime::now();
    let r = n.import(&["src/big.bin", "src/tree"]);
    let t1 = SystemTime::now();
    r.says("skipped").says("link").says("symbolic link");

    let list = n.list();
    let names: BTreeSet<&str> = list.iter().map(|e| e.name.as_str()).collect();
    let mut expected: BTreeSet<&str> = want.keys().map(String::as_str).collect();
    expected.insert("tree/emptydir");
    assert_eq!(names, expected, "{list:#?}");
    for e in &list {
        assert_eq!(e.id.len(), 32, "{e:?}");
        let added = humantime::parse_rfc3339(e.added.as_deref().unwrap_or("null"))
            .unwrap_or_else(|err| panic!("added {:?} is not RFC 3339: {err}", e.added));
        assert!(
            added + Duration::from_secs(2) >= t0 && added <= t1 + Duration::from_secs(2),
            "added {:?} outside the import",
            e.added
        );
        if e.name == "tree/emptydir" {
            assert_eq!((e.kind.as_str(), e.size), ("dir", 0));
            continue;
        }
        assert_eq!(e.kind, "file");
        assert_eq!((e.size, e.blake3.clone()), want[&e.name], "{}", e.name);
    }
    assert_eq!(n.entry("tree/a.txt").mode, "640");

    // Single files, by name and by id prefix, and the default destination.
    let out = n.path("out");
    fs::create_dir(&out).unwrap();
    for (rel, _) in &files {
        let dest = format!("out/{}", rel.replace('/', "_"));
        let p = n.export(&format!("tree/{rel}"), &dest);
        assert!(same_content(&p, &t.join(rel)), "{rel} differs");
    }
    assert_eq!(mode_of(&n.path("out/a.txt")), 0o640);
    let big_id = n.entry("big.bin").id;
    n.export(&big_id[..12], "out/big-by-id.bin");
    assert!(same_content(&n.path("out/big-by-id.bin"), &big));
    n.run(["vault", "export", "big.bin"]).ok();
    assert!(same_content(&n.path("big.bin"), &big));

    // A folder: the whole tree, with the empty file and the empty directory.
    n.run(["vault", "export", "tree", "out/tree"]).ok();
    let back = n.path("out/tree");
    for (rel, _) in &files {
        assert!(same_content(&back.join(rel), &t.join(rel)), "{rel}");
    }
    assert!(back.join("emptydir").is_dir());
    assert_eq!(fs::read_dir(back.join("emptydir")).unwrap().count(), 0);
    assert!(!back.join("link").exists());

    // No overwrite without --force, and the existing file is untouched.
    let existing = n.path("out/keep.bin");
    fs::write(&existing, b"keep me").unwrap();
    let before: BTreeSet<PathBuf> = files_under(&out).into_iter().collect();
    n.run(["vault", "export", "big.bin", "out/keep.bin"])
        .code_is(exit::EXISTS)
        .says("--force");
    assert_eq!(fs::read(&existing).unwrap(), b"keep me");
    let after: BTreeSet<PathBuf> = files_under(&out).into_iter().collect();
    assert_eq!(before, after, "a refused export left files behind");
    n.run(["vault", "export", "big.bin", "out/keep.bin", "--force"])
        .ok();
    assert!(same_content(&existing, &big));
    n.run(["vault", "export", "tree/a.txt", "out/a.txt"])
        .code_is(exit::EXISTS);

    n.run(["vault", "export", "no-such-file", "out/x"])
        .code_is(exit::NOT_FOUND)
        .says("vault list");
    assert!(!n.path("out/x").exists());
}

// ---------------------------------------------------------------- secrecy

/// Recovers the vault key pair from `vault/header` the way the spec says
/// (Argon2id KEK, AES-256-GCM with the preceding bytes as AD).
fn open_header(n: &Node) -> (Secret32, Keypair) {
    let h = HeaderFile::decode(&fs::read(n.vault().join("header")).unwrap()).unwrap();
    let pass = n.passphrase.as_ref().unwrap();
    let kek = derive_kek(pass.as_bytes(), &h.salt, h.params).unwrap();
    let sk = AeadKey::new(&kek)
        .open(h.nonce, &h.ad(), &h.sealed_sk)
        .expect("the header opens with the passphrase");
    let kp = Keypair::from_secret(Secret32::from_bytes(sk.try_into().unwrap()));
    assert_eq!(kp.public(), h.vault_pk);
    (kek, kp)
}

#[test]
fn no_plaintext_name_passphrase_or_key_reaches_the_disk() {
    let n = Node::new();
    n.init("n");
    let marker = random_bytes(64);
    let mut data = random_bytes(3 * MIB as usize);
    data[100..164].copy_from_slice(&marker);
    // Also across the boundary of chunks 0 and 1.
    let b = CHUNK as usize - 20;
    data[b..b + 64].copy_from_slice(&marker);
    let secret_name = format!("secret-name-{}", random_hex(8));
    write_bytes(&n.path(&format!("src/{secret_name}.dat")), &data);
    write_bytes(&n.path("src/small.txt"), &marker);
    n.import(&[&format!("src/{secret_name}.dat"), "src/small.txt"]);
    // Unlock, rewrite the index, decrypt everything.
    assert_eq!(n.list().len(), 2);
    n.entry(&format!("{secret_name}.dat"));
    n.run(["vault", "verify", "--full"]).ok();
    n.run(["vault", "rekey"]).ok();

    let (kek, kp) = open_header(&n);
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("marker", marker.clone()),
        ("marker head", marker[..32].to_vec()),
        ("marker tail", marker[32..].to_vec()),
        ("file name", secret_name.clone().into_bytes()),
        ("passphrase", n.passphrase.clone().unwrap().into_bytes()),
        ("KEK", kek.expose().to_vec()),
        ("vault secret key", kp.secret_bytes().expose().to_vec()),
        (
            "index key",
            hkdf32(
                &kp.secret_bytes(),
                kp.public().as_bytes(),
                b"p2pfs/index/v1",
            )
            .expose()
            .to_vec(),
        ),
    ];
    // The file keys, from the envelopes; the first chunk of the big file
    // must open with its key (so the keys checked below are the real ones).
    let envs = n.object_ids();
    assert_eq!(envs.len(), 2);
    for id in &envs {
        let env = EnvelopeFile::decode(&n.envelope_of(id)).unwrap();
        assert_eq!(env.recipient, kp.public());
        // Format 2 (docs/VAULT.md, *Envelope*): the wrap key is bound to
        // the object id, so a group commit shares one ephemeral key.
        assert_eq!(env.version, 2);
        let mut info = p2pfs::crypto::wrap::ENVELOPE_INFO_V2.to_vec();
        info.extend_from_slice(&env.id);
        let wrap = unwrap_key(&kp, &env.ephemeral, &info).unwrap();
        let body = wrap
            .open(WRAP_NONCE, &env.ad(), &env.sealed_body)
            .expect("envelope opens with the vault key");
        let body = EnvelopeBody::decode(&body).unwrap();
        if body.meta.size == data.len() as u64 {
            let key = FileKey::from_secret(body.file_key.clone());
            let obj = n.object_parts(id).1;
            let mut c0 = obj[40..40 + CHUNK as usize + OVERHEAD as usize].to_vec();
            let pt = key.open_chunk_in_place(&env.id, 0, false, &mut c0).unwrap();
            assert_eq!(pt, &data[..CHUNK as usize]);
        }
        secrets.push(("file key", body.file_key.expose().to_vec()));
    }
    for (what, bytes) in &secrets {
        let hits = files_containing(&n.home, bytes);
        assert!(hits.is_empty(), "{what} found on disk: {hits:?}");
    }
}

/// Format-1 envelopes (one ephemeral key each, the wrap key under
/// `p2pfs/envelope/v1` alone) still open: a vault written before format 2
/// lists, verifies and exports as before (docs/VAULT.md, *Envelope*). And
/// the envelopes one import commits share one ephemeral key, each under
/// its own wrap key.
#[test]
fn format_1_envelopes_still_open_and_a_group_shares_one_ephemeral_key() {
    use p2pfs::crypto::wrap::{wrap_key_for, ENVELOPE_INFO};
    let n = Node::new();
    n.init("n");
    let mut want = BTreeMap::new();
    for i in 0..6u64 {
        let rel = format!("src/f{i}");
        want.insert(rel.clone(), write_random(&n.path(&rel), 100 + i * 5000));
    }
    n.run(["vault", "import", "src"]).ok();
    let (_, kp) = open_header(&n);
    let envs = n.object_ids();
    let decoded: Vec<EnvelopeFile> = envs
        .iter()
        .map(|id| EnvelopeFile::decode(&n.envelope_of(id)).unwrap())
        .collect();
    let ephemerals: BTreeSet<[u8; 32]> = decoded.iter().map(|e| *e.ephemeral.as_bytes()).collect();
    assert_eq!(
        ephemerals.len(),
        1,
        "one import, one group, one ephemeral key"
    );
    assert_eq!(decoded.len(), 6);
    // Rewrite every envelope as format 1, before any open adopts them into
    // the index: what a vault written by an earlier release holds.
    for (id, env) in envs.iter().zip(&decoded) {
        let mut info = p2pfs::crypto::wrap::ENVELOPE_INFO_V2.to_vec();
        info.extend_from_slice(&env.id);
        let body = unwrap_key(&kp, &env.ephemeral, &info)
            .unwrap()
            .open(WRAP_NONCE, &env.ad(), &env.sealed_body)
            .unwrap();
        let (ephemeral, key) = wrap_key_for(&kp.public(), ENVELOPE_INFO).unwrap();
        let mut old = EnvelopeFile {
            version: 1,
            ephemeral,
            sealed_body: Vec::new(),
            ..env.clone()
        };
        old.sealed_body = vec![0; env.sealed_body.len()];
        let ad = old.ad();
        old.sealed_body = key.seal(WRAP_NONCE, &ad, &body).unwrap();
        let bytes = old.encode();
        assert_eq!(u16::from_be_bytes([bytes[8], bytes[9]]), 1);
        n.put_envelope(id, &bytes);
    }
    n.run(["vault", "verify", "--full"]).ok();
    let listed = n.list();
    assert_eq!(listed.len(), 6);
    for (rel, h) in &want {
        let out = n.path(&format!("out-{}", random_hex(4)));
        n.run(["vault", "export", rel, out.to_str().unwrap()]).ok();
        assert_eq!(&blake3_file(&out), h, "{rel}");
    }
}

// ---------------------------------------------------------------- wrong passphrase

#[test]
fn wrong_passphrase_exits_3_and_changes_nothing() {
    let n = Node::new();
    n.init("n");
    write_random(&n.path("src/a.bin"), 2 * MIB + 5);
    write_random(&n.path("src/b.bin"), 1000);
    n.import(&["src/a.bin", "src/b.bin"]);
    let listed = n.list();
    let before = snapshot(&n.home);
    let cases: &[&[&str]] = &[
        &["vault", "list"],
        &["vault", "list", "--json"],
        &["vault", "export", "a.bin", "out.bin"],
        &["vault", "rm", "a.bin"],
        &["vault", "verify", "--full"],
        &["vault", "passwd"],
        &["vault", "rekey"],
    ];
    for args in cases {
        Cmd::new(Some(&n.home), *args)
            .cwd(&n.work)
            .passphrase("definitely not the passphrase")
            .env("P2PFS_NEW_PASSPHRASE", "new one")
            .run()
            .code_is(exit::WRONG_PASSPHRASE)
            .says("wrong passphrase");
        assert_eq!(snapshot(&n.home), before, "{args:?} changed the home");
    }
    assert!(!n.path("out.bin").exists());
    assert_eq!(by_name(&n.list()), by_name(&listed));
}

// ---------------------------------------------------------------- damage

#[test]
fn damaged_object_data_is_named_and_never_exported() {
    let n = Node::new();
    n.init("n");
    let srcs = [
        ("f1.bin", 2 * MIB + MIB / 2),
        ("f2.bin", 100_000),
        ("f3.bin", 10),
    ];
    for (name, len) in srcs {
        write_random(&n.path(&format!("src/{name}")), len);
    }
    n.import(&["src/f1.bin", "src/f2.bin", "src/f3.bin"]);
    let id = |name: &str| n.entry(name).id;
    let (id1, id2, id3) = (id("f1.bin"), id("f2.bin"), id("f3.bin"));
    n.run(["vault", "verify"]).ok().says("3 object(s)");

    // One byte inside chunk 1 of f1 (past the 40-byte header).
    let (obj1, _) = n.data_file(&id1);
    let (obj3, len3) = n.data_file(&id3);
    flip_byte(&obj1, chunk_offset(1) + 500, 0x01);
    n.run(["vault", "verify"])
        .code_is(exit::CORRUPT)
        .says(&id1)
        .never_says(&id2)
        .never_says(&id3);
    n.run(["vault", "verify", "--full"])
        .code_is(exit::CORRUPT)
        .says(&id1)
        .says("f1.bin")
        .never_says(&id2)
        .never_says(&id3);
    let out = n.path("out");
    fs::create_dir(&out).unwrap();
    n.run(["vault", "export", "f1.bin", "out/f1.bin"])
        .code_is(exit::CORRUPT)
        .says(&id1);
    assert!(
        files_under(&out).is_empty(),
        "a refused export left {:?}",
        files_under(&out)
    );
    // The other objects are intact and still export.
    let p = n.export("f2.bin", "out/f2.bin");
    assert!(same_content(&p, &n.path("src/f2.bin")));

    // The tag of f3's only chunk (its last byte).
    flip_byte(&obj3, len3 - 1, 0x80);
    n.run(["vault", "verify"])
        .code_is(exit::CORRUPT)
        .says(&id1)
        .says(&id3)
        .never_says(&id2);
    n.run(["vault", "export", &id3, "out/f3.bin"])
        .code_is(exit::CORRUPT);
    assert!(!n.path("out/f3.bin").exists());

    // The object header's id (a data file swapped in from another object).
    flip_byte(&obj3, 20, 0x01);
    n.run(["vault", "verify"]).code_is(exit::CORRUPT).says(&id3);
    // Repaired, the object verifies again.
    flip_byte(&obj3, 20, 0x01);
    flip_byte(&obj3, len3 - 1, 0x80);
    flip_byte(&obj1, chunk_offset(1) + 500, 0x01);
    n.run(["vault", "verify", "--full"]).ok();
}

#[test]
fn damaged_envelope_is_named_and_never_exported() {
    let n = Node::new();
    n.init("n");
    write_random(&n.path("src/f1.bin"), 3000);
    write_random(&n.path("src/f2.bin"), 4000);
    n.import(&["src/f1.bin", "src/f2.bin"]);
    let (id1, id2) = (n.entry("f1.bin").id, n.entry("f2.bin").id);
    let (env, start, len) = n.envelope_file(&id1);
    flip_byte(&env, start + len / 2, 0x04);

    n.run(["vault", "verify"])
        .code_is(exit::CORRUPT)
        .says(&id1)
        .never_says(&id2);
    let r = n.run(["vault", "list", "--json"]).ok();
    assert!(r.stderr.contains(&id1), "no warning about {id1}:\n{r}");
    let listed: Vec<Listed> = r.json();
    assert!(listed.iter().any(|e| e.name == "f2.bin"));
    n.run(["vault", "export", "f1.bin", "f1.out"])
        .code_is(exit::CORRUPT)
        .says(&id1);
    assert!(!n.path("f1.out").exists());
    let r = n
        .run(["vault", "verify", "--full"])
        .code_is(exit::CORRUPT)
        .says(&id1)
        .never_says(&id2);
    assert_eq!(r.all().matches(id1.as_str()).count(), 1, "named once:\n{r}");
    let p = n.export("f2.bin", "f2.out");
    assert!(same_content(&p, &n.path("src/f2.bin")));
}

#[test]
fn damaged_header_or_index_is_corrupt_not_a_wrong_passphrase() {
    let n = Node::new();
    n.init("n");
    write_random(&n.path("src/f.bin"), 5000);
    n.import(&["src/f.bin"]);
    let header = n.vault().join("header");
    let good = fs::read(&header).unwrap();
    assert_eq!(good.len(), 163, "header layout changed: update this test");
    // magic, m_kib, salt, vault key, nonce, sealed key, checksum.
    for off in [0u64, 12, 30, 60, 80, 120, 162] {
        flip_byte(&header, off, 0x10);
        for args in [
            &["vault", "list"][..],
            &["vault", "verify"],
            &["vault", "verify", "--full"],
            &["vault", "import", "src/f.bin"],
            &["vault", "export", "f.bin", "x"],
        ] {
            n.run(args)
                .code_is(exit::CORRUPT)
                .says("corrupt")
                .never_says("wrong passphrase");
        }
        fs::write(&header, &good).unwrap();
    }

    // Hostile but well-formed KDF parameters (checksum recomputed): refused
    // before Argon2 runs, so no 4 TiB allocation and no long wait.
    patch(&header, 11, &u32::MAX.to_be_bytes());
    fix_checksum(&header);
    let r = n
        .cmd(["vault", "list"])
        .timeout(Duration::from_secs(20))
        .run()
        .code_is(exit::CORRUPT)
        .says("key-derivation");
    assert!(r.elapsed < Duration::from_secs(5), "{r}");
    fs::write(&header, &good).unwrap();

    let index = n.vault().join("index");
    let good_index = fs::read(&index).unwrap();
    let mid = good_index.len() as u64 / 2;
    flip_byte(&index, mid, 0x01);
    n.run(["vault", "list"])
        .code_is(exit::CORRUPT)
        .says("index")
        .never_says("wrong passphrase");
    fs::write(&index, &good_index).unwrap();
    assert_eq!(n.list().len(), 1);
}

#[test]
fn unknown_format_version_asks_for_an_upgrade() {
    let n = Node::new();
    n.init("n");
    write_random(&n.path("src/f.bin"), 5000);
    n.import(&["src/f.bin"]);
    n.list();
    for file in ["vault/header", "vault/index", "identity"] {
        let p = n.home.join(file);
        let good = fs::read(&p).unwrap();
        patch(&p, 8, &99u16.to_be_bytes());
        let before = snapshot(&n.home);
        let cmds: &[&[&str]] = match file {
            "vault/header" => &[
                &["vault", "list"],
                &["vault", "verify"],
                &["vault", "import", "src/f.bin"],
                &["id"],
            ],
            "vault/index" => &[&["vault", "list"], &["vault", "rekey"]],
            _ => &[&["id"]],
        };
        for args in cmds {
            n.run(*args)
                .code_is(exit::UNSUPPORTED_VERSION)
                .says("upgrade")
                .says("99");
        }
        assert_eq!(snapshot(&n.home), before, "{file}: something changed");
        fs::write(&p, good).unwrap();
    }
    assert_eq!(n.list().len(), 1);
}

// ---------------------------------------------------------------- passwd, rekey, rm

fn recipient_of(n: &Node, id: &str) -> [u8; 32] {
    n.envelope_of(id)[26..58].try_into().unwrap()
}

#[test]
fn passwd_then_rekey_keep_every_file() {
    let mut n = Node::new();
    n.init("n");
    let srcs = [("a.bin", 2 * MIB + 3), ("b.bin", 77), ("c.bin", 0)];
    for (name, len) in srcs {
        write_random(&n.path(&format!("src/{name}")), len);
    }
    n.import(&["src/a.bin", "src/b.bin", "src/c.bin"]);
    let listed = n.list();
    let envs_before: Vec<Vec<u8>> = listed.iter().map(|e| n.envelope_of(&e.id)).collect();
    let check_exports = |n: &Node, tag: &str| {
        for (name, _) in srcs {
            let p = n.export(name, &format!("{tag}-{name}"));
            assert!(same_content(&p, &n.path(&format!("src/{name}"))), "{name}");
        }
    };

    let pass1 = n.passphrase.clone().unwrap();
    let pass2 = format!("second {}", random_hex(6));
    n.cmd(["vault", "passwd"])
        .env("P2PFS_NEW_PASSPHRASE", &pass2)
        .run()
        .ok()
        .says("passphrase changed");
    // The envelopes need no rewrap for a new passphrase.
    for (e, before) in listed.iter().zip(&envs_before) {
        assert_eq!(&n.envelope_of(&e.id), before);
    }
    n.run(["vault", "list"]).code_is(exit::WRONG_PASSPHRASE);
    n.passphrase = Some(pass2.clone());
    assert_eq!(by_name(&n.list()), by_name(&listed));
    check_exports(&n, "p2");

    // Again, the new passphrase from a file.
    let pass3 = format!("third {}", random_hex(6));
    fs::write(n.path("new-pass"), format!("{pass3}\n")).unwrap();
    n.run(["vault", "passwd", "--new-passphrase-file", "new-pass"])
        .ok();
    n.run(["vault", "list"]).code_is(exit::WRONG_PASSPHRASE);
    n.passphrase = Some(pass3.clone());

    let old_vault_key = n.id().vault_key;
    n.run(["vault", "rekey"]).ok().says("3 file key");
    let new_vault_key = n.id().vault_key;
    assert_ne!(old_vault_key, new_vault_key);
    let new_pk = PublicKey::parse_id(&new_vault_key).unwrap();
    for e in &listed {
        assert_eq!(&recipient_of(&n, &e.id), new_pk.as_bytes(), "{}", e.name);
    }
    assert!(!n.vault().join("header.next").exists());
    for old in [&pass1, &pass2] {
        n.run_with_passphrase(old, ["vault", "list"])
            .code_is(exit::WRONG_PASSPHRASE);
    }
    assert_eq!(by_name(&n.list()), by_name(&listed));
    n.run(["vault", "verify", "--full"]).ok().says("all intact");
    n.run(["vault", "verify"]).ok();
    check_exports(&n, "rk");

    // New stores seal to the new key.
    write_random(&n.path("src/d.bin"), 1234);
    n.import(&["src/d.bin"]);
    let d = n.entry("d.bin");
    assert_eq!(&recipient_of(&n, &d.id), new_pk.as_bytes());
    let p = n.export("d.bin", "d.out");
    assert!(same_content(&p, &n.path("src/d.bin")));
}

/// docs/VAULT.md, *Reconcile*: a two-file `<id>.obj` or `<id>.env` beside
/// a `<id>.one` of the same id is never read (the `.one` is the object)
/// and the next unlocked command removes it; a plain `vault verify` does
/// not touch it. The object still verifies and exports identical, and the
/// two-file object the strays were copied from is untouched.
#[test]
fn a_two_file_leftover_beside_a_one_file_object_is_removed() {
    let n = Node::new();
    n.init("n");
    write_random(&n.path("src/small.bin"), 4096);
    write_random(&n.path("src/big.bin"), CHUNK + 1);
    n.run(["vault", "import", "src"]).ok();
    let (small, big) = (n.entry("src/small.bin").id, n.entry("src/big.bin").id);
    assert!(n.one(&small).is_file());
    fs::copy(n.obj(&big), n.obj(&small)).unwrap();
    fs::copy(n.env(&big), n.env(&small)).unwrap();
    n.run(["vault", "verify"]).ok();
    assert!(
        n.obj(&small).exists() && n.env(&small).exists(),
        "verify removes nothing"
    );
    n.run(["vault", "list"]).ok();
    assert!(!n.obj(&small).exists(), "the stray data file stays");
    assert!(!n.env(&small).exists(), "the stray envelope stays");
    assert!(n.one(&small).is_file() && n.obj(&big).is_file() && n.env(&big).is_file());
    n.run(["vault", "verify", "--full"]).ok().says("all intact");
    let p = n.export("src/small.bin", "small.out");
    assert!(same_content(&p, &n.path("src/small.bin")));
    let p = n.export("src/big.bin", "big.out");
    assert!(same_content(&p, &n.path("src/big.bin")));
}

/// docs/VAULT.md, *One-file object*: an object of one chunk (a small
/// file, an empty file, an empty folder) is one file `<id>.one`, an object
/// of several chunks two; both read, verify, rekey and remove alike, and a
/// one-file object damaged anywhere (data, envelope, trailer) is named,
/// never exported, never a panic.
#[test]
fn small_objects_are_one_file_and_behave_as_two_file_objects() {
    let n = Node::new();
    n.init("n");
    let sizes = [
        ("small.bin", 4096),
        ("empty.bin", 0),
        ("full.bin", CHUNK),
        ("big.bin", CHUNK + 1),
    ];
    for (name, len) in sizes {
        write_random(&n.path(&format!("src/{name}")), len);
    }
    fs::create_dir_all(n.path("src/hollow")).unwrap();
    n.run(["vault", "import", "src"]).ok();
    let id = |name: &str| n.entry(&format!("src/{name}")).id;
    let ones: BTreeSet<String> = ["small.bin", "empty.bin", "full.bin", "hollow"]
        .iter()
        .map(|f| id(f))
        .collect();
    let big = id("big.bin");
    let objs = n.object_files();
    assert_eq!(
        objs["one"].iter().cloned().collect::<BTreeSet<_>>(),
        ones,
        "{objs:?}"
    );
    assert_eq!(
        (objs["obj"].clone(), objs["env"].clone()),
        (vec![big.clone()], vec![big.clone()])
    );
    // A one-file object is a data file, then its envelope, then the trailer.
    for one in &ones {
        let (env, data) = n.object_parts(one);
        assert_eq!(&data[..8], b"P2PFSOB\0");
        assert_eq!(
            EnvelopeFile::decode(&env).unwrap().id,
            p2pfs::crypto::from_hex(one).unwrap()
        );
    }
    n.run(["vault", "verify"]).ok().says("5 object(s)");
    n.run(["vault", "verify", "--full"]).ok().says("all intact");
    let exported = n.path("out1");
    n.run(["vault", "export", "src", exported.to_str().unwrap()])
        .ok();
    for (name, _) in sizes {
        assert!(
            same_content(&exported.join(name), &n.path(&format!("src/{name}"))),
            "{name}"
        );
    }
    assert!(exported.join("hollow").is_dir());

    // A rekey rewrites each one-file object whole: the same data, a new
    // envelope sealed to the new key.
    let before: BTreeMap<String, (Vec<u8>, Vec<u8>)> = ones
        .iter()
        .map(|i| (i.clone(), n.object_parts(i)))
        .collect();
    n.run(["vault", "rekey"]).ok().says("5 file key");
    let new_pk = PublicKey::parse_id(&n.id().vault_key).unwrap();
    for (one, (env, data)) in &before {
        let (env2, data2) = n.object_parts(one);
        assert_eq!(&data2, data, "data rewritten differently");
        assert_ne!(&env2, env);
        assert_eq!(&recipient_of(&n, one), new_pk.as_bytes());
    }
    assert!(
        n.object_files().keys().all(|k| !k.ends_with("tmp")),
        "{:?}",
        n.object_files()
    );
    n.run(["vault", "verify", "--full"]).ok().says("all intact");

    // Damage, each repaired after: the data part, the envelope part, the
    // trailer's magic and length, and a truncation.
    let small = id("small.bin");
    let (file, start, len) = n.envelope_file(&small);
    assert_eq!(file, n.one(&small));
    let good = fs::read(&file).unwrap();
    let total = good.len() as u64;
    let damages: [(&str, u64, u8); 5] = [
        ("chunk data", 40 + 100, 0x01),
        ("object header id", 20, 0x01),
        ("envelope", start + len / 2, 0x04),
        ("trailer magic", total - 1, 0x01),
        ("trailer length", total - 12, 0x01),
    ];
    for (what, off, mask) in damages {
        flip_byte(&file, off, mask);
        n.run(["vault", "verify"])
            .code_is(exit::CORRUPT)
            .says(&small);
        let r = n.run(["vault", "export", "src/small.bin", "small.out"]);
        assert_eq!(r.code(), Some(exit::CORRUPT), "{what}: {r}");
        assert!(!n.path("small.out").exists(), "{what}");
        fs::write(&file, &good).unwrap();
    }
    for cut in [total - 1, total - 12, 39, 0] {
        fs::write(&file, &good[..cut as usize]).unwrap();
        let r = n.run(["vault", "verify"]);
        assert_eq!(r.code(), Some(exit::CORRUPT), "cut to {cut}: {r}");
        assert!(r.all().contains(&small), "cut to {cut}: {r}");
        let r = n.run(["vault", "list"]).ok();
        assert!(r.stderr.contains(&small), "cut to {cut}: {r}");
    }
    fs::write(&file, &good).unwrap();
    n.run(["vault", "verify", "--full"]).ok().says("all intact");

    // rm removes the one file, and only it.
    n.run(["vault", "rm", "src/small.bin"]).ok().says("removed");
    assert!(!n.one(&small).exists());
    assert_eq!(n.object_ids().len(), 4);
    n.run(["vault", "verify", "--full"]).ok().says("all intact");
}

/// A damaged one-file object never stops a rekey (which every unlock
/// resumes, so one bad file would lock the owner out of all the others),
/// and one whose data part claims more than one chunk is refused before
/// anything is allocated for it (review of 47da8d7).
#[test]
fn a_damaged_or_oversized_one_file_object_never_stops_a_rekey() {
    let n = Node::new();
    n.init("n");
    for name in ["a.bin", "b.bin", "c.bin"] {
        write_random(&n.path(&format!("src/{name}")), 5000);
    }
    n.run(["vault", "import", "src"]).ok();
    let (a, b, c) = (
        n.entry("src/a.bin").id,
        n.entry("src/b.bin").id,
        n.entry("src/c.bin").id,
    );
    // a: its trailer cut by one byte. b: a 1 TiB hole between its data and
    // its envelope, the envelope (and so its index digest) unchanged.
    let fa = n.one(&a);
    let ga = fs::read(&fa).unwrap();
    fs::write(&fa, &ga[..ga.len() - 1]).unwrap();
    let (env_b, data_b) = n.object_parts(&b);
    let f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(n.one(&b))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&data_b, 0).unwrap();
    let at = data_b.len() as u64 + (1 << 40);
    let mut tail = env_b.clone();
    tail.extend_from_slice(&(env_b.len() as u32).to_be_bytes());
    tail.extend_from_slice(b"P2PFSO1\0");
    f.write_all_at(&tail, at).unwrap();
    drop(f);
    n.run(["vault", "verify"])
        .code_is(exit::CORRUPT)
        .says(&a)
        .says(&b)
        .never_says(&c);
    n.run(["vault", "rekey"]).ok();
    assert!(
        !n.vault().join("header.next").exists(),
        "rekey left unfinished"
    );
    let r = n.run(["vault", "list"]).ok();
    assert!(r.all().contains(&a) && r.all().contains(&b), "{r}");
    let p = n.export("src/c.bin", "c.out");
    assert!(same_content(&p, &n.path("src/c.bin")));
    assert_eq!(
        &recipient_of(&n, &c),
        PublicKey::parse_id(&n.id().vault_key).unwrap().as_bytes()
    );
    n.run(["vault", "export", "src/b.bin", "b.out"])
        .code_is(exit::CORRUPT);
    assert!(!n.path("b.out").exists());
}

#[test]
fn rm_removes_one_file_and_nothing_else() {
    let n = Node::new();
    n.init("n");
    for name in ["a.bin", "b.bin", "c.bin"] {
        write_random(&n.path(&format!("src/{name}")), 1500 * MIB / 1000);
    }
    n.import(&["src/a.bin", "src/b.bin", "src/c.bin"]);
    let (a, b, c) = (n.entry("a.bin"), n.entry("b.bin"), n.entry("c.bin"));

    n.run(["vault", "rm", "b.bin"]).ok().says("removed");
    // The files are gone right away, not only after the next unlock.
    let mut rest = vec![a.id.clone(), c.id.clone()];
    rest.sort();
    let objs = n.object_files();
    for ext in ["obj", "env"] {
        assert_eq!(objs[ext], rest, "{ext}");
    }
    let names: Vec<String> = n.list().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["a.bin", "c.bin"]);
    assert_eq!(n.object_files()["env"], rest);
    n.run(["vault", "rm", "b.bin"]).code_is(exit::NOT_FOUND);
    n.run(["vault", "export", &b.id, "b.out"])
        .code_is(exit::NOT_FOUND);

    for name in ["a.bin", "c.bin"] {
        let p = n.export(name, &format!("{name}.out"));
        assert!(same_content(&p, &n.path(&format!("src/{name}"))));
    }
    n.run(["vault", "rm", &c.id[..10]]).ok();
    let left: Vec<String> = n.list().into_iter().map(|e| e.id).collect();
    assert_eq!(left, [a.id]);
    n.run(["vault", "verify", "--full"]).ok();
    n.run(["vault", "verify"]).ok().says("1 object(s)");
}

// ---------------------------------------------------------------- crashes

/// After a crash: the vault verifies without and with the passphrase, and
/// every listed file is a complete copy of a source (size and BLAKE3).
fn assert_consistent(n: &Node, sources: &BTreeMap<String, (u64, String)>) -> Vec<Listed> {
    n.run(["vault", "verify"]).ok();
    // Every version: a crash test may store a name more than once.
    let r = n.run(["vault", "list", "--all", "--json"]).ok();
    assert!(
        !r.stderr.contains("damaged") && !r.stderr.contains("warning"),
        "{r}"
    );
    let listed: Vec<Listed> = r.json();
    for e in &listed {
        let want = sources
            .get(&e.name)
            .unwrap_or_else(|| panic!("unexpected entry {e:?}"));
        assert_eq!(
            &(e.size, e.blake3.clone()),
            want,
            "partial file listed: {e:?}"
        );
    }
    // The unlock removed every leftover: no staging file, and each data
    // file has its envelope.
    assert!(n.staging_files().is_empty(), "{:?}", n.staging_files());
    let objs = n.object_files();
    assert_eq!(objs.get("obj"), objs.get("env"), "{objs:?}");
    assert_eq!(n.object_ids().len(), listed.len());
    listed
}

#[test]
fn kill_9_during_import_leaves_a_consistent_vault() {
    let n = Node::new();
    n.init("n");
    let mut sources = BTreeMap::new();
    for (name, len) in [
        ("a.bin", 300_000),
        ("b.bin", 2 * MIB),
        ("big.bin", 160 * MIB + 7),
        ("c.bin", MIB + 1),
    ] {
        let p = n.path(&format!("src/{name}"));
        let h = write_random(&p, len);
        sources.insert(format!("src/{name}"), (len, h));
    }
    let mut killed_mid_store = 0;
    let mut total_listed = 0;
    for delay_ms in [0u64, 20, 60, 120, 200, 300, 450, 650] {
        let p = n.spawn(["vault", "import", "src"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let r = p.kill9();
        let killed = r.status.signal() == Some(9);
        if killed && !n.staging_files().is_empty() {
            killed_mid_store += 1;
        }
        if !killed {
            r.ok();
        }
        let listed = assert_consistent(&n, &sources);
        assert!(listed.len() >= total_listed, "files were lost");
        total_listed = listed.len();
    }
    eprintln!(
        "import: {killed_mid_store} kill(s) during a store, {total_listed} file(s) committed"
    );
    assert!(
        killed_mid_store > 0,
        "no kill landed while a file was being stored: the test proved nothing"
    );

    // A re-import works and is complete; everything decrypts.
    n.run(["vault", "import", "src"]).ok();
    let listed = assert_consistent(&n, &sources);
    assert!(listed.len() >= total_listed + 4);
    n.run(["vault", "verify", "--full"]).ok();
    // Export each distinct name once (by id: names repeat) and compare bytes.
    let mut seen = BTreeSet::new();
    for e in listed.iter().rev() {
        if seen.insert(e.name.clone()) {
            let dest = format!("out-{}", e.id);
            n.run(["vault", "export", &e.id, &dest]).ok();
            assert_eq!(blake3_file(&n.path(&dest)), sources[&e.name].1);
            fs::remove_file(n.path(&dest)).unwrap();
        }
    }
}

#[test]
fn kill_9_during_rekey_is_resumed_by_the_next_unlock() {
    let n = Node::new();
    n.init("n");
    let mut sources = BTreeMap::new();
    for i in 0..300u64 {
        let name = format!("many/f{i:03}");
        let h = write_random(&n.path(&name), 500 + i * 13);
        sources.insert(name, (500 + i * 13, h));
    }
    n.import(&["many"]);
    assert_eq!(assert_consistent(&n, &sources).len(), 300);

    // How long a whole rekey takes here, to aim the first kill inside it.
    // fsync times vary a lot on a busy machine, so the aim is then adjusted:
    // a kill that came too early (no `header.next` yet, same vault key)
    // moves it later, one that came too late (new vault key) earlier.
    let started = Instant::now();
    n.run(["vault", "rekey"]).ok();
    let full = started.elapsed();

    let mut mid_rekey = 0;
    let mut extra = 0;
    let (mut lo, mut hi) = (Duration::ZERO, full * 2);
    let mut delay = full / 2;
    let mut tried = Vec::new();
    for _ in 0..20 {
        if mid_rekey >= 3 {
            break;
        }
        let key_before = n.id().vault_key;
        let p = n.spawn(["vault", "rekey"]);
        std::thread::sleep(delay);
        let r = p.kill9();
        if r.status.signal() != Some(9) {
            r.ok();
        }
        let pending = n.vault().join("header.next").exists();
        tried.push((delay, pending));
        if pending {
            mid_rekey += 1;
            // Spread the next kills over the window found so far.
            delay = lo + (hi - lo).mul_f64([0.25, 0.75, 0.5, 0.4, 0.6][tried.len() % 5]);
            // A store while the rekey is pending seals to the old key in
            // `header`; the resumption must rewrap it too.
            extra += 1;
            let name = format!("late/l{extra}");
            let h = write_random(&n.path(&name), 4321);
            sources.insert(name, (4321, h));
            n.import(&["late"]);
        } else {
            if n.id().vault_key == key_before {
                lo = delay;
            } else {
                hi = delay;
            }
            delay = (lo + hi) / 2;
        }
        let listed = assert_consistent(&n, &sources);
        assert_eq!(listed.len(), 300 + extra);
        n.run(["vault", "verify", "--full"]).ok();
        assert!(
            !n.vault().join("header.next").exists(),
            "rekey not finished"
        );
        let pk = PublicKey::parse_id(&n.id().vault_key).unwrap();
        for e in &listed {
            assert_eq!(
                &recipient_of(&n, &e.id),
                pk.as_bytes(),
                "{} not sealed to the current vault key",
                e.name
            );
        }
        let _ = fs::remove_dir_all(n.path("late"));
    }
    eprintln!("rekey: {mid_rekey} kill(s) inside a rekey of {full:?}; (delay, inside): {tried:?}");
    assert!(
        mid_rekey > 0,
        "no kill landed inside a rekey (a whole rekey took {full:?}): {tried:?}"
    );

    n.run(["vault", "verify", "--full"]).ok();
    n.run(["vault", "export", "many", "back"]).ok();
    for i in 0..300u64 {
        let rel = format!("f{i:03}");
        assert!(
            same_content(
                &n.path(&format!("back/{rel}")),
                &n.path(&format!("many/{rel}"))
            ),
            "{rel}"
        );
    }
}

#[test]
fn unlocking_during_an_import_neither_breaks_it_nor_lists_it_early() {
    let n = Node::new();
    n.init("n");
    let h = write_random(&n.path("big.bin"), 128 * MIB);
    write_random(&n.path("small.bin"), 1000);
    n.import(&["small.bin"]);
    let mut p = n.spawn(["vault", "import", "big.bin"]);
    assert!(
        util::wait_until(Duration::from_secs(20), || !n.staging_files().is_empty()
            || p.try_wait().is_some()),
        "the import never started"
    );
    // Unlocked work meanwhile: must neither remove the import's staging
    // file nor list the object before it is committed.
    let listed = n.list();
    let running = p.try_wait().is_none();
    if running {
        assert!(
            listed.iter().all(|e| e.name != "big.bin" || e.blake3 == h),
            "{listed:?}"
        );
    }
    n.run(["vault", "verify"]).ok();
    assert!(p.wait_timeout(util::TIMEOUT).is_some(), "import hung");
    p.finish().ok();
    assert_eq!(n.entry("big.bin").blake3, h);
    n.run(["vault", "verify", "--full"]).ok();
}

// ---------------------------------------------------------------- disk full

/// A tmpfs mounted for the test, unmounted on drop (even on failure).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; MNT_DETACH cannot leave the mount busy.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

#[test]
fn disk_full_is_reported_and_leaves_nothing_partial() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: disk_full needs root to mount a small tmpfs");
        return;
    }
    let tmp = util::tempdir();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
        .arg(&mnt)
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        eprintln!("skipped: disk_full cannot mount a tmpfs here ({st:?})");
        return;
    }
    let _guard = Mount(mnt.clone());
    let n = Node::with_home(mnt.join("home"));
    n.init("n");
    write_random(&n.path("big.bin"), 5 * MIB);
    n.run(["vault", "import", "big.bin"])
        .code_is(exit::DISK_FULL)
        .says("disk full");
    // Nothing partial was kept, even before any unlock cleans up.
    assert!(n.staging_files().is_empty(), "{:?}", n.staging_files());
    assert!(n.object_files().is_empty(), "{:?}", n.object_files());
    n.run(["vault", "verify"]).ok();
    assert!(n.list().is_empty());
    // The space came back: a file that fits is stored.
    let h = write_random(&n.path("small.bin"), 300_000);
    n.import(&["small.bin"]);
    assert_eq!(n.entry("small.bin").blake3, h);
    n.run(["vault", "verify", "--full"]).ok();
    let p = n.export("small.bin", "small.out");
    assert_eq!(blake3_file(&p), h);
}

// ---------------------------------------------------------------- names

#[test]
fn names_with_control_characters_are_refused() {
    let n = Node::new();
    n.init("n");
    write_bytes(&n.path("src/a\u{1b}b"), b"escape");
    n.run(["vault", "import", "src/a\u{1b}b"])
        .code_is(exit::FAILURE)
        .says("control character")
        .says("nothing to import");
    // Inside a folder, --strict: the whole import is refused before
    // anything is stored.
    write_bytes(&n.path("dir/good.txt"), b"fine");
    write_bytes(&n.path("dir/bad\nname"), b"newline");
    write_bytes(&n.path("dir/also\u{7}bad"), b"bell");
    n.run(["vault", "import", "--strict", "dir"])
        .code_is(exit::FAILURE)
        .says("control character")
        .says("--strict");
    assert!(n.list().is_empty());
    assert!(n.object_files().is_empty());
    // Without it: the bad names are skipped, one line each, the rest is
    // stored, and the exit code says the import was partial.
    let r = n
        .run(["vault", "import", "dir"])
        .code_is(exit::PARTIAL)
        .says("2 path(s) skipped");
    assert_eq!(r.stderr.matches("p2pfs: skipped").count(), 2, "{r}");
    let names: Vec<String> = n.list().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["dir/good.txt"]);
}

#[test]
fn names_that_are_not_utf8_or_stored_twice_are_skipped_before_sending() {
    use std::os::unix::ffi::OsStrExt;
    let (a, b) = Node::pair();
    a.init("alice");
    b.init("bob");
    let srv = Serving::start(&b, &["--accept", "any"]);
    write_bytes(&a.path("one/x.txt"), b"first x");
    write_bytes(&a.path("two/x.txt"), b"second x");
    write_bytes(&a.path("two/fine.txt"), b"fine");
    let raw = a
        .path("two")
        .join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9"));
    std::fs::write(&raw, b"not utf-8").unwrap();
    // The same stored name twice: `x.txt` from both folders' files given
    // by path; the first keeps it.
    let r = a.run([
        "send",
        "--trust-new",
        "--strict",
        "one/x.txt",
        "two/x.txt",
        &srv.addr(),
    ]);
    r.code_is(exit::FAILURE).says("same stored name");
    assert!(b.list().is_empty(), "--strict sent nothing");
    let r = a.run([
        "send",
        "--trust-new",
        "one/x.txt",
        "two/x.txt",
        "two",
        &srv.addr(),
    ]);
    let r = r.code_is(exit::PARTIAL).says("2 path(s) skipped");
    assert!(r.stderr.contains("not valid UTF-8"), "{r}");
    assert!(r.stderr.contains("same stored name"), "{r}");
    assert!(
        r.stderr.contains(r"latin1-\xE9t\xE9"),
        "the name's bytes, escaped: {r}"
    );
    let mut names: Vec<String> = b.list().into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names, ["two/fine.txt", "two/x.txt", "x.txt"]);
    let out = b.export("x.txt", "x.out");
    assert_eq!(std::fs::read(out).unwrap(), b"first x");
}

#[test]
fn refused_names_are_not_echoed_raw_to_the_terminal() {
    let n = Node::new();
    n.init("n");
    write_bytes(&n.path("src/a\u{1b}[31mred"), b"escape");
    std::os::unix::fs::symlink("nowhere", n.path("src/b\u{1b}]0;title\u{7}")).unwrap();
    let r = n.run(["vault", "import", "src/a\u{1b}[31mred"]);
    assert!(!r.status.success(), "{r}");
    assert!(
        !r.all().contains('\u{1b}'),
        "raw ESC in the output:\n{r:?}",
        r = r.all()
    );
    let r = n.run(["vault", "import", "src/b\u{1b}]0;title\u{7}"]);
    assert!(
        !r.all().contains('\u{1b}'),
        "raw ESC in the output:\n{r:?}",
        r = r.all()
    );
}

// ---------------------------------------------------------------- local attacker

/// Stores `data` as `name` the way a receiving daemon does: through the
/// library, without the passphrase (staging, chunks sealed under a fresh
/// file key, commit), with metadata as `tweak` leaves it. Returns the id.
fn store_as_daemon(n: &Node, name: &str, data: &[u8], tweak: impl FnOnce(&mut Metadata)) -> String {
    let vault = Vault::open(&n.vault()).unwrap();
    let id: FileId = p2pfs::crypto::random().unwrap();
    let key = FileKey::generate().unwrap();
    let mut w = vault.writer(id, data.len() as u64, 4096).unwrap();
    for (i, sealed) in seal_chunks(&id, &key, data).iter().enumerate() {
        w.write_chunk(i as u64, sealed).unwrap();
    }
    let mut meta = test_meta(name, data);
    tweak(&mut meta);
    w.commit(key.secret(), &meta).unwrap();
    hex::encode(id)
}

/// `data` as sealed chunks of 4096 bytes under `key`, for object `id`.
fn seal_chunks(id: &FileId, key: &FileKey, data: &[u8]) -> Vec<Vec<u8>> {
    let size = data.len() as u64;
    let count = chunk_count(size, 4096);
    let mut at = 0;
    (0..count)
        .map(|i| {
            let len = chunk_plain_len(size, 4096, i);
            at += len;
            key.seal_chunk(id, i, i + 1 == count, &data[at - len..at])
                .unwrap()
        })
        .collect()
}

/// The metadata of a stored test file named `name` holding `data`.
fn test_meta(name: &str, data: &[u8]) -> Metadata {
    Metadata {
        kind: Kind::File,
        size: data.len() as u64,
        chunk_size: 4096,
        blake3: *blake3::hash(data).as_bytes(),
        added_ms: 1_700_000_000_000,
        mtime: 1_700_000_000,
        mode: 0o644,
        origin: None,
        name: name.into(),
    }
}

// ---------------------------------------------------------------- sealed deposits

/// Stores `data` in `n`'s vault as a sealed deposit of `depositor`, the way
/// a receiving daemon does (a keyless partial, then `finish_deposit`): its
/// chunks sealed under a file key only the envelope holds, the envelope
/// sealed to `to` (the depositor's own vault key). Returns the id.
fn deposit_as_daemon(n: &Node, depositor: &PublicKey, to: &PublicKey, data: &[u8]) -> String {
    use p2pfs::store::{
        partial::{PartialMeta, Slot, SEALED_KEY_LEN},
        vault::seal_envelope,
    };
    let vault = Vault::open(&n.vault()).unwrap();
    let id: FileId = p2pfs::crypto::random().unwrap();
    let key = FileKey::generate().unwrap();
    let mut p = vault
        .start_partial(PartialMeta {
            slot: Slot(id),
            version: [0; 32],
            file_id: id,
            size: data.len() as u64,
            chunk_size: 4096,
            sealed_key: None,
            label: Vec::new(),
        })
        .unwrap();
    p.set_sealed_key(vec![7; SEALED_KEY_LEN]);
    let mut leaves = Vec::new();
    for (i, sealed) in seal_chunks(&id, &key, data).into_iter().enumerate() {
        let leaf = p2pfs::crypto::chunk::sealed_chunk_hash(&sealed);
        leaves.push(leaf);
        p.write_chunk(i as u64, sealed, leaf).unwrap();
    }
    let meta = test_meta("Deposited-Secret-Name.txt", data);
    let ct = p2pfs::crypto::chunk::ct_digest(&leaves);
    let env = seal_envelope(to, id, ct, key.secret(), &meta).unwrap();
    p.finish_deposit(depositor, &env).unwrap();
    hex::encode(id)
}

#[test]
fn sealed_deposits_are_listed_verified_and_removed_but_never_exported() {
    let n = Node::new();
    n.init("b");
    write_random(&n.path("src/mine.bin"), 5000);
    n.import(&["src/mine.bin"]);
    let (a_node, a_vault) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    n.run(["trust", "add", &a_node.public().to_id(), "--name", "alice"])
        .ok();
    let marker = b"DEPOSIT-PLAINTEXT-MARKER-1234".repeat(400);
    let id = deposit_as_daemon(&n, &a_node.public(), &a_vault.public(), &marker);
    let id2 = deposit_as_daemon(&n, &a_node.public(), &a_vault.public(), b"small");
    let fp = a_node.public().fingerprint();

    let v: Vec<serde_json::Value> = n.run(["vault", "list", "--json"]).ok().json();
    assert_eq!(v.len(), 3, "{v:#?}");
    let mine: Vec<_> = v.iter().filter(|e| e["sealed"] == false).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["name"], "mine.bin");
    let dep = v.iter().find(|e| e["id"] == id.as_str()).unwrap();
    assert_eq!(dep["sealed"], true);
    assert_eq!(dep["kind"], "file");
    assert_eq!(dep["size"], marker.len() as u64);
    assert_eq!(dep["depositor"], a_node.public().to_id().as_str());
    assert_eq!(dep["depositor_fingerprint"], fp.as_str());
    assert!(
        dep.get("name").is_none() && dep.get("blake3").is_none(),
        "{dep}"
    );
    let text = n
        .run(["vault", "list"])
        .ok()
        .never_says("Deposited-Secret-Name");
    assert!(
        text.stdout
            .contains(&format!("sealed deposit from {fp} (alice)")),
        "{text}"
    );
    assert!(!text.stderr.contains("warning"), "{text}");

    // Nothing on B holds the plaintext or the name.
    for needle in [&b"DEPOSIT-PLAINTEXT-MARKER"[..], b"Deposited-Secret-Name"] {
        assert_eq!(
            files_containing(&n.home, needle),
            vec![],
            "plaintext on disk"
        );
    }

    // Export refuses, naming the depositor, and writes nothing.
    for what in [id.as_str(), &id[..12]] {
        n.run(["vault", "export", what, "out.bin"])
            .code_is(exit::SEALED_DEPOSIT)
            .says("sealed deposit from")
            .says(&fp)
            .says("only its depositor can fetch and open it");
        assert!(files_under(&n.work).iter().all(|f| !f.ends_with("out.bin")));
    }

    n.run(["vault", "verify"]).ok().says("3 object(s)");
    n.run(["vault", "verify", "--full"])
        .ok()
        .says("3 object(s)");
    let obj = n.vault().join("deposits").join(format!("{id}.obj"));
    flip_byte(&obj, 40 + 1000, 0x01);
    n.run(["vault", "verify"])
        .code_is(exit::CORRUPT)
        .says(&id)
        .says("sealed deposit from")
        .never_says(&id2);
    n.run(["vault", "verify", "--full"])
        .code_is(exit::CORRUPT)
        .says(&id);
    // Damage in a deposit is not the owner's damage: unlocking still works.
    n.run(["vault", "list"]).ok().never_says("damaged");

    n.run(["vault", "rm", &id])
        .ok()
        .says("removed sealed deposit");
    n.run(["vault", "verify"]).ok().says("2 object(s)");
    n.run(["vault", "rm", &id]).code_is(exit::NOT_FOUND);
    let left: Vec<serde_json::Value> = n.run(["vault", "list", "--json"]).ok().json();
    assert_eq!(left.len(), 2);
    assert!(!obj.exists());
}

fn full_mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn export_applies_the_umask_and_never_sets_special_bits() {
    let n = Node::new();
    n.init("n");
    write_bytes(&n.path("src/open.sh"), b"#!/bin/sh\n");
    fs::set_permissions(n.path("src/open.sh"), fs::Permissions::from_mode(0o777)).unwrap();
    n.import(&["src/open.sh"]);
    assert_eq!(n.entry("open.sh").mode, "777");
    // A sender's mode is whatever it declares: setuid, setgid, sticky.
    let sender = Keypair::generate().unwrap().public();
    store_as_daemon(&n, "suid", b"not a root shell", |m| {
        m.mode = 0o7777;
        m.origin = Some(sender);
    });
    for (what, umask, want) in [
        ("open.sh", 0o077, 0o700),
        ("open.sh", 0o022, 0o755),
        ("suid", 0o077, 0o700),
        ("suid", 0o027, 0o750),
        ("suid", 0, 0o777),
    ] {
        let dest = format!("{what}-{umask:o}");
        n.cmd(["vault", "export", what, &dest])
            .umask(umask)
            .run()
            .ok();
        let got = full_mode(&n.path(&dest));
        assert_eq!(
            got, want,
            "{what} exported under umask {umask:03o}: {got:o}"
        );
    }
}

#[test]
fn received_names_never_merge_with_the_owners_folders() {
    let n = Node::new();
    n.init("n");
    write_bytes(&n.path("Documents/a"), b"the owner's own file");
    n.import(&["Documents"]);
    // Any accepted sender can commit a name inside the owner's folder: the
    // receiving daemon needs no passphrase to store it.
    let other = Keypair::generate().unwrap().public();
    store_as_daemon(&n, "Documents/evil", b"planted by a sender", |m| {
        m.origin = Some(other)
    });

    // `vault list` says where each entry came from.
    let text = n.run(["vault", "list"]).ok().stdout;
    let line = |name: &str| {
        text.lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .to_owned()
    };
    assert!(line("Documents/a").contains("  local  "), "{text}");
    assert!(
        line("Documents/evil").contains(&other.fingerprint()),
        "{text}"
    );
    assert_eq!(n.entry("Documents/a").origin, None);
    assert_eq!(n.entry("Documents/evil").origin, Some(other.to_id()));

    // The folder mixes origins: refused, naming them, and nothing written.
    n.run(["vault", "export", "Documents", "out"])
        .code_is(exit::NOT_FOUND)
        .says("several origins")
        .says("local")
        .says(&other.fingerprint())
        .says("--from local");
    assert!(!n.path("out").exists(), "a refused export wrote something");

    // One origin at a time, named as `vault list` and `id` show it.
    let files = |dir: &str| -> Vec<String> {
        files_under(&n.path(dir))
            .iter()
            .map(|p| p.strip_prefix(n.path(dir)).unwrap().display().to_string())
            .collect()
    };
    n.run(["vault", "export", "Documents", "mine", "--from", "local"])
        .ok();
    assert_eq!(files("mine"), ["a"]);
    assert_eq!(fs::read(n.path("mine/a")).unwrap(), b"the owner's own file");
    let id = other.to_id();
    for (i, from) in [id.clone(), id[..8].to_uppercase(), other.fingerprint()]
        .iter()
        .enumerate()
    {
        let dest = format!("theirs{i}");
        n.run(["vault", "export", "Documents", &dest, "--from", from])
            .ok();
        assert_eq!(files(&dest), ["evil"], "--from {from}");
    }
    n.run(["vault", "export", "Documents", "x", "--from", "zzzzzzzzzz"])
        .code_is(exit::NOT_FOUND)
        .says("no file in the vault came from");
    assert!(!n.path("x").exists());

    // A single name held by several origins is ambiguous, origins shown.
    store_as_daemon(&n, "Documents/a", b"a sender's a", |m| {
        m.origin = Some(other)
    });
    n.run(["vault", "export", "Documents/a", "a.out"])
        .code_is(exit::NOT_FOUND)
        .says("matches several files")
        .says("local")
        .says(&other.fingerprint());
    assert!(!n.path("a.out").exists());
    n.run(["vault", "export", "Documents/a", "a.out", "--from", "local"])
        .ok();
    assert_eq!(fs::read(n.path("a.out")).unwrap(), b"the owner's own file");
    n.run([
        "vault",
        "export",
        "Documents/a",
        "b.out",
        "--from",
        &id[..10],
    ])
    .ok();
    assert_eq!(fs::read(n.path("b.out")).unwrap(), b"a sender's a");
    // rm picks by origin too.
    n.run(["vault", "rm", "Documents/a"])
        .code_is(exit::NOT_FOUND);
    n.run(["vault", "rm", "Documents/a", "--from", &id]).ok();
    assert_eq!(n.entry("Documents/a").origin, None);
}

#[test]
fn stored_times_out_of_range_never_make_list_or_export_panic() {
    let n = Node::new();
    n.init("n");
    // Year 10000 and the extremes: what a local writer (or a peer's mtime)
    // can put in an envelope.
    let cases: [(&str, u64, i64); 4] = [
        ("max", u64::MAX, i64::MAX),
        ("min", 253_402_300_800_000, i64::MIN),
        ("last", 253_402_300_799_999, -1),
        ("zero", 0, 0),
    ];
    for (name, added_ms, mtime) in cases {
        store_as_daemon(&n, name, name.as_bytes(), |m| {
            m.added_ms = added_ms;
            m.mtime = mtime;
        });
    }
    let r = n.run(["vault", "list"]).ok();
    // A header row, then one line per file.
    assert_eq!(r.stdout.lines().count(), 5, "{r}");
    r.says("(time out of range)").says("9999-12-31T23:59:59Z");
    let listed = n.list();
    let added = |name: &str| {
        listed
            .iter()
            .find(|e| e.name == name)
            .unwrap()
            .added
            .clone()
    };
    assert_eq!(added("max"), None);
    assert_eq!(added("min"), None);
    assert_eq!(added("last").as_deref(), Some("9999-12-31T23:59:59Z"));
    assert_eq!(added("zero").as_deref(), Some("1970-01-01T00:00:00Z"));
    assert_eq!(
        listed.iter().find(|e| e.name == "max").unwrap().mtime,
        i64::MAX
    );
    for (name, ..) in cases {
        n.run(["vault", "export", name, &format!("{name}.out")])
            .ok();
        assert_eq!(
            fs::read(n.path(&format!("{name}.out"))).unwrap(),
            name.as_bytes()
        );
    }
}

#[test]
fn kdf_cost_over_the_budget_is_refused_before_argon2_runs() {
    let n = Node::new();
    n.init("n");
    let before = snapshot(&n.home);
    // Each parameter within its bound, their product far over the budget
    // (the security review's header: 52.7 s and 1.05 GB before "wrong
    // passphrase"). m, t, p follow magic (8), version (2) and kdf (1).
    let header = n.vault().join("header");
    let mut fields = Vec::new();
    for v in [KdfParams::MAX_M_KIB, KdfParams::MAX_T, KdfParams::MAX_P] {
        fields.extend_from_slice(&v.to_be_bytes());
    }
    patch(&header, 11, &fields);
    fix_checksum(&header);
    for args in [&["vault", "list"][..], &["vault", "export", "x", "y"]] {
        let r = n
            .cmd(args)
            .timeout(Duration::from_secs(30))
            .run()
            .code_is(exit::CORRUPT)
            .says("corrupt")
            .says("key-derivation parameters")
            .never_says("wrong passphrase");
        assert!(r.elapsed < Duration::from_secs(5), "{r}");
    }
    let mut after = snapshot(&n.home);
    after.remove("vault/header");
    let mut before = before;
    before.remove("vault/header");
    assert_eq!(after, before);
}

#[test]
fn export_never_writes_through_a_symlink_planted_in_the_destination() {
    let n = Node::new();
    n.init("n");
    write_bytes(&n.path("Folder/top.txt"), b"top");
    write_bytes(&n.path("Folder/sub/deep/x.txt"), b"x");
    n.import(&["Folder"]);
    let elsewhere = n.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::create_dir(n.path("out")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, n.path("out/sub")).unwrap();
    n.run(["vault", "export", "Folder", "out"])
        .code_is(exit::FAILURE)
        .says("out/sub is a symbolic link");
    assert!(
        files_under(&elsewhere).is_empty(),
        "{:?}",
        files_under(&elsewhere)
    );
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    // A link deeper down, and a link as the file's own name.
    fs::remove_file(n.path("out/sub")).unwrap();
    fs::create_dir(n.path("out/sub")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, n.path("out/sub/deep")).unwrap();
    n.run(["vault", "export", "Folder", "out"])
        .code_is(exit::FAILURE)
        .says("out/sub/deep is a symbolic link");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    fs::remove_file(n.path("out/sub/deep")).unwrap();
    let target = n.path("elsewhere/target");
    fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, n.path("out/top.txt")).unwrap();
    n.run(["vault", "export", "Folder", "out", "--force"]).ok();
    assert_eq!(
        fs::read(&target).unwrap(),
        b"keep",
        "written through a link"
    );
    assert_eq!(fs::read(n.path("out/top.txt")).unwrap(), b"top");
    assert_eq!(fs::read(n.path("out/sub/deep/x.txt")).unwrap(), b"x");
    // The destination root itself is the user's choice: a link is fine.
    std::os::unix::fs::symlink(n.path("elsewhere"), n.path("chosen")).unwrap();
    n.run(["vault", "export", "Folder", "chosen"]).ok();
    assert_eq!(fs::read(n.path("elsewhere/sub/deep/x.txt")).unwrap(), b"x");
}

/// Every name in `dir`, hidden ones included.
fn entries_of(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Waits until `p` holds open a file in `dir` with at least `bytes` written.
fn wait_for_file_in(p: &mut util::Proc, dir: &Path, bytes: u64) -> bool {
    let dir = fs::canonicalize(dir).unwrap();
    let fds = PathBuf::from(format!("/proc/{}/fd", p.pid()));
    util::wait_until(Duration::from_secs(60), || {
        p.try_wait().is_some()
            || fs::read_dir(&fds).into_iter().flatten().flatten().any(|e| {
                fs::read_link(e.path()).is_ok_and(|l| l.starts_with(&dir))
                    && fs::metadata(e.path()).is_ok_and(|m| m.is_file() && m.len() >= bytes)
            })
    }) && p.try_wait().is_none()
}

#[test]
fn interrupted_export_leaves_no_plaintext_behind() {
    let n = Node::new();
    n.init("n");
    let h = write_random(&n.path("big.bin"), 300 * MIB);
    n.import(&["big.bin"]);
    fs::remove_file(n.path("big.bin")).unwrap();
    let out = n.path("out");
    fs::create_dir(&out).unwrap();

    // Ctrl-C, then kill -9 over an existing file with --force: nothing is
    // left but what was there before, not even a hidden file.
    fs::write(n.path("keep"), b"old").unwrap();
    for (sig, force) in [(libc::SIGINT, false), (libc::SIGKILL, true)] {
        let mut args = vec!["vault", "export", "big.bin", "out/big.out"];
        if force {
            fs::copy(n.path("keep"), out.join("big.out")).unwrap();
            args.push("--force");
        }
        let mut p = n.spawn(args);
        assert!(
            wait_for_file_in(&mut p, &out, 32 * MIB),
            "the export never got going, or finished first: {}",
            p.stderr_now()
        );
        p.signal(sig);
        assert!(p.wait_timeout(util::TIMEOUT).is_some());
        let r = p.finish();
        assert_eq!(r.status.signal(), Some(sig), "not killed mid-way:\n{r}");
        let want: Vec<String> = if force {
            vec!["big.out".into()]
        } else {
            vec![]
        };
        assert_eq!(entries_of(&out), want, "after signal {sig}");
        if force {
            assert_eq!(fs::read(out.join("big.out")).unwrap(), b"old");
        }
    }
    // A rerun exports fine (and still refuses to overwrite without --force).
    n.run(["vault", "export", "big.bin", "out/big.out"])
        .code_is(exit::EXISTS);
    n.run(["vault", "export", "big.bin", "out/big.out", "--force"])
        .ok();
    assert_eq!(entries_of(&out), ["big.out"]);
    assert_eq!(blake3_file(&out.join("big.out")), h);
    n.run(["vault", "export", "big.bin", "out/again.out"]).ok();
    assert_eq!(entries_of(&out), ["again.out", "big.out"]);
}

// ---------------------------------------------------------------- secrets

#[test]
fn serve_wipes_the_passphrase_from_its_environment() {
    // No node yet: serve creates it from P2PFS_PASSPHRASE, then keeps
    // running (for as long as the daemon lives).
    let n = Node::new();
    let pass = n.passphrase.clone().unwrap();
    let mut p = n.spawn([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--name",
        "envtest",
    ]);
    assert!(
        p.wait_for_output("(UDP)", Duration::from_secs(30)),
        "serve did not start:\n{}\n{}",
        p.stdout_now(),
        p.stderr_now()
    );
    let environ = fs::read(format!("/proc/{}/environ", p.pid())).unwrap();
    // The right process and file: its other variables are all there.
    assert!(util::find_bytes(&environ, b"P2PFS_HOME=").is_some());
    assert!(util::find_bytes(&environ, b"LC_ALL=C").is_some());
    assert_eq!(
        util::find_bytes(&environ, pass.as_bytes()),
        None,
        "the passphrase is readable in /proc/{}/environ",
        p.pid()
    );
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_timeout(Duration::from_secs(20)).is_some(),
        "serve did not stop"
    );
    // And the passphrase was used: the vault it created opens with it.
    assert!(n.list().is_empty());
}

// ---------------------------------------------------------------- trust rights, shares, access log

/// `trust list --json` as values.
fn trust_list(n: &Node) -> Vec<serde_json::Value> {
    n.run(["trust", "list", "--json"]).ok().json()
}

#[test]
fn trust_add_takes_the_owner_right_and_a_quota() {
    let n = Node::new();
    n.init("n");
    let k = Keypair::generate().unwrap().public();
    let r = n
        .run([
            "trust",
            "add",
            &k.to_id(),
            "--name",
            "phone",
            "--allow",
            "owner,get",
            "--quota",
            "500M",
        ])
        .ok();
    assert!(r.stdout.contains("quota: 500MiB"), "{r}");
    let l = trust_list(&n);
    assert_eq!(l[0]["allow"], serde_json::json!(["get", "owner"]));
    assert_eq!(l[0]["quota"], 500u64 << 20);
    n.run(["trust", "list"]).ok().says("QUOTA").says(" 500MiB ");
    let json = fs::read_to_string(n.home.join("peers.json")).unwrap();
    assert!(json.contains("\"quota\": 524288000"), "{json}");
    // Units are powers of 1024 either way; the quota changes only when given.
    n.run(["trust", "add", &k.to_id(), "--quota", "2GiB"]).ok();
    assert_eq!(trust_list(&n)[0]["quota"], 2u64 << 30);
    n.run(["trust", "add", &k.to_id(), "--allow", "send"]).ok();
    let l = trust_list(&n);
    assert_eq!(l[0]["quota"], 2u64 << 30);
    assert_eq!(l[0]["allow"], serde_json::json!(["send", "get", "owner"]));
    // Bad sizes and rights are refused and change nothing.
    for bad in ["10X", "1.5G", "-1"] {
        n.run(["trust", "add", &k.to_id(), &format!("--quota={bad}")])
            .code_is(2)
            .says("not a size");
    }
    n.run(["trust", "add", &k.to_id(), "--quota", "2000000T"])
        .code_is(2)
        .says("at most 1 EiB");
    n.run(["trust", "add", &k.to_id(), "--allow", "root"])
        .code_is(1)
        .says("owner");
    assert_eq!(trust_list(&n), l);
    // A peer without a quota has none in the file or the list.
    let k2 = Keypair::generate().unwrap().public();
    n.run(["trust", "add", &k2.to_id()]).ok();
    let l = trust_list(&n);
    assert!(l[1]["quota"].is_null(), "{l:?}");
}

#[derive(Debug, serde::Deserialize)]
struct SharedJson {
    peer: String,
    peer_fingerprint: String,
    alias: Option<String>,
    id: String,
    name: Option<String>,
    size: u64,
    kind: String,
}

#[derive(Debug, serde::Deserialize)]
struct LoggedJson {
    time: Option<String>,
    time_ms: u64,
    peer: Option<String>,
    peer_fingerprint: Option<String>,
    alias: Option<String>,
    action: String,
    object: String,
    outcome: String,
}

fn shared(n: &Node) -> Vec<SharedJson> {
    n.run(["vault", "shares", "--json"]).ok().json()
}

fn logged(n: &Node) -> Vec<LoggedJson> {
    n.run(["vault", "log", "--json"]).ok().json()
}

#[test]
fn shares_are_sealed_to_the_peer_listed_logged_and_withdrawn() {
    let (a, b) = Node::pair();
    a.init("a");
    b.init("b");
    let (aid, bid) = (a.id(), b.id());
    let secret = format!("secret-name-{}", random_hex(6));
    write_bytes(&a.path(&format!("docs/{secret}.txt")), b"first");
    write_bytes(&a.path("docs/two.txt"), b"second");
    write_bytes(&a.path("top.txt"), b"top");
    a.import(&["docs", "top.txt"]);

    // Unknown peers are refused with the way to trust them; nothing is written.
    a.run(["vault", "share", "top.txt", &bid.id])
        .code_is(1)
        .says("p2pfs trust add ID --allow get");
    assert!(!a.vault().join("shares").exists());
    // A known peer without `get` is shared with, and told how to grant it.
    a.run(["trust", "add", &bid.id, "--name", "bob", "--allow", "send"])
        .ok();
    a.run(["vault", "share", "top.txt", "bob"])
        .ok()
        .says(&bid.fingerprint)
        .says("--allow get");
    // A folder is a snapshot of what is under it now.
    a.run(["trust", "add", &bid.id, "--allow", "get"]).ok();
    a.run(["vault", "share", "docs", &bid.id[..10]])
        .ok()
        .says("snapshot")
        .says("2 file(s)")
        .never_says("--allow get");
    write_bytes(&a.path("later/docs/three.txt"), b"later");
    a.cmd(["vault", "import", "docs"])
        .cwd(&a.path("later"))
        .run()
        .ok();
    let list = shared(&a);
    let mut names: Vec<String> = list.iter().filter_map(|s| s.name.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("docs/{secret}.txt"),
            "docs/two.txt".into(),
            "top.txt".into()
        ]
    );
    for s in &list {
        assert_eq!(
            (s.peer.as_str(), s.peer_fingerprint.as_str()),
            (bid.id.as_str(), bid.fingerprint.as_str())
        );
        assert_eq!(s.alias.as_deref(), Some("bob"));
        assert_eq!((s.id.len(), s.kind.as_str()), (32, "file"));
        assert_eq!(s.size, a.entry(s.name.as_deref().unwrap()).size);
    }
    // Sharing again replaces, never duplicates.
    a.run(["vault", "share", "top.txt", "bob"]).ok();
    assert_eq!(shared(&a).len(), 3);

    // The sealed body opens with the peer's node key only, and its file
    // key decrypts the object.
    let vault_dir = a.vault();
    let shares = p2pfs::store::shares::Shares::load(&vault_dir).unwrap();
    let bkp = p2pfs::store::home::Home::new(&b.home)
        .load_identity()
        .unwrap()
        .keypair;
    let akp = p2pfs::store::home::Home::new(&a.home)
        .load_identity()
        .unwrap()
        .keypair;
    let apk = PublicKey::parse_id(&aid.id).unwrap();
    for r in shares.records() {
        let body = p2pfs::store::shares::open_share(&bkp, &apk, &r.id, &r.blob).unwrap();
        assert_eq!((body.meta.size, body.meta.kind), (r.size, r.kind));
        let key = FileKey::from_secret(body.file_key.clone());
        let obj = a.object_parts(&p2pfs::crypto::to_hex(&r.id)).1;
        let mut c0 = obj[40..].to_vec();
        let pt = key.open_chunk_in_place(&r.id, 0, true, &mut c0).unwrap();
        assert_eq!(pt.len() as u64, r.size);
        assert!(p2pfs::store::shares::open_share(&akp, &apk, &r.id, &r.blob).is_err());
    }

    // The log shows the shares, sealed: only the passphrase opens it.
    let log = logged(&a);
    let shares_logged: Vec<&LoggedJson> = log.iter().filter(|l| l.action == "share").collect();
    assert_eq!(shares_logged.len(), 4, "{log:?}");
    for l in &log {
        assert_eq!(l.peer.as_deref(), Some(bid.id.as_str()));
        assert_eq!(
            l.peer_fingerprint.as_deref(),
            Some(bid.fingerprint.as_str())
        );
        assert_eq!(l.alias.as_deref(), Some("bob"));
        assert!(l.time.is_some() && l.time_ms > 0, "{l:?}");
    }
    assert!(log.iter().any(|l| l.object == format!("docs/{secret}.txt")));
    a.run(["vault", "log"]).ok().says("share").says("bob");
    a.run_with_passphrase("wrong", ["vault", "log"])
        .code_is(exit::WRONG_PASSPHRASE);

    // unshare withdraws one share and logs it.
    a.run(["vault", "unshare", "docs/two.txt", "bob"])
        .ok()
        .says("unshared");
    a.run(["vault", "unshare", "docs/two.txt", "bob"])
        .code_is(1)
        .says("not shared");
    let left: Vec<Option<String>> = shared(&a).into_iter().map(|s| s.name).collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&Some("docs/two.txt".into())));
    let log = logged(&a);
    assert!(
        log.iter()
            .any(|l| l.action == "unshare" && l.object == "docs/two.txt"),
        "{log:?}"
    );

    // vault rm drops the object's shares (and says so in the log).
    a.run(["vault", "rm", &format!("docs/{secret}.txt")]).ok();
    let left: Vec<Option<String>> = shared(&a).into_iter().map(|s| s.name).collect();
    assert_eq!(left, [Some("top.txt".to_string())]);
    let log = logged(&a);
    assert!(
        log.iter().any(|l| l.action == "unshare"
            && l.object == format!("docs/{secret}.txt")
            && l.outcome.contains("removed")),
        "{log:?}"
    );

    // Neither file names a shared file in clear; both are private.
    for f in ["shares", "log"] {
        let p = a.vault().join(f);
        let bytes = fs::read(&p).unwrap();
        for needle in [secret.as_bytes(), b"top.txt", b"docs/two"] {
            assert!(util::find_bytes(&bytes, needle).is_none(), "{f}");
        }
        assert_eq!(mode_of(&p), 0o600, "{f}");
    }
    assert!(files_containing(&a.home, secret.as_bytes()).is_empty());
    // What is left still verifies, and the share of it is still there.
    a.run(["vault", "verify", "--full"]).ok();
    assert_eq!(shared(&a).len(), 1);
}

/// Issue 12, item 7: atomic replacements a kill interrupted leave
/// `index.tmp`, `header.tmp`, `header.next.tmp`; the next unlocked command
/// removes them (a `header.tmp` holds the vault secret sealed under a
/// passphrase that never took effect), and the vault stays sound.
#[test]
fn an_unlock_removes_interrupted_replacements() {
    let a = Node::new();
    a.init("a");
    write_bytes(&a.path("f.txt"), b"kept");
    a.import(&["f.txt"]);
    let header = std::fs::read(a.vault().join("header")).unwrap();
    for name in ["index.tmp", "header.tmp", "header.next.tmp", "shares.tmp"] {
        std::fs::write(a.vault().join(name), &header).unwrap();
    }
    assert_eq!(a.list().len(), 1);
    for name in ["index.tmp", "header.tmp", "header.next.tmp", "shares.tmp"] {
        assert!(!a.vault().join(name).exists(), "{name} is left");
    }
    a.run(["vault", "verify", "--full"]).ok();
}

// ---------------------------------------------------------------- the receiver's log

#[test]
fn the_receiver_logs_one_line_per_transfer_naming_the_sender_by_its_alias() {
    let (a, b) = Node::pair();
    a.init("alice");
    b.init("bob");
    let me = a.id();
    b.run([
        "trust", "add", &me.id, "--name", "laptop", "--allow", "send",
    ])
    .ok();
    for i in 0..3 {
        write_random(&a.path(&format!("d/f{i}")), 100 + i);
    }
    let summary = format!("stored 3 file(s), 303 B from laptop ({})", me.fingerprint);
    // Serves with `extra`, sends `d` with `flag`: the receiver's log.
    let log_of = |extra: &[&str], flag: &str| {
        let mut srv = Serving::start(&b, extra);
        a.run(["send", flag, "d", &srv.addr()]).ok();
        assert!(
            srv.proc_mut()
                .wait_for_output(&summary, Duration::from_secs(20)),
            "{}",
            srv.proc().stdout_now()
        );
        srv.proc().stdout_now()
    };
    let out = log_of(&[], "--trust-new");
    assert!(
        out.contains(&format!(
            "receiving 3 item(s), 303 B from laptop ({})",
            me.fingerprint
        )),
        "{out}"
    );
    assert!(
        !out.contains("stored d/f0"),
        "one line per file only with -v:\n{out}"
    );
    // With -v: one line per file as well, each naming the sender the same way.
    let out = log_of(&["-v"], "--again");
    for i in 0..3 {
        let want = format!(
            "stored d/f{i} ({} B) from laptop ({})",
            100 + i,
            me.fingerprint
        );
        assert!(out.contains(&want), "{want} in:\n{out}");
    }
}

/// `p2pfs rename` (README, *Names*): same key and id, the vault still opens,
/// a bad name changes nothing, and a running serve takes the new name on
/// its next connection without restarting or dropping anything.
#[test]
fn rename_keeps_the_key_and_a_running_serve_takes_the_new_name() {
    let (a, b) = (Node::new(), Node::new());
    a.init("sender");
    b.init("before");
    let id = b.id();
    let h = write_random(&b.path("kept.bin"), 5000);
    b.import(&["kept.bin"]);

    // Offline: the identity file is rewritten, nothing else changes.
    b.run(["rename", "middle"])
        .ok()
        .says("renamed before to middle")
        .says("next `p2pfs serve`");
    let now = b.id();
    assert_eq!(
        (now.name.as_str(), &now.id, &now.fingerprint),
        ("middle", &id.id, &id.fingerprint)
    );
    assert_eq!(now.vault_key, id.vault_key);
    for f in files_under(&b.home) {
        assert_eq!(mode_of(&f), 0o600, "{}", f.display());
    }
    // A hostile name is refused and nothing is written.
    let before = snapshot(&b.home);
    for bad in ["", "bell\u{7}", "rtl\u{202e}txt", &"x".repeat(65)] {
        b.run(["rename", bad])
            .code_is(exit::FAILURE)
            .says("node name");
    }
    assert_eq!(snapshot(&b.home), before);

    // Serving: the old name to the first sender, the new to the next.
    let srv = Serving::start(&b, &["--accept", "any"]);
    write_random(&a.path("one"), 100);
    let told = |r: util::Run| -> String {
        r.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "connected")
            .and_then(|v| v["name"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no connected event:\n{r}"))
    };
    let r = a
        .run(["send", "--json", "--trust-new", "one", &srv.addr()])
        .ok();
    assert_eq!(told(r), "middle");
    b.run(["rename", "after"])
        .ok()
        .says("renamed middle to after")
        .says(&format!("process {}", srv.pid()));
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .proc()
            .stdout_now()
            .contains("renamed to after")),
        "{}",
        srv.proc().stdout_now()
    );
    write_random(&a.path("two"), 100);
    let r = a.run(["send", "--json", "two", &srv.addr()]).ok();
    assert_eq!(told(r), "after");
    // The same name again: nothing to do, and the serve is still up.
    b.run(["rename", "after"]).ok().says("already named after");
    a.run(["send", "one", &srv.addr()]).ok();
    assert_eq!(blake3_file(&b.export("kept.bin", "kept.out")), h);
}
