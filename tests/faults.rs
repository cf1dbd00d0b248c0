//! Fault injection at every file operation (issue 12), through the seam in
//! `store::fileops`: each operation of `vault import`, of a receive (one
//! file, and a folder of small files), of `vault rm`, `vault passwd` and
//! `vault rekey` is made, in turn, to fail with EIO, to fail with ENOSPC, or
//! to abort the process right there (what `kill -9` would leave). After
//! each case, a fresh process must find a vault that passes
//! `vault verify --full`, lists nothing half-committed, and holds exactly
//! what the command told the user it stored; the message of a failure names
//! its cause (an I/O error, a full disk), never tampering or a lost
//! connection.
//!
//! How a case is aimed: the command first runs once with
//! `P2PFS_FAULT_TRACE`, which lists its file operations in order; then, for
//! every `N` of that list, it runs on a fresh copy of the same vault with
//! `P2PFS_FAULTS=any:N:ACTION`. Needs the `faults` build (README: `cargo
//! test --release --features faults`).

mod util;

use std::{collections::BTreeMap, ffi::OsStr, fs, path::Path, process::Command, time::Duration};

use util::*;

const ACTIONS: [&str; 3] = ["eio", "enospc", "abort"];

/// Every `P2PFS_FAULTS` rule to try for operations `first..=last`.
fn rules(first: usize, last: usize) -> Vec<String> {
    (first..=last)
        .flat_map(|n| ACTIONS.iter().map(move |a| format!("any:{n}:{a}")))
        .collect()
}

/// The file operations of a run, from its trace file.
fn trace_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs `cmd` with a trace; returns the run and its operations.
fn traced(cmd: Cmd, scratch: &Path) -> (Run, Vec<String>) {
    let t = scratch.join(format!("trace-{}", random_hex(4)));
    let r = cmd.env("P2PFS_FAULT_TRACE", &t).run();
    (r, trace_of(&t))
}

/// A fresh node holding a copy of `template`'s home (same passphrase).
fn copy_of(template: &Node) -> Node {
    let mut n = Node::new();
    n.passphrase = template.passphrase.clone();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&template.home)
        .arg(&n.home)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot copy {}", template.home.display());
    n
}

/// What a command told the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    /// Exit 0.
    Done,
    /// A failure with a message naming the cause.
    Failed,
    /// The process died at the fault (abort).
    Died,
}

/// Classifies a run of a local command under `rule`, checking that a
/// failure names the fault injected: "Input/output error" for EIO, a full
/// disk (exit 8) for ENOSPC.
#[track_caller]
fn told(r: &Run, rule: &str) -> Told {
    assert!(!r.all().contains("panicked"), "[{rule}] {r}");
    match r.code() {
        Some(0) => Told::Done,
        None => {
            assert!(rule.ends_with("abort"), "[{rule}] killed by a signal:\n{r}");
            Told::Died
        }
        Some(code) => {
            if rule.ends_with("eio") {
                assert!(r.stderr.contains("Input/output error"), "[{rule}] {r}");
            } else if rule.ends_with("enospc") {
                assert_eq!(code, exit::DISK_FULL, "[{rule}] {r}");
                assert!(r.stderr.contains("disk full"), "[{rule}] {r}");
            } else {
                panic!("[{rule}] an abort that did not kill:\n{r}");
            }
            Told::Failed
        }
    }
}

/// The vault of `n` after a fault, opened by a fresh process with no
/// fault: `verify --full` passes (every object decrypted and hashed), the
/// listing warns of nothing, no data file lacks its envelope or the other
/// way round, and every listed object has its files. Returns the listing.
#[track_caller]
fn sound(n: &Node, rule: &str) -> Vec<Listed> {
    let r = n.run(["vault", "verify", "--full"]);
    assert_eq!(
        r.code(),
        Some(0),
        "[{rule}] verify --full after the fault:\n{r}"
    );
    // Every version: each object on disk must be listed.
    let r = n.run(["vault", "list", "--all", "--json"]);
    assert_eq!(r.code(), Some(0), "[{rule}] {r}");
    assert!(
        !r.stderr.contains("damaged") && !r.stderr.contains("missing"),
        "[{rule}] {r}"
    );
    let listed: Vec<Listed> = r.json();
    let objs = n.object_files();
    assert_eq!(
        objs.get("obj"),
        objs.get("env"),
        "[{rule}] half an object: {objs:?}"
    );
    let envs = n.object_ids();
    for e in &listed {
        assert!(envs.contains(&e.id), "[{rule}] listed without files: {e:?}");
    }
    assert_eq!(envs.len(), listed.len(), "[{rule}] {objs:?} vs {listed:?}");
    listed
}

/// Listed names with their BLAKE3, sorted.
fn contents(listed: &[Listed]) -> Vec<(String, String)> {
    let mut v: Vec<_> = listed
        .iter()
        .map(|e| (e.name.clone(), e.blake3.clone()))
        .collect();
    v.sort();
    v
}

/// Names a `vault import` said it stored (`stored ID SIZE NAME` lines).
fn stored_names(r: &Run) -> Vec<String> {
    let mut v: Vec<String> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("stored "))
        .filter_map(|l| l.split("  ").nth(2))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// A small folder: a file of several chunks, an empty one, one in a
/// subdirectory. Returns name → BLAKE3, names as the vault stores them.
fn small_folder(n: &Node, dir: &str) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    for (rel, len) in [("a.bin", 2_500_000u64), ("empty", 0), ("sub/b.txt", 7_000)] {
        let name = format!("{dir}/{rel}");
        want.insert(name.clone(), write_random(&n.path(&name), len));
    }
    want
}

#[test]
fn import_survives_a_fault_at_every_file_operation() {
    let t = Node::new();
    t.init("t");
    let want = small_folder(&t, "d");
    let src = t.path("d");
    let scratch = tempdir();
    let probe = copy_of(&t);
    let (r, ops) = traced(probe.cmd(["vault", "import"]).arg(&src), scratch.path());
    r.ok();
    assert!(ops.len() > 20, "{ops:#?}");
    let mut seen = [0usize; 3];
    for rule in rules(1, ops.len()) {
        let n = copy_of(&t);
        let r = n
            .cmd(["vault", "import"])
            .arg(&src)
            .env("P2PFS_FAULTS", &rule)
            .run();
        let how = told(&r, &rule);
        seen[how as usize] += 1;
        let listed = sound(&n, &rule);
        let names: Vec<String> = contents(&listed).into_iter().map(|(n, _)| n).collect();
        for (name, h) in contents(&listed) {
            assert_eq!(want.get(&name), Some(&h), "[{rule}] {name}");
        }
        match how {
            // What it said it stored is what is there, and no more.
            Told::Done | Told::Failed => assert_eq!(names, stored_names(&r), "[{rule}] {r}"),
            // Died: what it said is there; more of its group may be
            // (published before it could say so), each once and whole.
            Told::Died => {
                let said = stored_names(&r);
                assert!(said.iter().all(|s| names.contains(s)), "[{rule}] {r}");
                let mut once = names.clone();
                once.dedup();
                assert_eq!(once, names, "[{rule}] stored twice: {r}");
            }
        }
        if how == Told::Done {
            assert_eq!(names.len(), want.len(), "[{rule}] {r}");
        }
        // And the next import works.
        n.cmd(["vault", "import"]).arg(&src).run().ok();
    }
    eprintln!(
        "import: {} operations; done/failed/died = {seen:?}",
        ops.len()
    );
    assert!(seen[Told::Failed as usize] > 0 && seen[Told::Died as usize] > 0);
}

/// A node with the small folder `d` imported, and what it holds.
fn stocked() -> (Node, BTreeMap<String, String>) {
    let t = Node::new();
    t.init("t");
    let want = small_folder(&t, "d");
    t.import(&["d"]);
    (t, want)
}

/// Runs `args` on copies of `template` under a fault at each of its
/// operations; `check` sees each copy, the rule and what the user was told.
fn every_fault(
    template: &Node,
    args: &[&str],
    env: &[(&str, &str)],
    mut check: impl FnMut(&Node, &str, Told, &Run),
) -> [usize; 3] {
    let scratch = tempdir();
    let with_env = |n: &Node| {
        let mut c = n.cmd(args);
        for (k, v) in env {
            c = c.env(k, v);
        }
        c
    };
    let probe = copy_of(template);
    let (r, ops) = traced(with_env(&probe), scratch.path());
    r.ok();
    assert!(!ops.is_empty(), "{args:?} did no file operation");
    let mut seen = [0usize; 3];
    for rule in rules(1, ops.len()) {
        let n = copy_of(template);
        let r = with_env(&n).env("P2PFS_FAULTS", &rule).run();
        let how = told(&r, &rule);
        seen[how as usize] += 1;
        check(&n, &rule, how, &r);
    }
    eprintln!(
        "{args:?}: {} operations; done/failed/died = {seen:?}",
        ops.len()
    );
    seen
}

#[test]
fn rm_survives_a_fault_at_every_file_operation() {
    let (t, want) = stocked();
    let gone = "d/sub/b.txt";
    every_fault(&t, &["vault", "rm", gone], &[], |n, rule, how, r| {
        let now: BTreeMap<String, String> = contents(&sound(n, rule)).into_iter().collect();
        let mut kept = want.clone();
        kept.remove(gone);
        match how {
            Told::Done => assert_eq!(now, kept, "[{rule}] {r}"),
            Told::Failed => assert_eq!(now, want, "[{rule}] said it failed, yet: {r}"),
            Told::Died => assert!(now == want || now == kept, "[{rule}] {now:?}"),
        }
    });
}

/// `vault rm --yes FOLDER` removes several objects with one commit: under
/// a fault at any operation, all of them are gone or none.
#[test]
fn a_folder_rm_removes_all_or_nothing_under_a_fault_at_every_file_operation() {
    let (t, want) = stocked();
    every_fault(
        &t,
        &["vault", "rm", "--yes", "d"],
        &[],
        |n, rule, how, r| {
            let now: BTreeMap<String, String> = contents(&sound(n, rule)).into_iter().collect();
            match how {
                Told::Done => assert!(now.is_empty(), "[{rule}] {now:?}: {r}"),
                Told::Failed => assert_eq!(now, want, "[{rule}] said it failed, yet: {r}"),
                Told::Died => assert!(now == want || now.is_empty(), "[{rule}] {now:?}"),
            }
        },
    );
}

#[test]
fn passwd_survives_a_fault_at_every_file_operation() {
    let (t, want) = stocked();
    let (old, new) = (
        t.passphrase.clone().unwrap(),
        "the new passphrase".to_string(),
    );
    every_fault(
        &t,
        &["vault", "passwd"],
        &[("P2PFS_NEW_PASSPHRASE", &new)],
        |n, rule, how, r| {
            let opens = |p: &str| n.run_with_passphrase(p, ["vault", "list"]).code() == Some(0);
            let (o, w) = (opens(&old), opens(&new));
            match how {
                Told::Done => assert!(w && !o, "[{rule}] old {o} new {w}: {r}"),
                Told::Failed => {
                    assert!(o && !w, "[{rule}] said it failed, yet old {o} new {w}: {r}")
                }
                Told::Died => assert!(o != w, "[{rule}] old {o} new {w}"),
            }
            let mut n2 = copy_of(n);
            n2.passphrase = Some(if w { new.clone() } else { old.clone() });
            let now: BTreeMap<String, String> = contents(&sound(&n2, rule)).into_iter().collect();
            assert_eq!(now, want, "[{rule}]");
        },
    );
}

#[test]
fn rekey_survives_a_fault_at_every_file_operation() {
    let (t, want) = stocked();
    let before = t.id().vault_key;
    let seen = every_fault(&t, &["vault", "rekey"], &[], |n, rule, how, r| {
        let now: BTreeMap<String, String> = contents(&sound(n, rule)).into_iter().collect();
        assert_eq!(now, want, "[{rule}] {r}");
        // The unlock of `sound` finished any rekey that was under way.
        assert!(!n.vault().join("header.next").exists(), "[{rule}]");
        let after = n.id().vault_key;
        if how == Told::Done {
            assert_ne!(after, before, "[{rule}] said it rekeyed: {r}");
        }
        // Every file still opens under whichever key is now current.
        n.run(["vault", "export", "d", "out"]).ok();
        for (name, h) in &want {
            let p = n.path(&name.replacen("d/", "out/", 1));
            assert_eq!(&blake3_file(&p), h, "[{rule}] {name}");
        }
    });
    assert!(seen[Told::Failed as usize] > 0);
}

// ---------------------------------------------------------------- receive

/// What a sender was told, file by file (`send --json` events).
fn sent_names(r: &Run, event: &str) -> Vec<String> {
    let mut v: Vec<String> = events(&r.stdout)
        .iter()
        .filter(|e| e["event"] == event)
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// Every name listed, once per entry, sorted.
fn names_of(listed: &[Listed]) -> Vec<String> {
    let mut v: Vec<String> = listed.iter().map(|e| e.name.clone()).collect();
    v.sort();
    v
}

/// Sends `what` (from `a`) to a copy of `receiver` whose `serve` fails
/// at each of its operations after start-up in turn, then checks the
/// receiver: sound, holding exactly what the sender was told arrived
/// (an abort may add the files of the group commit it died in); then a
/// re-send to a healthy serve completes and leaves no partial behind.
fn receive_under_every_fault(
    a: &Node,
    receiver: &Node,
    what: &str,
    want: &BTreeMap<String, String>,
) {
    let scratch = tempdir();
    let serve =
        |n: &Node, env: &[(&str, &OsStr)]| Serving::start_env(n, 0, &["--accept", "any"], env);
    let send = |srv: &Serving| a.run(["send", "--trust-new", "--json", what, &srv.addr()]);

    // The operations of one healthy receive, after start-up.
    let probe = copy_of(receiver);
    let t = scratch.path().join("trace");
    let srv = serve(&probe, &[("P2PFS_FAULT_TRACE", t.as_os_str())]);
    let at_start = trace_of(&t).len();
    send(&srv).ok();
    srv.stop();
    let ops = trace_of(&t);
    assert!(ops.len() > at_start, "{ops:#?}");
    // A `syncfs` is traced as an fsync of `objects/` itself.
    let batches = ops
        .iter()
        .filter(|l| l.contains(" fsync ") && l.ends_with("/objects"))
        .count();

    let mut seen = [0usize; 3];
    for rule in rules(at_start + 1, ops.len()) {
        let n = copy_of(receiver);
        let mut srv = serve(&n, &[("P2PFS_FAULTS", OsStr::new(&rule))]);
        // A receiver that died is noticed by the sender after 5 s of
        // silence (`net::receiver_killed_mid_transfer_resumes` checks
        // that): here the sender is stopped as soon as the receiver is
        // gone, and what it was told until then is what counts.
        let mut p = a.spawn(["send", "--trust-new", "--json", what, &srv.addr()]);
        let ended = wait_until(TIMEOUT, || {
            p.try_wait().is_some() || srv.proc_mut().try_wait().is_some()
        });
        assert!(ended, "[{rule}] neither side ended");
        let r = if p.try_wait().is_some() {
            p.finish()
        } else {
            std::thread::sleep(Duration::from_millis(200));
            p.kill9()
        };
        let out = srv.stop_within(Duration::from_secs(30)).0;
        assert!(
            !out.all().contains("panicked") && !r.all().contains("panicked"),
            "[{rule}] {out}\n{r}"
        );
        let how = match r.code() {
            Some(0) => Told::Done,
            // A storage error on the receiver (19), or its disk full (14):
            // said as such, never as tampering (13).
            Some(19) => {
                assert!(
                    r.stderr.contains("storage error on the receiver"),
                    "[{rule}] {r}"
                );
                Told::Failed
            }
            Some(14) => {
                assert!(
                    rule.ends_with("enospc") && r.stderr.contains("disk is full"),
                    "[{rule}] {r}"
                );
                Told::Failed
            }
            // The receiver died: the connection is lost (15), or the
            // sender was stopped first.
            Some(15) | None if rule.ends_with("abort") => Told::Died,
            _ => panic!("[{rule}] unexpected outcome of the send:\n{r}\n{out}"),
        };
        seen[how as usize] += 1;
        let done = sent_names(&r, "file_done");
        if how == Told::Done {
            assert_eq!(done.len(), want.len(), "[{rule}] {r}");
        }
        let listed = sound(&n, &rule);
        for e in &listed {
            assert_eq!(want.get(&e.name), Some(&e.blake3), "[{rule}] {e:?}");
        }
        let names = names_of(&listed);
        if how == Told::Died {
            assert!(
                done.iter().all(|d| names.contains(d)),
                "[{rule}] told done, not stored: {done:?} {names:?}"
            );
            // More may be stored than was confirmed: the files of the
            // group commit the receiver died in (durable together, then
            // confirmed together). Each is a whole file (`sound`), once.
            let mut once = names.clone();
            once.dedup();
            assert_eq!(once, names, "[{rule}] a file stored twice");
        } else {
            assert_eq!(names, done, "[{rule}] told:\n{r}");
        }
        // Resume on a healthy receiver: everything arrives, no partial stays.
        let srv = serve(&n, &[]);
        send(&srv).ok();
        drop(srv);
        let listed = sound(&n, &rule);
        assert!(
            n.staging_files().is_empty(),
            "[{rule}] {:?}",
            n.staging_files()
        );
        let mut have: Vec<String> = names_of(&listed);
        have.dedup();
        assert_eq!(have, want.keys().cloned().collect::<Vec<_>>(), "[{rule}]");
    }
    eprintln!(
        "receive {what}: {} operations after start-up ({batches} group commits by syncfs); done/failed/died = {seen:?}",
        ops.len() - at_start
    );
    assert!(seen[Told::Failed as usize] > 0 && seen[Told::Died as usize] > 0);
}

#[test]
fn receiving_one_file_survives_a_fault_at_every_file_operation() {
    let a = Node::new();
    a.init("alice");
    let b = Node::new();
    b.init("bob");
    let mut want = BTreeMap::new();
    want.insert(
        "one.bin".to_string(),
        write_random(&a.path("one.bin"), 3_000_000),
    );
    receive_under_every_fault(&a, &b, "one.bin", &want);
}

#[test]
fn receiving_many_small_files_survives_a_fault_at_every_file_operation() {
    let a = Node::new();
    a.init("alice");
    let b = Node::new();
    b.init("bob");
    let mut want = BTreeMap::new();
    // Enough files that groups of four and more form (a group commit by
    // one `syncfs`, docs/VAULT.md): the probe run says how many did.
    for i in 0..10u64 {
        let name = format!("small/{}/f{i}", if i % 2 == 0 { "even" } else { "odd" });
        want.insert(name.clone(), write_random(&a.path(&name), i * 3001));
    }
    receive_under_every_fault(&a, &b, "small", &want);
}

/// A receive publishes objects without touching the index; the next open
/// adopts them and saves the index. When the disk is full by then, reading
/// the vault still works (CI saw `vault list` fail with exit 8 after a
/// disk filled): the index is a cache of the envelopes, not a condition.
#[test]
fn a_full_disk_does_not_stop_reading_what_was_received() {
    let a = Node::new();
    a.init("alice");
    let b = Node::new();
    b.init("bob");
    let h = write_random(&a.path("d/one.bin"), 70_000);
    write_random(&a.path("d/two.bin"), 1_000);
    let srv = Serving::start_env(&b, 0, &["--accept", "any"], &[]);
    a.run(["send", "--trust-new", "d", &srv.addr()]).ok();
    srv.stop();
    let full = |args: &[&str]| {
        b.cmd(args.iter().copied())
            .env("P2PFS_FAULTS", "any:1+:enospc")
            .run()
    };
    let r = full(&["vault", "list", "--json"]);
    assert_eq!(r.code(), Some(0), "{r}");
    let listed: Vec<Listed> = r.json();
    assert_eq!(names_of(&listed), ["d/one.bin", "d/two.bin"], "{r}");
    let out = b.path("out.bin");
    let r = full(&["vault", "export", "d/one.bin", out.to_str().unwrap()]);
    // Exporting writes the plaintext: that, on a full disk, must fail, and
    // say why.
    assert_eq!(r.code(), Some(8), "{r}");
    assert!(r.stderr.contains("disk full"), "{r}");
    b.run(["vault", "export", "d/one.bin", out.to_str().unwrap()])
        .ok();
    assert_eq!(blake3_file(&out), h);
    sound(&b, "after");
}
