//! `p2pfs send PATH... PEER`: decides which key the receiver must prove —
//! given, pinned, or confirmed at first contact as OpenSSH does (shown and
//! asked on a terminal, else only with `--trust-new`) — finding PEER on the
//! LAN when it is a word; progress bars or NDJSON events; pins what the
//! handshake proved; maps the outcome to messages and exit codes.

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use p2pfs::{
    crypto::keys::{Keypair, PublicKey},
    net::{
        client::{self as sender, item_for, SendOptions, Target},
        discovery::{self, DiscoveryError, Lookup, Resolved},
        events::{Event, EventTx},
        KeyHint, NetError, DEFAULT_PORT,
    },
    store::{home::Identity, trust::TrustStore},
    text,
};

use super::{progress, walk, Ctx};

/// A parsed PEER argument.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    parse_peer_with(s, DEFAULT_PORT)
}

/// [`parse_peer`] with another default port (`pair`'s).
pub fn parse_peer_with(s: &str, default_port: u16) -> Result<PeerSpec> {
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
            None => default_port,
        };
        (h.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse().with_context(|| format!("bad port {p:?}"))?,
            ),
            None => (rest.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        bail!("no host in {s:?}: use host:port or NODEID@host:port");
    }
    if host.len() > 253 {
        bail!("the host name is longer than 253 bytes: use a shorter name or an address");
    }
    Ok(PeerSpec {
        expected,
        host,
        port,
    })
}

pub async fn resolve(spec: &PeerSpec) -> Result<SocketAddr> {
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

pub(crate) fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// The peer's key is new here and the user did not confirm it (declined,
/// or no terminal to ask on and no `--trust-new`).
#[derive(Debug)]
pub struct NotConfirmed(String);

impl std::fmt::Display for NotConfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotConfirmed {}

/// A node met for the first time: what the user is shown before its key is
/// pinned (after a probe proved that the key answers there).
struct Contact<'a> {
    /// How it is shown: its LAN name and the address that proved the key,
    /// or the address typed (escaped).
    name: String,
    /// The key.
    key: PublicKey,
    /// The address pin to record now (`host:port` as typed), if any.
    pin_addr: Option<&'a str>,
    /// The word typed, to become an alias once the key is confirmed.
    alias: Option<&'a str>,
}

/// Asks the user to confirm a first contact, as OpenSSH does; `--trust-new`
/// confirms without asking. Nothing has been sent to the peer yet.
fn confirm(c: &Contact, trust_new: bool) -> Result<()> {
    if trust_new {
        return Ok(());
    }
    let (name, fp, id) = (&c.name, c.key.fingerprint(), c.key);
    if !std::io::stdin().is_terminal() {
        let given = match (c.alias, c.pin_addr) {
            (Some(_), _) => format!("the full node id as PEER ({id})"),
            (None, Some(a)) => format!("{id}@{}", text::escape(a)),
            (None, None) => format!("{id}@HOST:PORT"),
        };
        return Err(NotConfirmed(format!(
            "first contact with {name}: its key is not known here, and there is no \
             terminal to confirm it on; nothing was sent.\n  fingerprint {fp}\n  id          {id}\n\
             Compare the fingerprint with `p2pfs id` on that node, then run the same command \
             with --trust-new (which pins this key), or give the key itself: {given}"
        ))
        .into());
    }
    eprintln!(
        "The authenticity of node {name} can't be established.\n  \
         fingerprint {fp}\n  id          {id}\n\
         Nothing has been sent yet. Compare the fingerprint with `p2pfs id` on that node."
    );
    let what = match c.alias {
        Some(w) => format!("Pin this key as {:?} and send?", text::escape(w)),
        None => "Pin this key and send?".to_owned(),
    };
    if super::confirm(&what) {
        return Ok(());
    }
    Err(NotConfirmed(format!(
        "first contact with {name} not confirmed: nothing was sent and nothing was pinned"
    ))
    .into())
}

/// Pins a confirmed first contact (the key, its address when typed, the
/// word as an alias) and says so — security-relevant, so even with `-q`.
/// A first contact that turns out to be this node itself is refused
/// before anything is asked or pinned.
fn not_self(identity: &Keypair, c: &Contact) -> Result<()> {
    if c.key == identity.public() {
        return Err(p2pfs::net::NetError::ToSelf {
            addr: c.name.clone(),
            fingerprint: c.key.fingerprint(),
        }
        .into());
    }
    Ok(())
}

fn pin_first_contact(home: &Path, c: &Contact) -> Result<()> {
    let mut trust = TrustStore::load_for_change(home)?;
    trust.pin_key(&c.key)?;
    if let Some(a) = c.pin_addr {
        trust.pin_address(&c.key, a)?;
    }
    let mut named = String::new();
    if let Some(word) = c.alias {
        // The word already names the key when it is a prefix of its id.
        if !c.key.to_id().starts_with(&word.to_lowercase()) {
            match trust.add_alias(&c.key, word) {
                Ok(_) => {
                    named = format!("; {:?} names this key here from now on", text::escape(word))
                }
                Err(e) => named = format!("; not kept as an alias: {e}"),
            }
        }
    }
    trust.save()?;
    eprintln!(
        "first contact: pinned {}: fingerprint {} (id {}){named}",
        c.name,
        c.key.fingerprint(),
        c.key
    );
    Ok(())
}

/// The first target whose address proves the expected key (probing, which
/// sends nothing of ours); a wrong key is reported before other failures.
async fn prove(identity: &Keypair, targets: &[Target], json: bool) -> Result<usize, NetError> {
    let mut key_changed = None;
    let mut last = None;
    for (i, t) in targets.iter().enumerate() {
        match sender::probe(identity, t.addr, busy_notice(json)).await {
            Ok(k) if k == t.expected => return Ok(i),
            Ok(actual) => {
                tracing::info!(addr = %t.addr, "another key answers there: trying the next address");
                key_changed.get_or_insert(NetError::KeyChanged {
                    addr: t.label.clone(),
                    expected: t.expected,
                    actual,
                    hint: t.hint.clone(),
                });
            }
            Err(e) => {
                tracing::info!(addr = %t.addr, "trying the next address: {}", text::escape(&e.to_string()));
                last = Some(e);
            }
        }
    }
    Err(key_changed.or(last).unwrap_or_else(no_address))
}

/// What a sender shows when the receiver is busy and it waits for room
/// (`client::while_busy`): a line, or a `waiting` event with `--json`.
pub(crate) fn busy_notice(json: bool) -> impl FnMut(&str) {
    move |reason| {
        if json {
            println!(
                "{}",
                serde_json::json!({ "event": "waiting", "reason": reason })
            );
        } else {
            eprintln!("{}", waiting_line(reason));
        }
    }
}

fn waiting_line(reason: &str) -> String {
    format!(
        "{reason}: waiting for room (up to {} s)…",
        sender::BUSY_WAIT.as_secs()
    )
}

fn no_address() -> NetError {
    NetError::Unreachable {
        addr: "the peer".into(),
        detail: "it advertises no address".into(),
    }
}

/// Where to send, decided before anything is sent.
pub(crate) struct Plan {
    pub(crate) targets: Vec<Target>,
    /// A key new here: confirmed and pinned already, or given (pinned once
    /// the handshake proves it).
    pub(crate) first_contact: bool,
}

/// Decides the key the receiver must prove (`docs/PROTOCOL.md`,
/// *Resolving a PEER argument* and *First contact*).
pub(crate) async fn plan(
    ctx: &Ctx,
    identity: &Keypair,
    peer: PeerArg,
    trust_new: bool,
    json: bool,
) -> Result<Plan> {
    let home = ctx.home.root();
    let trust = TrustStore::load(home)?;
    match peer {
        PeerArg::Addr(spec) => {
            let addr = resolve(&spec).await?;
            let label = spec.label();
            let target = |expected, hint| Target {
                addr,
                label: label.clone(),
                expected,
                hint,
            };
            if let Some(k) = spec.expected {
                let first_contact = trust.get(&k).is_none();
                return Ok(Plan {
                    targets: vec![target(k, KeyHint::Given)],
                    first_contact,
                });
            }
            if let Some(k) = trust.pinned_for_address(&label) {
                return Ok(Plan {
                    targets: vec![target(k, KeyHint::Address)],
                    first_contact: false,
                });
            }
            let k = sender::probe(identity, addr, busy_notice(json)).await?;
            let first_contact = trust.get(&k).is_none();
            if first_contact {
                let shown = if label == addr.to_string() {
                    label.clone()
                } else {
                    format!("{label} ({addr})")
                };
                let c = Contact {
                    name: text::escape(&shown),
                    key: k,
                    pin_addr: Some(&label),
                    alias: None,
                };
                not_self(identity, &c)?;
                confirm(&c, trust_new)?;
                pin_first_contact(home, &c)?;
            }
            Ok(Plan {
                targets: vec![target(k, KeyHint::Address)],
                first_contact,
            })
        }
        PeerArg::Lan(word) => {
            let pinned = trust.key_for_word(&word)?;
            let mut lookup = Lookup::new(&word, pinned);
            let found = find_on_lan(&mut lookup, &word).await?;
            let Some(first) = found.candidates.first() else {
                bail!("no address to try for {:?}", text::escape(&word));
            };
            let addrs: Vec<SocketAddr> = found
                .candidates
                .iter()
                .flat_map(|c| c.socket_addrs())
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "resolved", "name": first.name, "id": first.id.to_id(),
                        "fingerprint": first.id.fingerprint(), "expected": found.expected.to_id(),
                        "addresses": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>() })
                );
            } else if !ctx.quiet {
                let at = addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                if first.id == found.expected {
                    eprintln!(
                        "found {} on the LAN (fingerprint {}) at {at}",
                        first.shown_name(),
                        first.id.fingerprint()
                    );
                } else {
                    eprintln!(
                        "found {} on the LAN at {at}, announcing fingerprint {}, but {:?} names {} here: checking which key answers",
                        first.shown_name(),
                        first.id.fingerprint(),
                        text::escape(&word),
                        found.expected.fingerprint()
                    );
                }
            }
            let given = lookup.exact_id().is_some();
            let mut targets = targets_of(&found, &word, given);
            let first_contact = trust.get(&found.expected).is_none();
            if first_contact && !given {
                let i = prove(identity, &targets, json).await?;
                targets[..=i].rotate_right(1);
                let shown = found
                    .candidates
                    .iter()
                    .find(|c| c.socket_addrs().contains(&targets[0].addr))
                    .map(|c| c.shown_name())
                    .unwrap_or_else(|| text::escape(&word));
                let c = Contact {
                    name: format!("{shown} at {}", targets[0].addr),
                    key: found.expected,
                    pin_addr: None,
                    alias: Some(&word),
                };
                not_self(identity, &c)?;
                confirm(&c, trust_new)?;
                pin_first_contact(home, &c)?;
            }
            Ok(Plan {
                targets,
                first_contact,
            })
        }
    }
}

/// The options of `p2pfs send`.
#[derive(clap::Args)]
pub struct Flags {
    /// Parallel QUIC data streams, 1 to 16.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub streams: u16,
    /// NDJSON events on stdout (resolved, connected, start, progress, file_done, done, error).
    #[arg(long)]
    pub json: bool,
    /// Pin the key of a node met for the first time without asking (scripts, no
    /// terminal); its fingerprint is printed. A key other than a pinned one is
    /// still refused.
    #[arg(long)]
    pub trust_new: bool,
    /// A sealed deposit: seal the files to this node's own vault key, so the
    /// receiver stores them without being able to read them (not even their
    /// names); only this node gets them back (`p2pfs get`, with its passphrase).
    #[arg(long)]
    pub sealed: bool,
    /// Store every file again, even those the receiver already stored
    /// unchanged from this node (by default they are skipped and reported
    /// as unchanged).
    #[arg(long)]
    pub again: bool,
    /// Send nothing when any path has a name the receiver would refuse
    /// (control or invisible characters, not UTF-8, the same stored name
    /// twice). By default such paths are skipped, each with one line, the
    /// rest is sent, and the exit code is 23.
    #[arg(long)]
    pub strict: bool,
    /// Wait up to SECS for the peer to appear on the LAN or come up at its
    /// address (trying again every second) instead of failing at once.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub wait: Option<u64>,
    /// With `-` as the only PATH (standard input, read to its end first,
    /// held in memory only): the name to store it under.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

pub fn run(ctx: &Ctx, args: Vec<String>, flags: Flags) -> Result<()> {
    let Flags {
        streams,
        json,
        trust_new,
        sealed,
        again,
        strict,
        wait,
        name,
    } = flags;
    let streams = usize::from(streams);
    let usage = |what: &str| {
        super::vault_cmd::Failed(
            super::exit::USAGE,
            format!("{what}usage: p2pfs send PATH... PEER"),
        )
    };
    let Some((peer, paths)) = args.split_last() else {
        bail!(usage(""));
    };
    if paths.is_empty() {
        bail!(usage("nothing to send, only a PEER: "));
    }
    let peer = classify(peer)?;
    let identity = ctx.home.load_identity()?;
    let (items, refused) = if paths.iter().any(|p| p == "-") {
        (vec![stdin_item(paths, name)?], 0)
    } else {
        if name.is_some() {
            bail!(usage(
                "--name names standard input (give - as the only PATH); "
            ));
        }
        let paths: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
        let walk::Collected {
            items: entries,
            refused,
        } = walk::collect(&paths, strict)?;
        if entries.is_empty() {
            bail!("nothing to send: {}", walk::nothing_left(refused));
        }
        let mut items = Vec::with_capacity(entries.len());
        for e in entries {
            items.push(
                item_for(&e.path, e.name, e.dir)
                    .with_context(|| format!("cannot read {}", walk::shown(&e.path)))?,
            );
        }
        (items, refused)
    };
    let rt = super::runtime(true)?;
    // A deposit is sealed to this node's own vault key (the one its pin
    // allows): no passphrase is needed to seal, only to open it again.
    let sealed = if sealed {
        let vault = ctx.home.vault()?;
        vault.check_pin()?;
        Some(vault.public_key())
    } else {
        None
    };
    let opts = SendOptions {
        streams,
        sealed,
        again,
        ..SendOptions::default()
    };
    let res = rt
        .block_on(until_there(wait, json, &peer, || {
            send(
                ctx,
                &identity,
                peer.clone(),
                items.clone(),
                opts.clone(),
                json,
                trust_new,
            )
        }))
        .and_then(|()| walk::partial(refused, "sent"));
    if json {
        if let Err(e) = &res {
            println!(
                "{}",
                serde_json::json!({"event": "error", "message": text::escape_lines(&format!("{e:#}")), "code": super::exit_code(e)})
            );
        }
    }
    res
}

/// `send - --name NAME PEER`: standard input, read to its end (a pipe or
/// a file, never a terminal), as one file under a name checked as the
/// receiver checks it.
fn stdin_item(paths: &[String], name: Option<String>) -> Result<sender::Item> {
    use std::io::IsTerminal;
    // Each of these is a command line to correct: bad usage (exit 2).
    let usage = |what: String| super::vault_cmd::Failed(super::exit::USAGE, what);
    if paths.len() != 1 {
        bail!(usage(
            "- (standard input) is sent alone: give it as the only PATH".into()
        ));
    }
    let Some(name) = name else {
        bail!(usage(
            "- (standard input) needs a name to be stored under: add --name NAME".into()
        ));
    };
    if let Err(why) = p2pfs::store::format::validate_name(&name) {
        bail!(usage(format!("--name {}: {why}", text::escape(&name))));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(usage("standard input is a terminal: pipe or redirect the data to send (`cmd | p2pfs send - --name NAME PEER`)".into()));
    }
    Ok(p2pfs::net::client::stdin_item(
        name,
        &mut stdin.lock(),
        &mut |_| {},
    )?)
}

async fn send(
    ctx: &Ctx,
    me: &Identity,
    peer: PeerArg,
    items: Vec<sender::Item>,
    opts: SendOptions,
    json: bool,
    trust_new: bool,
) -> Result<()> {
    let Plan {
        targets,
        first_contact,
    } = plan(ctx, &me.keypair, peer, trust_new, json).await?;
    let (tx, ui) = ui_task(json, ctx.quiet, first_contact, "sending");
    let home = ctx.home.root();
    let opts = &opts;
    let (res, proven) = first_that_answers(&targets, tx, |t, tx| {
        let items = items.clone();
        async move { sender::send(me, home, &t, items, opts, tx).await }
    })
    .await;
    let _ = ui.await;
    if let Some(p) = proven {
        pin_proven(ctx.home.root(), &targets[p.target], p.name.as_deref());
    }
    let s = res?;
    if !json && !ctx.quiet {
        let what = if opts.sealed.is_some() {
            "deposited (sealed to this node's vault key; the receiver cannot open them)"
        } else {
            "committed and verified by the receiver"
        };
        println!("{}", summary_line(&s, what));
    }
    Ok(())
}

/// True when `e` says the peer is not there (yet): no node of that name
/// answered on the LAN, or nothing answered at the address.
fn not_there_yet(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<NetError>(),
            Some(NetError::Unreachable { .. })
        ) || matches!(
            c.downcast_ref::<DiscoveryError>(),
            Some(DiscoveryError::NotFound { .. })
        )
    })
}

/// Runs `attempt` once, or (`--wait SECS`) again every second while the
/// peer is not there yet and the time is not up; says once that it waits.
/// Ctrl-C ends the wait.
pub(crate) async fn until_there<F, Fut>(
    wait: Option<u64>,
    quiet: bool,
    peer: &PeerArg,
    mut attempt: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = wait.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut said = false;
    loop {
        let e = match attempt().await {
            Err(e) if not_there_yet(&e) => e,
            r => return r,
        };
        match deadline {
            Some(d) if tokio::time::Instant::now() + Duration::from_secs(1) < d => {}
            _ => return Err(e),
        }
        if !said && !quiet {
            let who = match peer {
                PeerArg::Addr(spec) => spec.label(),
                PeerArg::Lan(word) => word.clone(),
            };
            eprintln!(
                "waiting for {} to come up (--wait {} s)…",
                text::escape(&who),
                wait.unwrap_or(0)
            );
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Err(NetError::Interrupted.into()),
        }
    }
}

/// The line that ends a send: what was sent, resumed, and found unchanged.
fn summary_line(s: &p2pfs::net::client::Summary, what: &str) -> String {
    let peer = format!("{} ({})", text::escape(&s.peer_name), s.peer.fingerprint());
    let unchanged = format!(
        "{} file(s) unchanged, already stored there (--again stores them again)",
        s.unchanged
    );
    if s.files == 0 && s.folders == 0 && s.unchanged > 0 {
        return format!("nothing to send to {peer}: {unchanged}");
    }
    let mut line = format!(
        "sent {} to {peer}: {} on the wire",
        super::files_and_folders(s.files as u64, s.folders as u64),
        human(s.bytes_sent)
    );
    if s.bytes_skipped > 0 {
        line += &format!(", {} already there (resumed)", human(s.bytes_skipped));
    }
    line += &format!("; {what}");
    if s.unchanged > 0 {
        line += &format!("; {unchanged}");
    }
    line
}

/// The task that shows a transfer's events: progress bars and failure
/// lines on a terminal, or NDJSON events (`--json`). Ends when every
/// sender of the channel is gone.
pub(crate) fn ui_task(
    json: bool,
    quiet: bool,
    first_contact: bool,
    verb: &'static str,
) -> (EventTx, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ui = tokio::spawn(async move {
        let mut pb = None;
        let mut last = std::time::Instant::now() - Duration::from_secs(1);
        while let Some(ev) = rx.recv().await {
            if json {
                if let Some(v) = event_json(&ev, &mut last, first_contact) {
                    println!("{v}");
                }
                continue;
            }
            match ev {
                Event::Connected { .. } => {}
                Event::Waiting { reason } => {
                    if !quiet {
                        eprintln!(
                            "{reason}: waiting for room (up to {} s)…",
                            p2pfs::net::client::BUSY_WAIT.as_secs()
                        );
                    }
                }
                // Shown with -q too (which drops only the bars): it
                // explains a pause of up to minutes.
                Event::Deciding { name, secs } => eprintln!(
                    "waiting for {} to accept… (up to {secs} s)",
                    text::escape(&name)
                ),
                Event::Resuming { name, percent } => {
                    if !quiet {
                        eprintln!("resuming {} at {percent}%", text::escape(&name));
                    }
                }
                Event::Start { bytes, skipped, .. } => {
                    let b = progress::bytes(bytes, quiet, verb);
                    b.set_position(skipped);
                    // Bytes already there are no speed: the rate starts now.
                    b.reset_eta();
                    pb = Some(b);
                }
                Event::FileStart { name, .. } => {
                    if let Some(b) = &pb {
                        b.set_message(text::escape(&name));
                    }
                }
                Event::Progress { done } => {
                    if let Some(b) = &pb {
                        b.set_position(done);
                    }
                }
                Event::FileFailed { name, message } => {
                    let line = format!(
                        "failed: {}: {}",
                        text::escape(&name),
                        text::escape(&message)
                    );
                    match &pb {
                        Some(b) => b.suspend(|| eprintln!("{line}")),
                        None => eprintln!("{line}"),
                    }
                }
                Event::FileDone { .. } | Event::Unchanged { .. } => {}
                Event::Done { .. } => {
                    if let Some(b) = pb.take() {
                        b.finish_and_clear();
                    }
                }
            }
        }
    });
    (tx, ui)
}

/// After the handshake proved `t.expected` at `t.addr`: pins the address
/// to it (and the key, when it was given and new here), and records what
/// it calls itself (display only). A failure here is only a warning: the
/// transfer's outcome stands.
pub(crate) fn pin_proven(home: &Path, t: &Target, peer_name: Option<&str>) {
    let pinned = (|| -> Result<bool> {
        let mut trust = TrustStore::load_for_change(home)?;
        let new = trust.get(&t.expected).is_none();
        trust.pin_address(&t.expected, &t.label)?;
        if let Some(n) = peer_name {
            trust.set_peer_name(&t.expected, n);
        }
        trust.save()?;
        Ok(new)
    })();
    match pinned {
        // Security-relevant: shown even with -q.
        Ok(true) => eprintln!(
            "first contact: pinned {}: fingerprint {} (id {}), the key given on the command line",
            text::escape(&t.label),
            t.expected.fingerprint(),
            t.expected
        ),
        Ok(false) => {}
        Err(e) => eprintln!(
            "p2pfs: warning: the key was not pinned: {}",
            text::escape_lines(&format!("{e:#}"))
        ),
    }
}

/// Browses the LAN for `query`.
async fn find_on_lan(lookup: &mut Lookup, query: &str) -> Result<Resolved> {
    let t0 = std::time::Instant::now();
    let found = discovery::browse(LAN_TIMEOUT, |peers| {
        lookup.settled(peers, std::time::Instant::now())
    })
    .await
    .with_context(|| {
        format!(
            "cannot look for {:?} on the LAN: give the peer as host:port",
            text::escape(query)
        )
    })?;
    tracing::debug!(
        elapsed_us = t0.elapsed().as_micros() as u64,
        found = found.peers.len(),
        "browsed the LAN"
    );
    Ok(lookup.resolve(&found, t0.elapsed())?)
}

/// One target per announced address of each matching pair, all requiring
/// the resolved key.
fn targets_of(r: &Resolved, word: &str, given: bool) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for c in &r.candidates {
        for addr in c.socket_addrs() {
            if out.iter().all(|t| t.addr != addr) {
                out.push(Target {
                    addr,
                    label: addr.to_string(),
                    expected: r.expected,
                    hint: if given {
                        KeyHint::Given
                    } else {
                        KeyHint::Name {
                            word: word.to_owned(),
                            advertised: Box::new(c.id),
                        }
                    },
                });
            }
        }
    }
    out
}

/// Runs a transfer to its end, unless the user presses Ctrl-C first: then
/// every connection is ended with a reason (the peer ends its side at
/// once, keeping what it verified; `client::interrupt_all`) instead of the
/// process dying mid-transfer, and the transfer winds down as after any
/// loss (a fetch checkpoints its partials, a send records what was
/// committed) before [`NetError::Interrupted`] is returned.
///
/// The transfer keeps running while the peer is told (its results and
/// commits still count). A second Ctrl-C ends the wait at once.
///
/// Every transfer of a command runs under this: once a process has caught
/// Ctrl-C (tokio keeps its handler), a transfer outside it would ignore
/// the key (`get` once did, after its listing).
pub(crate) async fn until_ctrl_c<T>(
    op: impl std::future::Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    tokio::pin!(op);
    tokio::select! {
        biased;
        r = &mut op => return r,
        _ = tokio::signal::ctrl_c() => {}
    }
    let wind_down = async {
        let stop = p2pfs::net::client::interrupt_all();
        tokio::pin!(stop);
        tokio::select! {
            _ = &mut stop => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut op).await;
            }
            _ = &mut op => stop.await,
        }
    };
    tokio::select! {
        _ = wind_down => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Err(NetError::Interrupted)
}

/// The target whose key the handshake proved, and the name it welcomed us
/// with.
pub(crate) struct Proven {
    pub(crate) target: usize,
    pub(crate) name: Option<String>,
}

/// Sends to the first target that authenticates: a target that fails before
/// the receiver welcomed us (unreachable, wrong key, failed handshake) makes
/// way for the next. When all fail, a key mismatch is what is reported.
pub(crate) async fn first_that_answers<T, F, Fut>(
    targets: &[Target],
    ui: EventTx,
    mut op: F,
) -> (Result<T, NetError>, Option<Proven>)
where
    F: FnMut(Target, EventTx) -> Fut,
    Fut: std::future::Future<Output = Result<T, NetError>>,
{
    let mut key_changed = None;
    for (i, target) in targets.iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let send = until_ctrl_c(op(target.clone(), tx));
        tokio::pin!(send);
        let mut welcomed = None;
        let mut forward = |ev: Event| {
            if let Event::Connected { name, .. } = &ev {
                welcomed = Some(name.clone());
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
        let proven = |name| Some(Proven { target: i, name });
        let e = match res {
            Ok(s) => return (Ok(s), proven(welcomed)),
            Err(e) => e,
        };
        // Welcomed, or refused by the authenticated receiver: the handshake
        // proved the key, and that is the answer, whatever other addresses
        // would say.
        if welcomed.is_some() || matches!(e, NetError::Refused { .. } | NetError::Interrupted) {
            return (Err(e), proven(welcomed));
        }
        if i + 1 == targets.len() {
            let e = match e {
                e @ NetError::KeyChanged { .. } => e,
                e => key_changed.unwrap_or(e),
            };
            return (Err(e), None);
        }
        tracing::info!(addr = %target.addr, "trying the next address: {}", text::escape(&e.to_string()));
        if matches!(e, NetError::KeyChanged { .. }) && key_changed.is_none() {
            key_changed = Some(e);
        }
    }
    (Err(no_address()), None)
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
        Event::Waiting { reason } => json!({ "event": "waiting", "reason": reason }),
        Event::Deciding { name, secs } => {
            json!({ "event": "deciding", "name": name, "secs": secs })
        }
        Event::Start {
            files,
            bytes,
            skipped,
            unchanged,
        } => json!({
            "event": "start", "files": files, "bytes_total": bytes, "bytes_skipped": skipped,
            "unchanged": unchanged }),
        Event::Unchanged { name } => json!({ "event": "unchanged", "name": name }),
        Event::Resuming { name, percent } => {
            json!({ "event": "resuming", "name": name, "percent": percent })
        }
        Event::FileStart { .. } => return None,
        Event::Progress { done } => {
            if last.elapsed() < Duration::from_millis(100) {
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
            unchanged,
        } => json!({
            "event": "done", "files": files, "bytes_sent": bytes_sent, "bytes_skipped": bytes_skipped,
            "unchanged": unchanged }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_was_unchanged_and_resumed_only_when_so() {
        let s = |files, skipped, unchanged| p2pfs::net::client::Summary {
            peer: p2pfs::crypto::keys::PublicKey([7; 32]),
            peer_name: "bob".into(),
            files,
            folders: 0,
            bytes_sent: 2048,
            bytes_skipped: skipped,
            unchanged,
        };
        let fresh = summary_line(&s(2, 0, 0), "stored");
        assert!(fresh.starts_with("sent 2 file(s) to bob ("), "{fresh}");
        let with_dir = summary_line(
            &p2pfs::net::client::Summary {
                folders: 1,
                ..s(2, 0, 0)
            },
            "stored",
        );
        assert!(
            with_dir.starts_with("sent 2 file(s) and 1 empty folder(s) to bob ("),
            "an empty folder is not a file: {with_dir}"
        );
        assert!(
            !fresh.contains("resumed") && !fresh.contains("unchanged"),
            "{fresh}"
        );
        let resumed = summary_line(&s(1, 4096, 3), "stored");
        assert!(resumed.contains("KiB already there (resumed)"), "{resumed}");
        assert!(
            resumed.contains("; 3 file(s) unchanged, already stored there"),
            "{resumed}"
        );
        let nothing = summary_line(&s(0, 0, 41), "stored");
        assert!(nothing.starts_with("nothing to send to bob ("), "{nothing}");
        assert!(
            nothing.contains("41 file(s) unchanged") && nothing.contains("--again"),
            "{nothing}"
        );
    }

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
