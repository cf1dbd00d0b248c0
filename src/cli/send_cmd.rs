//! `p2pfs send PATH... PEER`: finds PEER on the LAN when it is a name or
//! node id, progress bars or NDJSON events, and the mapping of the outcome
//! to messages and exit codes.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use p2pfs::{
    crypto::keys::PublicKey,
    net::{
        discovery::{self, Lookup, Resolved},
        events::Event,
        sender::{self, item_for, SendOptions, Target},
        KeyHint, NetError, DEFAULT_PORT,
    },
    store::trust::TrustStore,
};

use super::{progress, walk, Ctx};

/// A parsed PEER argument.
#[derive(Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Key required by `NODEID@…`.
    pub expected: Option<PublicKey>,
    /// Host name or address.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl PeerSpec {
    /// `host:port` as written (the key of address pins).
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// How long `send NAME` browses the LAN before giving up.
const LAN_TIMEOUT: Duration = Duration::from_secs(3);

/// What a PEER argument names.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerArg {
    /// An address: `[NODEID@]host[:port]`, or an IP address.
    Addr(PeerSpec),
    /// A node name, node id or id prefix, to find on the LAN.
    Lan(String),
}

/// Tells addresses from LAN names: anything with `@`, `:` or `[`, and IP
/// addresses, are addresses; a bare word is a node name or id (a DNS host
/// name needs its port: `host:47474`).
pub fn classify(s: &str) -> Result<PeerArg> {
    if s.contains(['@', ':', '[']) || s.parse::<IpAddr>().is_ok() {
        return Ok(PeerArg::Addr(parse_peer(s)?));
    }
    if s.trim().is_empty() {
        bail!("empty PEER: give a node name, a node id, or host:port");
    }
    Ok(PeerArg::Lan(s.trim().to_owned()))
}

/// Parses `[NODEID@]host[:port]` (IPv6 as `[addr]:port`).
pub fn parse_peer(s: &str) -> Result<PeerSpec> {
    let (expected, rest) = match s.split_once('@') {
        Some((id, rest)) => match PublicKey::parse_id(id) {
            Some(k) => (Some(k), rest),
            None => bail!(
                "{id:?} before '@' is not a node id (52 base32 characters, as `p2pfs id` prints)"
            ),
        },
        None => (None, s),
    };
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, tail) = r
            .split_once(']')
            .context("missing ']' in an IPv6 address")?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("bad port {p:?}"))?,
            None => DEFAULT_PORT,
        };
        (h.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse().with_context(|| format!("bad port {p:?}"))?,
            ),
            None => (rest.to_owned(), DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        bail!("no host in {s:?}: use host:port or NODEID@host:port");
    }
    Ok(PeerSpec {
        expected,
        host,
        port,
    })
}

async fn resolve(spec: &PeerSpec) -> Result<SocketAddr> {
    let label = spec.label();
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(label.as_str())
        .await
        .with_context(|| format!("cannot resolve {label}: check the name, or use an address"))?
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs
        .into_iter()
        .next()
        .with_context(|| format!("{label} resolves to no address"))
}

fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

pub fn run(ctx: &Ctx, args: Vec<String>, streams: usize, json: bool) -> Result<()> {
    let Some((peer, paths)) = args.split_last() else {
        bail!("usage: p2pfs send PATH... PEER");
    };
    if paths.is_empty() {
        bail!("nothing to send: usage: p2pfs send PATH... PEER");
    }
    let peer = classify(peer)?;
    let identity = ctx.home.load_identity()?;
    let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    let entries = walk::collect(&paths)?;
    if entries.is_empty() {
        bail!("nothing to send: only symbolic links or special files were given (they are never followed)");
    }
    let mut items = Vec::with_capacity(entries.len());
    for e in entries {
        items.push(
            item_for(&e.path, e.name, e.dir)
                .with_context(|| format!("cannot read {}", walk::shown(&e.path)))?,
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let (targets, lan_first_contact) = match peer {
            PeerArg::Addr(spec) => {
                let addr = resolve(&spec).await?;
                let label = spec.label();
                let trust = TrustStore::load(ctx.home.root())?;
                let (expected, hint, first) = match (spec.expected, trust.pinned_for_address(&label)) {
                    (Some(k), _) => (k, KeyHint::Given, trust.get(&k).is_none()),
                    (None, Some(k)) => (k, KeyHint::Address, false),
                    (None, None) => {
                        let k = sender::probe(&identity.keypair, addr).await?;
                        (k, KeyHint::Address, trust.get(&k).is_none())
                    }
                };
                let target = Target {
                    addr,
                    label,
                    expected,
                    hint,
                };
                (vec![target], first)
            }
            PeerArg::Lan(query) => {
                let trust = TrustStore::load(ctx.home.root())?;
                let found = match find_on_lan(&trust, &query).await {
                    Ok(r) => r,
                    Err(e) => {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"event": "error", "message": format!("{e:#}"), "code": super::exit_code(&e)})
                            );
                        }
                        return Err(e);
                    }
                };
                let first = &found.candidates[0];
                let addrs: Vec<SocketAddr> = found.candidates.iter().flat_map(|c| c.socket_addrs()).collect();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "event": "resolved", "name": first.name, "id": first.id.to_id(),
                            "fingerprint": first.id.fingerprint(), "expected": found.expected.to_id(),
                            "addresses": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>() })
                    );
                } else if !ctx.quiet {
                    let at = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
                    if first.id == found.expected {
                        eprintln!("found {} on the LAN (fingerprint {}) at {at}", first.name, first.id.fingerprint());
                    } else {
                        eprintln!(
                            "found {} on the LAN at {at}, advertising fingerprint {}, but this node pinned it as {}: checking which key answers",
                            first.name,
                            first.id.fingerprint(),
                            found.expected.fingerprint()
                        );
                    }
                }
                let targets = targets_of(&found, &query);
                let first = trust.get(&found.expected).is_none();
                if first {
                    let mut trust = trust;
                    trust.pin(&found.expected, &query, Some(&query));
                    trust.save()?;
                }
                (targets, first)
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let quiet = ctx.quiet;
        let ui = tokio::spawn(async move {
            let mut pb = None;
            let mut last = std::time::Instant::now() - Duration::from_secs(1);
            while let Some(ev) = rx.recv().await {
                if json {
                    if let Some(v) = event_json(&ev, &mut last, lan_first_contact) {
                        println!("{v}");
                    }
                    continue;
                }
                match ev {
                    Event::Connected { peer, name } => {
                        // Security-relevant: shown even with -q.
                        if lan_first_contact {
                            let name = p2pfs::text::escape(&name);
                            eprintln!(
                                "first contact with {name}: pinned its key, fingerprint {} (id {peer})",
                                peer.fingerprint()
                            );
                        }
                    }
                    Event::Resuming { name, percent } => {
                        if !quiet {
                            eprintln!("resuming {name} at {percent}%");
                        }
                    }
                    Event::Start { bytes, skipped, .. } => {
                        let b = progress::bytes(bytes, quiet, "sending");
                        b.set_position(skipped);
                        pb = Some(b);
                    }
                    Event::FileStart { name, .. } => {
                        if let Some(b) = &pb {
                            b.set_message(name);
                        }
                    }
                    Event::Progress { done } => {
                        if let Some(b) = &pb {
                            b.set_position(done);
                        }
                    }
                    Event::FileFailed { name, message } => {
                        let line = format!("failed: {name}: {message}");
                        match &pb {
                            Some(b) => b.suspend(|| eprintln!("{line}")),
                            None => eprintln!("{line}"),
                        }
                    }
                    Event::FileDone { .. } => {}
                    Event::Done { .. } => {
                        if let Some(b) = pb.take() {
                            b.finish_and_clear();
                        }
                    }
                }
            }
        });
        let opts = SendOptions {
            streams,
            ..SendOptions::default()
        };
        let res = send_to_first(&identity.keypair, ctx.home.root(), &targets, items, &opts, tx, lan_first_contact).await;
        let _ = ui.await;
        // The key answered the handshake: pin it for the address.
        if let [t] = targets.as_slice() {
            if !matches!(res, Err(NetError::KeyChanged { .. } | NetError::Unreachable { .. } | NetError::Handshake(_) | NetError::Timeout(_))) {
                let mut trust = TrustStore::load(ctx.home.root())?;
                trust.pin(&t.expected, &t.label, None);
                trust.save()?;
            }
        }
        match res {
            Ok(s) => {
                if json {
                    return Ok(());
                }
                if !ctx.quiet {
                    println!(
                        "sent {} file(s) to {} ({}): {} on the wire, {} already there (resumed); committed and verified by the receiver",
                        s.files,
                        s.peer_name,
                        s.peer.fingerprint(),
                        human(s.bytes_sent),
                        human(s.bytes_skipped)
                    );
                }
                Ok(())
            }
            Err(e) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "error", "message": e.to_string(), "code": super::net_exit_code(&e)})
                    );
                }
                Err(e.into())
            }
        }
    })
}

/// Browses the LAN for `query`, preferring keys pinned for it here.
async fn find_on_lan(trust: &TrustStore, query: &str) -> Result<Resolved> {
    // Names match case-insensitively on the LAN, so pins do too.
    let lower = query.to_lowercase();
    let pinned: Vec<PublicKey> = trust
        .find(query)
        .into_iter()
        .chain(
            trust
                .peers()
                .iter()
                .filter(|p| p.name.as_ref().is_some_and(|n| n.to_lowercase() == lower)),
        )
        .filter_map(|p| p.key())
        .collect();
    let mut lookup = Lookup::new(query, pinned);
    let t0 = std::time::Instant::now();
    let found = discovery::browse(LAN_TIMEOUT, |peers| {
        lookup.settled(peers, std::time::Instant::now())
    })
    .await
    .with_context(|| format!("cannot look for {query:?} on the LAN: give the peer as host:port"))?;
    tracing::debug!(
        elapsed_us = t0.elapsed().as_micros() as u64,
        found = found.len(),
        "browsed the LAN"
    );
    Ok(lookup.resolve(&found, t0.elapsed())?)
}

/// One target per advertised address of each matching instance, all
/// requiring the resolved key.
fn targets_of(r: &Resolved, query: &str) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for addr in r.candidates.iter().flat_map(|c| c.socket_addrs()) {
        if out.iter().all(|t| t.addr != addr) {
            out.push(Target {
                addr,
                label: addr.to_string(),
                expected: r.expected,
                hint: KeyHint::Name(query.to_owned()),
            });
        }
    }
    out
}

/// Sends to the first target that authenticates: a target that fails before
/// the receiver welcomed us (unreachable, wrong key, failed handshake) makes
/// way for the next. When all fail, a key mismatch is what is reported.
async fn send_to_first(
    identity: &p2pfs::crypto::keys::Keypair,
    home: &std::path::Path,
    targets: &[Target],
    items: Vec<sender::Item>,
    opts: &SendOptions,
    ui: p2pfs::net::events::EventTx,
    _first_contact: bool,
) -> Result<sender::Summary, NetError> {
    let mut key_changed = None;
    for (i, target) in targets.iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let send = sender::send(identity, home, target, items.clone(), opts, tx);
        tokio::pin!(send);
        let mut welcomed = false;
        let mut forward = |ev: Event| {
            if let Event::Connected { .. } = &ev {
                welcomed = true;
            }
            let _ = ui.send(ev);
        };
        let res = loop {
            tokio::select! {
                biased;
                Some(ev) = rx.recv() => forward(ev),
                r = &mut send => break r,
            }
        };
        while let Ok(ev) = rx.try_recv() {
            forward(ev);
        }
        let e = match res {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        // After the welcome, or refused by the authenticated receiver: that
        // is the answer, whatever other addresses would say.
        if welcomed || matches!(e, NetError::Refused { .. }) {
            return Err(e);
        }
        if i + 1 == targets.len() {
            return Err(match e {
                e @ NetError::KeyChanged { .. } => e,
                e => key_changed.unwrap_or(e),
            });
        }
        tracing::info!(addr = %target.addr, "trying the next address: {e}");
        if matches!(e, NetError::KeyChanged { .. }) && key_changed.is_none() {
            key_changed = Some(e);
        }
    }
    Err(NetError::Unreachable {
        addr: "the peer".into(),
        detail: "it advertises no address".into(),
    })
}

fn event_json(
    ev: &Event,
    last: &mut std::time::Instant,
    first_contact: bool,
) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match ev {
        Event::Connected { peer, name } => json!({
            "event": "connected", "peer": peer.to_id(), "fingerprint": peer.fingerprint(),
            "name": name, "first_contact": first_contact }),
        Event::Start {
            files,
            bytes,
            skipped,
        } => json!({
            "event": "start", "files": files, "bytes_total": bytes, "bytes_skipped": skipped }),
        Event::Resuming { name, percent } => {
            json!({ "event": "resuming", "name": name, "percent": percent })
        }
        Event::FileStart { .. } => return None,
        Event::Progress { done } => {
            if last.elapsed() < Duration::from_millis(250) {
                return None;
            }
            *last = std::time::Instant::now();
            json!({ "event": "progress", "bytes_done": done })
        }
        Event::FileDone { name, size, blake3 } => json!({
            "event": "file_done", "name": name, "size": size, "blake3": blake3 }),
        Event::FileFailed { name, message } => {
            json!({ "event": "file_failed", "name": name, "message": message })
        }
        Event::Done {
            files,
            bytes_sent,
            bytes_skipped,
        } => json!({
            "event": "done", "files": files, "bytes_sent": bytes_sent, "bytes_skipped": bytes_skipped }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let p = parse_peer("127.0.0.1:5000").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.expected),
            ("127.0.0.1", 5000, None)
        );
        assert_eq!(parse_peer("host").unwrap().port, DEFAULT_PORT);
        assert_eq!(parse_peer("[::1]:7").unwrap().label(), "[::1]:7");
        let id = "c64dtkvdgjj4wj536zsdhzpnf74spbbyvrb6zyf6meamwwo3gf4q";
        let p = parse_peer(&format!("{id}@10.0.0.1:9")).unwrap();
        assert_eq!(p.expected.unwrap().to_id(), id);
        assert!(parse_peer("nonsense@h:1").is_err());
        assert!(parse_peer("h:notaport").is_err());
    }

    #[test]
    fn bare_words_are_lan_names_and_the_rest_addresses() {
        for lan in ["vault-b", "c64dtkvdgj", "laptop (2)", "fileserver"] {
            assert_eq!(classify(lan).unwrap(), PeerArg::Lan(lan.into()), "{lan}");
        }
        for addr in ["10.0.0.1", "::1", "host:1", "[::1]:2", "ID@h"] {
            assert!(!matches!(classify(addr), Ok(PeerArg::Lan(_))), "{addr}");
        }
        assert_eq!(
            classify("10.0.0.1").unwrap(),
            PeerArg::Addr(parse_peer("10.0.0.1:47474").unwrap())
        );
        assert!(classify(" ").is_err());
    }
}
