//! What a node needs around it (issue 10, items 13, 15, 16): shell
//! completions and a man page from the real binary, the systemd unit in
//! `contrib/`, one `serve` per home, and a send to one's own node refused
//! with a clear message.

mod util;

use std::time::{Duration, Instant};

use util::*;

#[test]
fn completions_and_the_man_page_generate_without_a_node() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef p2pfs"),
        ("fish", "complete -c p2pfs"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        // No home at all: completions describe the command line only.
        let r = Cmd::new(None, ["completions", shell]).run().ok();
        assert!(r.stdout.contains(marker), "{shell}: {marker:?} missing");
        for sub in ["send", "serve", "vault", "prune", "again"] {
            assert!(r.stdout.contains(sub), "{shell}: {sub:?} missing");
        }
    }
    let r = Cmd::new(None, ["completions", "tcsh"]).run();
    assert_eq!(r.code(), Some(2), "an unknown shell is a usage error: {r}");
    let man = Cmd::new(None, ["man"]).run().ok().stdout;
    assert!(
        man.starts_with(".ie") || man.contains(".TH p2pfs"),
        "{man:.200}"
    );
    assert!(man.contains(".TH p2pfs 1"), "{man:.300}");
    for s in ["serve", "send", "vault", "completions"] {
        assert!(man.contains(s), "{s} missing from the man page");
    }
}

/// `contrib/p2pfs.service`: hardened, no passphrase, SIGINT to stop, and
/// a command line the real binary accepts.
#[test]
fn the_service_unit_is_hardened_and_its_command_line_parses() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/p2pfs.service"
    ))
    .unwrap();
    let value = |k: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
            .collect()
    };
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "p2pfs"),
        ("KillSignal", "SIGINT"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(value(k), [v], "{k}");
    }
    assert!(
        !unit.contains("PASSPHRASE"),
        "the daemon needs no passphrase"
    );
    let exec = value("ExecStart");
    let args: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(
        args[..4],
        ["/usr/local/bin/p2pfs", "--home", "/var/lib/p2pfs", "serve"]
    );
    // The home is the state directory systemd makes writable.
    assert_eq!(args[2], format!("/var/lib/{}", value("StateDirectory")[0]));
    let mut parse: Vec<&str> = args[1..].to_vec();
    parse.push("--help");
    Cmd::new(None, parse).run().ok().says("--listen");
}

#[test]
fn a_second_serve_on_one_home_is_refused_at_once() {
    let n = Node::new();
    n.init("one");
    let srv = Serving::start(&n, &[]);
    let t = Instant::now();
    let r = n
        .cmd(["serve", "--listen", "127.0.0.1:0", "--no-mdns"])
        .timeout(Duration::from_secs(20))
        .run();
    assert_eq!(r.code(), Some(1), "{r}");
    assert!(r.stderr.contains("already running on this home"), "{r}");
    assert!(r.stderr.contains(&format!("process {}", srv.pid())), "{r}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The first one is untouched, and once it stops another may start.
    srv.stop().ok().says("stopped");
    let again = Serving::start(&n, &[]);
    again.stop().ok();
}

#[test]
fn sending_to_ones_own_node_says_so_and_stores_nothing() {
    let n = Node::new();
    n.init("self");
    write_random(&n.path("f"), 100);
    let srv = Serving::start(&n, &["--accept", "any"]);
    let r = n.run(["send", "--trust-new", "f", &srv.addr()]);
    assert_ne!(r.code(), Some(0), "{r}");
    assert!(r.stderr.contains("is this node itself"), "{r}");
    assert!(r.stderr.contains("vault import"), "{r}");
    // Nothing pinned either: its own key is no peer of its own.
    let trusted: Vec<serde_json::Value> = n.run(["trust", "list", "--json"]).ok().json();
    assert!(trusted.is_empty(), "{trusted:?}");
    srv.stop().ok();
    assert!(n.list().is_empty());
}

/// Polish from the trial (issue 10, item 20): the send usage line, the
/// --streams range, the vault key in `id`, and serve's hint to add a peer
/// only while none may send.
#[test]
fn help_id_and_serve_say_what_they_should() {
    let help = Cmd::new(None, ["send", "--help"]).run().ok().stdout;
    assert!(
        help.contains("Usage: p2pfs send [OPTIONS] PATH... PEER"),
        "{help}"
    );
    assert!(!help.contains("<PATH... PEER> <PATH... PEER>"), "{help}");
    assert!(help.contains("1 to 16"), "{help}");

    let n = Node::new();
    n.init("idnode");
    let id = n.run(["id"]).ok().stdout;
    let j: serde_json::Value = n.run(["id", "--json"]).ok().json();
    let fp = j["vault_key_fingerprint"].as_str().unwrap().to_owned();
    assert!(id.contains(&format!("vault key:   {fp}")), "{id}");

    let out = Serving::start(&n, &[]).stop().ok().stdout;
    assert!(
        out.contains("(add one with `p2pfs trust add NODEID`)"),
        "{out}"
    );
    let other = Node::new();
    other.init("other");
    n.run(["trust", "add", &other.id().id]).ok();
    let out = Serving::start(&n, &[]).stop().ok().stdout;
    assert!(out.contains("accepting:   trusted peers only"), "{out}");
    assert!(!out.contains("add one with"), "{out}");
}
