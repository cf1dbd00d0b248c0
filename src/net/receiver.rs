//! The receiving side (`p2pfs serve`): admits connections (caps on
//! unauthenticated connections and on transfers, `admission`), authenticates
//! the sender (Noise with key confirmation), applies the accept policy,
//! opens the connection's windows only then, plans the offer (new or
//! resumed files, within the budgets), checks every chunk's MAC before
//! writing it, verifies each file end to end and commits it to the vault —
//! without the vault's secret key (`docs/PROTOCOL.md`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::mpsc, task::JoinSet};
use tracing::{debug, info, warn, Instrument};

pub use super::admission::Asker;
use super::{
    admission::{
        Admission, ChunkBudget, ChunkPlace, ConnectionGuard, Limits, PromptQueue, TransferGuard,
        CONTROL_PROGRESS, MIN_PROGRESS,
    },
    close, endpoint,
    events::{ServerEvent, ServerEventTx},
    handshake::{self, Session, EXPORTER_LABEL},
    wire::{
        self, result_code, ChunkHeader, EntryKind, FileOffer, FilePlan, Msg, OfferTotals,
        RefuseCode, CHUNK_HEADER_LEN, DATA_MAGIC,
    },
    NetError,
};
use crate::{
    crypto::{
        chunk::{chunk_count, chunk_plain_len, sealed_chunk_hash, FileId, FileKey, CHUNK_OVERHEAD},
        keys::{PublicKey, Secret32},
        mac::MacKey,
        random,
    },
    store::{
        format::{Kind, Metadata},
        home::{Home, Identity},
        partial::{seal_key_to, CheckpointJob, Partial, PartialMeta, Slot, StagingKey},
        trust::{Capability, TrustStore},
        vault::Vault,
        StoreError,
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
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
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
    staging: StagingKey,
    admission: Arc<Admission>,
    prompts: Option<PromptQueue>,
}

impl ServerCtx {
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
            staging: StagingKey::from_identity(&identity.keypair),
            identity,
            vault,
            policy,
            events,
            admission: Admission::new(limits),
            prompts,
        })
    }
}

/// Partials untouched for this long are removed (`docs/PROTOCOL.md`).
pub const PARTIAL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often expired partials are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(3600);

/// Removes expired partials that no connection holds (blocking).
fn expire_partials(ctx: &ServerCtx) {
    let in_use = |slot: &Slot| active().contains_key(slot);
    match ctx.vault.expire_partials(PARTIAL_TTL, &in_use) {
        Ok(0) => {}
        Ok(n) => info!("removed {n} interrupted transfer(s) untouched for 7 days"),
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
                let addr = incoming.remote_address();
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

fn close_with(conn: &quinn::Connection, code: u32, why: &str) {
    conn.close(quinn::VarInt::from_u32(code), why.as_bytes());
}

/// The per-file state of a reception.
struct FileState {
    offer: FileOffer,
    id: FileId,
    slot: Slot,
    version: [u8; 32],
    partial: Option<Box<Partial<'static>>>,
    end: Option<[u8; 32]>,
    finished: bool,
}

/// QUIC handshake, control stream and Noise, bounded by [`AUTH_TIMEOUT`].
async fn authenticate(
    ctx: &ServerCtx,
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
    match handshake::respond(&mut recv, &mut send, &ctx.identity.keypair, &prologue).await {
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
    let (conn, mut send, mut recv, session) =
        match tokio::time::timeout(AUTH_TIMEOUT, authenticate(&ctx, incoming)).await {
            Ok(r) => r?,
            Err(_) => return Err(NetError::Timeout("authenticating a connection")),
        };
    let peer = session.peer;
    tracing::Span::current().record("peer", tracing::field::display(peer.fingerprint()));
    let trust = TrustStore::load(ctx.home.root())?;
    let trusted = trust.allows(&peer, Capability::Send);
    if ctx.policy == AcceptPolicy::Trusted && !trusted {
        let message = format!(
            "node {} does not trust you (your node id {peer}, fingerprint {}). \
             On the receiving node run: p2pfs trust add {peer}",
            text::escape(&ctx.identity.name),
            peer.fingerprint()
        );
        let _ = refuse(&mut send, RefuseCode::Untrusted, message).await;
        let _ = ctx.events.send(ServerEvent::PeerRefused {
            peer,
            reason: "not trusted (use `p2pfs trust add`)".into(),
        });
        // Let the refusal reach the sender before closing.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        close_with(&conn, close::REFUSED, "untrusted");
        return Ok(());
    }
    let Some(transfer) = ctx.admission.transfer(peer, trusted) else {
        let l = ctx.admission.limits();
        let message = format!(
            "the receiver is busy ({} transfers at once, {} per sender, {} from untrusted senders); try again in a moment",
            l.transfers, l.transfers_per_peer, l.untrusted_transfers
        );
        let _ = refuse(&mut send, RefuseCode::Busy, message).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        close_with(&conn, close::REFUSED, "busy");
        return Ok(());
    };
    // Admitted to a transfer: its place among the unauthenticated is free
    // again (a refused peer kept it until it was gone).
    drop(guard);
    let _ = ctx.events.send(ServerEvent::PeerConnected {
        peer,
        addr: addr.to_string(),
    });
    // Only now may it open data streams and fill a full window.
    endpoint::authorise(&conn, trusted);
    send_msg(
        &mut send,
        &Msg::Welcome {
            version: env!("CARGO_PKG_VERSION").into(),
            name: ctx.identity.name.clone(),
        },
    )
    .await?;
    let result = receive(
        &ctx, &conn, &session, trusted, transfer, &mut send, &mut recv,
    )
    .await;
    match &result {
        Ok(()) => {}
        Err(NetError::Tampered(m)) => {
            close_with(&conn, close::TAMPERED, m);
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: format!("tampered chunk: {m}; connection dropped"),
            });
        }
        Err(NetError::Protocol(m)) => {
            close_with(&conn, close::PROTOCOL, m);
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: format!("protocol error: {m}"),
            });
        }
        Err(e) => {
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: e.to_string(),
            });
        }
    }
    let _ = ctx.events.send(ServerEvent::Closed { peer });
    result
}

/// How long a write to the peer may wait for its flow-control credit: a
/// peer that stops reading cannot hold the connection (and what it holds
/// here) by withholding it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a control message, bounded by [`WRITE_TIMEOUT`].
async fn send_msg(send: &mut quinn::SendStream, m: &Msg) -> Result<(), NetError> {
    tokio::time::timeout(WRITE_TIMEOUT, wire::write_msg(send, m))
        .await
        .map_err(|_| NetError::Timeout("waiting for the peer to read"))?
}

async fn refuse(send: &mut quinn::SendStream, code: RefuseCode, message: String) -> NetError {
    let message = text::bounded(&message, text::MAX_MESSAGE - 4);
    // A refusal is worth a few seconds, no more.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        wire::write_msg(
            send,
            &Msg::Refused {
                code,
                message: message.clone(),
            },
        ),
    )
    .await;
    let _ = send.finish();
    NetError::Refused { code, message }
}

/// Asks the local user through the prompt queue: false when declined, not
/// answered in time, or when the queue is full.
async fn ask_user(
    ctx: &ServerCtx,
    peer: PublicKey,
    files: &[FileOffer],
    totals: OfferTotals,
) -> bool {
    let Some(q) = &ctx.prompts else { return false };
    let Some(answer) = q.ask(peer, files.to_vec(), totals) else {
        return false;
    };
    matches!(
        tokio::time::timeout(PROMPT_TIMEOUT, answer).await,
        Ok(Ok(true))
    )
}

/// Runs one transfer on an authenticated, authorised connection.
async fn receive(
    ctx: &Arc<ServerCtx>,
    conn: &quinn::Connection,
    session: &Session,
    trusted: bool,
    transfer: TransferGuard,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<(), NetError> {
    let peer = session.peer;
    let msg = tokio::time::timeout(Duration::from_secs(60), wire::read_msg(recv))
        .await
        .map_err(|_| NetError::Timeout("waiting for the offer"))??;
    let (chunk_size, files) = match msg {
        Some(Msg::Offer { chunk_size, files }) => (chunk_size, files),
        None => return Ok(()),
        Some(other) => {
            return Err(NetError::Protocol(format!(
                "expected an offer, got {}",
                other.kind()
            )))
        }
    };
    let totals = match wire::validate_offer(chunk_size, &files) {
        Ok(t) => t,
        Err(why) => {
            let e = refuse(send, RefuseCode::BadOffer, format!("offer refused: {why}")).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return Err(e);
        }
    };
    if ctx.policy == AcceptPolicy::Ask && !trusted && !ask_user(ctx, peer, &files, totals).await {
        let e = refuse(
            send,
            RefuseCode::Declined,
            "the receiving user declined the transfer (or did not answer)".into(),
        )
        .await;
        let _ = ctx.events.send(ServerEvent::PeerRefused {
            peer,
            reason: "declined".into(),
        });
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        return Err(e);
    }

    // The entries of all transfers in progress share a budget: planning
    // and bookkeeping cost memory per entry.
    let Some(entries) = ctx.admission.entries(files.len()) else {
        let e = refuse(
            send,
            RefuseCode::Busy,
            "the receiver is busy with other large transfers; try again in a moment".into(),
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        return Err(e);
    };
    let nfiles = files.len();
    // All disk work happens on one thread per transfer (the disk actor; at
    // most `Limits::transfers` of them), so neither an fsync, a lock held by
    // an unlocked vault command, nor planning a large offer stalls the QUIC
    // tasks; a bounded queue gives backpressure. The thread owns the
    // transfer's places and claims: they are released when it ends.
    let (cmd_tx, cmd_rx) = mpsc::channel::<DiskCmd>(16);
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<Msg>();
    let (plan_tx, plan_rx) = tokio::sync::oneshot::channel::<Result<Planned, NetError>>();
    let (actor_done, actor) = tokio::sync::oneshot::channel::<()>();
    let progress = Arc::new(AtomicU64::new(0));
    {
        let ctx = ctx.clone();
        let res_tx = res_tx.clone();
        let conn = conn.clone();
        let progress = progress.clone();
        std::thread::Builder::new()
            .name("p2pfs-disk".into())
            .spawn(move || {
                let _places = (transfer, entries);
                let mut claims = Claims(Vec::new());
                let states = plan(&ctx, peer, &conn, chunk_size, files, &mut claims);
                let states = match states {
                    Ok((states, planned)) => {
                        let _ = plan_tx.send(Ok(planned));
                        states
                    }
                    Err(e) => {
                        let _ = plan_tx.send(Err(e));
                        Vec::new()
                    }
                };
                disk_actor(&ctx, peer, chunk_size, states, cmd_rx, &res_tx, &progress);
                drop(claims);
                let _ = actor_done.send(());
            })
            .map_err(NetError::Io)?;
    }
    drop(res_tx);
    let planned = match tokio::time::timeout(Duration::from_secs(120), plan_rx).await {
        Ok(Ok(Ok(p))) => p,
        Ok(Ok(Err(e))) => {
            if let NetError::Refused { code, message } = &e {
                let _ = refuse(send, *code, message.clone()).await;
            }
            return Err(e);
        }
        _ => return Err(NetError::Timeout("planning the transfer")),
    };
    let _ = ctx.events.send(ServerEvent::Offer {
        peer,
        files: nfiles,
        bytes: totals.bytes,
        held: planned.held,
    });
    send_msg(
        send,
        &Msg::Plan {
            files: planned.plans,
        },
    )
    .await?;
    let infos = planned.infos;
    let data = {
        let (conn, ctx) = (conn.clone(), ctx.clone());
        let d = Arc::new(DataCtx {
            infos: infos.clone(),
            chunk_size,
            cmd: cmd_tx.clone(),
            mac: session.mac_rx.clone(),
            budget: ctx.admission.chunk_budget(),
        });
        tokio::spawn(async move { accept_data(conn, ctx, d, peer).await })
    };

    let outcome: Result<(), NetError> = async {
        let mut done_files = 0usize;
        let mut client_done = false;
        // Each file gets one FileStart and one FileEnd: a repeat would make
        // the receiver re-verify the whole partial (issue 7, L3).
        let mut started = vec![false; nfiles];
        let mut ended = vec![false; nfiles];
        let once = |seen: &mut [bool], file: u32, what: &str| -> Result<(), NetError> {
            match seen.get_mut(file as usize) {
                None => Err(NetError::Protocol("file index out of range".into())),
                Some(true) => Err(NetError::Protocol(format!("a second {what} for file {file}"))),
                Some(s) => {
                    *s = true;
                    Ok(())
                }
            }
        };
        // Progress: new chunk bytes stored (counted by the disk actor) and
        // control messages; each `idle` window must bring MIN_PROGRESS.
        let idle = ctx.admission.limits().idle;
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(idle));
        let (mut mark_at, mut mark) = (tokio::time::Instant::now(), 0u64);
        loop {
            tokio::select! {
                msg = wire::read_msg(recv), if !client_done => {
                    progress.fetch_add(CONTROL_PROGRESS, Ordering::Relaxed);
                    match msg? {
                        None => return Err(NetError::ConnectionLost("sender closed the control stream".into())),
                        Some(Msg::FileStart { file, wrapped_key, fresh }) => {
                            once(&mut started, file, "FileStart")?;
                            let (id, _) = *infos.get(file as usize).ok_or_else(|| NetError::Protocol("file index out of range".into()))?;
                            let key = unwrap_file_key(session, file, &id, &wrapped_key)?;
                            if cmd_tx.send(DiskCmd::Start { file, key: Box::new(key), fresh }).await.is_err() {
                                return Err(storage_stopped(&mut res_rx, send, conn).await);
                            }
                        }
                        Some(Msg::FileEnd { file, blake3 }) => {
                            once(&mut ended, file, "FileEnd")?;
                            if cmd_tx.send(DiskCmd::End { file, blake3 }).await.is_err() {
                                return Err(storage_stopped(&mut res_rx, send, conn).await);
                            }
                        }
                        Some(Msg::Done) => { client_done = true; }
                        Some(other) => return Err(NetError::Protocol(format!("unexpected message {}", other.kind()))),
                    }
                }
                r = res_rx.recv() => {
                    progress.fetch_add(CONTROL_PROGRESS, Ordering::Relaxed);
                    let Some(m) = r else {
                        return Err(NetError::ConnectionLost("storage stopped".into()));
                    };
                    send_msg(send, &m).await?;
                    match m {
                        Msg::FileResult { .. } => done_files += 1,
                        Msg::Refused { code, message } => {
                            let _ = send.finish();
                            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                            return Err(NetError::Refused { code, message });
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if mark_at.elapsed() >= idle {
                        let now = progress.load(Ordering::Relaxed);
                        if now.saturating_sub(mark) < MIN_PROGRESS {
                            close_with(conn, close::SHUTDOWN, "too little progress: transfer ended, resumable");
                            return Err(NetError::Timeout("waiting for the sender to make progress"));
                        }
                        (mark_at, mark) = (tokio::time::Instant::now(), now);
                    }
                }
                d = conn.closed() => {
                    return Err(NetError::lost(&d));
                }
            }
            if client_done && done_files == nfiles {
                break;
            }
        }
        let _ = send.finish();
        Ok(())
    }
    .await;
    // Stop the data streams; the actor drains what was verified, then
    // checkpoints what is left as resumable partials.
    data.abort();
    let _ = data.await;
    drop(cmd_tx);
    if tokio::time::timeout(Duration::from_secs(30), actor)
        .await
        .is_err()
    {
        warn!("storage did not finish in time");
    }
    if outcome.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
    outcome
}

/// The disk actor stopped while a control message was handed to it: it
/// stops only after reporting why (a `Refused`, e.g. disk full), which is
/// forwarded with the results before it — never a bare "connection lost".
async fn storage_stopped(
    res_rx: &mut mpsc::UnboundedReceiver<Msg>,
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
) -> NetError {
    while let Ok(m) = res_rx.try_recv() {
        if send_msg(send, &m).await.is_err() {
            break;
        }
        if let Msg::Refused { code, message } = m {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            return NetError::Refused { code, message };
        }
    }
    NetError::ConnectionLost("storage stopped".into())
}

/// Work for the disk actor.
enum DiskCmd {
    /// The key of a file arrived.
    Start {
        file: u32,
        key: Box<FileKey>,
        fresh: bool,
    },
    /// A MAC-checked chunk and its BLAKE3.
    Chunk {
        file: u32,
        index: u64,
        data: Vec<u8>,
        leaf: [u8; 32],
        /// Its place in the memory budgets, given back once it is written.
        _place: ChunkPlace,
    },
    /// The sender's BLAKE3 of a file.
    End { file: u32, blake3: [u8; 32] },
}

/// What planning produced for the control task.
struct Planned {
    plans: Vec<FilePlan>,
    infos: Arc<Vec<(FileId, u64)>>,
    held: u64,
}

/// Plans an offer (on the disk thread): resume what this sender left, start
/// the rest. Each entry's partial is found by its slot (a keyed hash of
/// sender and name): only this sender's partials of the offered names are
/// read, and each is claimed first, taking it over from an older connection.
fn plan(
    ctx: &ServerCtx,
    peer: PublicKey,
    conn: &quinn::Connection,
    chunk_size: u32,
    files: Vec<FileOffer>,
    claims: &mut Claims,
) -> Result<(Vec<FileState>, Planned), NetError> {
    let vault = ctx.vault;
    let mut plans = Vec::with_capacity(files.len());
    let mut infos = Vec::with_capacity(files.len());
    let mut states = Vec::with_capacity(files.len());
    let mut held = 0u64;
    for f in files {
        let slot = ctx.staging.slot(&peer, &f.name);
        let version = ctx
            .staging
            .version(&peer, &f.name, f.size, chunk_size, &f.token);
        claim(slot, conn)?;
        claims.0.push(slot);
        let found = match vault.resume_partial(&slot) {
            Ok(Some(p))
                if p.meta.version == version
                    && p.meta.size == f.size
                    && p.meta.chunk_size == chunk_size
                    && p.meta.sealed_key.is_some() =>
            {
                Some(p)
            }
            Ok(Some(_)) => {
                // The source changed (or the chunk size): never mixed.
                vault.remove_partial(&slot)?;
                None
            }
            Ok(None) => None,
            Err(e) => {
                warn!("cannot resume a partial: {e}; starting over");
                vault.remove_partial(&slot)?;
                None
            }
        };
        let (plan, partial, id) = match found {
            Some(p) => {
                held = held.saturating_add(p.held_bytes());
                let id = p.meta.file_id;
                let plan = FilePlan::Resume {
                    file_id: id,
                    sealed_key: p.meta.sealed_key.clone().unwrap_or_default(),
                    have: p.have(),
                };
                (plan, Some(Box::new(p)), id)
            }
            None => {
                let id: FileId = random().map_err(StoreError::from)?;
                (FilePlan::New { file_id: id }, None, id)
            }
        };
        plans.push(plan);
        infos.push((id, f.size));
        states.push(FileState {
            offer: f,
            id,
            slot,
            version,
            partial,
            end: None,
            finished: false,
        });
    }
    Ok((
        states,
        Planned {
            plans,
            infos: Arc::new(infos),
            held,
        },
    ))
}

/// Owns every partial of one transfer: writes chunks, checkpoints, verifies
/// and commits finished files, and reports results.
fn disk_actor(
    ctx: &Arc<ServerCtx>,
    peer: PublicKey,
    chunk_size: u32,
    mut files: Vec<FileState>,
    mut rx: mpsc::Receiver<DiskCmd>,
    res: &mpsc::UnboundedSender<Msg>,
    progress: &AtomicU64,
) {
    let syncer = Syncer::start();
    while let Some(cmd) = rx.blocking_recv() {
        let file = match &cmd {
            DiskCmd::Start { file, .. }
            | DiskCmd::Chunk { file, .. }
            | DiskCmd::End { file, .. } => *file as usize,
        };
        let Some(st) = files.get_mut(file) else {
            continue;
        };
        if st.finished {
            continue;
        }
        let step = (|| -> Result<(), StoreError> {
            match cmd {
                DiskCmd::Start { key, fresh, .. } => {
                    let sealed = seal_key_to(&peer, &ctx.identity.id(), &st.id, key.secret())?;
                    let p = open_or_start(ctx, st, chunk_size)?;
                    if fresh {
                        p.reset();
                    }
                    p.set_sealed_key(sealed);
                    p.set_key(*key)?;
                }
                DiskCmd::Chunk {
                    index, data, leaf, ..
                } => {
                    let p = open_or_start(ctx, st, chunk_size)?;
                    // A chunk already held is not progress: re-sending one
                    // cannot keep a transfer alive.
                    if !p.has(index) {
                        let plain = (data.len() - CHUNK_OVERHEAD) as u64;
                        progress.fetch_add(plain.max(1), Ordering::Relaxed);
                        if let Some(job) = p.write_chunk(index, data, leaf)? {
                            syncer.run(job);
                        }
                        let _ = ctx
                            .events
                            .send(ServerEvent::Received { peer, bytes: plain });
                    }
                }
                DiskCmd::End { blake3, .. } => st.end = Some(blake3),
            }
            Ok(())
        })();
        if let Err(StoreError::Corrupt { what, detail }) = step {
            // Data that passed its MAC but not the file key: an
            // authenticated but broken or hostile sender. That file is
            // dropped; the others go on.
            st.finished = true;
            if let Some(p) = st.partial.take() {
                let (slot, v) = (p.meta.slot, p.vault());
                drop(p);
                syncer.barrier();
                let _ = v.remove_partial(&slot);
            }
            let message = text::bounded(
                &format!("{what}: {detail}; not stored"),
                text::MAX_MESSAGE - 4,
            );
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: message.clone(),
            });
            let _ = res.send(Msg::FileResult {
                file: file as u32,
                ok: false,
                code: result_code::VERIFY,
                message,
            });
            continue;
        }
        if let Err(e) = step {
            let (code, message) = match e {
                StoreError::DiskFull { .. } => (
                    RefuseCode::DiskFull,
                    "the receiver's disk is full; what arrived is kept as a resumable partial — free space there and run the same send again".to_string(),
                ),
                other => (RefuseCode::Busy, format!("the receiver cannot store: {other}")),
            };
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: message.clone(),
            });
            let _ = res.send(Msg::Refused { code, message });
            break;
        }
        if let Some(msg) = finish_if_ready(ctx, st, file as u32, peer, &syncer) {
            let _ = res.send(msg);
        }
    }
    // Whatever is left becomes a resumable partial, or is removed when it
    // cannot be resumed (its key never arrived).
    syncer.barrier();
    for st in &mut files {
        if let Some(mut p) = st.partial.take() {
            if p.meta.sealed_key.is_some() {
                if let Err(e) = p.checkpoint() {
                    warn!("cannot checkpoint a partial: {e}");
                }
            } else {
                let slot = p.meta.slot;
                let v = p.vault();
                drop(p);
                let _ = v.remove_partial(&slot);
            }
        }
    }
}

/// Partials held by a live connection. A sender that comes back (after a
/// crash or a network loss) while its old connection has not yet timed out
/// takes its partials over: the old connection is closed and its disk actor
/// finishes its last checkpoint before the new one resumes. One `serve`
/// process serves one vault, so a process-wide table is exact.
static ACTIVE: std::sync::LazyLock<std::sync::Mutex<HashMap<Slot, quinn::Connection>>> =
    std::sync::LazyLock::new(Default::default);

fn active() -> std::sync::MutexGuard<'static, HashMap<Slot, quinn::Connection>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Claims a partial for `conn`, superseding another connection that holds
/// it: that one is closed, and its disk thread releases the claim once its
/// last checkpoint is written. Blocking (runs on the disk thread).
fn claim(id: Slot, conn: &quinn::Connection) -> Result<(), NetError> {
    let deadline = std::time::Instant::now() + CLAIM_WAIT;
    loop {
        {
            let mut a = active();
            match a.get(&id) {
                None => {
                    a.insert(id, conn.clone());
                    return Ok(());
                }
                Some(old) if old.stable_id() == conn.stable_id() => return Ok(()),
                Some(old) => old.close(
                    quinn::VarInt::from_u32(close::SHUTDOWN),
                    b"superseded by a new connection from the same sender",
                ),
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(NetError::Refused {
                code: RefuseCode::Busy,
                message: "an earlier transfer of the same file is still finishing here; try again in a moment".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long a new connection waits for an older one of the same sender to
/// finish with a partial (its disk thread's last checkpoint).
const CLAIM_WAIT: Duration = Duration::from_secs(60);

/// Releases its claims when dropped, after the disk actor has finished.
struct Claims(Vec<Slot>);

impl Drop for Claims {
    fn drop(&mut self) {
        let mut a = active();
        for id in &self.0 {
            a.remove(id);
        }
    }
}

/// Runs checkpoint jobs (fsync + state file) on their own thread so the
/// disk actor keeps writing meanwhile.
struct Syncer {
    tx: Option<std::sync::mpsc::Sender<SyncJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum SyncJob {
    Run(CheckpointJob),
    Barrier(std::sync::mpsc::Sender<()>),
}

impl Syncer {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
        let thread = std::thread::spawn(move || {
            for job in rx {
                match job {
                    SyncJob::Run(j) => {
                        if let Err(e) = j.run() {
                            warn!("checkpoint failed: {e}");
                        }
                    }
                    SyncJob::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn run(&self, job: CheckpointJob) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(SyncJob::Run(job));
        }
    }

    /// Waits until every job queued so far has run.
    fn barrier(&self) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if let Some(tx) = &self.tx {
            if tx.send(SyncJob::Barrier(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Verifies and commits a file once its key, its end and all its chunks are in.
fn finish_if_ready(
    ctx: &ServerCtx,
    st: &mut FileState,
    file: u32,
    peer: PublicKey,
    syncer: &Syncer,
) -> Option<Msg> {
    let ready = st.end.is_some() && st.partial.as_ref().is_some_and(|p| p.is_complete());
    if !ready {
        return None;
    }
    st.finished = true;
    let (Some(p), Some(blake3)) = (st.partial.take(), st.end) else {
        return None;
    };
    // No checkpoint of this partial may land after its commit.
    syncer.barrier();
    let offer = &st.offer;
    let added_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let meta = Metadata {
        kind: match offer.kind {
            EntryKind::File => Kind::File,
            EntryKind::Dir => Kind::Dir,
        },
        size: offer.size,
        chunk_size: p.meta.chunk_size,
        blake3,
        added_ms,
        mtime: offer.mtime,
        mode: offer.mode & 0o777,
        origin: Some(peer),
        name: offer.name.clone(),
    };
    let slot = p.meta.slot;
    let v = p.vault();
    let t0 = std::time::Instant::now();
    let outcome = p.finish(&blake3, &meta);
    debug!(name = %offer.name, elapsed_ms = t0.elapsed().as_millis() as u64, "verified and committed");
    match outcome {
        Ok(()) => {
            info!(name = %offer.name, "stored");
            let _ = ctx.events.send(ServerEvent::Stored {
                peer,
                name: offer.name.clone(),
                size: offer.size,
            });
            Some(Msg::FileResult {
                file,
                ok: true,
                code: result_code::OK,
                message: String::new(),
            })
        }
        Err(e) => {
            // A file that fails verification is not kept: resuming it would
            // only fail again.
            let _ = v.remove_partial(&slot);
            let code = match e {
                StoreError::DiskFull { .. } => result_code::DISK_FULL,
                StoreError::Corrupt { .. } => result_code::VERIFY,
                _ => result_code::STORE,
            };
            let _ = ctx.events.send(ServerEvent::Failed {
                peer: Some(peer),
                message: format!("{}: {e}", offer.name),
            });
            Some(Msg::FileResult {
                file,
                ok: false,
                code,
                message: text::bounded(&e.to_string(), text::MAX_MESSAGE - 4),
            })
        }
    }
}

fn key_nonce(file: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&file.to_be_bytes());
    n
}

/// Associated data of a transported file key.
pub fn key_ad(id: &FileId) -> Vec<u8> {
    let mut ad = b"p2pfs/2 file-key".to_vec();
    ad.extend_from_slice(id);
    ad
}

/// Wraps a file key for transport under the session key.
pub fn wrap_file_key(
    session: &Session,
    file: u32,
    id: &FileId,
    key: &FileKey,
) -> Result<Vec<u8>, NetError> {
    session
        .wrap_tx
        .seal(key_nonce(file), &key_ad(id), key.secret().expose())
        .map_err(|e| NetError::Protocol(e.to_string()))
}

fn open_or_start<'a>(
    ctx: &ServerCtx,
    st: &'a mut FileState,
    chunk_size: u32,
) -> Result<&'a mut Partial<'static>, StoreError> {
    let p = match st.partial.take() {
        Some(p) => p,
        None => Box::new(ctx.vault.start_partial(PartialMeta {
            slot: st.slot,
            version: st.version,
            file_id: st.id,
            size: st.offer.size,
            chunk_size,
            sealed_key: None,
        })?),
    };
    Ok(st.partial.insert(p))
}

/// Opens a transported file key.
pub fn unwrap_file_key(
    session: &Session,
    file: u32,
    id: &FileId,
    wrapped: &[u8],
) -> Result<FileKey, NetError> {
    let raw = zeroize::Zeroizing::new(
        session
            .wrap_rx
            .open(key_nonce(file), &key_ad(id), wrapped)
            .map_err(|_| NetError::Tampered("file key does not authenticate".into()))?,
    );
    let arr: [u8; 32] = raw
        .as_slice()
        .try_into()
        .map_err(|_| NetError::Protocol("file key length".into()))?;
    Ok(FileKey::from_secret(Secret32::from_bytes(arr)))
}

/// What every data stream of a transfer needs.
struct DataCtx {
    infos: Arc<Vec<(FileId, u64)>>,
    chunk_size: u32,
    cmd: mpsc::Sender<DiskCmd>,
    mac: Arc<MacKey>,
    budget: ChunkBudget,
}

async fn accept_data(
    conn: quinn::Connection,
    ctx: Arc<ServerCtx>,
    data: Arc<DataCtx>,
    peer: PublicKey,
) -> Result<(), NetError> {
    let mut streams = JoinSet::new();
    let mut count = 0usize;
    loop {
        tokio::select! {
            s = conn.accept_uni() => {
                let s = s.map_err(|e| NetError::lost(&e))?;
                count += 1;
                if count > wire::MAX_STREAMS {
                    close_with(&conn, close::PROTOCOL, "too many data streams");
                    return Err(NetError::Protocol("too many data streams".into()));
                }
                let (ctx, data, conn2) = (ctx.clone(), data.clone(), conn.clone());
                streams.spawn(async move {
                    if let Err(e) = data_stream(s, &data).await {
                        let (code, why) = match &e {
                            NetError::Tampered(m) => (close::TAMPERED, m.clone()),
                            NetError::Protocol(m) => (close::PROTOCOL, m.clone()),
                            other => (close::PROTOCOL, other.to_string()),
                        };
                        if !matches!(e, NetError::ConnectionLost(_)) {
                            warn!("data stream: {why}");
                            let _ = ctx.events.send(ServerEvent::Failed {
                                peer: Some(peer),
                                message: format!("{why}; connection dropped, nothing of it written"),
                            });
                            close_with(&conn2, code, &why);
                        }
                    }
                });
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

/// Reads chunk frames from one data stream: bounds each against the plan,
/// checks its MAC, and only then hands it to the disk actor.
async fn data_stream(mut s: quinn::RecvStream, d: &DataCtx) -> Result<(), NetError> {
    let DataCtx {
        infos,
        chunk_size,
        cmd,
        mac,
        budget,
    } = d;
    let chunk_size = *chunk_size;
    let mut magic = [0u8; 4];
    s.read_exact(&mut magic)
        .await
        .map_err(|e| NetError::lost(&e))?;
    if &magic != DATA_MAGIC {
        return Err(NetError::Protocol("bad data stream magic".into()));
    }
    loop {
        let mut hb = [0u8; CHUNK_HEADER_LEN];
        match s.read_exact(&mut hb).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(()),
            Err(e) => return Err(NetError::lost(&e)),
        }
        let h = ChunkHeader::decode(&hb);
        let &(id, size) = infos
            .get(h.file as usize)
            .ok_or_else(|| NetError::Protocol(format!("chunk for unknown file {}", h.file)))?;
        if h.index >= chunk_count(size, chunk_size) {
            return Err(NetError::Protocol(format!(
                "chunk index {} out of range",
                h.index
            )));
        }
        let want = chunk_plain_len(size, chunk_size, h.index) + CHUNK_OVERHEAD;
        if h.len as usize != want {
            return Err(NetError::Protocol(format!(
                "chunk {} has length {} (expected {want})",
                h.index, h.len
            )));
        }
        // Room in the memory budgets first: the connection and the node
        // hold a bounded number of chunk bytes, whatever the streams do.
        let place = budget
            .reserve(want as u32)
            .await
            .ok_or_else(|| NetError::ConnectionLost("shutting down".into()))?;
        let mut data = Vec::new();
        data.try_reserve_exact(want)
            .map_err(|_| NetError::ConnectionLost("out of memory for a chunk".into()))?;
        while data.len() < want {
            match s.read_chunk(want - data.len(), true).await {
                Ok(Some(c)) => data.extend_from_slice(&c.bytes),
                Ok(None) => {
                    return Err(NetError::ConnectionLost(
                        "data stream ended mid-chunk".into(),
                    ))
                }
                Err(e) => return Err(NetError::lost(&e)),
            }
        }
        // The MAC is checked before anything is written. Its BLAKE3 leaf
        // is also the vault's ciphertext-digest leaf: computed once, here,
        // on the network threads.
        let leaf = sealed_chunk_hash(&data);
        if mac
            .verify_leaf(&id, h.index, data.len() as u64, &leaf, &h.mac)
            .is_err()
        {
            return Err(NetError::Tampered(format!(
                "chunk {} of file {} failed its MAC",
                h.index, h.file
            )));
        }
        if cmd
            .send(DiskCmd::Chunk {
                file: h.file,
                index: h.index,
                data,
                leaf,
                _place: place,
            })
            .await
            .is_err()
        {
            return Err(NetError::ConnectionLost("storage stopped".into()));
        }
    }
}
