//! Pairing by code (`p2pfs pair`), with the real binary over loopback QUIC:
//! two fresh nodes pair once and then send to each other with no id, no
//! `--trust-new` and no `trust add`; a wrong code pins nothing on either
//! side; three wrong codes end the session; an unused code expires; the
//! code can come from standard input instead of the process list.
//! The protocol itself (SPAKE2, the proofs, a man in the middle) is tested
//! in memory in `src/net/pair.rs`.

mod util;

use std::time::{Duration, Instant};

use p2pfs::{
    crypto::keys::Keypair,
    net::{
        client::{self, Target},
        KeyHint,
    },
};
use util::*;

/// `src/cli/mod.rs`, `exit::PAIRING_FAILED`.
const PAIRING_FAILED: i32 = 24;

fn node(name: &str) -> Node {
    let n = Node::new();
    n.init(name);
    n
}

fn trusted(n: &Node) -> Vec<serde_json::Value> {
    n.run(["trust", "list", "--json"]).ok().json()
}

/// Starts `pair --json` on `host` (127.0.0.1, a free port); returns the
/// process, the code and the port.
fn host(host: &Node, extra: &[&str]) -> (Proc, String, u16) {
    let mut args = vec!["pair", "--json", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (p, first) = start_pairing(host.cmd(args));
    let code = first["code"].as_str().unwrap().to_owned();
    let port = first["port"].as_u64().unwrap() as u16;
    (p, code, port)
}

/// The same nameplate and first word with another second word.
fn wrong(code: &str, n: usize) -> String {
    let parts: Vec<&str> = code.split('-').collect();
    let alt = ["acid", "acorn", "actor", "adobe"]
        .into_iter()
        .filter(|w| *w != parts[2])
        .nth(n)
        .unwrap();
    format!("{}-{}-{alt}", parts[0], parts[1])
}

#[test]
fn two_fresh_nodes_pair_once_then_send_both_ways_with_nothing_else() {
    let (a, b) = (node("alpha"), node("beta"));
    let (mut p, code, port) = host(&a, &[]);
    // The code from standard input: not in the process list.
    let r = b
        .cmd(["pair", "-", &format!("127.0.0.1:{port}")])
        .input(format!("{code}\n").as_bytes())
        .run()
        .ok();
    let r = r.says("paired with \"alpha\"");
    assert!(
        !r.stderr.contains(&code) && !r.stdout.contains(&code),
        "{r}"
    );
    assert!(p.wait_timeout(Duration::from_secs(10)).is_some());
    let hr = p.finish().ok();
    let done = events(&hr.stdout);
    let ev = event(&done, "paired").unwrap_or_else(|| panic!("{hr}"));
    assert_eq!(ev["id"], b.id().id);
    assert_eq!(ev["name"], "beta");
    // Each side pinned the other, which may send, under its name.
    let (ta, tb) = (trusted(&a), trusted(&b));
    assert_eq!(ta.len(), 1, "{ta:?}");
    assert_eq!(ta[0]["id"], b.id().id);
    assert_eq!(ta[0]["allow"], serde_json::json!(["send"]));
    assert_eq!(ta[0]["aliases"], serde_json::json!(["beta"]));
    assert_eq!(tb.len(), 1, "{tb:?}");
    assert_eq!(tb[0]["id"], a.id().id);
    assert_eq!(tb[0]["allow"], serde_json::json!(["send"]));
    // Sends need no id, no --trust-new and no trust add, either way; no
    // terminal to confirm anything on.
    let srv = Serving::start(&a, &[]);
    write_random(&b.path("to-alpha.bin"), 100_000);
    b.run(["send", "to-alpha.bin", &srv.addr()]).ok();
    assert_eq!(a.list().len(), 1);
    drop(srv);
    let srv = Serving::start(&b, &[]);
    write_random(&a.path("to-beta.bin"), 100_000);
    a.run(["send", "to-beta.bin", &srv.addr()]).ok();
    assert_eq!(b.list().len(), 1);
}

#[test]
fn a_wrong_code_pins_nothing_and_three_end_the_session() {
    let (a, b) = (node("alpha"), node("beta"));
    let (mut p, code, port) = host(&a, &[]);
    let at = format!("127.0.0.1:{port}");
    // A wrong code, then the right one: the session survives one mistake.
    let r = b
        .run(["pair", &wrong(&code, 0), &at])
        .code_is(PAIRING_FAILED);
    let r = r.says("refused the code");
    assert!(!r.stderr.contains(&code), "the real code leaked: {r}");
    assert!(trusted(&a).is_empty() && trusted(&b).is_empty());
    assert!(p.try_wait().is_none(), "one wrong code ended the session");
    assert!(p.wait_for_output("a wrong code was tried", Duration::from_secs(10)));
    // Two more wrong codes end it; nothing is pinned on either side.
    b.run(["pair", &wrong(&code, 1), &at])
        .code_is(PAIRING_FAILED);
    b.run(["pair", &wrong(&code, 2), &at])
        .code_is(PAIRING_FAILED);
    assert!(p.wait_timeout(Duration::from_secs(10)).is_some());
    p.finish()
        .code_is(PAIRING_FAILED)
        .says("3 wrong codes were tried");
    assert!(trusted(&a).is_empty() && trusted(&b).is_empty());
    // The right code no longer works: nobody listens.
    b.run(["pair", &code, &at]).code_is(10);
    assert!(trusted(&b).is_empty());
    // A typo is caught before anything is sent, without echoing the code.
    let r = b
        .run(["pair", "7-orbit-velvte", &at])
        .code_is(PAIRING_FAILED);
    let r = r.says("not a pairing code");
    assert!(!r.stderr.contains("velvte"), "{r}");
}

#[test]
fn an_unused_code_expires() {
    let a = node("alpha");
    let (mut p, _, _) = host(&a, &["--timeout", "1"]);
    assert!(p.wait_timeout(Duration::from_secs(10)).is_some());
    p.finish().code_is(PAIRING_FAILED).says("expired");
    assert!(trusted(&a).is_empty());
}

#[test]
fn a_serve_node_is_not_a_pairing_node() {
    let (a, b) = (node("alpha"), node("beta"));
    let srv = Serving::start(&a, &["--accept", "any"]);
    let r = b.run(["pair", "7-orbit-velvet", &srv.addr()]);
    assert_ne!(r.code(), Some(0), "{r}");
    r.says("that address is a `p2pfs serve`, not a `p2pfs pair`");
    assert!(trusted(&a)
        .iter()
        .all(|p| p["allow"] != serde_json::json!(["send"])));
    assert!(trusted(&b).is_empty(), "{:?}", trusted(&b));
}

/// `src/cli/mod.rs`, `exit::INTERRUPTED`.
const INTERRUPTED: i32 = 130;

/// A stop signal ends the session at once, through the host's own way out
/// (exit 130 and the mDNS goodbye, tested in `discovery.rs`), never by
/// default disposition: sent the moment the code is shown, and sent while
/// an authenticated joiner sits silent in the middle of an attempt (the
/// host would otherwise wait out its 30 s step timeout).
#[test]
fn a_stop_signal_ends_the_session_at_once_even_mid_attempt() {
    let a = node("alpha");
    let (mut p, _, _) = host(&a, &[]);
    p.signal(libc::SIGTERM);
    assert!(p.wait_timeout(Duration::from_secs(10)).is_some());
    p.finish()
        .code_is(INTERRUPTED)
        .says("stopped: the pairing session ended and nothing was pinned");

    let (mut p, _, port) = host(&a, &[]);
    let (_rt, _joiner) = silent_joiner(port);
    // The host has authenticated us and now waits for our first pairing
    // message, which never comes.
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_timeout(Duration::from_secs(10)).is_some(),
        "the host did not end"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "the host took {:?} to end",
        sent.elapsed()
    );
    p.finish().code_is(INTERRUPTED);
    assert!(trusted(&a).is_empty());
}

/// Connects to the pairing host on `port` and authenticates with a fresh
/// key, then says nothing: the host waits for a guess that never comes.
/// Keep both values alive as long as the connection should stay open.
fn silent_joiner(port: u16) -> (tokio::runtime::Runtime, client::Authenticated) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let joiner = rt.block_on(async {
        let me = Keypair::generate().unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let expected = client::probe(&me, addr, |_| {}).await.unwrap();
        let target = Target {
            addr,
            label: addr.to_string(),
            expected,
            hint: KeyHint::Given,
        };
        client::connect(&me, &target).await.unwrap()
    });
    (rt, joiner)
}

/// Joiners are answered side by side: two silent ones, connected and
/// authenticated, never guessing, do not hold up the real joiner, who pairs
/// at once (the host used to answer one connection at a time, each able to
/// hold it for 40 s).
#[test]
fn silent_joiners_hold_up_nobody() {
    let (a, b) = (node("alpha"), node("beta"));
    let (mut p, code, port) = host(&a, &[]);
    let _quiet = [silent_joiner(port), silent_joiner(port)];
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    b.run(["pair", &code, &format!("127.0.0.1:{port}")])
        .ok()
        .says("paired with \"alpha\"");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "pairing took {:?} beside silent joiners",
        started.elapsed()
    );
    assert!(p.wait_timeout(Duration::from_secs(10)).is_some());
    let shown: serde_json::Value = p
        .finish()
        .ok()
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "paired")
        .expect("a paired event");
    assert_eq!(shown["name"], "beta", "{shown}");
    assert_eq!(trusted(&b).len(), 1);
}
