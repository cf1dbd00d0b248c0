//! LAN discovery with real multicast: `serve` advertises over mDNS, and
//! `peers` / `send NAME` find it — between two network namespaces joined by
//! a veth pair, within one namespace, and against an independent mDNS
//! implementation (Python `zeroconf`, which `.ci/run` installs).
//!
//! Network namespaces need root: without it these tests say they skipped
//! (the one-namespace test then runs in the current namespace). Every test
//! makes its own namespaces, named after the process id, and deletes them
//! when it ends, failed or not.

mod util;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde::Deserialize;
use util::*;

/// `src/cli/mod.rs`, `exit::PEER_NOT_FOUND`.
const PEER_NOT_FOUND: i32 = 16;
/// `src/cli/mod.rs`, `exit::KEY_CHANGED`.
const KEY_CHANGED: i32 = 12;
/// `src/cli/mod.rs`, `exit::NOT_CONFIRMED`.
const NOT_CONFIRMED: i32 = 17;

/// One entry of `peers --json`.
#[derive(Debug, Clone, Deserialize)]
struct Found {
    name: String,
    instance: String,
    id: String,
    fingerprint: String,
    addresses: Vec<String>,
    port: u16,
    trusted: bool,
    pinned: bool,
    #[serde(rename = "self")]
    this_node: bool,
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Network namespaces made for one test; deleted on drop, so also when the
/// test panics. Declare it before the processes that run inside it, so they
/// are killed first.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    /// `count` fresh namespaces with loopback up; `None` (after saying the
    /// test is skipped) when not root.
    fn new(test: &str, count: usize) -> Option<Self> {
        if !is_root() {
            eprintln!("skipped {test}: network namespaces need root (CI runs as root)");
            return None;
        }
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let mut ns = Netns { names: Vec::new() };
        for i in 0..count {
            let name = format!("p2pfs-{}-{seq}-{i}", std::process::id());
            ip(&["netns", "add", &name]);
            ns.names.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
        Some(ns)
    }

    /// Two namespaces, A (10.213.0.1/24) and B (10.213.0.2/24), joined by a
    /// veth pair with multicast on.
    fn lan(test: &str) -> Option<Self> {
        let ns = Self::new(test, 2)?;
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let (va, vb) = (format!("p2v{tag}a"), format!("p2v{tag}b"));
        let (a, b) = (ns.a().to_owned(), ns.b().to_owned());
        // Created inside the namespaces: nothing is left in the host's.
        ip(&[
            "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
        ]);
        for (n, dev, addr) in [(&a, &va, "10.213.0.1/24"), (&b, &vb, "10.213.0.2/24")] {
            ip(&["-n", n, "addr", "add", addr, "dev", dev]);
            ip(&["-n", n, "link", "set", "dev", dev, "multicast", "on"]);
            ip(&["-n", n, "link", "set", "dev", dev, "up"]);
            ip(&["-n", n, "route", "add", "224.0.0.0/4", "dev", dev]);
        }
        Some(ns)
    }

    /// Three namespaces: A (10.214.1.2/24) and B (10.214.2.2/24) on two
    /// subnets, joined by a router R (10.214.1.1, 10.214.2.1) that forwards
    /// IPv4 between them (and so, as routers do, not link-local multicast).
    /// `a()` is A, `b()` is B, `names[2]` is R.
    fn routed(test: &str) -> Option<Self> {
        let mut ns = Self::new(test, 2)?;
        let r = format!("{}-r", ns.names[0]);
        ip(&["netns", "add", &r]);
        ns.names.push(r.clone());
        ip(&["-n", &r, "link", "set", "lo", "up"]);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let (a, b) = (ns.a().to_owned(), ns.b().to_owned());
        for (end, net, side) in [(&a, "1", "a"), (&b, "2", "b")] {
            let (ve, vr) = (format!("p2r{tag}{side}"), format!("p2r{tag}{side}r"));
            ip(&[
                "link", "add", &ve, "netns", end, "type", "veth", "peer", "name", &vr, "netns", &r,
            ]);
            let (host_addr, gw) = (format!("10.214.{net}.2/24"), format!("10.214.{net}.1"));
            ip(&["-n", end, "addr", "add", &host_addr, "dev", &ve]);
            ip(&["-n", &r, "addr", "add", &format!("{gw}/24"), "dev", &vr]);
            for (n, d) in [(end, &ve), (&r, &vr)] {
                ip(&["-n", n, "link", "set", "dev", d, "multicast", "on"]);
                ip(&["-n", n, "link", "set", "dev", d, "up"]);
            }
            ip(&["-n", end, "route", "add", "default", "via", &gw]);
            ip(&["-n", end, "route", "add", "224.0.0.0/4", "dev", &ve]);
        }
        let fwd = Command::new("ip")
            .args(["netns", "exec", &r, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .status()
            .expect("ip netns exec");
        assert!(fwd.success(), "cannot turn on forwarding in {r}");
        Some(ns)
    }

    fn a(&self) -> &str {
        &self.names[0]
    }

    fn b(&self) -> &str {
        &self.names[1]
    }

    /// The veth device in namespace `i`.
    fn dev(&self, i: usize) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.names[i], "-o", "link", "show", "type", "veth"])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let name = s.split(": ").nth(1).unwrap_or_default();
        name.split('@').next().unwrap_or_default().to_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A command of `node`, inside namespace `ns` (None: the current one).
fn cmd_in<I, S>(node: &Node, ns: Option<&str>, args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let c = node.cmd(args);
    match ns {
        Some(ns) => c.in_netns(ns),
        None => c,
    }
}

/// A running `serve`; stopped with SIGTERM when dropped.
struct Serving {
    proc: Option<Proc>,
}

impl Serving {
    /// Starts `serve ARGS` and waits until it reports its discovery state.
    fn start(node: &Node, ns: Option<&str>, args: &[&str]) -> Self {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let mut p = cmd_in(node, ns, all).spawn();
        assert!(
            p.wait_for_output("discovery:", Duration::from_secs(30)),
            "serve did not start:\n{}\n{}",
            p.stdout_now(),
            p.stderr_now()
        );
        Self { proc: Some(p) }
    }

    fn output(&self) -> String {
        let p = self.proc.as_ref().unwrap();
        format!("{}{}", p.stdout_now(), p.stderr_now())
    }

    /// SIGTERM, and the outcome.
    fn stop(mut self) -> Run {
        let mut p = self.proc.take().unwrap();
        p.signal(libc::SIGTERM);
        assert!(
            p.wait_timeout(Duration::from_secs(20)).is_some(),
            "serve did not stop on SIGTERM"
        );
        p.finish()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            if p.wait_timeout(Duration::from_secs(10)).is_none() {
                p.kill9();
            }
        }
    }
}

/// `peers --json --wait SECS`, asserting success.
fn peers(node: &Node, ns: Option<&str>, wait: &str) -> (Vec<Found>, Run) {
    let r = cmd_in(node, ns, ["peers", "--json", "--wait", wait])
        .run()
        .ok();
    (r.json(), r)
}

/// `serve --name NAME --accept any` of `node` in namespace `ns`, on UDP
/// port 47475 instead of the default when `alt_port`, announced on the LAN
/// unless `mdns` is false.
fn serve_any(node: &Node, ns: &str, name: &str, alt_port: bool, mdns: bool) -> Serving {
    let mut args = vec!["--name", name, "--accept", "any"];
    if alt_port {
        args.extend(["--listen", "0.0.0.0:47475"]);
    }
    if !mdns {
        args.push("--no-mdns");
    }
    Serving::start(node, Some(ns), &args)
}

/// `trust list --json` of `node`.
fn trust_list(node: &Node) -> Vec<serde_json::Value> {
    cmd_in(node, None, ["trust", "list", "--json"])
        .run()
        .ok()
        .json()
}

fn named<'a>(found: &'a [Found], name: &str) -> Vec<&'a Found> {
    found.iter().filter(|f| f.name == name).collect()
}

/// Exports the vault entry `name` of `node` and returns its BLAKE3.
fn exported_hash(node: &Node, name: &str) -> String {
    let dest = format!("out-{}", random_hex(4));
    blake3_file(&node.export(name, &dest))
}

/// Whether Python's `zeroconf` is importable; in CI it must be.
fn have_zeroconf(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import zeroconf"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 cannot import zeroconf: .ci/run must install it (pip install zeroconf)"
        );
        eprintln!("skipped {test}: python3 with zeroconf is not installed (pip install zeroconf)");
    }
    ok
}

/// A Python process in a namespace, its output collected line by line.
struct Python {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Python {
    fn spawn(ns: &str, script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-u", "-c", script])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        for (pipe, into) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                out.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), err.clone()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = into.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        Self { child, out, err }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn describe(&self) -> String {
        format!(
            "--- python stdout\n{}--- python stderr\n{}",
            self.stdout(),
            self.err.lock().unwrap()
        )
    }

    /// Waits for exit within `timeout`; panics (after killing it) otherwise.
    fn wait(mut self, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                assert!(st.success(), "python failed:\n{}", self.describe());
                return self.stdout();
            }
            if Instant::now() > end {
                panic!("python timed out:\n{}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Browses for `_p2pfs._udp.local.` for argv[1] seconds, prints the
/// resolved instances as JSON.
const ZEROCONF_BROWSE: &str = r#"
import json, sys, time
from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf
T = "_p2pfs._udp.local."
found = {}
class L(ServiceListener):
    def add_service(self, zc, t, name): self.resolve(zc, t, name)
    def update_service(self, zc, t, name): self.resolve(zc, t, name)
    def remove_service(self, zc, t, name): pass
    def resolve(self, zc, t, name):
        info = zc.get_service_info(t, name, timeout=3000)
        if info:
            found[name] = {"name": name, "port": info.port, "addresses": info.parsed_addresses(),
                           "txt": {k.decode(): (v.decode() if v is not None else None)
                                   for k, v in info.properties.items()}}
zc = Zeroconf(ip_version=IPVersion.V4Only)
ServiceBrowser(zc, T, L())
time.sleep(float(sys.argv[1]))
zc.close()
print(json.dumps(list(found.values())))
"#;

/// Advertises, from another mDNS implementation, the records described by
/// the JSON list in argv[1] (`type`, `instance`, `addresses`, `port`, `txt`;
/// a TXT value "hex:…" is raw bytes), prints "ready", and keeps them up for
/// argv[2] seconds.
const ZEROCONF_ADVERTISE: &str = r#"
import json, socket, sys, time
from zeroconf import IPVersion, ServiceInfo, Zeroconf
def val(v):
    return bytes.fromhex(v[4:]) if v.startswith("hex:") else v
zc = Zeroconf(ip_version=IPVersion.V4Only)
for i, r in enumerate(json.loads(sys.argv[1])):
    t = r.get("type", "_p2pfs._udp.local.")
    info = ServiceInfo(t, r["instance"] + "." + t, port=r["port"],
                       addresses=[socket.inet_aton(a) for a in r["addresses"]],
                       properties={k: val(v) for k, v in r["txt"].items()}, server=f"py-{i}.local.")
    zc.register_service(info, cooperating_responders=True)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
zc.close()
"#;

#[test]
fn lan_peers_and_send_by_name_and_id_prefix_between_two_namespaces() {
    let Some(lan) = Netns::lan("lan_peers_and_send_by_name_and_id_prefix_between_two_namespaces")
    else {
        return;
    };
    let (a, b, hidden) = (Node::new(), Node::new(), Node::new());
    a.init("node-a");
    let srv = Serving::start(&b, Some(lan.b()), &["--name", "vault-b", "--accept", "any"]);
    assert!(
        srv.output()
            .contains("advertised on the LAN as \"vault-b\""),
        "{}",
        srv.output()
    );
    let _hidden = Serving::start(
        &hidden,
        Some(lan.b()),
        &["--name", "hidden", "--listen", "0.0.0.0:47475", "--no-mdns"],
    );
    let b_id = b.id().id;

    // Listed within 3 s, with B's id and its address on the veth.
    let (found, r) = peers(&a, Some(lan.a()), "2");
    assert!(r.elapsed < Duration::from_secs(3), "{r}");
    let vb = named(&found, "vault-b");
    assert_eq!(vb.len(), 1, "{r}");
    assert_eq!(vb[0].id, b_id);
    assert_eq!(vb[0].fingerprint, b.id().fingerprint);
    assert_eq!(vb[0].addresses, ["10.213.0.2"]);
    assert_eq!(
        (vb[0].port, vb[0].pinned, vb[0].trusted),
        (47474, false, false)
    );
    assert!(
        named(&found, "hidden").is_empty(),
        "--no-mdns must not advertise: {r}"
    );

    // First contact by name without a terminal: refused with the
    // fingerprint and a hint, nothing sent.
    let h1 = write_random(&a.path("report.pdf"), 1_500_000);
    cmd_in(&a, Some(lan.a()), ["send", "report.pdf", "vault-b"])
        .run()
        .code_is(NOT_CONFIRMED)
        .says(&b.id().fingerprint)
        .says("--trust-new")
        .says("nothing was sent");
    assert!(b.list().is_empty());

    // Send by name with --trust-new: found, pinned (said so), authenticated,
    // stored, verified.
    let t0 = Instant::now();
    let r = cmd_in(
        &a,
        Some(lan.a()),
        ["send", "--trust-new", "report.pdf", "vault-b"],
    )
    .env("P2PFS_LOG", "p2pfs::cli::send_cmd=debug")
    .run()
    .ok()
    .says("first contact: pinned")
    .says(&b.id().fingerprint);
    // The debug line is `TIMESTAMP DEBUG … elapsed_us=N …`, plain (a pipe).
    let log = r.stderr.clone();
    if let Some(line) = log.lines().find(|l| l.contains("elapsed_us=")) {
        assert_plain_log_line(line);
    }
    let browsed_us: String = log
        .split("elapsed_us=")
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    eprintln!(
        "send by name took {:?}, of which browsing {browsed_us} µs (1.5 s of it waiting for a second node of that name, at first contact)",
        t0.elapsed()
    );
    assert_eq!(b.list().len(), 1);
    assert_eq!(exported_hash(&b, "report.pdf"), h1);

    // Now pinned here, and the word typed is the user's alias for it; send
    // by the first 10 characters of B's id: no question.
    let (found, _) = peers(&a, Some(lan.a()), "1");
    assert!(named(&found, "vault-b")[0].pinned);
    assert!(
        !named(&found, "vault-b")[0].trusted,
        "pinned by a send is not trusted: it may not send here"
    );
    let trusted = trust_list(&a);
    assert_eq!(trusted[0]["aliases"], serde_json::json!(["vault-b"]));
    let h2 = write_random(&a.path("second.bin"), 70_000);
    cmd_in(&a, Some(lan.a()), ["send", "second.bin", &b_id[..10]])
        .run()
        .ok();
    assert_eq!(exported_hash(&b, "second.bin"), h2);

    // A name nobody serves: exit 16 within 5 s, with the hint.
    let r = cmd_in(&a, Some(lan.a()), ["send", "second.bin", "nobody-here"])
        .run()
        .code_is(PEER_NOT_FOUND)
        .says("p2pfs peers")
        .says("5353")
        .says("host:port");
    assert!(r.elapsed < Duration::from_secs(5), "{r}");

    // Shutting down withdraws the advertisement at once (mDNS goodbye).
    let watcher = cmd_in(&a, Some(lan.a()), ["peers", "--json", "--wait", "4"]).spawn();
    std::thread::sleep(Duration::from_millis(1500));
    srv.stop().ok();
    let r = watcher.finish();
    assert!(r.status.success(), "{r}");
    let found: Vec<Found> = r.json();
    assert!(
        named(&found, "vault-b").is_empty(),
        "still listed after shutdown: {r}"
    );
}

#[test]
fn same_name_is_ambiguous_until_the_user_names_one_and_then_the_name_keeps_its_key() {
    let Some(lan) = Netns::lan("same_name_is_ambiguous") else {
        return;
    };
    let (a, b1, b2) = (Node::new(), Node::new(), Node::new());
    a.init("node-a");
    let s1 = serve_any(&b1, lan.b(), "twin", false, true);
    let _s2 = serve_any(&b2, lan.b(), "twin", true, true);
    let (id1, id2) = (b1.id(), b2.id());
    write_random(&a.path("f"), 10_000);

    // Both are listed by name (mDNS gave one instance a " (2)" suffix).
    assert!(
        wait_until(Duration::from_secs(10), || {
            named(&peers(&a, Some(lan.a()), "1").0, "twin").len() == 2
        }),
        "two nodes named twin were not both listed"
    );
    let ambiguous = |r: Run| {
        r.code_is(PEER_NOT_FOUND)
            .says("matches 2 different nodes")
            .says(&id1.fingerprint)
            .says(&id2.fingerprint)
            .says("--allow none")
    };
    let r = ambiguous(cmd_in(&a, Some(lan.a()), ["send", "--trust-new", "f", "twin"]).run());
    assert!(b1.list().is_empty() && b2.list().is_empty(), "{r}");

    // Sending to one by id prefix pins its key, but the name stays
    // ambiguous: the id prefix was the user's word, not "twin", and an
    // earlier contact never decides by order.
    cmd_in(
        &a,
        Some(lan.a()),
        ["send", "--trust-new", "f", &id1.id[..12]],
    )
    .run()
    .ok();
    ambiguous(cmd_in(&a, Some(lan.a()), ["send", "f", "twin"]).run());
    assert_eq!(b1.list().len(), 1);

    // The user names one: the name then picks it, with no question.
    cmd_in(
        &a,
        None,
        ["trust", "add", &id1.id, "--name", "twin", "--allow", "none"],
    )
    .run()
    .ok();
    for _ in 0..3 {
        // --again: each send stores it (not "unchanged"), so the count
        // shows where every one went.
        cmd_in(&a, Some(lan.a()), ["send", "--again", "f", "twin"])
            .run()
            .ok()
            .never_says("first contact");
    }
    assert_eq!(b1.list_all().len(), 4);
    assert!(b2.list().is_empty());

    // The named twin is gone; the other one answering to the name is
    // refused like any changed key, and the advice keeps the good pin.
    s1.stop();
    let r = cmd_in(&a, Some(lan.a()), ["send", "f", "twin"])
        .run()
        .code_is(KEY_CHANGED)
        .says("MAN-IN-THE-MIDDLE")
        .says(&id1.id)
        .says(&id2.id)
        .says("another node using the same name")
        .says("stays as it is")
        .says(&id2.id[..12])
        .never_says("trust rm");
    assert!(b2.list().is_empty(), "{r}");
    let trusted = trust_list(&a);
    assert!(
        trusted
            .iter()
            .any(|p| p["id"] == id1.id.as_str() && p["aliases"] == serde_json::json!(["twin"])),
        "{trusted:?}"
    );
}

#[test]
fn a_spoofed_record_for_the_same_instance_makes_the_name_ambiguous() {
    let test = "a_spoofed_record_for_the_same_instance_makes_the_name_ambiguous";
    if !have_zeroconf(test) {
        return;
    }
    let Some(lan) = Netns::lan(test) else {
        return;
    };
    let (a, real, attacker) = (Node::new(), Node::new(), Node::new());
    a.init("node-a");
    let _real = serve_any(&real, lan.b(), "recv", false, true);
    // The attacker's node takes anything, and is not announced by p2pfs:
    // a record from another responder re-announces the real node's very
    // instance name with the attacker's id (M1).
    let _evil = serve_any(&attacker, lan.b(), "recv", true, false);
    let (rid, xid) = (real.id(), attacker.id());
    let spoof = serde_json::json!([{"instance": "recv", "addresses": ["10.213.0.2"], "port": 47475,
        "txt": {"v": "5", "id": xid.id, "name": "recv"}}]);
    let py = Python::spawn(lan.b(), ZEROCONF_ADVERTISE, &[&spoof.to_string(), "120"]);
    assert!(
        wait_until(Duration::from_secs(60), || py.stdout().contains("ready")),
        "zeroconf did not register:\n{}",
        py.describe()
    );
    // Both claims are seen under the one instance name.
    let mut last = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = peers(&a, Some(lan.a()), "1.5").0;
            let ids: Vec<&str> = last
                .iter()
                .filter(|f| f.instance == "recv")
                .map(|f| f.id.as_str())
                .collect();
            ids.contains(&rid.id.as_str()) && ids.contains(&xid.id.as_str())
        }),
        "both records were not listed: {last:?}"
    );

    // First contact by name refuses as ambiguous, every time, listing both.
    // (Python zeroconf, like any RFC 6762 responder, answers a record at
    // most once a second: pause so that each browse hears the spoofer; an
    // attacker would answer every time.)
    write_random(&a.path("f"), 1000);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1200));
        let r = cmd_in(&a, Some(lan.a()), ["send", "--trust-new", "f", "recv"])
            .run()
            .code_is(PEER_NOT_FOUND)
            .says("matches 2 different nodes")
            .says(&rid.fingerprint)
            .says(&xid.fingerprint);
        assert!(attacker.list().is_empty() && real.list().is_empty(), "{r}");
    }

    // The user's own choice pins exactly one: the name then goes there.
    cmd_in(
        &a,
        None,
        ["trust", "add", &rid.id, "--name", "recv", "--allow", "none"],
    )
    .run()
    .ok();
    for _ in 0..3 {
        cmd_in(&a, Some(lan.a()), ["send", "--again", "f", "recv"])
            .run()
            .ok();
    }
    assert_eq!(real.list_all().len(), 3);
    assert!(attacker.list().is_empty());
}

#[test]
fn a_peers_own_name_never_becomes_an_alias() {
    let Some(lan) = Netns::lan("a_peers_own_name_never_becomes_an_alias") else {
        return;
    };
    let (a, squatter, real) = (Node::new(), Node::new(), Node::new());
    a.init("node-a");
    write_random(&a.path("f"), 1000);
    // Contacted once by address, the squatter calls itself "recv" (M2).
    let s = serve_any(&squatter, lan.b(), "recv", true, false);
    cmd_in(
        &a,
        Some(lan.a()),
        ["send", "--trust-new", "f", "10.213.0.2:47475"],
    )
    .run()
    .ok();
    assert_eq!(squatter.list().len(), 1);

    // The real "recv" on the LAN: its first contact by that name goes to it
    // (the squatter's name decided nothing), and the word becomes the
    // user's alias for the real key.
    let _r = serve_any(&real, lan.b(), "recv", false, true);
    let (sid, rid) = (squatter.id(), real.id());
    cmd_in(&a, Some(lan.a()), ["send", "--trust-new", "f", "recv"])
        .run()
        .ok()
        .says("first contact: pinned")
        .says(&rid.fingerprint);
    let trusted = trust_list(&a);
    let of = |id: &str| trusted.iter().find(|p| p["id"] == id).cloned().unwrap();
    assert_eq!(of(&sid.id)["aliases"], serde_json::json!([]));
    assert_eq!(of(&sid.id)["peer_name"], "recv");
    assert_eq!(of(&rid.id)["aliases"], serde_json::json!(["recv"]));

    // Now the squatter announces "recv" too: later sends to "recv" still go
    // to the real node, every time.
    s.stop();
    let _s = serve_any(&squatter, lan.b(), "recv", true, true);
    assert!(
        wait_until(Duration::from_secs(10), || {
            named(&peers(&a, Some(lan.a()), "1").0, "recv").len() == 2
        }),
        "the squatter was not listed"
    );
    for _ in 0..4 {
        cmd_in(&a, Some(lan.a()), ["send", "--again", "f", "recv"])
            .run()
            .ok();
    }
    assert_eq!(real.list_all().len(), 5);
    assert_eq!(squatter.list().len(), 1);
}

#[test]
fn zeroconf_sees_the_node_and_p2pfs_skips_foreign_and_malformed_records() {
    let test = "zeroconf_sees_the_node_and_p2pfs_skips_foreign_and_malformed_records";
    if !have_zeroconf(test) {
        return;
    }
    let Some(lan) = Netns::lan(test) else {
        return;
    };
    let (a, b) = (Node::new(), Node::new());
    a.init("node-a");
    let _srv = Serving::start(&b, Some(lan.b()), &["--name", "vault-b", "--accept", "any"]);
    let b_id = b.id().id;

    // An independent browser in A's namespace resolves B with its TXT record.
    let out = Python::spawn(lan.a(), ZEROCONF_BROWSE, &["2"]).wait(Duration::from_secs(30));
    let seen: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let vb = seen
        .iter()
        .find(|s| s["name"] == "vault-b._p2pfs._udp.local.")
        .unwrap_or_else(|| panic!("zeroconf did not see vault-b: {out}"));
    assert_eq!(vb["txt"]["v"], "5", "{out}");
    assert_eq!(vb["txt"]["id"], b_id.as_str(), "{out}");
    assert_eq!(vb["txt"]["name"], "vault-b", "{out}");
    assert_eq!(vb["port"], 47474);
    assert_eq!(vb["addresses"], serde_json::json!(["10.213.0.2"]));

    // Records from another implementation: the valid ones are listed, the
    // malformed and foreign ones are skipped, and nothing fails. "multi"
    // claims B's id at two addresses, the first of them another node's.
    let good = p2pfs::crypto::keys::Keypair::generate()
        .unwrap()
        .public()
        .to_id();
    let rec = |instance: &str, addrs: &[&str], port: u16, txt: serde_json::Value| serde_json::json!({"instance": instance, "addresses": addrs, "port": port, "txt": txt});
    let at = ["10.213.0.2"];
    let mut records = vec![
        rec(
            "py-node",
            &at,
            40000,
            serde_json::json!({"v": "5", "id": good, "name": "py-node"}),
        ),
        rec(
            "multi",
            &["10.213.0.1", "10.213.0.2"],
            47474,
            serde_json::json!({"v": "5", "id": b_id}),
        ),
        rec("no-txt", &at, 40001, serde_json::json!({})),
        rec(
            "future",
            &at,
            40002,
            serde_json::json!({"v": "1", "id": good, "name": "future"}),
        ),
        rec("no-version", &at, 40003, serde_json::json!({"id": good})),
        rec(
            "bad-id",
            &at,
            40004,
            serde_json::json!({"v": "5", "id": "not-a-node-id"}),
        ),
        rec(
            "short-id",
            &at,
            40005,
            serde_json::json!({"v": "5", "id": &good[..20]}),
        ),
        rec(
            "binary-id",
            &at,
            40006,
            serde_json::json!({"v": "5", "id": "hex:fffe0001"}),
        ),
        rec(
            "evil-name",
            &at,
            40007,
            serde_json::json!({"v": "5", "id": good, "name": "evil\u{1b}[2J"}),
        ),
        rec(
            "long-name",
            &at,
            40008,
            serde_json::json!({"v": "5", "id": good, "name": "n".repeat(200)}),
        ),
        rec(
            "bidi-name",
            &at,
            40009,
            serde_json::json!({"v": "5", "id": good, "name": "txt\u{202e}exe.pdf"}),
        ),
        rec(
            "rtl\u{202e}label",
            &at,
            40010,
            serde_json::json!({"v": "5", "id": good, "name": "fine"}),
        ),
        rec(
            "zero-port",
            &at,
            0,
            serde_json::json!({"v": "5", "id": good, "name": "zero-port"}),
        ),
    ];
    let mut web = rec(
        "web",
        &at,
        80,
        serde_json::json!({"v": "5", "id": good, "name": "web"}),
    );
    web["type"] = "_http._tcp.local.".into();
    records.push(web);
    let py = Python::spawn(
        lan.b(),
        ZEROCONF_ADVERTISE,
        &[&serde_json::to_string(&records).unwrap(), "60"],
    );
    assert!(
        wait_until(Duration::from_secs(60), || py.stdout().contains("ready")),
        "zeroconf did not register:\n{}",
        py.describe()
    );
    let (found, r) = peers(&a, Some(lan.a()), "2");
    let mut names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["multi", "py-node", "vault-b"], "{r}");
    let pn = named(&found, "py-node")[0];
    assert_eq!((pn.id.as_str(), pn.port), (good.as_str(), 40000));
    assert!(
        !r.all().contains('\u{1b}') && !r.all().contains('\u{202e}'),
        "{r}"
    );
    // A name that only a malformed record carries is not found.
    write_random(&a.path("x"), 10);
    cmd_in(&a, Some(lan.a()), ["send", "x", "future"])
        .run()
        .code_is(PEER_NOT_FOUND);

    // The handshake decides: at 10.213.0.1:47474 another node answers (with
    // its own key), so the send moves on to 10.213.0.2 where B proves the
    // advertised key.
    let c = Node::new();
    let _other = Serving::start(
        &c,
        Some(lan.a()),
        &["--name", "other", "--accept", "any", "--no-mdns"],
    );
    let h = write_random(&a.path("m.bin"), 30_000);
    let r = cmd_in(&a, Some(lan.a()), ["send", "--trust-new", "m.bin", "multi"])
        .env("P2PFS_LOG", "p2pfs=info")
        .run()
        .ok();
    assert!(
        r.stderr.contains("10.213.0.1:47474"),
        "the first address was not tried: {r}"
    );
    assert_eq!(exported_hash(&b, "m.bin"), h);
    assert!(c.list().is_empty());
}

#[test]
fn new_addresses_are_announced() {
    let Some(lan) = Netns::lan("new_addresses_are_announced") else {
        return;
    };
    let (a, b) = (Node::new(), Node::new());
    a.init("node-a");
    let srv = Serving::start(&b, Some(lan.b()), &["--name", "mover", "--accept", "any"]);
    let (da, db) = (lan.dev(0), lan.dev(1));
    ip(&["-n", lan.a(), "addr", "add", "10.213.1.1/24", "dev", &da]);
    ip(&["-n", lan.b(), "addr", "add", "10.213.1.2/24", "dev", &db]);
    let mut last = Vec::new();
    let seen = wait_until(Duration::from_secs(20), || {
        let (found, _) = peers(&a, Some(lan.a()), "1");
        last = found;
        named(&last, "mover")
            .first()
            .is_some_and(|f| f.addresses.iter().any(|x| x == "10.213.1.2"))
    });
    assert!(
        seen,
        "new address not announced: {last:?}\n{}",
        srv.output()
    );
    // And sending over it works (whichever address answers first).
    write_random(&a.path("f"), 1000);
    cmd_in(&a, Some(lan.a()), ["send", "--trust-new", "f", "mover"])
        .run()
        .ok();
}

#[test]
fn discovery_between_two_processes_in_one_namespace() {
    // As root: a fresh namespace with loopback only. Otherwise: this one.
    let ns = if is_root() {
        Netns::new("discovery_between_two_processes_in_one_namespace", 1)
    } else {
        None
    };
    let ns_name = ns.as_ref().map(|n| n.a().to_owned());
    let ns_ref = ns_name.as_deref();
    let (a, b) = (Node::new(), Node::new());
    a.init("node-a");
    let name = format!("solo-{}", random_hex(4));
    let _srv = Serving::start(
        &b,
        ns_ref,
        &["--name", &name, "--accept", "any", "--listen", "0.0.0.0:0"],
    );
    let b_id = b.id().id;
    let mut found = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            found = peers(&a, ns_ref, "1").0;
            !named(&found, &name).is_empty()
        }),
        "not found: {found:?}"
    );
    let f = named(&found, &name)[0].clone();
    assert_eq!(f.id, b_id);
    assert!(!f.this_node);
    assert_eq!(f.instance, name);
    // The node lists itself as such.
    let (own, _) = peers(&b, ns_ref, "1");
    assert!(
        named(&own, &name).first().is_some_and(|f| f.this_node),
        "{own:?}"
    );
    let h = write_random(&a.path("x.bin"), 200_000);
    cmd_in(&a, ns_ref, ["send", "x.bin", &b_id]).run().ok();
    assert_eq!(exported_hash(&b, "x.bin"), h);
}

/// Beyond one LAN (README, *Beyond one LAN*): two subnets joined by a
/// router, as over WireGuard or Tailscale. Discovery does not cross (mDNS
/// is link-local), a send by name says so, and a send by `NODEID@address`
/// goes through, authenticated and verified.
#[test]
fn a_send_by_address_crosses_a_router_where_discovery_does_not() {
    let Some(net) = Netns::routed("a_send_by_address_crosses_a_router_where_discovery_does_not")
    else {
        return;
    };
    let (a, b) = (Node::new(), Node::new());
    a.init("near");
    let _srv = Serving::start(&b, Some(net.b()), &["--name", "far", "--accept", "any"]);
    let (found, r) = peers(&a, Some(net.a()), "2");
    assert!(
        named(&found, "far").is_empty(),
        "mDNS crossed the router: {r}"
    );
    let h = write_random(&a.path("across.bin"), 3_000_000);
    cmd_in(&a, Some(net.a()), ["send", "across.bin", "far"])
        .run()
        .code_is(PEER_NOT_FOUND)
        .says("host:port");
    let target = format!("{}@10.214.2.2:47474", b.id().id);
    let r = cmd_in(&a, Some(net.a()), ["send", "across.bin", &target])
        .run()
        .ok();
    assert!(b.list().len() == 1, "{r}");
    assert_eq!(exported_hash(&b, "across.bin"), h);
}

/// `p2pfs rename` while serving (README, *Names*): the old advert is
/// withdrawn, the new name is announced and sends by it reach the same key,
/// and the sender hears the new name from the node itself.
#[test]
fn a_rename_while_serving_is_re_advertised_under_the_new_name() {
    let Some(lan) = Netns::lan("a_rename_while_serving_is_re_advertised_under_the_new_name") else {
        return;
    };
    let (a, b) = (Node::new(), Node::new());
    a.init("node-a");
    let srv = Serving::start(
        &b,
        Some(lan.b()),
        &["--name", "old-name", "--accept", "any"],
    );
    let b_id = b.id().id;
    let mut last = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = peers(&a, Some(lan.a()), "1").0;
            !named(&last, "old-name").is_empty()
        }),
        "not found before the rename: {last:?}"
    );
    cmd_in(&b, None, ["rename", "new-name"])
        .run()
        .ok()
        .says("renamed old-name to new-name")
        .says("the running serve");
    assert_eq!(b.id().name, "new-name");
    // The new name is announced and the old one withdrawn (a goodbye).
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = peers(&a, Some(lan.a()), "1").0;
            named(&last, "new-name")
                .first()
                .is_some_and(|f| f.id == b_id)
                && named(&last, "old-name").is_empty()
        }),
        "after the rename: {last:?}\n{}",
        srv.output()
    );
    assert!(
        srv.output()
            .contains("advertised on the LAN as \"new-name\""),
        "{}",
        srv.output()
    );
    let h = write_random(&a.path("r.bin"), 100_000);
    cmd_in(
        &a,
        Some(lan.a()),
        ["send", "--trust-new", "r.bin", "new-name"],
    )
    .run()
    .ok()
    .says("pinned new-name at 10.213.0.2");
    assert_eq!(exported_hash(&b, "r.bin"), h);
    // The old name finds nobody now.
    cmd_in(&a, Some(lan.a()), ["send", "r.bin", "old-name"])
        .run()
        .code_is(PEER_NOT_FOUND);
}

/// `p2pfs pair CODE` with no address (README, *Pairing*): the joiner finds
/// the node showing the code by its number over real mDNS between two
/// namespaces, and both pin each other; a host started with `--no-mdns` is
/// not found, and the joiner says so with the not-found code and pins
/// nothing.
#[test]
fn pair_by_code_alone_finds_the_host_on_the_lan() {
    let Some(lan) = Netns::lan("pair_by_code_alone_finds_the_host_on_the_lan") else {
        return;
    };
    let (a, b) = (Node::new(), Node::new());
    a.init("joiner");
    b.init("shower");
    let host = |extra: &[&str]| pair_host(&b, lan.b(), extra);

    // Not announced: nothing answers the nameplate, nothing is pinned.
    let (mut quiet, shown) = host(&["--no-mdns"]);
    assert_eq!(shown["announced"], false, "{shown}");
    let code = shown["code"].as_str().unwrap().to_owned();
    cmd_in(&a, Some(lan.a()), ["pair", &code])
        .run()
        .code_is(PEER_NOT_FOUND)
        .says("no node showing a pairing code")
        .says("--no-mdns");
    assert!(trust_list(&a).is_empty());
    quiet.signal(libc::SIGTERM);
    let _ = quiet.wait_timeout(Duration::from_secs(10));
    assert!(trust_list(&b).is_empty());

    // Announced: the code alone is enough.
    let (mut p, shown) = host(&[]);
    assert_eq!(shown["announced"], true, "{shown}");
    let code = shown["code"].as_str().unwrap().to_owned();
    let r = cmd_in(&a, Some(lan.a()), ["pair", &code])
        .run()
        .ok()
        .says("paired with \"shower\"");
    assert!(
        p.wait_timeout(Duration::from_secs(10)).is_some(),
        "host did not end: {r}"
    );
    p.finish().ok();
    let (ta, tb) = (trust_list(&a), trust_list(&b));
    assert_eq!(ta.len(), 1, "{ta:?}");
    assert_eq!(ta[0]["id"], b.id().id);
    assert_eq!(tb.len(), 1, "{tb:?}");
    assert_eq!(tb[0]["id"], a.id().id);
    assert_eq!(tb[0]["allow"], serde_json::json!(["send"]));
    // And a send by the peer's name needs nothing else.
    let _srv = Serving::start(&b, Some(lan.b()), &[]);
    let h = write_random(&a.path("after-pair.bin"), 200_000);
    cmd_in(&a, Some(lan.a()), ["send", "after-pair.bin", "shower"])
        .run()
        .ok();
    assert_eq!(exported_hash(&b, "after-pair.bin"), h);
}

/// Starts `pair --json EXTRA` of `node` in namespace `ns` (the default
/// listen address); returns the process and its first line (the code).
fn pair_host(node: &Node, ns: &str, extra: &[&str]) -> (Proc, serde_json::Value) {
    let mut args = vec!["pair", "--json"];
    args.extend_from_slice(extra);
    start_pairing(cmd_in(node, Some(ns), args))
}

/// A pairing record decides nothing (PROTOCOL.md, *Finding the host*): a
/// record from another responder that claims the nameplate under another
/// id, pointing at the real host, is refused when the key that answers is
/// not the announced one; next to the real host's own record, two ids
/// behind one nameplate are refused with both fingerprints. Nothing is
/// pinned on either side, and the host's code still works by address.
#[test]
fn a_spoofed_pairing_record_pairs_nobody() {
    let test = "a_spoofed_pairing_record_pairs_nobody";
    if !have_zeroconf(test) {
        return;
    }
    let Some(lan) = Netns::lan(test) else {
        return;
    };
    let (a, b, attacker) = (Node::new(), Node::new(), Node::new());
    a.init("joiner");
    b.init("shower");
    attacker.init("shower");
    let xid = attacker.id();
    let spoof = |plate: &str, port: u64| {
        let recs = serde_json::json!([{"type": "_p2pfs-pair._udp.local.", "instance": "shower",
            "addresses": ["10.213.0.2"], "port": port,
            "txt": {"v": "5", "id": xid.id, "name": "shower", "plate": plate}}]);
        let py = Python::spawn(lan.b(), ZEROCONF_ADVERTISE, &[&recs.to_string(), "120"]);
        assert!(
            wait_until(Duration::from_secs(60), || py.stdout().contains("ready")),
            "zeroconf did not register:\n{}",
            py.describe()
        );
        py
    };
    let plate = |code: &str| code.split('-').next().unwrap().to_owned();

    // The real host is quiet; the spoofer announces its nameplate with its
    // own id at the real host's address.
    let (mut p, shown) = pair_host(&b, lan.b(), &["--no-mdns"]);
    let code = shown["code"].as_str().unwrap().to_owned();
    let port = shown["port"].as_u64().unwrap();
    let py = spoof(&plate(&code), port);
    let r = cmd_in(&a, Some(lan.a()), ["pair", &code]).run();
    assert_ne!(r.code(), Some(0), "{r}");
    let r = r.says("another key than the one given or announced");
    assert!(
        trust_list(&a).is_empty() && trust_list(&b).is_empty(),
        "{r}"
    );
    drop(py);
    // The code was not used up: by address it pairs.
    cmd_in(
        &a,
        Some(lan.a()),
        ["pair", &code, &format!("10.213.0.2:{port}")],
    )
    .run()
    .ok()
    .says("paired with \"shower\"");
    assert!(p.wait_timeout(Duration::from_secs(10)).is_some());
    p.finish().ok();
    assert_eq!(trust_list(&a).len(), 1);
    cmd_in(&a, None, ["trust", "rm", &b.id().id]).run().ok();
    cmd_in(&b, None, ["trust", "rm", &a.id().id]).run().ok();

    // The real host announces too: two ids behind one nameplate.
    let (mut p, shown) = pair_host(&b, lan.b(), &[]);
    let code = shown["code"].as_str().unwrap().to_owned();
    let port = shown["port"].as_u64().unwrap();
    let _py = spoof(&plate(&code), port);
    let r = cmd_in(&a, Some(lan.a()), ["pair", &code])
        .run()
        .code_is(PEER_NOT_FOUND)
        .says("2 nodes show a pairing code")
        .says(&xid.fingerprint)
        .says(&b.id().fingerprint);
    assert!(
        trust_list(&a).is_empty() && trust_list(&b).is_empty(),
        "{r}"
    );
    p.signal(libc::SIGTERM);
    let _ = p.wait_timeout(Duration::from_secs(10));
}

/// Prints "add NAME" and "remove NAME" for `_p2pfs-pair._udp.local.`
/// instances as another mDNS implementation sees them, for argv[1] seconds.
const ZEROCONF_WATCH_PAIR: &str = r#"
import sys, time
from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf
class L(ServiceListener):
    def add_service(self, zc, t, name): print("add", name, flush=True)
    def update_service(self, zc, t, name): pass
    def remove_service(self, zc, t, name): print("remove", name, flush=True)
zc = Zeroconf(ip_version=IPVersion.V4Only)
ServiceBrowser(zc, "_p2pfs-pair._udp.local.", L())
time.sleep(float(sys.argv[1]))
zc.close()
"#;

/// The pairing advert is withdrawn with an mDNS goodbye on every way out
/// (PROTOCOL.md, *Finding the host*): another responder that cached the
/// nameplate drops it within seconds when the host pairs and when it is
/// stopped by SIGTERM, not at the record's TTL (minutes).
#[test]
fn the_pairing_nameplate_is_withdrawn_when_the_host_ends() {
    let test = "the_pairing_nameplate_is_withdrawn_when_the_host_ends";
    if !have_zeroconf(test) {
        return;
    }
    let Some(lan) = Netns::lan(test) else {
        return;
    };
    let (a, b) = (Node::new(), Node::new());
    a.init("joiner");
    b.init("shower");
    let watch = Python::spawn(lan.a(), ZEROCONF_WATCH_PAIR, &["180"]);
    let lines = |what: &str| {
        watch
            .stdout()
            .lines()
            .filter(|l| l.starts_with(what))
            .count()
    };
    // The host ends in both ways; each time the watcher must first see the
    // nameplate, then its removal soon after the process exits.
    for (round, by_pairing) in [(1, true), (2, false)] {
        let (mut p, shown) = pair_host(&b, lan.b(), &[]);
        assert_eq!(shown["announced"], true, "{shown}");
        assert!(
            wait_until(Duration::from_secs(60), || lines("add ") >= round),
            "zeroconf never saw the nameplate:\n{}",
            watch.describe()
        );
        if by_pairing {
            let code = shown["code"].as_str().unwrap().to_owned();
            cmd_in(&a, Some(lan.a()), ["pair", &code])
                .run()
                .ok()
                .says("paired with \"shower\"");
        } else {
            p.signal(libc::SIGTERM);
        }
        assert!(
            p.wait_timeout(Duration::from_secs(10)).is_some(),
            "host did not end"
        );
        let ended = Instant::now();
        assert!(
            wait_until(Duration::from_secs(4), || lines("remove ") >= round),
            "round {round}: the nameplate was not withdrawn {:?} after the host ended:\n{}",
            ended.elapsed(),
            watch.describe()
        );
    }
}
