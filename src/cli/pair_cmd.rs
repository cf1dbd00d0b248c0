//! `p2pfs pair`: pairing two nodes by a short code, once (`docs/PROTOCOL.md`,
//! *Pairing by code*). Without a code it hosts: prints a code, listens and
//! waits for the other node; with one it joins. The protocol decisions are
//! `net::pair`'s state machine; this module is the I/O around it and the
//! trust store update both sides make when the proofs check.

use std::{
    cell::RefCell,
    io::{BufRead, IsTerminal},
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use futures_util::stream::{FuturesUnordered, StreamExt};
use p2pfs::{
    crypto::keys::PublicKey,
    net::{
        client::{self, Target},
        discovery, endpoint,
        engine::Link,
        pair::{Binding, Code, Exchange, PairError, Role, Session, Step, CODE_LIFETIME},
        server,
        wire::{self, Msg},
        KeyHint, NetError,
    },
    store::{home::Identity, trust::Capability, trust::TrustStore},
    text,
};
use serde_json::json;

use super::{send_cmd, trust_cmd, Ctx, Stop};

/// How long either side waits for the next pairing message.
const STEP_WAIT: Duration = Duration::from_secs(30);

/// `p2pfs pair` arguments.
#[derive(clap::Args, Debug)]
pub struct PairArgs {
    /// The code the other node shows. Without it, this node shows a code and
    /// waits. `-` reads it from standard input (so it is not in the process
    /// list on a shared machine); P2PFS_PAIR_CODE also works.
    #[arg(value_name = "CODE")]
    pub code: Option<String>,
    /// Where the node showing the code listens (HOST[:PORT], port 47475 by
    /// default). Without it, the node showing the code is found on the LAN
    /// (mDNS) by the code's number.
    #[arg(value_name = "PEER")]
    pub peer: Option<String>,
    /// While showing a code: do not announce its number on the LAN (the
    /// other node then needs this node's address).
    #[arg(long)]
    pub no_mdns: bool,
    /// What the other node may do here once paired: send, get, owner,
    /// comma-separated, or none.
    #[arg(long, value_delimiter = ',', default_value = "send")]
    pub allow: Vec<String>,
    /// UDP address to listen on while showing a code.
    #[arg(long, default_value_t = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, p2pfs::net::pair::DEFAULT_PAIR_PORT)))]
    pub listen: SocketAddr,
    /// How long the code stays valid, in seconds (at most 600).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
    /// Machine-readable output: the code as `{"code": …}`, then the outcome.
    #[arg(long)]
    pub json: bool,
}

fn bits(caps: &[Capability]) -> u8 {
    caps.iter().fold(0, |b, c| {
        b | match c {
            Capability::Send => 1,
            Capability::Get => 2,
            Capability::Owner => 4,
        }
    })
}

fn caps_of(bits: u8) -> Vec<Capability> {
    [
        (1, Capability::Send),
        (2, Capability::Get),
        (4, Capability::Owner),
    ]
    .into_iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, c)| c)
    .collect()
}

fn cap_names(caps: &[Capability]) -> Vec<&'static str> {
    caps.iter()
        .map(|c| match c {
            Capability::Send => "send",
            Capability::Get => "get",
            Capability::Owner => "owner",
        })
        .collect()
}

fn rights_text(caps: &[Capability]) -> String {
    if caps.is_empty() {
        "nothing (pinned only)".into()
    } else {
        cap_names(caps).join(", ")
    }
}

/// What both sides record once the proofs check: the peer's key pinned,
/// the rights given to it, its name, and its name as an alias when free.
fn record(home: &Path, peer: &PublicKey, name: &str, grant: &[Capability]) -> Result<String> {
    let mut t = TrustStore::load_for_change(home)?;
    t.pin_key(peer)?;
    t.trust(peer, grant)?;
    t.set_peer_name(peer, name);
    let alias = match t.add_alias(peer, name) {
        Ok(_) => format!("; {:?} names it here", text::escape(name)),
        Err(e) => format!("; its name is not kept as an alias: {e}"),
    };
    t.save()?;
    Ok(alias)
}

fn read_code(arg: &str) -> Result<Code> {
    if arg != "-" {
        return Ok(Code::parse(arg)?);
    }
    if std::io::stdin().is_terminal() {
        eprint!("pairing code: ");
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the pairing code from standard input")?;
    Ok(Code::parse(&line)?)
}

pub fn run(ctx: &Ctx, args: PairArgs) -> Result<()> {
    let identity = ctx.home.load_identity()?;
    let grant = trust_cmd::caps(&args.allow)?;
    let typed = args
        .code
        .clone()
        .or_else(|| std::env::var("P2PFS_PAIR_CODE").ok());
    let rt = super::runtime(false)?;
    match typed {
        Some(c) => {
            let code = read_code(&c)?;
            let place = match &args.peer {
                Some(peer) => Place::Given(send_cmd::parse_peer_with(
                    peer,
                    p2pfs::net::pair::DEFAULT_PAIR_PORT,
                )?),
                None => Place::Lan,
            };
            rt.block_on(join(ctx, &identity, code, place, &grant, args.json))
        }
        None => rt.block_on(host(ctx, &identity, &args, &grant)),
    }
}

/// Hosts a pairing session: shows a code, then answers joiners until one
/// pairs, [`p2pfs::net::pair::MAX_FAILURES`] guesses fail, or the code
/// expires.
async fn host(ctx: &Ctx, identity: &Identity, args: &PairArgs, grant: &[Capability]) -> Result<()> {
    // Both stop signals are caught before anything is announced or
    // printed: a SIGTERM or Ctrl-C from then on ends the session through
    // the goodbye below, never by default disposition.
    let stop = Stop::catch()?;
    let ep = endpoint::server(args.listen)?;
    let local = ep
        .local_addr()
        .context("cannot read the listening address")?;
    let code = Code::generate();
    let lifetime = Duration::from_secs(args.timeout).min(CODE_LIFETIME);
    // Only the nameplate is announced; it is withdrawn below on every
    // way out.
    let advert = if args.no_mdns {
        None
    } else {
        match discovery::advertise_pairing(&identity.name, &identity.id(), local, code.nameplate())
        {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("p2pfs: not announced on the LAN ({e}): the other node needs this node's address");
                None
            }
        }
    };
    if args.json {
        println!(
            "{}",
            json!({ "code": code.expose(), "listen": local.to_string(), "port": local.port(),
                    "expires_in": lifetime.as_secs(), "announced": advert.is_some() })
        );
    } else {
        println!("pairing code: {}", code.expose());
        if advert.is_some() {
            println!("On the other node run:  p2pfs pair {}", code.expose());
            println!(
                "  (from another network: p2pfs pair {} HOST:{}, HOST being this machine's address)",
                code.expose(),
                local.port()
            );
        } else {
            println!(
                "On the other node run:  p2pfs pair {} HOST:{}",
                code.expose(),
                local.port()
            );
            println!("  (HOST is this machine's address)");
        }
        println!(
            "The code works once, for {}, and 3 wrong tries end it.",
            humantime::format_duration(lifetime)
        );
    }
    let deadline = tokio::time::Instant::now() + lifetime;
    let hosting = Hosting {
        ep: &ep,
        code: &code,
        deadline,
        grant,
        json: args.json,
        stop,
    };
    let outcome = answer_joiners(ctx, identity, hosting).await;
    // A joiner cut short hears why (the goodbye below gives the close
    // frame time to leave).
    ep.close(
        quinn::VarInt::from_u32(p2pfs::net::close::SHUTDOWN),
        b"pairing session ended",
    );
    // Every way out (paired, expired, too many wrong codes, Ctrl-C or
    // SIGTERM) withdraws the nameplate with an mDNS goodbye, so browsers
    // that cached it drop it now rather than at the record's TTL.
    if let Some(a) = advert {
        a.shutdown().await;
    }
    outcome
}

/// One hosted session: where it listens, the code, until when, what a
/// joiner is given, how results are printed, and its stop signals.
struct Hosting<'a> {
    ep: &'a quinn::Endpoint,
    code: &'a Code,
    deadline: tokio::time::Instant,
    grant: &'a [Capability],
    json: bool,
    stop: Stop,
}

/// Joiners answered at once; more connections are refused until one ends.
const MAX_JOINERS: usize = 8;

/// The host's accept loop: answers joiners, side by side (a silent one
/// holds up nobody), until one pairs, the session ends on failed guesses,
/// the code expires, or the user stops it.
async fn answer_joiners(ctx: &Ctx, identity: &Identity, mut h: Hosting<'_>) -> Result<()> {
    let budget = RefCell::new(Session::default());
    let session = &budget;
    let (code, grant) = (h.code, h.grant);
    let mut joiners = FuturesUnordered::new();
    loop {
        // The deadline and a stop signal cut every joiner short, too.
        let joined = tokio::select! {
            _ = tokio::time::sleep_until(h.deadline) => return Err(PairError::Expired.into()),
            _ = h.stop.wait() => return Err(PairError::Stopped.into()),
            i = h.ep.accept() => {
                let Some(incoming) = i else { bail!("the listening endpoint closed") };
                if joiners.len() >= MAX_JOINERS {
                    incoming.refuse();
                } else {
                    let addr = incoming.remote_address();
                    joiners.push(async move {
                        (addr, one_joiner(identity, incoming, code, grant, session).await)
                    });
                }
                continue;
            }
            Some(j) = joiners.next() => j,
        };
        let (addr, joined) = joined;
        match joined {
            Joined::Agreed(agreed) => {
                let (link, agreed) = *agreed;
                let (peer, name, to_us, alias) = commit(ctx, link, agreed, grant).await?;
                report(h.json, &peer, &name, grant, &to_us, &alias);
                return Ok(());
            }
            Joined::Failed(e) => {
                let from = server::canonical(addr);
                let what = match e.downcast_ref::<PairError>() {
                    Some(PairError::WrongCode) => format!("a wrong code was tried from {from}"),
                    _ => format!("a pairing attempt from {from} failed ({e})"),
                };
                let left = session.borrow_mut().failed()?;
                eprintln!("p2pfs: {what}: {left} more failed attempt(s) end the session");
            }
            Joined::NoGuess(e) => tracing::debug!("pairing connection from {addr} ended: {e}"),
        }
    }
}

/// How one connection to the host ended.
enum Joined {
    /// The joiner knew the code; nothing is recorded yet.
    Agreed(Box<(Link, Agreed)>),
    /// A guess was made and failed: it counts against the session.
    Failed(anyhow::Error),
    /// It ended before any guess (a probe, a failed handshake, ourselves).
    NoGuess(anyhow::Error),
}

/// Authenticates one joiner and runs the exchange with it.
async fn one_joiner(
    identity: &Identity,
    incoming: quinn::Incoming,
    code: &Code,
    grant: &[Capability],
    session: &RefCell<Session>,
) -> Joined {
    let me = identity.id();
    let auth = tokio::time::timeout(
        server::AUTH_TIMEOUT,
        server::authenticate(&identity.keypair, incoming),
    )
    .await;
    // Probes (first contact learns our key) and failed handshakes end
    // here: no guess was made.
    let (conn, send, recv, session_keys) = match auth {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Joined::NoGuess(e.into()),
        Err(_) => return Joined::NoGuess(anyhow::anyhow!("handshake timed out")),
    };
    if session_keys.peer == me {
        conn.close(quinn::VarInt::from_u32(p2pfs::net::close::REFUSED), b"self");
        return Joined::NoGuess(anyhow::anyhow!("our own key"));
    }
    let mut link = Link {
        conn,
        send,
        recv: wire::ControlRecv::new(recv),
        session: session_keys,
    };
    let binding = Binding {
        host: me,
        joiner: link.peer(),
        transcript: link.session.transcript_hash,
    };
    let (mut ex, _) = Exchange::new(
        Role::Host,
        code.clone(),
        binding,
        identity.name.clone(),
        bits(grant),
    );
    match host_attempt(&mut link, &mut ex, session).await {
        Ok(agreed) => Joined::Agreed(Box::new((link, agreed))),
        Err(e) if ex.guessed() => Joined::Failed(e),
        Err(e) => Joined::NoGuess(e),
    }
}

/// Runs the exchange with an authenticated joiner up to the point where
/// both proofs checked; nothing is recorded here, so this may be cut short.
async fn host_attempt(
    link: &mut Link,
    ex: &mut Exchange,
    session: &RefCell<Session>,
) -> Result<Agreed> {
    loop {
        let m = link
            .next_msg(STEP_WAIT, "waiting for the pairing peer")
            .await?;
        // The joiner's first message is its guess: taken only while the
        // session's budget has room for it beside the guesses under way.
        // (The borrow ends before any await.)
        let room = ex.guessed() || session.borrow_mut().begin_guess();
        if !room {
            link.refuse(
                wire::RefuseCode::Busy,
                "busy with other pairing attempts; try again in a moment".into(),
            )
            .await;
            bail!("no room for another guess beside those under way");
        }
        match ex.on_msg(m)? {
            Step::Reply(msgs) => {
                for m in &msgs {
                    link.send_msg(m).await?;
                }
            }
            Step::Wrong => {
                link.refuse(wire::RefuseCode::WrongCode, "wrong pairing code".into())
                    .await;
                return Err(PairError::WrongCode.into());
            }
            Step::Commit {
                name,
                granted_to_us,
                then,
            } => {
                return Ok(Agreed {
                    name,
                    granted_to_us,
                    then,
                })
            }
        }
    }
}

/// What a joiner who knew the code agreed to, not yet recorded.
struct Agreed {
    name: String,
    granted_to_us: u8,
    then: Msg,
}

/// Records an agreed pairing and sends the joiner the last message. This
/// runs to the end once begun: a stop signal must not report "nothing
/// was pinned" after the trust store was written.
async fn commit(
    ctx: &Ctx,
    mut link: Link,
    agreed: Agreed,
    grant: &[Capability],
) -> Result<(PublicKey, String, Vec<Capability>, String)> {
    let peer = link.peer();
    let alias = record(ctx.home.root(), &peer, &agreed.name, grant)?;
    link.send_msg(&agreed.then).await?;
    let _ = link.send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), link.conn.closed()).await;
    Ok((peer, agreed.name, caps_of(agreed.granted_to_us), alias))
}

/// Where the node showing the code is.
enum Place {
    /// At this address (`PEER`).
    Given(send_cmd::PeerSpec),
    /// On the LAN: the one node announcing the code's nameplate.
    Lan,
}

/// How long `pair CODE` looks for the node showing it on the LAN.
const LAN_WAIT: Duration = Duration::from_secs(5);

/// The address, its label and the key announced for it, if any.
async fn locate(
    identity: &Identity,
    code: &Code,
    place: Place,
) -> Result<(SocketAddr, String, Option<PublicKey>)> {
    if let Place::Given(spec) = place {
        let addr = send_cmd::resolve(&spec).await?;
        return Ok((addr, spec.label(), spec.expected));
    }
    let plate = code.nameplate();
    let found = discovery::browse_pairing(plate, LAN_WAIT).await?;
    let host = discovery::pairing_host(&found, plate, &identity.id(), LAN_WAIT)?;
    let addr = host
        .socket_addrs()
        .into_iter()
        .next()
        .context("the pairing record has no address")?;
    Ok((
        addr,
        format!("{} at {addr}", host.shown_name()),
        Some(host.id),
    ))
}

/// Joins the session of the node at `place` with `code`.
async fn join(
    ctx: &Ctx,
    identity: &Identity,
    code: Code,
    place: Place,
    grant: &[Capability],
    json: bool,
) -> Result<()> {
    let (addr, label, expected) = locate(identity, &code, place).await?;
    // The key that answers there; the proofs decide whether it is the
    // node that showed the code.
    let key = client::probe(&identity.keypair, addr, |_| {}).await?;
    if key == identity.id() {
        return Err(NetError::ToSelf {
            addr: label,
            fingerprint: key.fingerprint(),
        }
        .into());
    }
    if expected.is_some_and(|e| e != key) {
        bail!("another key than the one given or announced answers at {label}: nothing was pinned");
    }
    let target = Target {
        addr,
        label: label.clone(),
        expected: key,
        hint: KeyHint::Address,
    };
    let mut a = client::connect(&identity.keypair, &target).await?;
    let binding = Binding {
        host: key,
        joiner: identity.id(),
        transcript: a.link.session.transcript_hash,
    };
    let (mut ex, first) = Exchange::new(
        Role::Joiner,
        code,
        binding,
        identity.name.clone(),
        bits(grant),
    );
    if let Some(m) = first {
        a.link.send_msg(&m).await?;
    }
    loop {
        let m = a
            .link
            .next_msg(STEP_WAIT, "waiting for the node showing the code")
            .await;
        let m = match m {
            // The host ends the connection after a refusal: its reason.
            Err(e) => return Err(e.into()),
            Ok(m) => m,
        };
        match ex.on_msg(m)? {
            Step::Reply(msgs) => {
                for m in &msgs {
                    a.link.send_msg(m).await?;
                }
            }
            Step::Wrong => bail!("pairing protocol error: the joiner cannot refuse a code"),
            Step::Commit {
                name,
                granted_to_us,
                then,
            } => {
                let alias = record(ctx.home.root(), &key, &name, grant)?;
                a.link.send_msg(&then).await?;
                let done = a
                    .link
                    .next_msg(
                        Duration::from_secs(10),
                        "waiting for the other node to record the pairing",
                    )
                    .await;
                a.close().await;
                if !matches!(done, Ok(wire::Msg::Done)) {
                    bail!(
                        "paired here, but the other node did not confirm it recorded this node: run `p2pfs pair` there again if sends to it are refused"
                    );
                }
                report(json, &key, &name, grant, &caps_of(granted_to_us), &alias);
                return Ok(());
            }
        }
    }
}

fn report(
    json: bool,
    peer: &PublicKey,
    name: &str,
    grant: &[Capability],
    to_us: &[Capability],
    alias: &str,
) {
    if json {
        println!(
            "{}",
            json!({ "event": "paired", "id": peer.to_id(), "fingerprint": peer.fingerprint(),
                    "name": name, "allowed": cap_names(grant), "allowed_here": cap_names(to_us) })
        );
    } else {
        println!(
            "paired with {:?} (fingerprint {}): its key is pinned{alias}.\n  it may here:    {}\n  you may there:  {}",
            text::escape(name),
            peer.fingerprint(),
            rights_text(grant),
            rights_text(to_us)
        );
    }
}
