//! Trust on the sending side, with the real binary over loopback QUIC:
//! first contact as OpenSSH does it (asked on a terminal, refused without
//! one unless `--trust-new` or the key itself is given, never asked again
//! once pinned), aliases only the user chooses, the trust store's format
//! (version 2, version 1 still read), and a hostile receiver whose names,
//! messages and close reasons never reach the terminal or the trust store
//! raw. Discovery by name is in `tests/discovery.rs`.

mod hostile;
mod util;

use std::time::Duration;

use hostile::{HostileReceiver, Script};
use p2pfs::crypto::keys::Keypair;
use util::*;

/// `src/cli/mod.rs`, `exit::NOT_CONFIRMED`.
const NOT_CONFIRMED: i32 = 17;

/// `p2pfs serve` of `node` on 127.0.0.1 (no mDNS), accepting anyone.
fn receiver(node: &Node) -> Serving {
    Serving::start(node, &["--accept", "any"])
}

fn node(name: &str) -> Node {
    let n = Node::new();
    n.init(name);
    n
}

/// `trust list --json`.
fn trusted(n: &Node) -> Vec<serde_json::Value> {
    n.run(["trust", "list", "--json"]).ok().json()
}

fn entry(n: &Node, id: &str) -> Option<serde_json::Value> {
    trusted(n).into_iter().find(|p| p["id"] == id)
}

#[test]
fn first_contact_by_address_needs_a_terminal_trust_new_or_the_key() {
    let (a, b) = (node("alice"), node("recv"));
    let srv = receiver(&b);
    let bid = b.id();
    write_random(&a.path("f"), 1000);

    // No terminal, no --trust-new: refused with the fingerprint and a hint,
    // before anything is sent, and nothing pinned.
    let r = a
        .run(["send", "f", &srv.addr()])
        .code_is(NOT_CONFIRMED)
        .says("first contact")
        .says(&bid.fingerprint)
        .says("--trust-new")
        .says(&format!("{}@{}", bid.id, srv.addr()))
        .says("nothing was sent");
    assert!(b.list().is_empty(), "{r}");
    assert!(entry(&a, &bid.id).is_none(), "{r}");
    let r = a
        .run(["send", "--json", "f", &srv.addr()])
        .code_is(NOT_CONFIRMED);
    let evs = events(&r.stdout);
    assert!(
        evs.iter()
            .any(|e| e["event"] == "error" && e["code"] == NOT_CONFIRMED),
        "{r}"
    );

    // --trust-new pins and says so (Cmd always passes -q: shown anyway).
    let r = a
        .run(["send", "--trust-new", "--json", "f", &srv.addr()])
        .ok();
    assert!(
        r.stderr.contains("first contact: pinned") && r.stderr.contains(&bid.fingerprint),
        "{r}"
    );
    let connected = events(&r.stdout)
        .into_iter()
        .find(|e| e["event"] == "connected")
        .unwrap();
    assert_eq!(connected["first_contact"], true, "{r}");
    assert_eq!(b.list().len(), 1);
    let e = entry(&a, &bid.id).expect("pinned");
    assert_eq!(e["addresses"], serde_json::json!([srv.addr()]));
    // What the receiver calls itself is kept for display, never as an alias.
    assert_eq!(e["peer_name"], "recv");
    assert_eq!(e["aliases"], serde_json::json!([]));

    // A pinned key is not asked again, and is no first contact.
    write_random(&a.path("g"), 10);
    let r = a.run(["send", "--json", "g", &srv.addr()]).ok();
    assert!(!r.stderr.contains("first contact"), "{r}");
    let connected = events(&r.stdout)
        .into_iter()
        .find(|e| e["event"] == "connected")
        .unwrap();
    assert_eq!(connected["first_contact"], false, "{r}");

    // The key itself is an opt-in too: no question, pinned, said so.
    let c = node("carol");
    write_random(&c.path("f"), 10);
    let r = c
        .run(["send", "f", &format!("{}@{}", bid.id, srv.addr())])
        .ok();
    assert!(
        r.stderr.contains("first contact: pinned") && r.stderr.contains(&bid.fingerprint),
        "{r}"
    );
    assert!(entry(&c, &bid.id).is_some());
    c.run(["send", "f", &srv.addr()]).ok();
}

/// Runs `p2pfs send f PEER` of `a` on a pty, answering `answer` once the
/// question shows (or never, for `None`); returns the exit code and what
/// the terminal showed.
fn send_on_a_pty(a: &Node, peer: &str, answer: Option<&str>) -> (Option<i32>, String) {
    let mut pty = Pty::spawn(&format!("{BIN} send f {peer}"), &a.work, &a.home, None);
    if let Some(answer) = answer {
        assert!(
            pty.wait_for("[y/N]", Duration::from_secs(20)),
            "no question:\n{}",
            pty.shown()
        );
        pty.type_line(answer);
    }
    pty.finish(Duration::from_secs(60))
}

#[test]
fn first_contact_on_a_terminal_asks_before_anything_is_sent() {
    let (a, b) = (node("alice"), node("recv"));
    let srv = receiver(&b);
    let bid = b.id();
    write_random(&a.path("f"), 1000);

    // "n": nothing sent, nothing pinned.
    let (code, shown) = send_on_a_pty(&a, &srv.addr(), Some("n"));
    assert_eq!(code, Some(NOT_CONFIRMED), "{shown}");
    for part in [
        bid.fingerprint.as_str(),
        srv.addr().as_str(),
        "[y/N]",
        "authenticity",
    ] {
        assert!(shown.contains(part), "{part:?} not shown:\n{shown}");
    }
    assert!(b.list().is_empty());
    assert!(entry(&a, &bid.id).is_none());

    // "y": pinned, then sent.
    let (code, shown) = send_on_a_pty(&a, &srv.addr(), Some("y"));
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("first contact: pinned"), "{shown}");
    assert_eq!(b.list().len(), 1);
    assert!(entry(&a, &bid.id).is_some());

    // Pinned: no question at all; the same file again is found unchanged
    // there, and the summary says so.
    let (code, shown) = send_on_a_pty(&a, &srv.addr(), None);
    assert_eq!(code, Some(0), "{shown}");
    assert!(!shown.contains("[y/N]"), "{shown}");
    assert!(
        shown.contains("nothing to send") && shown.contains("1 file(s) unchanged"),
        "{shown}"
    );
    assert_eq!(b.list_all().len(), 1);
}

#[test]
fn an_alias_names_exactly_one_key_and_only_the_user_chooses_it() {
    let a = node("alice");
    let (k1, k2) = (
        Keypair::generate().unwrap().public(),
        Keypair::generate().unwrap().public(),
    );
    let r = a
        .run([
            "trust",
            "add",
            &k1.to_id(),
            "--name",
            "office",
            "--allow",
            "none",
        ])
        .ok();
    assert!(r.stdout.contains(&k1.fingerprint()), "{r}");
    let e = entry(&a, &k1.to_id()).unwrap();
    assert_eq!(e["aliases"], serde_json::json!(["office"]));
    assert_eq!(e["allow"], serde_json::json!([]));
    // Another key may not take it (case does not matter); the hint names
    // the holder and how to release it.
    let r = a
        .run(["trust", "add", &k2.to_id(), "--name", "OFFICE"])
        .code_is(1)
        .says(&k1.fingerprint())
        .says("trust rm")
        .says("names exactly one key");
    assert!(entry(&a, &k2.to_id()).is_none(), "{r}");
    // Names a PEER argument would take as an address are refused.
    for bad in ["host:1", "id@x", "10.0.0.1", "bad\u{202e}name"] {
        a.run(["trust", "add", &k2.to_id(), "--name", bad])
            .code_is(1)
            .says("cannot be an alias");
    }
    // The same key may have it again (no change), and more aliases.
    a.run(["trust", "add", &k1.to_id(), "--name", "Office"])
        .ok();
    a.run([
        "trust",
        "add",
        &k1.to_id(),
        "--name",
        "desk",
        "--allow",
        "send",
    ])
    .ok();
    let e = entry(&a, &k1.to_id()).unwrap();
    assert_eq!(e["aliases"], serde_json::json!(["office", "desk"]));
    assert_eq!(e["allow"], serde_json::json!(["send"]));
    // trust rm by alias forgets the key.
    a.run(["trust", "rm", "desk"]).ok();
    assert!(trusted(&a).is_empty());
}

#[test]
fn a_version_1_trust_store_still_works_and_its_names_become_display_only() {
    let (a, b) = (node("alice"), node("recv"));
    let srv = receiver(&b);
    let bid = b.id();
    let stranger = Keypair::generate().unwrap().public().to_id();
    // As c3e3ae4 wrote it: `name` was what the peer called itself, and an
    // unchecked hostile name could sit in it.
    let v1 = serde_json::json!({"version": 1, "peers": [
        {"id": bid.id, "name": "recv", "allow": [], "addresses": [srv.addr()]},
        {"id": stranger, "name": format!("x\r\u{1b}[8m{}", "\u{202e}".repeat(100_000)), "allow": ["send"], "addresses": []},
    ]});
    std::fs::write(a.home.join("peers.json"), v1.to_string()).unwrap();
    write_random(&a.path("f"), 10);
    // The address pin holds: no first contact.
    let r = a.run(["send", "f", &srv.addr()]).ok();
    assert!(!r.stderr.contains("first contact"), "{r}");
    let e = entry(&a, &bid.id).unwrap();
    assert_eq!(e["peer_name"], "recv");
    assert_eq!(e["aliases"], serde_json::json!([]));
    let s = entry(&a, &stranger).unwrap();
    assert_eq!(s["peer_name"], serde_json::Value::Null);
    assert_eq!(s["allow"], serde_json::json!(["send"]));
    let raw = std::fs::read_to_string(a.home.join("peers.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["version"], 2);
    assert!(raw.len() < 4096, "{} bytes", raw.len());
    // "recv" was never the user's word: it may become another key's alias.
    a.run(["trust", "add", &stranger, "--name", "recv"]).ok();
}

/// Fails when `out` holds a character that could drive or disguise a
/// terminal (anything but line breaks that `text::escape` would escape).
#[track_caller]
fn assert_clean(out: &str, what: &str) {
    if let Some(c) = out
        .chars()
        .find(|c| *c != '\n' && p2pfs::text::is_forbidden_in_name(*c))
    {
        panic!("raw {c:?} in the output of {what}:\n{}", out.escape_debug());
    }
}

#[test]
fn a_hostile_receivers_text_never_reaches_the_terminal_or_the_trust_store_raw() {
    let a = node("alice");
    write_random(&a.path("f"), 1000);
    let evil = Keypair::generate().unwrap();
    // Rewrites the line it lands on to show another fingerprint, hides the
    // rest, turns the text around, clears the screen.
    let fake = "\rfirst contact: pinned recv, fingerprint aaaa-bbbb-cccc-dddd\u{1b}[8m";
    let line = format!("{fake}\u{202e}gnp.exe\u{1b}[2J\u{1b}[H\u{7}");
    let huge = format!("{}{}", line, "\u{1b}[2J".repeat((20 << 20) / 4));
    let scripts = [
        (
            "welcome name",
            Script::Welcome("x\r\u{1b}[8m\u{202e}y".into()),
        ),
        ("long welcome name", Script::Welcome(line.clone())),
        ("20 MiB welcome name", Script::Welcome(huge.clone())),
        ("refusal", Script::Refused(line.clone())),
        ("20 MiB refusal", Script::Refused(huge.clone())),
        ("rejection reason", Script::Reject(line.clone())),
        ("file result", Script::FileResult(line.clone())),
        ("close reason, refused", Script::Close(1, line.clone())),
        ("close reason, protocol", Script::Close(2, line.clone())),
        ("close reason, handshake", Script::Close(6, line.clone())),
        (
            "close reason, unknown code",
            Script::Close(99, line.clone()),
        ),
    ];
    for (label, script) in scripts {
        let srv = HostileReceiver::start(&evil, script);
        for json in [false, true] {
            let mut args = vec!["send", "--trust-new"];
            if json {
                args.push("--json");
            }
            let addr = srv.addr();
            args.extend(["f", addr.as_str()]);
            let r = a.run(&args);
            let what = format!("{label} (json: {json})");
            assert_ne!(r.code(), Some(0), "{what}: {r}");
            assert_clean(&r.stdout, &what);
            assert_clean(&r.stderr, &what);
            assert!(r.all().len() < 64 << 10, "{what}: {} bytes", r.all().len());
        }
    }
    // The trust store holds the key (pinned at first contact), its address
    // pins, and nothing the receiver said but a valid name.
    let raw = std::fs::read_to_string(a.home.join("peers.json")).unwrap();
    assert_clean(&raw, "peers.json");
    assert!(!raw.contains("\\u001b") && !raw.contains("\\r"), "{raw}");
    assert!(raw.len() < 8 << 10, "{} bytes", raw.len());
    let e = entry(&a, &evil.public().to_id()).unwrap();
    assert!(e["peer_name"].is_null() || e["peer_name"] == "evil", "{e}");
    assert_eq!(e["aliases"], serde_json::json!([]));
    // And an honest send still works.
    let b = node("bob");
    let srv = receiver(&b);
    a.run(["send", "--trust-new", "f", &srv.addr()]).ok();
    assert_eq!(b.list().len(), 1);
}

#[test]
fn two_keys_behind_one_word_are_refused_as_ambiguous_before_anything_else() {
    let a = node("alice");
    let (k1, k2) = (
        Keypair::generate().unwrap().public(),
        Keypair::generate().unwrap().public(),
    );
    // However they got there (a store edited by hand, here): never resolved
    // by order, and nothing is looked up or sent.
    let store = serde_json::json!({"version": 2, "peers": [
        {"id": k1.to_id(), "aliases": ["twin"]},
        {"id": k2.to_id(), "aliases": ["Twin"]},
    ]});
    std::fs::write(a.home.join("peers.json"), store.to_string()).unwrap();
    write_random(&a.path("f"), 10);
    let r = a
        .run(["send", "--trust-new", "f", "twin"])
        .code_is(16)
        .says("2 different keys")
        .says(&k1.fingerprint())
        .says(&k2.fingerprint());
    assert!(r.elapsed < Duration::from_secs(2), "{r}");
}

/// Issue 10, item 6: a sender refused for not being trusted is listed by
/// `trust pending` (fingerprint, address, when, how often) and can be let
/// in by its fingerprint or a long id prefix; a short prefix, which a peer
/// could grind to match, never names a key to trust.
#[test]
fn a_refused_sender_is_pending_and_is_trusted_by_its_fingerprint() {
    let (a, b) = Node::pair();
    a.init("alice");
    b.init("bob");
    let me = a.id();
    let srv = Serving::start(&b, &[]);
    write_random(&a.path("f"), 100);
    for _ in 0..2 {
        let r = a.run(["send", "--trust-new", "f", &srv.addr()]);
        assert_eq!(r.status.code(), Some(11), "{r}");
    }
    let v: serde_json::Value = b.run(["trust", "pending", "--json"]).ok().json();
    let list = v.as_array().expect("an array");
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["fingerprint"], me.fingerprint.as_str());
    assert_eq!(list[0]["id"], me.id.as_str());
    assert_eq!(list[0]["times"], 2);
    // What it calls itself (its Hello), shown as such.
    assert_eq!(list[0]["name"], "alice", "{v}");
    assert_eq!(list[0]["trusted"], false);
    assert!(
        list[0]["address"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{v}"
    );
    let text = b.run(["trust", "pending"]).ok();
    assert!(text.stdout.contains(&me.fingerprint), "{text}");
    assert!(text.stdout.contains("CALLS ITSELF"), "{text}");
    assert!(text.stdout.contains("alice"), "{text}");
    // Too short a prefix names nothing to trust.
    let r = b.run(["trust", "add", &me.id[..12]]);
    assert!(!r.status.success(), "{r}");
    assert!(r.stderr.contains("16 or more characters"), "{r}");
    b.run([
        "trust",
        "add",
        &me.fingerprint.to_uppercase(),
        "--name",
        "laptop",
    ])
    .ok()
    .says(&me.id);
    let v: serde_json::Value = b.run(["trust", "pending", "--json"]).ok().json();
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");
    a.run(["send", "f", &srv.addr()]).ok();
    assert_eq!(b.list().len(), 1);
    // A long prefix works for a peer known here too (rights changed).
    b.run(["trust", "add", &me.id[..16], "--allow", "send,get"])
        .ok()
        .says("send,get");
}
