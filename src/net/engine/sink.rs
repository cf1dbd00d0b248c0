//! The sink of a transfer: plans the files on its disk thread (new, or
//! resumed from this peer's partials, found by slot), checks every chunk's
//! MAC before anything is written, writes chunks in place, verifies each
//! file end to end, and commits it into the vault or publishes it as a
//! plain file; what is left when the connection ends stays a resumable
//! partial (ciphertext only).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::mpsc, task::JoinSet};
use tracing::{debug, warn};

use super::{
    closed_error,
    proto::{self, chunk_bounds, ChunkPlan, KeyFlow, PartialFacts, SinkMachine, SinkStep, Wanted},
    source::unwrap_file_key,
    Link, Note, Reporter,
};
use crate::{
    crypto::{
        chunk::{sealed_chunk_hash, FileId, FileKey, CHUNK_OVERHEAD},
        keys::PublicKey,
        mac::MacKey,
        random,
    },
    net::{
        admission::{ChunkBudget, ChunkPlace, CONTROL_PROGRESS, MIN_PROGRESS},
        close,
        wire::{
            self, result_code, ChunkHeader, EntryKind, FilePlan, Msg, RefuseCode, CHUNK_HEADER_LEN,
            DATA_MAGIC,
        },
        NetError,
    },
    store::{
        format::{Kind, Metadata},
        fsutil::{Dir, NewFile},
        partial::{
            self, CheckpointJob, Partial, PartialKind, PartialLabel, PartialMeta, Slot, StagingKey,
            Verified,
        },
        received::Receipt,
        vault::Vault,
        StoreError,
    },
    text,
};

/// What the sink knows in advance of a pulled file: its id, key and
/// metadata (opened from the sealed entry the source served).
pub struct Known {
    /// The object id (the chunks' file id).
    pub id: FileId,
    /// The file key.
    pub key: FileKey,
    /// Its metadata (name, BLAKE3, times, mode).
    pub meta: Metadata,
}

/// Where a finished file goes.
pub enum Commit {
    /// Into the local vault (sealed to its key).
    Vault,
    /// Kept as a sealed deposit of the peer (its envelope, unopened).
    Deposit,
    /// Decrypted into a plain file at this name under the destination.
    Publish {
        /// The name relative to the destination, `/`-separated (checked).
        rel: String,
    },
    /// Verified whole, then decrypted from its partial into the sink's
    /// [`SinkCtx::stream`] (`get PEER NAME -`): nothing is written there
    /// before the BLAKE3 is checked, and no plaintext touches the disk.
    Stream,
}

/// Where [`Commit::Stream`] files go (standard output).
pub type Stream = Arc<std::sync::Mutex<Box<dyn std::io::Write + Send>>>;

/// One file the sink expects.
pub struct Expect {
    /// Its name (push: as offered; pull: from its sealed metadata).
    pub name: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Source modification time.
    pub mtime: i64,
    /// Source permission bits.
    pub mode: u32,
    /// The source's version token (resume only continues the same source).
    pub token: [u8; 16],
    /// A pull's id, key and metadata (boxed: a key schedule is large, and
    /// an offer may hold 100,000 entries that have none).
    pub known: Option<Box<Known>>,
    /// Where it goes once verified.
    pub commit: Commit,
}

/// What the sink needs from its host.
pub struct SinkCtx {
    /// The vault whose staging area holds the partials (and which commits).
    pub vault: &'static Vault,
    /// The keyed hash that names this node's partials.
    pub staging: Arc<StagingKey>,
    /// This node's id.
    pub me: PublicKey,
    /// The memory budget of chunks in flight.
    pub budget: ChunkBudget,
    /// Each window of this length must bring [`MIN_PROGRESS`].
    pub idle: Duration,
    /// Where notes go.
    pub report: Reporter,
    /// How keys arrive.
    pub flow: KeyFlow,
    /// This end opened the connection (a pull).
    pub initiator: bool,
    /// The destination of published files (a pull to plain files).
    pub dest: Option<Arc<Dir>>,
    /// With `dest`: replace existing files.
    pub force: bool,
    /// Where [`Commit::Stream`] files go.
    pub stream: Option<Stream>,
    /// A push whose entries this node already committed unchanged (its
    /// receipts say so, `store::received`) are planned `Unchanged`: not
    /// sent again. False for `send --again`, pulls and deposits.
    pub skip_unchanged: bool,
}

/// What a sink run did.
#[derive(Debug, Default)]
pub struct Received {
    /// Files committed or published.
    pub ok: usize,
    /// Failures, one line each (escaped).
    pub failures: Vec<String>,
    /// Plaintext bytes already held (resume).
    pub skipped: u64,
    /// Entries planned `Unchanged` (not sent again).
    pub unchanged: usize,
}

/// The slot name of a pulled object: not a valid file name (a NUL), so it
/// never meets the slot of a file the same peer pushes.
fn pull_slot_name(id: &FileId) -> String {
    format!("\0pull {}", crate::store::vault::id_hex(id))
}

/// Runs the sink side of a transfer of `files` (already validated against
/// the budgets) on `link`. `places` (the admission guards) are held by the
/// disk thread until it ends.
pub async fn run(
    link: &mut Link,
    ctx: Arc<SinkCtx>,
    files: Vec<Expect>,
    places: Box<dyn Send>,
) -> Result<Received, NetError> {
    let peer = link.peer();
    let nfiles = files.len();
    let bytes: u64 = files.iter().map(|f| f.size).fold(0, u64::saturating_add);
    // All disk work happens on one thread per transfer (the disk actor),
    // so neither an fsync, a lock held by an unlocked vault command, nor
    // planning a large offer stalls the QUIC tasks; a bounded queue gives
    // backpressure. The thread owns the transfer's places and claims: they
    // are released when it ends.
    // Chunks come through a bounded queue (backpressure on the data
    // streams); the control stream's starts and ends through their own,
    // which the actor serves first. Sharing one queue let four data
    // streams outrun the control stream four to one: with small files the
    // ends (and so the commits) fell ever further behind the data, and
    // staged, uncommitted data grew without bound (issue 12, item 5).
    // Now data runs ahead of the ends by at most the connection's window.
    // Eight chunks queued keep the disk thread busy; 16 only held more
    // memory (see `endpoint::RECEIVE_WINDOW`).
    let (cmd_tx, cmd_rx) = mpsc::channel::<DiskCmd>(8);
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel::<DiskCmd>();
    let inbox = Inbox {
        rt: tokio::runtime::Handle::current(),
        ctl: Some(ctl_rx),
        data: Some(cmd_rx),
    };
    let (res_tx, mut res_rx) = mpsc::unbounded_channel::<Msg>();
    let (plan_tx, plan_rx) = tokio::sync::oneshot::channel::<Result<Planned, NetError>>();
    let (actor_done, actor) = tokio::sync::oneshot::channel::<Vec<String>>();
    let progress = Arc::new(AtomicU64::new(0));
    let ok_count = Arc::new(AtomicU64::new(0));
    let full = Arc::new(std::sync::Mutex::new(None::<PathBuf>));
    {
        let full = full.clone();
        let ctx = ctx.clone();
        let res_tx = res_tx.clone();
        let conn = link.conn.clone();
        let progress = progress.clone();
        let ok_count = ok_count.clone();
        std::thread::Builder::new()
            .name("p2pfs-disk".into())
            .spawn(move || {
                let _places = places;
                let mut claims = Claims(Vec::new());
                let states = match plan(&ctx, peer, &conn, files, &mut claims) {
                    Ok((states, planned)) => {
                        let _ = plan_tx.send(Ok(planned));
                        states
                    }
                    Err(e) => {
                        let _ = plan_tx.send(Err(e));
                        Vec::new()
                    }
                };
                let failures = disk_actor(
                    &ctx,
                    peer,
                    states,
                    inbox,
                    &res_tx,
                    Tally {
                        progress: &progress,
                        ok_count: &ok_count,
                        full: &full,
                    },
                );
                drop(claims);
                let _ = actor_done.send(failures);
            })
            .map_err(NetError::Io)?;
    }
    drop(res_tx);
    let planned = match tokio::time::timeout(Duration::from_secs(120), plan_rx).await {
        Ok(Ok(Ok(p))) => p,
        Ok(Ok(Err(e))) => {
            match &e {
                NetError::Refused { code, message } => {
                    let _ = link.refuse(*code, message.clone()).await;
                }
                // Full before the first byte (a partial could not be
                // opened): the peer hears it as such, not as a lost stream.
                NetError::Store(StoreError::DiskFull { path }) => {
                    if !ctx.initiator {
                        (ctx.report)(Note::FileFailed {
                            name: String::new(),
                            message: format!(
                                "nothing stored: disk full in {}; the sender was told, and can resume once space is freed",
                                crate::store::error::full_dir(path)
                            ),
                        });
                    }
                    let _ = link
                        .refuse(RefuseCode::DiskFull, DISK_FULL_KEPT.into())
                        .await;
                }
                _ => {}
            }
            return Err(e);
        }
        _ => return Err(NetError::Timeout("planning the transfer")),
    };
    let same_bytes = planned
        .unchanged
        .iter()
        .fold(0u64, |t, (_, _, size)| t.saturating_add(*size));
    (ctx.report)(Note::Start {
        files: nfiles - planned.unchanged.len(),
        bytes: bytes.saturating_sub(same_bytes),
        skipped: planned.held,
    });
    link.send_msg(&Msg::Plan {
        files: planned.plans,
    })
    .await?;
    let mut machine = SinkMachine::new(nfiles, ctx.flow, ctx.initiator);
    for (file, name, _) in &planned.unchanged {
        machine.skip(*file)?;
        (ctx.report)(Note::Unchanged { name: name.clone() });
    }
    let infos = planned.infos;
    // Set by the peer's stop notice (`wire::STOP_CODE`).
    let stop = Arc::new(tokio::sync::Notify::new());
    let data = {
        let conn = link.conn.clone();
        let d = Arc::new(DataCtx {
            plans: infos.clone(),
            cmd: cmd_tx.clone(),
            mac: link.session.mac_rx.clone(),
            budget: ctx.budget.clone(),
        });
        let report = ctx.report.clone();
        let stop = stop.clone();
        tokio::spawn(async move { accept_data(conn, d, report, stop).await })
    };

    let outcome: Result<(), NetError> = async {
        // Progress: new chunk bytes stored (counted by the disk actor) and
        // control messages; each `idle` window must bring MIN_PROGRESS.
        let idle = ctx.idle;
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(idle));
        let (mut mark_at, mut mark) = (tokio::time::Instant::now(), 0u64);
        while !machine.finished() {
            let reading = machine.reading();
            tokio::select! {
                msg = link.recv.read_msg(), if reading => {
                    progress.fetch_add(CONTROL_PROGRESS, Ordering::Relaxed);
                    let Some(msg) = msg? else {
                        return Err(NetError::ConnectionLost("the peer closed the control stream".into()));
                    };
                    let cmd = match machine.on_msg(&msg)? {
                        SinkStep::Start(file) => match msg {
                            Msg::FileStart { wrapped_key, fresh, .. } => {
                                let id = infos.get(file as usize).map(|p| p.id).ok_or_else(|| NetError::Protocol("file index out of range".into()))?;
                                let key = unwrap_file_key(&link.session, file, &id, &wrapped_key)?;
                                DiskCmd::Start { file, key: StartKey::Key(Box::new(key)), fresh }
                            }
                            Msg::DepositStart { sealed_key, fresh, .. } => {
                                DiskCmd::Start { file, key: StartKey::Sealed(sealed_key), fresh }
                            }
                            _ => continue,
                        },
                        SinkStep::End(file) => match msg {
                            Msg::FileEnd { blake3, .. } => DiskCmd::End { file, end: End::Blake3(blake3) },
                            Msg::DepositEnd { envelope, .. } => DiskCmd::End { file, end: End::Envelope(envelope) },
                            _ => continue,
                        },
                        SinkStep::PeerDone => continue,
                    };
                    if ctl_tx.send(cmd).is_err() {
                        return Err(storage_stopped(&mut res_rx, link, &full).await);
                    }
                }
                r = res_rx.recv() => {
                    progress.fetch_add(CONTROL_PROGRESS, Ordering::Relaxed);
                    let Some(m) = r else {
                        return Err(NetError::ConnectionLost("storage stopped".into()));
                    };
                    link.send_msg(&m).await?;
                    match m {
                        Msg::FileResult { file, .. } => machine.on_result(file)?,
                        Msg::Refused { code, message } => {
                            let _ = link.send.finish();
                            let _ = tokio::time::timeout(Duration::from_secs(2), link.conn.closed()).await;
                            return Err(refusal(&full, code, message));
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if mark_at.elapsed() >= idle {
                        let now = progress.load(Ordering::Relaxed);
                        if now.saturating_sub(mark) < MIN_PROGRESS {
                            link.close(close::SHUTDOWN, "too little progress: transfer ended, resumable");
                            return Err(NetError::Timeout("waiting for the peer to make progress"));
                        }
                        (mark_at, mark) = (tokio::time::Instant::now(), now);
                    }
                }
                d = link.conn.closed() => {
                    return Err(closed_error(&d));
                }
                _ = stop.notified() => return Err(link.answer_stop()),
            }
        }
        if ctx.initiator {
            link.send_msg(&Msg::Done).await?;
        }
        let _ = link.send.finish();
        Ok(())
    }
    .await;
    // Stop the data streams; the actor drains what was verified, then
    // checkpoints what is left as resumable partials.
    data.abort();
    let _ = data.await;
    drop(cmd_tx);
    drop(ctl_tx);
    let failures = match tokio::time::timeout(Duration::from_secs(30), actor).await {
        Ok(Ok(f)) => f,
        _ => {
            warn!("storage did not finish in time");
            Vec::new()
        }
    };
    outcome?;
    if !ctx.initiator {
        let _ = tokio::time::timeout(Duration::from_secs(2), link.conn.closed()).await;
    }
    Ok(Received {
        ok: ok_count.load(Ordering::Relaxed) as usize,
        failures,
        skipped: planned.held,
        unchanged: planned.unchanged.len(),
    })
}

/// The disk actor stopped while a control message was handed to it: it
/// stops only after reporting why (a `Refused`, e.g. disk full), which is
/// forwarded with the results before it — never a bare "connection lost".
async fn storage_stopped(
    res_rx: &mut mpsc::UnboundedReceiver<Msg>,
    link: &mut Link,
    full: &std::sync::Mutex<Option<PathBuf>>,
) -> NetError {
    while let Ok(m) = res_rx.try_recv() {
        if link.send_msg(&m).await.is_err() {
            break;
        }
        if let Msg::Refused { code, message } = m {
            let _ = link.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), link.conn.closed()).await;
            return refusal(full, code, message);
        }
    }
    NetError::ConnectionLost("storage stopped".into())
}

/// What the peer is told when this node's disk fills: what it keeps. The
/// advice (free space, run again) is the sender's to give its user.
const DISK_FULL_KEPT: &str = "the files it confirmed are stored, the others are not (one in progress resumes from its last checkpoint)";

/// This end's error for a refusal it sent: when its own disk filled, that
/// (a fetch's user frees the space; a daemon has said so per file); any
/// other refusal is the one the peer was given.
fn refusal(
    full: &std::sync::Mutex<Option<PathBuf>>,
    code: RefuseCode,
    message: String,
) -> NetError {
    match full.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(path) if code == RefuseCode::DiskFull => {
            NetError::Store(StoreError::DiskFull { path })
        }
        _ => NetError::Refused { code, message },
    }
}

/// The per-file state of a reception.
struct FileState {
    expect: Expect,
    id: FileId,
    slot: Slot,
    version: [u8; 32],
    partial: Option<Box<Partial<'static>>>,
    end: Option<End>,
    finished: bool,
    /// A pulled file to publish whose key is not yet given to its partial:
    /// it is, with the unnamed destination file to stream the plaintext
    /// into, when its first chunk comes ([`prepare`]). Boxed, as is the
    /// file: a key schedule is large, and an offer may hold 100,000
    /// entries that have neither.
    pending: Option<Box<FileKey>>,
    /// That destination file.
    out: Option<Box<NewFile<Arc<Dir>>>>,
}

// A transfer holds one per offered entry (up to `wire::MAX_FILES`, on
// several connections at once): whatever is large stays behind a box.
// It was 864 bytes with the key inline, 172 MiB for two largest offers.
const _: () = assert!(std::mem::size_of::<FileState>() <= 256);

/// How a file's key arrives at the sink.
enum StartKey {
    /// The key itself (a push).
    Key(Box<FileKey>),
    /// Only the key the depositor sealed to itself (a deposit).
    Sealed(Vec<u8>),
}

/// What ends a file.
enum End {
    /// The source's BLAKE3 of the plaintext.
    Blake3([u8; 32]),
    /// A deposit's envelope, sealed to the depositor's vault key.
    Envelope(Vec<u8>),
}

/// Work for the disk actor.
enum DiskCmd {
    /// The key of a file arrived.
    Start {
        file: u32,
        key: StartKey,
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
    /// The source's end of a file.
    End { file: u32, end: End },
}

/// The disk actor's two queues: control first, then chunks.
struct Inbox {
    rt: tokio::runtime::Handle,
    ctl: Option<mpsc::UnboundedReceiver<DiskCmd>>,
    data: Option<mpsc::Receiver<DiskCmd>>,
}

impl Inbox {
    /// A command already queued (control first), without waiting.
    fn try_next(&mut self) -> Option<DiskCmd> {
        if let Some(c) = self.ctl.as_mut().and_then(|c| c.try_recv().ok()) {
            return Some(c);
        }
        self.data.as_mut().and_then(|d| d.try_recv().ok())
    }

    /// The next command, a waiting control one before any chunk, or,
    /// while `committer` has groups in flight, the outcome of the oldest;
    /// None once both queues are closed and empty and nothing is in flight.
    fn next(&mut self, committer: &mut Committer) -> Option<Input> {
        loop {
            if let Some(ctl) = &mut self.ctl {
                match ctl.try_recv() {
                    Ok(c) => return Some(Input::Cmd(c)),
                    Err(mpsc::error::TryRecvError::Disconnected) => self.ctl = None,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            let waiting = committer.in_flight > 0;
            let (ctl, data, done) = (&mut self.ctl, &mut self.data, &mut committer.done);
            if ctl.is_none() && data.is_none() && !waiting {
                return None;
            }
            // Runs on the disk thread, outside the runtime: blocking here
            // is what the thread is for.
            let got = self.rt.block_on(async {
                tokio::select! {
                    biased;
                    c = done.recv(), if waiting => Got::Done(c),
                    c = async { ctl.as_mut()?.recv().await }, if ctl.is_some() => Got::Ctl(c),
                    d = async { data.as_mut()?.recv().await }, if data.is_some() => Got::Data(d),
                }
            });
            match got {
                Got::Ctl(Some(c)) | Got::Data(Some(c)) => return Some(Input::Cmd(c)),
                Got::Ctl(None) => self.ctl = None,
                Got::Data(None) => self.data = None,
                Got::Done(c) => {
                    committer.in_flight -= 1;
                    return Some(Input::Committed(c?));
                }
            }
        }
    }
}

/// What [`Inbox::next`] got.
enum Got {
    Ctl(Option<DiskCmd>),
    Data(Option<DiskCmd>),
    Done(Option<Committed>),
}

/// What the disk actor handles next.
enum Input {
    Cmd(DiskCmd),
    Committed(Committed),
}

/// What planning produced for the control task.
struct Planned {
    plans: Vec<FilePlan>,
    infos: Arc<Vec<ChunkPlan>>,
    held: u64,
    /// The entries planned `Unchanged`: index, name and size.
    unchanged: Vec<(u32, String, u64)>,
}

/// What the resume decision needs to know of a partial.
fn facts(p: &Partial<'_>) -> PartialFacts {
    PartialFacts {
        version: p.meta.version,
        size: p.meta.size,
        chunk_size: p.meta.chunk_size,
        file_id: p.meta.file_id,
        sealed_key: p.meta.sealed_key.is_some(),
    }
}

/// Whether a partial left at the end of a transfer can be resumed: a
/// push or a deposit needs the key sealed to its source (who continues
/// with it); a pull gets its key again with the served entry.
fn resumable(ctx: &SinkCtx, p: &Partial<'_>) -> bool {
    ctx.flow == KeyFlow::Known || p.key_recordable()
}

/// The slot name of an entry: a pull's object, a deposit's tag, or a
/// pushed name. The first two are not valid file names (a NUL), so they
/// never meet the slot of a file the same peer pushes.
fn slot_name(flow: KeyFlow, f: &Expect) -> String {
    match (&f.known, flow) {
        (Some(k), _) => pull_slot_name(&k.id),
        (None, KeyFlow::Sealed) => format!("\0{}", f.name),
        (None, _) => f.name.clone(),
    }
}

/// Plans the files (on the disk thread): resume what this peer left, start
/// the rest. Each entry's partial is found by its slot (a keyed hash of
/// peer and name): only this peer's partials of the offered names are
/// read, and each is claimed first, taking it over from an older
/// connection.
fn plan(
    ctx: &SinkCtx,
    peer: PublicKey,
    conn: &quinn::Connection,
    files: Vec<Expect>,
    claims: &mut Claims,
) -> Result<(Vec<FileState>, Planned), NetError> {
    let vault = ctx.vault;
    let mut plans = Vec::with_capacity(files.len());
    let mut infos = Vec::with_capacity(files.len());
    let mut states = Vec::with_capacity(files.len());
    let mut held = 0u64;
    let mut unchanged = Vec::new();
    // Every slot is claimed first: a claim takes it over from an older
    // connection of this peer once that one's disk work is over, its last
    // group committed and its receipts written. Read before, they missed
    // that group, whose files were then stored a second time (kill -9 of a
    // sender and a rerun while the old connection lived on).
    let mut slots = Vec::with_capacity(files.len());
    for f in &files {
        let slot = ctx.staging.slot(&peer, &slot_name(ctx.flow, f));
        claim(slot, conn)?;
        claims.0.push(slot);
        slots.push(slot);
    }
    // What this node already committed from this peer, for these names.
    let receipts = if ctx.skip_unchanged && ctx.flow == KeyFlow::Announced {
        let wanted = slots.iter().copied().collect();
        match vault.receipts().lookup(&ctx.staging, &wanted) {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot read the receipts ({e}); every file is stored again");
                Default::default()
            }
        }
    } else {
        Default::default()
    };
    for (i, (f, slot)) in files.into_iter().zip(slots).enumerate() {
        let slot_name = slot_name(ctx.flow, &f);
        let version = ctx
            .staging
            .version(&peer, &slot_name, f.size, f.chunk_size, &f.token);
        // The very same entry, committed before and still stored: nothing
        // to send. (A partial of it cannot be in this slot: a commit
        // removes it.)
        if let Some(r) = receipts
            .get(&slot)
            .filter(|r| r.version == version && vault.has_object(&r.object))
        {
            plans.push(FilePlan::Unchanged { file_id: r.object });
            infos.push(ChunkPlan {
                id: r.object,
                size: f.size,
                chunk_size: f.chunk_size,
                open: false,
            });
            unchanged.push((i as u32, f.name.clone(), f.size));
            states.push(FileState {
                expect: f,
                id: r.object,
                slot,
                version,
                partial: None,
                end: None,
                finished: true,
                pending: None,
                out: None,
            });
            continue;
        }
        let want = Wanted {
            version,
            size: f.size,
            chunk_size: f.chunk_size,
            fixed_id: f.known.as_ref().map(|k| k.id),
            flow: ctx.flow,
        };
        let found = match vault.resume_partial(&slot) {
            Ok(Some(p)) if proto::resume_partial(&facts(&p), &want) => Some(p),
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
        let fixed = f.known.as_ref().map(|k| k.id);
        let (plan, mut partial, id) = match found {
            Some(p) => {
                held = held.saturating_add(p.held_bytes());
                let id = p.meta.file_id;
                let sealed_key = p.meta.sealed_key.clone().unwrap_or_default();
                let plan = if ctx.flow == KeyFlow::Sealed {
                    FilePlan::ResumeSealed {
                        file_id: id,
                        sealed_key,
                        have: p.have(),
                        leaves: p.held_leaves(),
                    }
                } else {
                    FilePlan::Resume {
                        file_id: id,
                        sealed_key,
                        have: p.have(),
                    }
                };
                (plan, Some(Box::new(p)), id)
            }
            None => {
                let id: FileId = match fixed {
                    Some(id) => id,
                    None => random().map_err(StoreError::from)?,
                };
                (FilePlan::New { file_id: id }, None, id)
            }
        };
        let mut end = None;
        let mut pending = None;
        if let Some(k) = &f.known {
            // A pulled file's key is known: the partial verifies as chunks
            // arrive, and its end is the BLAKE3 of its metadata. A file to
            // publish gets its key with its destination file, once its
            // first chunk comes: no destination is open before.
            let p = match partial.take() {
                Some(p) => p,
                None => Box::new(start(ctx, &peer, slot, version, id, &f)?),
            };
            let mut p = p;
            let key = FileKey::from_secret(k.key.secret().clone());
            if matches!(f.commit, Commit::Publish { .. }) && f.kind == EntryKind::File {
                pending = Some(Box::new(key));
            } else {
                p.set_key(key)?;
            }
            partial = Some(p);
            end = Some(End::Blake3(k.meta.blake3));
        }
        plans.push(plan);
        infos.push(ChunkPlan {
            id,
            size: f.size,
            chunk_size: f.chunk_size,
            open: true,
        });
        states.push(FileState {
            expect: f,
            id,
            slot,
            version,
            partial,
            end,
            finished: false,
            pending,
            out: None,
        });
    }
    Ok((
        states,
        Planned {
            plans,
            infos: Arc::new(infos),
            held,
            unchanged,
        },
    ))
}

fn start(
    ctx: &SinkCtx,
    peer: &PublicKey,
    slot: Slot,
    version: [u8; 32],
    id: FileId,
    f: &Expect,
) -> Result<Partial<'static>, StoreError> {
    let mut p = ctx.vault.start_partial(PartialMeta {
        slot,
        version,
        file_id: id,
        size: f.size,
        chunk_size: f.chunk_size,
        sealed_key: None,
        label: Vec::new(),
    })?;
    // Its owner's view of it (`vault partials`), sealed to the vault key
    // at the first checkpoint; a deposit's name is the depositor's tag,
    // not a name, so none is kept.
    let (kind, name) = match ctx.flow {
        KeyFlow::Announced => (PartialKind::Received, f.name.clone()),
        KeyFlow::Known => (PartialKind::Fetched, f.name.clone()),
        KeyFlow::Sealed => (PartialKind::Deposit, String::new()),
    };
    p.describe_at_checkpoint(PartialLabel {
        peer: *peer,
        kind,
        name,
    });
    Ok(p)
}

/// Opens a pulled file's destination (an unnamed file in its directory
/// under the destination, every directory on the way entered relative to
/// its parent and never through a link) and starts its verification,
/// which writes the plaintext there in order as it checks it.
fn prepare(ctx: &SinkCtx, peer: &PublicKey, st: &mut FileState) -> Result<(), StoreError> {
    let Some(key) = st.pending.take() else {
        return Ok(());
    };
    let (Commit::Publish { rel }, Some(dest)) = (&st.expect.commit, &ctx.dest) else {
        return Err(StoreError::Invalid("no destination".into()));
    };
    let (dir, last) = parent_dir(dest, rel)?;
    let dir = match dir {
        Some(d) => Arc::new(d),
        None => dest.clone(),
    };
    let out = NewFile::create(dir, last.as_ref())?;
    let stream = out
        .file()
        .try_clone()
        .map_err(|e| StoreError::io("cannot write", "the destination file", e))?;
    st.out = Some(Box::new(out));
    let p = open_or_start(ctx, peer, st)?;
    p.set_key_streaming(*key, Some(stream))
}

fn open_or_start<'a>(
    ctx: &SinkCtx,
    peer: &PublicKey,
    st: &'a mut FileState,
) -> Result<&'a mut Partial<'static>, StoreError> {
    let p = match st.partial.take() {
        Some(p) => p,
        None => Box::new(start(ctx, peer, st.slot, st.version, st.id, &st.expect)?),
    };
    Ok(st.partial.insert(p))
}

/// What the disk actor tells the control loop as it goes.
struct Tally<'a> {
    /// New chunk bytes stored.
    progress: &'a AtomicU64,
    /// Files committed.
    ok_count: &'a AtomicU64,
    /// Where this node's disk filled, if it did.
    full: &'a std::sync::Mutex<Option<PathBuf>>,
}

/// Owns every partial of one transfer: writes chunks, checkpoints, verifies
/// and commits finished files, and reports results. Returns the failures.
fn disk_actor(
    ctx: &Arc<SinkCtx>,
    peer: PublicKey,
    mut files: Vec<FileState>,
    mut rx: Inbox,
    res: &mpsc::UnboundedSender<Msg>,
    tally: Tally<'_>,
) -> Vec<String> {
    let Tally {
        progress,
        ok_count,
        full,
    } = tally;
    let syncer = Syncer::start();
    let failures = std::cell::RefCell::new(Vec::new());
    // This reception's full disk was reported (to both sides).
    let mut said_full = false;
    let fail = |name: &str, message: &str| {
        (ctx.report)(Note::FileFailed {
            name: name.to_string(),
            message: message.to_string(),
        });
        failures
            .borrow_mut()
            .push(format!("  {}: {message}", text::escape(name)));
    };
    // A pulled file whose partial already holds every chunk (the last run
    // ended between its last chunk and its commit) gets no chunk from the
    // source: it is finished now.
    let settle = |name: &str, msg: Msg| {
        match &msg {
            Msg::FileResult { ok: true, .. } => {
                ok_count.fetch_add(1, Ordering::Relaxed);
            }
            Msg::FileResult { message, .. } => fail(name, message),
            _ => {}
        }
        let _ = res.send(msg);
    };
    let mut group = Group::default();
    for (i, st) in files.iter_mut().enumerate() {
        if st.pending.is_some() && st.partial.as_ref().is_some_and(|p| p.has_every_chunk()) {
            if let Err(e) = prepare(ctx, &peer, st) {
                warn!("cannot open a destination: {e}");
            }
        }
        if let Some(msg) = finish_if_ready(ctx, st, i as u32, peer, &syncer, &mut group) {
            settle(&st.expect.name, msg);
        }
    }
    // A group is handed to the committer whenever nothing else is queued
    // (so a lone file waits for nothing) and there is room, and when it is
    // full; its results go out as soon as it is durable.
    let mut committer = Committer::start(ctx.staging.clone());
    let rt = rx.rt.clone();
    let settle_all = |c: Committed, files: &[FileState]| {
        for (i, msg) in c.results(ctx, files) {
            settle(&files[i].expect.name, msg);
        }
    };
    let submit = |committer: &mut Committer, group: &mut Group, files: &[FileState]| {
        if let Some(c) = committer.submit(group) {
            settle_all(c, files);
        }
    };
    // Everything verified is committed and answered.
    let flush = |committer: &mut Committer, group: &mut Group, files: &[FileState]| {
        submit(committer, group, files);
        while let Some(c) = committer.wait_one(&rt) {
            settle_all(c, files);
        }
    };
    loop {
        while let Some(c) = committer.try_done() {
            settle_all(c, &files);
        }
        let cmd = match rx.try_next() {
            Some(c) => c,
            None => {
                if committer.has_room() {
                    submit(&mut committer, &mut group, &files);
                }
                match rx.next(&mut committer) {
                    Some(Input::Cmd(c)) => c,
                    Some(Input::Committed(c)) => {
                        settle_all(c, &files);
                        continue;
                    }
                    None => break,
                }
            }
        };
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
                    let p = open_or_start(ctx, &peer, st)?;
                    if fresh {
                        p.reset();
                    }
                    match key {
                        StartKey::Key(key) => {
                            p.set_key(*key)?;
                            p.seal_key_at_checkpoint(peer, ctx.me);
                        }
                        // The depositor's own seal, kept for its resume.
                        StartKey::Sealed(sealed) => p.set_sealed_key(sealed),
                    }
                }
                DiskCmd::Chunk {
                    index, data, leaf, ..
                } => {
                    prepare(ctx, &peer, st)?;
                    let p = open_or_start(ctx, &peer, st)?;
                    // A chunk already held is not progress: re-sending one
                    // cannot keep a transfer alive.
                    if !p.has(index) {
                        let plain = (data.len() - CHUNK_OVERHEAD) as u64;
                        progress.fetch_add(plain.max(1), Ordering::Relaxed);
                        let job = p.write_chunk(index, data, leaf)?;
                        // A partial whose key has not come yet could never
                        // resume from that checkpoint (crash campaign):
                        // none is written until it can.
                        if let Some(job) = job.filter(|_| resumable(ctx, p)) {
                            syncer.run(job);
                        }
                        (ctx.report)(Note::Bytes(plain));
                    }
                }
                DiskCmd::End { end, .. } => st.end = Some(end),
            }
            Ok(())
        })();
        if let Err(StoreError::Corrupt { what, detail }) = step {
            // Data that passed its MAC but not the file key: an
            // authenticated but broken or hostile source. That file is
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
            fail(&st.expect.name, &message);
            let _ = res.send(Msg::FileResult {
                file: file as u32,
                ok: false,
                code: result_code::VERIFY,
                message,
            });
            continue;
        }
        if let Err(e) = step {
            let (code, message) = match &e {
                StoreError::DiskFull { path } => {
                    // Here, the operator's side: the sender was told, and
                    // acts. A fetch (this end asked) says it in its error.
                    if !ctx.initiator {
                        fail(
                            &st.expect.name,
                            &format!(
                                "not stored: disk full in {}; the sender was told, and can resume once space is freed",
                                crate::store::error::full_dir(path)
                            ),
                        );
                    }
                    (RefuseCode::DiskFull, DISK_FULL_KEPT.to_string())
                }
                other => {
                    fail(&st.expect.name, &other.to_string());
                    (RefuseCode::Storage, storage_message(other))
                }
            };
            if let StoreError::DiskFull { path } = &e {
                said_full = true;
                *full.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.clone());
            }
            // What verified before the failure is committed (or fails)
            // and is answered first: the sender is told of every file.
            flush(&mut committer, &mut group, &files);
            let _ = res.send(Msg::Refused { code, message });
            break;
        }
        if let Some(msg) = finish_if_ready(ctx, st, file as u32, peer, &syncer, &mut group) {
            settle(&st.expect.name, msg);
        }
        if group.full() {
            if !committer.has_room() {
                if let Some(c) = committer.wait_one(&rt) {
                    settle_all(c, &files);
                }
            }
            submit(&mut committer, &mut group, &files);
        }
    }
    flush(&mut committer, &mut group, &files);
    // Whatever is left becomes a resumable partial, or is removed when it
    // cannot be resumed (its key never arrived).
    syncer.barrier();
    for st in &mut files {
        if let Some(mut p) = st.partial.take() {
            if resumable(ctx, &p) {
                if let Err(e) = p.checkpoint() {
                    let name = text::escape(&st.expect.name);
                    // A full disk was said once already, with where.
                    if said_full && matches!(e, StoreError::DiskFull { .. }) {
                        debug!("cannot checkpoint the partial of {name}: {e}");
                    } else {
                        warn!("cannot checkpoint the partial of {name}: {e}; it resumes from its last checkpoint");
                    }
                }
            } else {
                let slot = p.meta.slot;
                let v = p.vault();
                drop(p);
                let _ = v.remove_partial(&slot);
            }
        }
    }
    failures.into_inner()
}

/// Partials held by a live connection. A peer that comes back (after a
/// crash or a network loss) while its old connection has not yet timed out
/// takes its partials over: the old connection is closed and its disk actor
/// finishes its last checkpoint before the new one resumes. One process
/// uses one vault, so a process-wide table is exact.
static ACTIVE: std::sync::LazyLock<std::sync::Mutex<HashMap<Slot, quinn::Connection>>> =
    std::sync::LazyLock::new(Default::default);

fn active() -> std::sync::MutexGuard<'static, HashMap<Slot, quinn::Connection>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when a live connection holds the partial in `slot`.
pub fn in_use(slot: &Slot) -> bool {
    active().contains_key(slot)
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
                    b"superseded by a new connection from the same peer",
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

/// How long a new connection waits for an older one of the same peer to
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
    /// Jobs queued so far (only the disk actor queues).
    queued: std::cell::Cell<u64>,
    /// Jobs the thread has finished (run, or failed and logged).
    ran: Arc<AtomicU64>,
}

enum SyncJob {
    Run(CheckpointJob),
    Barrier(std::sync::mpsc::Sender<()>),
}

impl Syncer {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
        let ran = Arc::new(AtomicU64::new(0));
        let done = ran.clone();
        let thread = std::thread::Builder::new()
            .name("p2pfs-sync".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        SyncJob::Run(j) => {
                            run_logged(j);
                            // After the job's writes: a barrier that sees
                            // this count needs no round trip.
                            done.fetch_add(1, Ordering::Release);
                        }
                        SyncJob::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .ok();
        Self {
            tx: thread.is_some().then_some(tx),
            thread,
            queued: std::cell::Cell::new(0),
            ran,
        }
    }

    /// Queues `job`; without a thread (it could not be started, or it
    /// ended) runs it here.
    fn run(&self, job: CheckpointJob) {
        let Some(tx) = &self.tx else {
            return run_logged(job);
        };
        self.queued.set(self.queued.get() + 1);
        if let Err(std::sync::mpsc::SendError(SyncJob::Run(job))) = tx.send(SyncJob::Run(job)) {
            self.queued.set(self.queued.get() - 1);
            run_logged(job);
        }
    }

    /// Waits until every job queued so far has run. With none outstanding
    /// (a small file's usual case: its only chunk queued no checkpoint) it
    /// returns at once, without waking the thread.
    fn barrier(&self) {
        if self.ran.load(Ordering::Acquire) >= self.queued.get() {
            return;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if let Some(tx) = &self.tx {
            if tx.send(SyncJob::Barrier(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }
}

fn run_logged(job: CheckpointJob) {
    if let Err(e) = job.run() {
        warn!("checkpoint failed: {e}");
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("the checkpoint thread failed; partials resume from their last checkpoint");
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Verifies and commits a file once its key, its end and all its chunks
/// are in.
fn finish_if_ready(
    ctx: &SinkCtx,
    st: &mut FileState,
    file: u32,
    peer: PublicKey,
    syncer: &Syncer,
    group: &mut Group,
) -> Option<Msg> {
    let ready = match &st.end {
        Some(End::Blake3(_)) => st.partial.as_ref().is_some_and(|p| p.is_complete()),
        Some(End::Envelope(_)) => st.partial.as_ref().is_some_and(|p| p.has_every_chunk()),
        None => false,
    };
    if !ready {
        return None;
    }
    st.finished = true;
    let (Some(p), Some(end)) = (st.partial.take(), st.end.take()) else {
        return None;
    };
    // No checkpoint of this partial may land after its commit.
    syncer.barrier();
    let e = &st.expect;
    let blake3 = match end {
        End::Blake3(b) => b,
        End::Envelope(envelope) => {
            let (slot, v) = (p.meta.slot, p.vault());
            let outcome = p.finish_deposit(&peer, &envelope);
            return Some(result(ctx, v, slot, file, e, None, outcome));
        }
    };
    let meta = match &e.known {
        // A pulled file keeps its own metadata; it now comes from `peer`.
        Some(k) => Metadata {
            added_ms: now_ms(),
            origin: Some(peer),
            ..k.meta.clone()
        },
        None => Metadata {
            kind: match e.kind {
                EntryKind::File => Kind::File,
                EntryKind::Dir => Kind::Dir,
            },
            size: e.size,
            chunk_size: p.meta.chunk_size,
            blake3,
            added_ms: now_ms(),
            mtime: e.mtime,
            mode: e.mode & 0o777,
            origin: Some(peer),
            name: e.name.clone(),
        },
    };
    let slot = p.meta.slot;
    let v = p.vault();
    let t0 = std::time::Instant::now();
    let outcome = match (&e.commit, &ctx.dest) {
        // Verified now, committed with the files that are ready with it
        // (one pair of directory fsyncs for all): its result goes out
        // once the group is durable.
        (Commit::Vault, _) => match p.verify_for_vault(&blake3, &meta) {
            Ok(ready) => {
                group.bytes += ready.size();
                group.files.push(Grouped {
                    file,
                    ready,
                    slot,
                    vault: v,
                    blake3,
                    receipt: (ctx.flow == KeyFlow::Announced).then_some(Receipt {
                        slot,
                        version: st.version,
                        object: st.id,
                    }),
                });
                return None;
            }
            Err(e) => Err(e),
        },
        (Commit::Publish { rel }, Some(dest)) => match st.out.take() {
            Some(out) => p.publish_streamed(&blake3, &meta, *out, ctx.force),
            None => publish(*p, &blake3, &meta, dest, rel, ctx.force),
        },
        (Commit::Stream, _) => match &ctx.stream {
            Some(out) => match out.lock() {
                Ok(mut w) => p.stream_out(&blake3, &meta, &mut *w),
                Err(_) => Err(StoreError::Invalid("the output failed".into())),
            },
            None => Err(StoreError::Invalid("no destination".into())),
        },
        (Commit::Publish { .. }, None) | (Commit::Deposit, _) => {
            Err(StoreError::Invalid("no destination".into()))
        }
    };
    debug!(name = %text::escape(&e.name), elapsed_ms = t0.elapsed().as_millis() as u64, "verified and committed");
    Some(result(ctx, v, slot, file, e, Some(blake3), outcome))
}

/// Verified files waiting for their group commit.
#[derive(Default)]
struct Group {
    files: Vec<Grouped>,
    bytes: u64,
}

/// One of them.
struct Grouped {
    file: u32,
    ready: Verified<'static>,
    slot: Slot,
    vault: &'static Vault,
    blake3: [u8; 32],
    /// What to record once it is committed (a push: a later offer of the
    /// same entry is then `Unchanged`).
    receipt: Option<Receipt>,
}

/// Files a group holds before it is committed even while more data waits
/// (it is committed at once whenever the disk thread has nothing queued).
const GROUP_FILES: usize = 256;
/// Bytes a group holds before that.
const GROUP_BYTES: u64 = 64 << 20;

impl Group {
    fn full(&self) -> bool {
        self.files.len() >= GROUP_FILES || self.bytes >= GROUP_BYTES
    }

    /// Takes the files to commit, if any.
    fn take(&mut self) -> Option<Vec<Grouped>> {
        self.bytes = 0;
        Some(std::mem::take(&mut self.files)).filter(|g| !g.is_empty())
    }
}

/// A group's files once committed: what the result messages need, and
/// each file's outcome.
struct Committed {
    files: Vec<(u32, Slot, &'static Vault, [u8; 32])>,
    outcomes: Vec<Result<(), StoreError>>,
}

impl Committed {
    /// Each file's result message, with its index.
    fn results(self, ctx: &SinkCtx, files: &[FileState]) -> Vec<(usize, Msg)> {
        self.files
            .into_iter()
            .zip(self.outcomes)
            .filter_map(|((file, slot, v, blake3), outcome)| {
                let e = &files.get(file as usize)?.expect;
                Some((
                    file as usize,
                    result(ctx, v, slot, file, e, Some(blake3), outcome),
                ))
            })
            .collect()
    }
}

/// Commits groups on its own thread, so the disk actor writes the next
/// files while a group's `syncfs` and directory fsyncs wait for the disk
/// and its envelopes are sealed (two X25519 each). At most
/// [`Committer::DEPTH`] groups are in flight; their outcomes come back in
/// order through [`Inbox::next`].
struct Committer {
    tx: Option<std::sync::mpsc::Sender<Vec<Grouped>>>,
    done: mpsc::UnboundedReceiver<Committed>,
    in_flight: usize,
    thread: Option<std::thread::JoinHandle<()>>,
    staging: Arc<StagingKey>,
}

impl Committer {
    /// Groups committed or waiting to be, at most.
    const DEPTH: usize = 2;

    fn start(staging: Arc<StagingKey>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Grouped>>();
        let (done_tx, done) = mpsc::unbounded_channel();
        let key = staging.clone();
        let thread = std::thread::Builder::new()
            .name("p2pfs-commit".into())
            .spawn(move || {
                for grouped in rx {
                    let t0 = std::time::Instant::now();
                    let c = commit_here(grouped, &key);
                    debug!(
                        files = c.files.len(),
                        elapsed_ms = t0.elapsed().as_millis() as u64,
                        "group committed"
                    );
                    if done_tx.send(c).is_err() {
                        break;
                    }
                }
            })
            .ok();
        Committer {
            tx: thread.as_ref().map(|_| tx),
            done,
            in_flight: 0,
            thread,
            staging,
        }
    }

    /// True when another group may be handed over now.
    fn has_room(&self) -> bool {
        self.in_flight < Self::DEPTH
    }

    /// Hands the group's files over (committed here, on this thread, if
    /// the committer thread could not be started). Returns the outcome of
    /// such an inline commit.
    fn submit(&mut self, group: &mut Group) -> Option<Committed> {
        let grouped = group.take()?;
        match &self.tx {
            Some(tx) => match tx.send(grouped) {
                Ok(()) => {
                    self.in_flight += 1;
                    None
                }
                Err(std::sync::mpsc::SendError(grouped)) => {
                    Some(commit_here(grouped, &self.staging))
                }
            },
            None => Some(commit_here(grouped, &self.staging)),
        }
    }

    /// The oldest group's outcome if it is there, without waiting.
    fn try_done(&mut self) -> Option<Committed> {
        let c = self.done.try_recv().ok()?;
        self.in_flight -= 1;
        Some(c)
    }

    /// The oldest group's outcome, waiting for it; None when none is in
    /// flight.
    fn wait_one(&mut self, rt: &tokio::runtime::Handle) -> Option<Committed> {
        if self.in_flight == 0 {
            return None;
        }
        self.in_flight -= 1;
        rt.block_on(self.done.recv())
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Commits a group on the calling thread, then records the receipts of
/// the files it stored (durably, before any result goes out: a sender
/// told a file is stored finds it `Unchanged` next time).
fn commit_here(grouped: Vec<Grouped>, staging: &StagingKey) -> Committed {
    let mut files = Vec::with_capacity(grouped.len());
    let mut ready = Vec::with_capacity(grouped.len());
    let mut receipts = Vec::with_capacity(grouped.len());
    let vault = grouped.first().map(|g| g.vault);
    for g in grouped {
        ready.push(g.ready);
        files.push((g.file, g.slot, g.vault, g.blake3));
        receipts.push(g.receipt);
    }
    // Every partial is dropped (its files moved or kept) before a failed
    // one's result may remove it.
    let outcomes = partial::commit_group(ready);
    let stored: Vec<Receipt> = receipts
        .into_iter()
        .zip(&outcomes)
        .filter_map(|(r, o)| r.filter(|_| o.is_ok()))
        .collect();
    if let Some(v) = vault {
        // Stored whatever happens here: without its receipt, a file is
        // only sent (and stored) again next time.
        if let Err(e) = v.receipts().append(staging, &stored) {
            warn!("cannot record what was stored ({e}); unchanged files will be stored again");
        }
    }
    Committed { files, outcomes }
}

fn result(
    ctx: &SinkCtx,
    v: &Vault,
    slot: Slot,
    file: u32,
    e: &Expect,
    blake3: Option<[u8; 32]>,
    outcome: Result<(), StoreError>,
) -> Msg {
    match outcome {
        Ok(()) => {
            (ctx.report)(Note::FileDone {
                name: e.name.clone(),
                size: e.size,
                folder: e.kind == EntryKind::Dir,
                blake3,
            });
            Msg::FileResult {
                file,
                ok: true,
                code: result_code::OK,
                message: String::new(),
            }
        }
        Err(err) => {
            // A file that fails verification is not kept: resuming it
            // would only fail again. One that could not be published (an
            // existing destination, say) stays resumable.
            let keep = matches!(
                err,
                StoreError::DestinationExists { .. } | StoreError::DestinationLink { .. }
            );
            if !keep {
                let _ = v.remove_partial(&slot);
            }
            let code = match err {
                StoreError::DiskFull { .. } => result_code::DISK_FULL,
                StoreError::Corrupt { .. } => result_code::VERIFY,
                _ => result_code::STORE,
            };
            let message = match code {
                result_code::STORE => {
                    warn!("a storage error: {err}");
                    storage_message(&err)
                }
                // No local path for the peer; both ends read it right.
                result_code::DISK_FULL => "not stored: the receiver's disk is full".to_string(),
                _ => err.to_string(),
            };
            Msg::FileResult {
                file,
                ok: false,
                code,
                message: text::bounded(&message, text::MAX_MESSAGE - 4),
            }
        }
    }
}

/// What the other side is told of a storage failure here: one phrase for
/// every way it shows (a refusal, a file's result), and no local path.
fn storage_message(e: &StoreError) -> String {
    format!(
        "a storage error on the receiver (not tampering): {}",
        e.for_peer()
    )
}

/// Publishes a verified partial at `rel` under `dest`: every directory on
/// the way is entered relative to its parent and never through a link.
fn publish(
    p: Partial<'static>,
    blake3: &[u8; 32],
    meta: &Metadata,
    dest: &Dir,
    rel: &str,
    force: bool,
) -> Result<(), StoreError> {
    let (dir, last) = parent_dir(dest, rel)?;
    p.publish(
        blake3,
        meta,
        dir.as_ref().unwrap_or(dest),
        last.as_ref(),
        force,
    )
}

/// The directory of `rel` (`/`-separated) under `dest`, created or entered
/// one component at a time relative to its parent and never through a
/// link (`None`: `dest` itself), and the last component.
fn parent_dir<'r>(dest: &Dir, rel: &'r str) -> Result<(Option<Dir>, &'r str), StoreError> {
    let mut parts: Vec<&str> = rel.split('/').collect();
    let Some(last) = parts.pop() else {
        return Err(StoreError::Invalid(format!("{rel:?} is not a name")));
    };
    let mut dir: Option<Dir> = None;
    for part in parts {
        let next = dir.as_ref().unwrap_or(dest).child_dir(part.as_ref())?;
        dir = Some(next);
    }
    Ok((dir, last))
}

/// What every data stream of a transfer needs.
struct DataCtx {
    plans: Arc<Vec<ChunkPlan>>,
    cmd: mpsc::Sender<DiskCmd>,
    mac: Arc<MacKey>,
    budget: ChunkBudget,
}

async fn accept_data(
    conn: quinn::Connection,
    data: Arc<DataCtx>,
    report: Reporter,
    stop: Arc<tokio::sync::Notify>,
) -> Result<(), NetError> {
    let mut streams = JoinSet::new();
    let mut count = 0usize;
    loop {
        tokio::select! {
            s = conn.accept_uni() => {
                let s = s.map_err(|e| NetError::lost(&e))?;
                count += 1;
                if count > wire::MAX_UNI_STREAMS {
                    super::close_with(&conn, close::PROTOCOL, "too many data streams");
                    return Err(NetError::Protocol("too many data streams".into()));
                }
                let (data, conn2, report) = (data.clone(), conn.clone(), report.clone());
                let stop = stop.clone();
                streams.spawn(async move {
                    if let Err(e) = data_stream(s, &data).await {
                        if matches!(e, NetError::Interrupted) {
                            // The peer's stop notice: the transfer answers it.
                            stop.notify_one();
                            return;
                        }
                        let (code, why) = match &e {
                            NetError::Tampered(m) => (close::TAMPERED, m.clone()),
                            NetError::Protocol(m) => (close::PROTOCOL, m.clone()),
                            other => (close::PROTOCOL, other.to_string()),
                        };
                        if !matches!(e, NetError::ConnectionLost(_)) {
                            warn!("data stream: {why}");
                            report(Note::FileFailed {
                                name: String::new(),
                                message: format!("{why}; connection dropped, nothing of it written"),
                            });
                            super::close_with(&conn2, code, &why);
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
    let mut magic = [0u8; 4];
    s.read_exact(&mut magic).await.map_err(|e| {
        if super::is_stop_notice(&e) {
            NetError::Interrupted
        } else {
            NetError::lost(&e)
        }
    })?;
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
        let (id, want) = chunk_bounds(&d.plans, &h)?;
        // Room in the memory budgets first: the connection and the node
        // hold a bounded number of chunk bytes, whatever the streams do.
        let place = d
            .budget
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
        if d.mac
            .verify_leaf(&id, h.index, data.len() as u64, &leaf, &h.mac)
            .is_err()
        {
            return Err(NetError::Tampered(format!(
                "chunk {} of file {} failed its MAC",
                h.index, h.file
            )));
        }
        if d.cmd
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
