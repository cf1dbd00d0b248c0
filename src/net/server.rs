//! The serving side of every request (`p2pfs serve`): admits connections
//! (caps on unauthenticated connections and on transfers, `admission`),
//! authenticates the peer (Noise with key confirmation), opens the
//! connection's windows only for a peer it may serve, then carries out the
//! one request the peer makes, within its rights (`engine::proto::decide`):
//! a push into the vault (this node is the sink, and needs no vault secret
//! key), a listing, or a pull of stored objects sent as they are (this node
//! is the source, and needs neither the passphrase nor the vault secret
//! key) — `docs/PROTOCOL.md`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tracing::{debug, warn, Instrument};

pub use super::admission::Asker;
use super::{
    admission::{Admission, ConnectionGuard, Limits, PromptQueue, TransferGuard},
    close, endpoint,
    engine::{
        close_with, closed_error,
        proto::{self, KeyFlow, Refusal, Request, Rights},
        sink::{self, Commit, Expect, SinkCtx},
        source::{self, From, Outcome, Sending, Stored},
        Link, Note, Reporter,
    },
    events::{ServerEvent, ServerEventTx},
    handshake::{self, Session, EXPORTER_LABEL},
    wire::{
        self, Access, EntryKind, FileOffer, FilePlan, Msg, OfferTotals, RefuseCode, RemoteFile,
        SealedOffer,
    },
    NetError,
};
use crate::{
    crypto::{
        chunk::{chunk_count, chunk_plain_len, FileId},
        keys::{Keypair, PublicKey},
    },
    store::{
        format::Kind,
        home::{Home, Identity},
        log::{LogAction, LogRecord},
        partial::{Slot, StagingKey},
        shares::Shares,
        trust::{Capability, TrustStore},
        vault::{id_hex, Vault},
    },
    text,
};

/// Who may send to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptPolicy {
    /// Only peers in the trust store with the `send` capability.
    Trusted,
    /// Ask the local user for peers that are not trusted.
    Ask,
    /// Everyone (an open drop box).
    Any,
}

/// How long a connection may take from its first packet to a proven key
/// confirmation (QUIC handshake, control stream, Noise).
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the local user has to answer a prompt.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long shutdown waits for connections to checkpoint and close.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Everything a serving node needs.
pub struct ServerCtx {
    /// The node's home.
    pub home: Home,
    /// The node's identity.
    pub identity: Identity,
    /// The vault (for the life of the process).
    pub vault: &'static Vault,
    /// Accept policy.
    pub policy: AcceptPolicy,
    /// Where events go.
    pub events: ServerEventTx,
    staging: Arc<StagingKey>,
    admission: Arc<Admission>,
    prompts: Option<PromptQueue>,
    partial_ttl: Duration,
    /// The name told to peers; `p2pfs rename` changes it while serving.
    name: std::sync::RwLock<String>,
}

impl ServerCtx {
    /// The node's name as told to peers now.
    pub fn name(&self) -> String {
        self.name
            .read()
            .map_or_else(|_| self.identity.name.clone(), |n| n.clone())
    }

    /// Tells peers `name` from the next connection on (`p2pfs rename`).
    pub fn set_name(&self, name: String) {
        if let Ok(mut n) = self.name.write() {
            *n = name;
        }
    }

    /// A serving node's context; `asker` is the terminal prompt of the
    /// `Ask` policy.
    pub fn new(
        home: Home,
        identity: Identity,
        vault: &'static Vault,
        policy: AcceptPolicy,
        asker: Option<Arc<dyn Asker>>,
        limits: Limits,
        events: ServerEventTx,
    ) -> Result<Self, NetError> {
        let prompts = match asker {
            Some(a) if policy == AcceptPolicy::Ask => Some(PromptQueue::start(a, &limits)?),
            _ => None,
        };
        Ok(Self {
            home,
            partial_ttl: limits.partial_ttl,
            staging: Arc::new(StagingKey::from_identity(&identity.keypair)),
            name: std::sync::RwLock::new(identity.name.clone()),
            identity,
            vault,
            policy,
            events,
            admission: Admission::new(limits),
            prompts,
        })
    }
}

/// Partials untouched for this long are removed by default (`serve
/// --expire-partials`, `docs/PROTOCOL.md`).
pub const PARTIAL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often expired partials are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(3600);

/// Removes expired partials that no connection holds (blocking).
fn expire_partials(ctx: &ServerCtx) {
    let in_use = |slot: &Slot| sink::in_use(slot);
    match ctx.vault.expire_partials(ctx.partial_ttl, &in_use) {
        Ok(0) => {}
        Ok(count) => {
            let _ = ctx.events.send(ServerEvent::PartialsExpired {
                count,
                after: ctx.partial_ttl,
            });
        }
        Err(e) => warn!("cannot remove expired partials: {e}"),
    }
}

/// Serves until `shutdown` turns true; then closes every connection (their
/// partials are checkpointed) within a bounded time.
pub async fn serve(
    endpoint: quinn::Endpoint,
    ctx: Arc<ServerCtx>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), NetError> {
    let mut tasks = JoinSet::new();
    let mut expiry = tokio::time::interval(EXPIRY_EVERY);
    loop {
        tokio::select! {
            _ = expiry.tick() => {
                let ctx = ctx.clone();
                tokio::task::spawn_blocking(move || expire_partials(&ctx));
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // Under load, an address must first prove it receives what
                // is sent to it (QUIC Retry): spoofed sources cannot take
                // places.
                if !incoming.remote_address_validated() && ctx.admission.wants_retry() {
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                    continue;
                }
                // IPv4 peers of the dual-stack socket as plain IPv4.
                let addr = canonical(incoming.remote_address());
                // Refused before any state is kept for it: too many
                // connections are being set up, here or from that address.
                let Some(guard) = ctx.admission.connection(addr.ip()) else {
                    debug!(%addr, "refusing a connection: too many unauthenticated connections");
                    incoming.refuse();
                    continue;
                };
                let ctx = ctx.clone();
                // One task per connection, inside its own span.
                let span = tracing::info_span!("conn", %addr, peer = tracing::field::Empty);
                tasks.spawn(async move {
                    if let Err(e) = handle(ctx, incoming, addr, guard).await {
                        debug!("connection ended: {e}");
                    }
                }.instrument(span));
            }
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    endpoint.close(
        quinn::VarInt::from_u32(close::SHUTDOWN),
        b"receiver shutting down",
    );
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_WAIT, drain).await.is_err() {
        warn!("some connections did not finish cleaning up in time");
        tasks.abort_all();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// QUIC handshake, control stream and Noise as the responder (also the
/// pairing host's, `cli::pair_cmd`). The caller bounds it in time.
pub async fn authenticate(
    identity: &Keypair,
    incoming: quinn::Incoming,
) -> Result<
    (
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        Session,
    ),
    NetError,
> {
    let conn = incoming
        .await
        .map_err(|e| NetError::ConnectionLost(format!("QUIC handshake failed: {e}")))?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| NetError::lost(&e))?;
    let mut prologue = [0u8; 32];
    conn.export_keying_material(&mut prologue, EXPORTER_LABEL, b"")
        .map_err(|_| NetError::Setup("TLS exporter unavailable".into()))?;
    match handshake::respond(&mut recv, &mut send, identity, &prologue).await {
        Ok(s) => Ok((conn, send, recv, s)),
        Err(e) => {
            close_with(&conn, close::HANDSHAKE, "handshake failed");
            Err(e)
        }
    }
}

async fn handle(
    ctx: Arc<ServerCtx>,
    incoming: quinn::Incoming,
    addr: SocketAddr,
    guard: ConnectionGuard,
) -> Result<(), NetError> {
    let (conn, send, recv, session) =
        match tokio::time::timeout(AUTH_TIMEOUT, authenticate(&ctx.identity.keypair, incoming))
            .await
        {
            Ok(r) => r?,
            Err(_) => return Err(NetError::Timeout("authenticating a connection")),
        };
    let peer = session.peer;
    let mut link = Link {
        conn,
        send,
        recv: wire::ControlRecv::new(recv),
        session,
    };
    tracing::Span::current().record("peer", tracing::field::display(peer.fingerprint()));
    // What the peer calls itself: display only, never a reason to trust.
    let claimed = hello(&mut link).await?;
    let trust = TrustStore::load(ctx.home.root())?;
    let trusted_send = trust.allows(&peer, Capability::Send);
    let rights = Rights {
        send: trusted_send || ctx.policy != AcceptPolicy::Trusted,
        get: trust.allows(&peer, Capability::Get),
        owner: owner_allowed(&trust, &peer),
        trusted: trusted_send
            || trust.allows(&peer, Capability::Get)
            || owner_allowed(&trust, &peer),
        deposit: trusted_send,
    };
    if !rights.send && !rights.get && !rights.owner {
        let message = format!(
            "node {} does not trust you (your node id {peer}, fingerprint {}). \
             On the receiving node run: p2pfs trust add {peer}",
            text::escape(&ctx.name()),
            peer.fingerprint()
        );
        let _ = link.refuse(RefuseCode::Untrusted, message).await;
        let _ = ctx.events.send(ServerEvent::PeerRefused {
            peer,
            claimed: claimed.clone(),
            reason: format!(
                "not trusted (listed by `p2pfs trust pending`; let it in with `p2pfs trust add {}`)",
                peer.fingerprint()
            ),
        });
        let c = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || {
            log(&c, peer, LogAction::Refused, "connection", "not trusted");
            // For `p2pfs trust pending` and `trust add FINGERPRINT`.
            if let Err(e) = crate::store::pending::note_refused(
                c.home.root(),
                &peer,
                &addr.to_string(),
                &claimed,
            ) {
                warn!("cannot note the refused sender: {e}");
            }
        })
        .await;
        close_with(&link.conn, close::REFUSED, "untrusted");
        return Ok(());
    }
    let Some(transfer) = ctx.admission.transfer(peer, rights.trusted) else {
        let l = ctx.admission.limits();
        let message = format!(
            "the receiver is busy ({} transfers at once, {} per sender, {} from untrusted senders); try again in a moment",
            l.transfers, l.transfers_per_peer, l.untrusted_transfers
        );
        let _ = link.refuse(RefuseCode::Busy, message).await;
        close_with(&link.conn, close::REFUSED, "busy");
        return Ok(());
    };
    // Admitted to a transfer: its place among the unauthenticated is free
    // again (a refused peer kept it until it was gone).
    drop(guard);
    let _ = ctx.events.send(ServerEvent::PeerConnected {
        peer,
        addr: addr.to_string(),
        claimed: claimed.clone(),
    });
    // Only now may it open data streams and fill a full window.
    endpoint::authorise(&link.conn, rights.trusted);
    link.send_msg(&Msg::Welcome {
        version: env!("CARGO_PKG_VERSION").into(),
        name: ctx.name(),
    })
    .await?;
    let result = request(&ctx, &mut link, rights, transfer, &claimed).await;
    match &result {
        Ok(()) => {}
        Err(NetError::Tampered(m)) => {
            link.close(close::TAMPERED, m);
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: format!("tampered chunk: {m}; connection dropped"),
            });
        }
        Err(NetError::Protocol(m)) => {
            link.close(close::PROTOCOL, m);
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: format!("protocol error: {m}"),
            });
        }
        // This node's disk filled while receiving: said per file, with
        // where (the sink's notes), and the sender was told.
        Err(NetError::Store(crate::store::StoreError::DiskFull { .. })) => {}
        // The peer's disk filled while fetching from here: its user acts.
        Err(NetError::Refused {
            code: RefuseCode::DiskFull,
            ..
        }) => {
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: "the fetch stopped: the peer's disk is full (what it verified resumes when it fetches again)".into(),
            });
        }
        // Every refused request, once, with the reason the peer was given.
        Err(NetError::Refused { message, .. }) => {
            let _ = ctx.events.send(ServerEvent::PeerRefused {
                peer,
                claimed: claimed.clone(),
                reason: message.clone(),
            });
        }
        Err(e) => {
            // Whichever read noticed the loss first, the peer's own close
            // (Ctrl-C, say) is the better account of it.
            let closed = match (e, link.conn.close_reason()) {
                (
                    NetError::ConnectionLost(_),
                    Some(why @ quinn::ConnectionError::ApplicationClosed(_)),
                ) => Some(closed_error(&why)),
                _ => None,
            };
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: receiver_text(closed.as_ref().unwrap_or(e)),
            });
        }
    }
    let _ = ctx.events.send(ServerEvent::Closed { peer });
    result
}

/// An address as people write it: `::ffff:a.b.c.d` (an IPv4 peer of a
/// dual-stack socket) as `a.b.c.d`.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// How this side reports a transfer that ended early. The advice goes to
/// the side that can act on it: the peer resumes by starting the transfer
/// again, so the server's log says what is kept, never "run the same
/// command again".
fn receiver_text(e: &NetError) -> String {
    const KEPT: &str =
        "what was verified is kept and resumes when the peer starts the transfer again";
    match e {
        NetError::ConnectionLost(why) => format!("transfer interrupted: {why}; {KEPT}"),
        NetError::Timeout(what) => format!("transfer interrupted: timed out {what}; {KEPT}"),
        e => e.to_string(),
    }
}

/// Records what a peer did in the sealed access log (best effort: a log
/// that cannot be written never stops serving, but says so).
fn log(ctx: &ServerCtx, peer: PublicKey, action: LogAction, object: &str, outcome: &str) {
    if let Err(e) = ctx
        .vault
        .log(&LogRecord::now(Some(peer), action, object, outcome))
    {
        warn!("cannot write the access log: {e}");
    }
}

/// Whether `peer` is one of the owner's devices.
fn owner_allowed(trust: &TrustStore, peer: &PublicKey) -> bool {
    trust.allows(peer, Capability::Owner)
}

/// What a pairing joiner that reached `serve` is told.
pub const NOT_A_PAIR_HOST: &str = "that address is a `p2pfs serve`, not a `p2pfs pair`: give the address `p2pfs pair` prints (its port is 47475 by default)";

/// Reads the connecting node's `Hello`, the first message after the key
/// confirmation, and returns the name it gives itself (a valid node name:
/// `Msg::check` ran on it).
async fn hello(link: &mut Link) -> Result<String, NetError> {
    match tokio::time::timeout(AUTH_TIMEOUT, link.recv.read_msg())
        .await
        .map_err(|_| NetError::Timeout("waiting for the peer's hello"))??
    {
        Some(Msg::Hello { name, .. }) => Ok(name),
        // `p2pfs pair --join` given this node's address: say where it went.
        Some(Msg::PairStart { .. }) => {
            let _ = link
                .refuse(RefuseCode::BadOffer, NOT_A_PAIR_HOST.into())
                .await;
            close_with(&link.conn, close::PROTOCOL, "not a pairing host");
            Err(NetError::Protocol(
                "a pairing joiner connected to serve".into(),
            ))
        }
        Some(other) => {
            let e = NetError::Protocol(format!("expected a hello, got {}", other.kind()));
            close_with(&link.conn, close::PROTOCOL, "expected a hello");
            Err(e)
        }
        None => Err(NetError::ConnectionLost(
            "the peer closed the connection before saying who it is".into(),
        )),
    }
}

/// Reads the peer's one request and carries it out within its rights.
async fn request(
    ctx: &Arc<ServerCtx>,
    link: &mut Link,
    rights: Rights,
    transfer: TransferGuard,
    claimed: &str,
) -> Result<(), NetError> {
    let peer = link.peer();
    let first = match tokio::time::timeout(Duration::from_secs(60), link.recv.read_msg())
        .await
        .map_err(|_| NetError::Timeout("waiting for a request"))??
    {
        Some(m) => m,
        None => return Ok(()),
    };
    let req = match proto::decide(&first, rights) {
        Ok(r) => r,
        Err(Refusal { code, message }) => {
            let c = ctx.clone();
            let kind = first.kind();
            let _ = tokio::task::spawn_blocking(move || {
                log(&c, peer, LogAction::Refused, kind, "not allowed")
            })
            .await;
            return Err(link.refuse(code, message).await);
        }
    };
    match (req, first) {
        (
            Request::Push,
            Msg::Offer {
                again,
                chunk_size,
                files,
            },
        ) => {
            receive(
                ctx,
                link,
                rights.send && rights.trusted,
                transfer,
                (chunk_size, again, files),
                claimed,
            )
            .await
        }
        (Request::Deposit, Msg::Deposit { chunk_size, files }) => {
            receive_deposit(ctx, link, transfer, chunk_size, files).await
        }
        (Request::List, _) => list(ctx, link, rights, transfer).await,
        (Request::Fetch(ids, streams), _) => {
            serve_fetch(ctx, link, rights, transfer, ids, streams).await
        }
        _ => Err(NetError::Protocol("request mismatch".into())),
    }
}

/// Everything this peer may fetch here, with the sealed key of each (and
/// the vault header for an owner). Read without any key.
fn fetchable(
    ctx: &ServerCtx,
    rights: Rights,
    peer: PublicKey,
) -> Result<(Option<Vec<u8>>, Vec<RemoteFile>), NetError> {
    let vault = ctx.vault;
    let mut files = Vec::new();
    let mut header = None;
    if rights.get && !rights.owner {
        let shares = Shares::load(vault.dir())?;
        for r in shares.for_peer(&peer) {
            match vault.stored_object(&r.id) {
                Ok(o) => files.push(RemoteFile {
                    id: r.id,
                    kind: match r.kind {
                        Kind::File => EntryKind::File,
                        Kind::Dir => EntryKind::Dir,
                    },
                    size: o.size,
                    chunk_size: o.chunk_size,
                    access: Access::Share,
                    key: r.blob.clone(),
                }),
                // Shared, then removed: no longer there to fetch.
                Err(e) => debug!("a shared object is not served: {e}"),
            }
        }
    }
    if rights.get || rights.owner {
        // The peer's own deposits: only it can open them.
        for d in vault.deposits_of(&peer)? {
            match vault.deposit_envelope(&d.id) {
                Ok(key) => files.push(RemoteFile {
                    id: d.id,
                    kind: EntryKind::File,
                    size: d.size,
                    chunk_size: d.chunk_size,
                    access: Access::Deposit,
                    key,
                }),
                Err(e) => warn!("not listing a damaged deposit: {e}"),
            }
        }
    }
    if rights.owner {
        header = Some(vault.header_bytes()?);
        for id in vault.object_ids()? {
            match vault.stored_object(&id) {
                Ok(o) => files.push(RemoteFile {
                    id,
                    kind: EntryKind::File,
                    size: o.size,
                    chunk_size: o.chunk_size,
                    access: Access::Owner,
                    key: o.envelope,
                }),
                Err(e) => warn!("not listing a damaged object: {e}"),
            }
        }
    }
    Ok((header, files))
}

/// Answers a `List`: pages of what the peer may fetch. A peer that may
/// fetch nothing was refused before (`proto::decide`); an empty list is
/// the answer of a vault that shares nothing with it.
/// The transfer place is given back once the listing is sent, before the
/// access log is written: under load that write (an fsync) took long
/// enough that a client listing in a row found its four places taken
/// and was told the receiver was busy.
async fn list(
    ctx: &Arc<ServerCtx>,
    link: &mut Link,
    rights: Rights,
    transfer: TransferGuard,
) -> Result<(), NetError> {
    let peer = link.peer();
    let c = ctx.clone();
    let (header, files) = tokio::task::spawn_blocking(move || fetchable(&c, rights, peer))
        .await
        .map_err(|e| NetError::Protocol(format!("listing failed: {e}")))??;
    let n = files.len();
    let mut header = header;
    let mut pages = files.chunks(wire::LIST_PAGE).peekable();
    if pages.peek().is_none() {
        link.send_msg(&Msg::Listing {
            header: header.take(),
            files: Vec::new(),
            more: false,
        })
        .await?;
    }
    while let Some(page) = pages.next() {
        link.send_msg(&Msg::Listing {
            header: header.take(),
            files: page.to_vec(),
            more: pages.peek().is_some(),
        })
        .await?;
    }
    drop(transfer);
    let _ = ctx.events.send(ServerEvent::Listed { peer, files: n });
    let c = ctx.clone();
    let _ = tokio::task::spawn_blocking(move || {
        log(
            &c,
            peer,
            LogAction::List,
            "",
            &format!("{n} item(s) listed"),
        )
    })
    .await;
    let _ = link
        .next_msg(Duration::from_secs(10), "waiting for the end")
        .await;
    let _ = link.send.finish();
    Ok(())
}

/// Answers a `Fetch`: the stored objects, as they are, if every one is the
/// peer's to fetch; then this node is the source of the transfer.
async fn serve_fetch(
    ctx: &Arc<ServerCtx>,
    link: &mut Link,
    rights: Rights,
    transfer: TransferGuard,
    ids: Vec<FileId>,
    streams: usize,
) -> Result<(), NetError> {
    let _transfer = transfer;
    let peer = link.peer();
    let c = ctx.clone();
    let (header, mut files) = tokio::task::spawn_blocking(move || fetchable(&c, rights, peer))
        .await
        .map_err(|e| NetError::Protocol(format!("listing failed: {e}")))??;
    if let Err(Refusal { code, message }) =
        proto::authorise_fetch(&ids, |id| files.iter().any(|f| &f.id == id))
    {
        let c = ctx.clone();
        let what = ids.iter().map(id_hex).collect::<Vec<_>>().join(" ");
        let _ = tokio::task::spawn_blocking(move || {
            log(
                &c,
                peer,
                LogAction::Refused,
                &what,
                "fetch of objects not available to it",
            )
        })
        .await;
        return Err(link.refuse(code, message).await);
    }
    let mut served = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Some(i) = files.iter().position(|f| &f.id == id) {
            served.push(files.swap_remove(i));
        }
    }
    link.send_msg(&Msg::Serving {
        header,
        files: served.clone(),
    })
    .await?;
    let plans = match link
        .next_msg(Duration::from_secs(330), "waiting for the peer's plan")
        .await?
    {
        Msg::Plan { files } if files.len() == served.len() => files,
        Msg::Refused { code, message } => return Err(super::engine::refused(code, &message)),
        other => {
            return Err(NetError::Protocol(format!(
                "expected a plan for {} file(s), got {}",
                served.len(),
                other.kind()
            )))
        }
    };
    let mut sending = Vec::with_capacity(served.len());
    for (f, p) in served.iter().zip(plans) {
        let have = match p {
            FilePlan::New { .. } => None,
            FilePlan::Resume { have, .. } => Some(have),
            FilePlan::ResumeSealed { .. } => {
                return Err(NetError::Protocol(
                    "a resumed deposit in the plan of a pull".into(),
                ))
            }
            FilePlan::Unchanged { .. } => {
                return Err(NetError::Protocol(
                    "an unchanged entry in the plan of a pull".into(),
                ))
            }
            FilePlan::Reject { reason } => {
                debug!(
                    "the peer rejected {}: {}",
                    crate::store::vault::id_hex(&f.id),
                    text::from_peer(&reason)
                );
                sending.push((
                    From::Stored(stored_of(ctx, f)),
                    Sending {
                        id: f.id,
                        key: None,
                        have: None,
                        fresh: false,
                        rejected: Some(text::from_peer(&reason)),
                        unchanged: false,
                        deposit: None,
                    },
                ));
                continue;
            }
        };
        sending.push((
            From::Stored(stored_of(ctx, f)),
            Sending {
                id: f.id,
                key: None,
                have,
                fresh: false,
                rejected: None,
                unchanged: false,
                deposit: None,
            },
        ));
    }
    let bytes = served.iter().fold(0u64, |t, f| t.saturating_add(f.size));
    let held = served
        .iter()
        .zip(&sending)
        .filter_map(|(f, (_, s))| s.have.as_ref().map(|h| (f, h)))
        .map(|(f, h)| {
            (0..chunk_count(f.size, f.chunk_size))
                .filter(|i| wire::bitmap::get(h, *i))
                .map(|i| chunk_plain_len(f.size, f.chunk_size, i) as u64)
                .fold(0u64, u64::saturating_add)
        })
        .fold(0u64, u64::saturating_add);
    let _ = ctx.events.send(ServerEvent::Serving {
        peer,
        files: served.len(),
        bytes,
        held,
    });
    let ran = source::run(
        link,
        sending,
        streams,
        0,
        false,
        server_reporter(ctx, peer, true),
    )
    .await;
    // Every get is logged, also one that ended early.
    let records: Vec<LogRecord> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let outcome = match &ran {
                Ok(r) => match r.outcomes.get(i) {
                    Some(Outcome::Ok) => "sent, verified by the peer".to_string(),
                    Some(Outcome::Failed(_, why)) => format!("failed: {why}"),
                    _ => "not completed".to_string(),
                },
                Err(e) => format!("ended early: {e}"),
            };
            LogRecord::now(Some(peer), LogAction::Get, &id_hex(id), &outcome)
        })
        .collect();
    let vault = ctx.vault;
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = vault.log_all(&records) {
            warn!("cannot write the access log: {e}");
        }
    })
    .await;
    let ran = ran?;
    let ok = ran.outcomes.iter().filter(|o| **o == Outcome::Ok).count();
    let _ = ctx.events.send(ServerEvent::Served {
        peer,
        files: ok,
        bytes: ran.bytes_sent,
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), link.conn.closed()).await;
    Ok(())
}

fn stored_of(ctx: &ServerCtx, f: &RemoteFile) -> Stored {
    Stored {
        id: f.id,
        path: match f.access {
            Access::Deposit => ctx.vault.deposit_data_path(&f.id),
            Access::Share | Access::Owner => ctx.vault.data_path(&f.id),
        },
        size: f.size,
        chunk_size: f.chunk_size,
        label: format!("object {}", id_hex(&f.id)),
    }
}

/// Turns the engine's notes into the daemon's events. As a source (a
/// pull), a file done is the peer's, reported once at the end (`Served`).
fn server_reporter(ctx: &ServerCtx, peer: PublicKey, source: bool) -> Reporter {
    let events = ctx.events.clone();
    Arc::new(move |n: Note| {
        let ev = match n {
            Note::Start {
                files,
                bytes,
                skipped,
            } => ServerEvent::Offer {
                peer,
                files,
                bytes,
                held: skipped,
            },
            Note::Bytes(b) => ServerEvent::Received { peer, bytes: b },
            Note::FileDone { .. } if source => return,
            Note::FileDone {
                name, size, folder, ..
            } => ServerEvent::Stored {
                peer,
                name,
                size,
                folder,
            },
            Note::FileFailed { name, message } if name.is_empty() => ServerEvent::Failed {
                peer: Some(peer),
                message,
            },
            Note::FileFailed { name, message } => ServerEvent::Failed {
                peer: Some(peer),
                message: format!("{name}: {message}"),
            },
            Note::Resuming { .. } | Note::FileStart { .. } | Note::Unchanged { .. } => return,
        };
        let _ = events.send(ev);
    })
}

/// Receives sealed deposits (this node is the sink and never gets a key):
/// within the budgets of a push and the depositor's quota, checked before
/// any data flows.
async fn receive_deposit(
    ctx: &Arc<ServerCtx>,
    link: &mut Link,
    transfer: TransferGuard,
    chunk_size: u32,
    files: Vec<SealedOffer>,
) -> Result<(), NetError> {
    let peer = link.peer();
    let totals = match wire::validate_deposit(chunk_size, &files) {
        Ok(t) => t,
        Err(why) => {
            return Err(link
                .refuse(RefuseCode::BadOffer, format!("deposit refused: {why}"))
                .await)
        }
    };
    let c = ctx.clone();
    let quota = tokio::task::spawn_blocking(move || -> Result<Option<(u64, u64)>, NetError> {
        let trust = TrustStore::load(c.home.root())?;
        match trust.quota(&peer) {
            None => Ok(None),
            Some(q) => Ok(Some((q, c.vault.deposit_usage(&peer)?))),
        }
    })
    .await
    .map_err(|e| NetError::Protocol(format!("quota check failed: {e}")))??;
    if let Some((quota, used)) = quota {
        if used.checked_add(totals.bytes).is_none_or(|t| t > quota) {
            let message = format!(
                "over your quota here: {} of {} used, this deposit is {} (the owner raises it with `p2pfs trust add YOUR-ID --quota SIZE`)",
                crate::text::human_bytes(used),
                crate::text::human_bytes(quota),
                crate::text::human_bytes(totals.bytes)
            );
            let c = ctx.clone();
            let m = message.clone();
            let _ = tokio::task::spawn_blocking(move || {
                log(&c, peer, LogAction::Refused, "deposit", &m)
            })
            .await;
            return Err(link.refuse(RefuseCode::Quota, message).await);
        }
    }
    let Some(entries) = ctx.admission.entries(files.len()) else {
        return Err(refuse_busy_entries(link).await);
    };
    let expects = files
        .into_iter()
        .map(|f| Expect {
            name: format!("sealed deposit {}", crate::crypto::to_hex(&f.tag)),
            kind: f.kind,
            size: f.size,
            chunk_size,
            mtime: 0,
            mode: 0,
            token: f.token,
            known: None,
            commit: Commit::Deposit,
        })
        .collect();
    let sink_ctx = push_sink(ctx, peer, KeyFlow::Sealed, false);
    let r = sink::run(link, sink_ctx, expects, Box::new((transfer, entries))).await;
    let stored = r.as_ref().map(|r| r.ok).unwrap_or(0);
    let c = ctx.clone();
    let _ = tokio::task::spawn_blocking(move || {
        log(
            &c,
            peer,
            LogAction::Deposit,
            "",
            &format!("{stored} sealed deposit(s) stored"),
        )
    })
    .await;
    r.map(|_| ())
}

/// The entries of all transfers in progress share a budget: planning and
/// bookkeeping cost memory per entry.
async fn refuse_busy_entries(link: &mut Link) -> NetError {
    link.refuse(
        RefuseCode::Busy,
        "the receiver is busy with other large transfers; try again in a moment".into(),
    )
    .await
}

/// The sink of a push or a deposit into this node's vault.
/// `again`: store every entry, also those already stored unchanged.
fn push_sink(ctx: &ServerCtx, peer: PublicKey, flow: KeyFlow, again: bool) -> Arc<SinkCtx> {
    Arc::new(SinkCtx {
        vault: ctx.vault,
        staging: ctx.staging.clone(),
        me: ctx.identity.id(),
        budget: ctx.admission.chunk_budget(),
        idle: ctx.admission.limits().idle,
        report: server_reporter(ctx, peer, false),
        flow,
        initiator: false,
        dest: None,
        force: false,
        stream: None,
        skip_unchanged: flow == KeyFlow::Announced && !again,
    })
}

/// Receives a push into the vault (this node is the sink).
async fn receive(
    ctx: &Arc<ServerCtx>,
    link: &mut Link,
    trusted: bool,
    transfer: TransferGuard,
    (chunk_size, again, files): (u32, bool, Vec<FileOffer>),
    claimed: &str,
) -> Result<(), NetError> {
    let peer = link.peer();
    let totals = match wire::validate_offer(chunk_size, &files) {
        Ok(t) => t,
        Err(why) => {
            return Err(link
                .refuse(RefuseCode::BadOffer, format!("offer refused: {why}"))
                .await)
        }
    };
    if ctx.policy == AcceptPolicy::Ask
        && !trusted
        && !ask_user(ctx, peer, claimed, &files, totals).await
    {
        let e = link
            .refuse(
                RefuseCode::Declined,
                "the receiving user declined the transfer (or did not answer)".into(),
            )
            .await;
        return Err(e);
    }
    // The entries of all transfers in progress share a budget: planning
    // and bookkeeping cost memory per entry.
    let Some(entries) = ctx.admission.entries(files.len()) else {
        return Err(refuse_busy_entries(link).await);
    };
    let expects = files
        .into_iter()
        .map(|f| Expect {
            kind: f.kind,
            size: f.size,
            chunk_size,
            mtime: f.mtime,
            mode: f.mode,
            token: f.token,
            known: None,
            commit: Commit::Vault,
            name: f.name,
        })
        .collect();
    let sink_ctx = push_sink(ctx, peer, KeyFlow::Announced, again);
    sink::run(link, sink_ctx, expects, Box::new((transfer, entries)))
        .await
        .map(|_| ())
}
/// Asks the local user through the prompt queue: false when declined, not
/// answered in time, or when the queue is full.
async fn ask_user(
    ctx: &ServerCtx,
    peer: PublicKey,
    claimed: &str,
    files: &[FileOffer],
    totals: OfferTotals,
) -> bool {
    let Some(q) = &ctx.prompts else { return false };
    let Some(answer) = q.ask(peer, claimed.into(), files.to_vec(), totals) else {
        return false;
    };
    matches!(
        tokio::time::timeout(PROMPT_TIMEOUT, answer).await,
        Ok(Ok(true))
    )
}
