//! The sending side (`p2pfs send`): connects, authenticates the receiver
//! against the key the caller decided (given, pinned, or confirmed by the
//! user at first contact after a [`probe`]), offers the
//! files, then reads each file once — hashing the plaintext, sealing and
//! MACing the chunks the receiver lacks — and spreads the chunks over
//! parallel QUIC streams; succeeds only when the receiver has committed and
//! verified every file (`docs/PROTOCOL.md`).

use std::{
    fs::File,
    io::Read,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, Mutex};

use super::{
    close, endpoint,
    events::{Event, EventTx},
    handshake::{self, Mode, Session, EXPORTER_LABEL},
    receiver::wrap_file_key,
    wire::{
        self, bitmap, ChunkHeader, EntryKind, FileOffer, FilePlan, Msg, RefuseCode, DATA_MAGIC,
    },
    KeyHint, NetError,
};
use crate::{
    crypto::{
        chunk::{
            chunk_count, chunk_plain_len, FileId, FileKey, CHUNK_OVERHEAD, DEFAULT_CHUNK_SIZE,
        },
        keys::{Keypair, PublicKey},
        to_hex,
    },
    store::{
        partial::open_key,
        sent::{entry_tag, SentLog},
        StoreError,
    },
    text,
};

/// Where to send, and the key the receiver must prove. The sender never
/// decides trust itself: the caller resolved the key (given, pinned, or
/// confirmed at first contact with [`probe`]).
#[derive(Debug, Clone)]
pub struct Target {
    /// The socket address.
    pub addr: SocketAddr,
    /// How the user named it (`host:port`), for messages.
    pub label: String,
    /// The key the peer must have.
    pub expected: PublicKey,
    /// Why that key is expected (for the advice after a mismatch).
    pub hint: KeyHint,
}

/// One entry to send.
#[derive(Debug, Clone)]
pub struct Item {
    /// Local path.
    pub path: PathBuf,
    /// What is offered.
    pub offer: FileOffer,
}

/// Tuning.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Parallel data streams.
    pub streams: usize,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            streams: 4,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// What a completed send did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The receiver.
    pub peer: PublicKey,
    /// Its name.
    pub peer_name: String,
    /// Files committed.
    pub files: usize,
    /// Chunk bytes sent on the wire.
    pub bytes_sent: u64,
    /// Plaintext bytes the receiver already had.
    pub bytes_skipped: u64,
}

/// The version token of a source file (`docs/PROTOCOL.md`, `token`).
pub fn source_token(m: &std::fs::Metadata) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"p2pfs/source-token/v1");
    for v in [m.dev(), m.ino(), m.size()] {
        h.update(&v.to_be_bytes());
    }
    for v in [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()] {
        h.update(&v.to_be_bytes());
    }
    let mut t = [0u8; 16];
    t.copy_from_slice(&h.finalize().as_bytes()[..16]);
    t
}

/// Builds the offer entry of a local file or empty directory.
pub fn item_for(path: &Path, name: String, dir: bool) -> std::io::Result<Item> {
    let m = std::fs::symlink_metadata(path)?;
    Ok(Item {
        path: path.to_path_buf(),
        offer: FileOffer {
            name,
            kind: if dir { EntryKind::Dir } else { EntryKind::File },
            size: if dir { 0 } else { m.len() },
            mtime: m.mtime(),
            mode: m.mode() & 0o777,
            token: source_token(&m),
        },
    })
}

/// How long a receiver may stay silent, once every chunk is sent, before
/// the sender gives up on its results; also how long it may take no data.
const RESULT_WAIT: Duration = Duration::from_secs(120);

/// Maps how a connection ended to an error.
fn closed_error(e: &quinn::ConnectionError) -> NetError {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            // The reason is the peer's text: bounded and escaped here, once.
            let reason = text::from_peer(&String::from_utf8_lossy(&c.reason));
            match c.error_code.into_inner() as u32 {
                close::TAMPERED => {
                    NetError::Tampered(format!("the receiver rejected data: {reason}"))
                }
                close::REFUSED => NetError::Refused {
                    code: RefuseCode::Declined,
                    message: reason,
                },
                close::SHUTDOWN => NetError::ConnectionLost("the receiver is shutting down".into()),
                close::HANDSHAKE => {
                    NetError::Handshake(format!("the receiver ended the handshake: {reason}"))
                }
                close::PROTOCOL => NetError::Protocol(format!("the receiver reported: {reason}")),
                _ => NetError::ConnectionLost(reason),
            }
        }
        // A transport close carries a reason from the peer too.
        other => NetError::lost(other),
    }
}

/// An authenticated connection.
pub struct Authenticated {
    /// The endpoint (kept alive with the connection).
    pub endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
    /// Control stream, send half.
    pub send: quinn::SendStream,
    /// Control stream, receive half.
    pub recv: quinn::RecvStream,
    /// Session keys and peer.
    pub session: Session,
}

/// A QUIC connection and its control stream, before authentication.
async fn open(
    target_addr: SocketAddr,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        [u8; 32],
    ),
    NetError,
> {
    let endpoint = endpoint::client(target_addr)?;
    let conn = endpoint::connect(&endpoint, target_addr, Duration::from_secs(5))
        .await
        .map_err(peer_text)?;
    let (send, recv) = conn.open_bi().await.map_err(|e| closed_error(&e))?;
    let mut prologue = [0u8; 32];
    conn.export_keying_material(&mut prologue, EXPORTER_LABEL, b"")
        .map_err(|_| NetError::Setup("TLS exporter unavailable".into()))?;
    Ok((endpoint, conn, send, recv, prologue))
}

async fn attempt(
    identity: &Keypair,
    target: &Target,
    mode: Mode,
) -> Result<Authenticated, NetError> {
    let (endpoint, conn, mut send, mut recv, prologue) = open(target.addr).await?;
    let hs = tokio::time::timeout(
        Duration::from_secs(10),
        handshake::initiate(
            &mut recv,
            &mut send,
            identity,
            &prologue,
            target.expected,
            mode,
            &target.label,
        ),
    )
    .await
    .map_err(|_| NetError::Timeout("in the handshake"))?;
    match hs {
        Ok(session) => Ok(Authenticated {
            endpoint,
            conn,
            send,
            recv,
            session,
        }),
        Err(e) => {
            let code = if matches!(e, NetError::KeyChanged { .. }) {
                close::KEY_MISMATCH
            } else {
                close::HANDSHAKE
            };
            conn.close(quinn::VarInt::from_u32(code), b"handshake failed");
            Err(match e {
                NetError::KeyChanged {
                    addr,
                    expected,
                    actual,
                    ..
                } => NetError::KeyChanged {
                    addr,
                    expected,
                    actual,
                    hint: target.hint.clone(),
                },
                other => peer_text(other),
            })
        }
    }
}

/// Connects and authenticates the receiver as `target.expected`: IK, and
/// when that fails (the key changed?) once more as XX to name the key that
/// answers — refused before our own key is sent.
pub async fn connect(identity: &Keypair, target: &Target) -> Result<Authenticated, NetError> {
    match attempt(identity, target, Mode::Ik).await {
        Err(NetError::Handshake(first)) => match attempt(identity, target, Mode::Xx).await {
            Err(e @ NetError::KeyChanged { .. }) => Err(e),
            Err(_) => Err(NetError::Handshake(first)),
            Ok(a) => Ok(a),
        },
        other => other,
    }
}

/// Learns which key answers at `addr` (first contact) without sending our
/// own static key or anything else: the Noise XX handshake up to the
/// receiver's message 2, which proves it holds that key; then the
/// connection is closed.
pub async fn probe(identity: &Keypair, addr: SocketAddr) -> Result<PublicKey, NetError> {
    let (endpoint, conn, mut send, mut recv, prologue) = open(addr).await?;
    let key = tokio::time::timeout(
        Duration::from_secs(10),
        handshake::probe(&mut recv, &mut send, identity, &prologue),
    )
    .await
    .map_err(|_| NetError::Timeout("in the handshake"))?;
    conn.close(
        quinn::VarInt::from_u32(close::HANDSHAKE),
        b"first contact: key learnt, asking the user",
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    key.map_err(peer_text)
}

/// A connection or handshake failure made safe to show: its text may quote
/// the peer's close reason (through the QUIC or stream error).
fn peer_text(e: NetError) -> NetError {
    match e {
        NetError::Handshake(s) => NetError::Handshake(text::from_peer(&s)),
        NetError::Unreachable { addr, detail } => NetError::Unreachable {
            addr,
            detail: text::from_peer(&detail),
        },
        other => other,
    }
}

/// Reads control messages until one arrives; maps a closed connection.
async fn next_msg(
    a: &mut Authenticated,
    wait: Duration,
    what: &'static str,
) -> Result<Msg, NetError> {
    match tokio::time::timeout(wait, wire::read_msg(&mut a.recv)).await {
        Err(_) => Err(NetError::Timeout(what)),
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) | Ok(Err(NetError::ConnectionLost(_))) => match a.conn.close_reason() {
            Some(e) => Err(closed_error(&e)),
            None => Err(NetError::ConnectionLost(
                "the receiver closed the control stream".into(),
            )),
        },
        Ok(Err(e)) => Err(e),
    }
}

struct Plan {
    id: FileId,
    key: FileKey,
    have: Option<Vec<u8>>,
    fresh: bool,
    rejected: Option<String>,
}

/// Sends `items` to `target`.
pub async fn send(
    identity: &Keypair,
    home: &Path,
    target: &Target,
    items: Vec<Item>,
    opts: &SendOptions,
    events: EventTx,
) -> Result<Summary, NetError> {
    let mut a = connect(identity, target).await?;
    let peer = a.session.peer;
    let peer_name = match next_msg(
        &mut a,
        Duration::from_secs(60),
        "waiting for the receiver's welcome",
    )
    .await?
    {
        // `Msg::check` validated it as a node name.
        Msg::Welcome { name, .. } => name,
        Msg::Refused { code, message } => return Err(refused(code, &message)),
        other => {
            return Err(NetError::Protocol(format!(
                "expected a welcome, got {}",
                other.kind()
            )))
        }
    };
    let _ = events.send(Event::Connected {
        peer,
        name: peer_name.clone(),
    });

    let offers: Vec<FileOffer> = items.iter().map(|i| i.offer.clone()).collect();
    wire::write_msg(
        &mut a.send,
        &Msg::Offer {
            chunk_size: opts.chunk_size,
            files: offers,
        },
    )
    .await?;
    let plans = match next_msg(
        &mut a,
        Duration::from_secs(330),
        "waiting for the receiver to accept",
    )
    .await?
    {
        Msg::Plan { files } if files.len() == items.len() => files,
        Msg::Refused { code, message } => return Err(refused(code, &message)),
        other => {
            return Err(NetError::Protocol(format!(
                "expected a plan for {} file(s), got {}",
                items.len(),
                other.kind()
            )))
        }
    };

    // A resume offer is honoured only for a transfer this node started with
    // this very receiver, for this entry (`store::sent`), and only if the
    // sealed key opens for the pair of us: a blob from anyone else (a stolen
    // vault folder, say) is never opened, and the file starts afresh.
    let mut log = SentLog::open(home)?;
    let mut failures = Vec::new();
    let mut tags = Vec::with_capacity(plans.len());
    let mut plan = Vec::with_capacity(plans.len());
    let mut skipped = 0u64;
    for (item, p) in items.iter().zip(plans) {
        let n = chunk_count(item.offer.size, opts.chunk_size);
        let tag = entry_tag(
            &item.offer.name,
            item.offer.size,
            &item.offer.token,
            opts.chunk_size,
        );
        let fresh_plan = |id: FileId, fresh: bool| -> Result<Plan, NetError> {
            Ok(Plan {
                id,
                key: FileKey::generate().map_err(StoreError::from)?,
                have: None,
                fresh,
                rejected: None,
            })
        };
        let next = match p {
            FilePlan::New { file_id } => fresh_plan(file_id, false)?,
            FilePlan::Resume {
                file_id,
                sealed_key,
                have,
            } => {
                let key = log
                    .contains(&peer, &file_id, &tag)
                    .then(|| open_key(identity, &peer, &file_id, &sealed_key).ok())
                    .flatten();
                match key {
                    Some(key) if have.len() as u64 == n.div_ceil(8) => {
                        let held: u64 = (0..n)
                            .filter(|i| bitmap::get(&have, *i))
                            .map(|i| chunk_plain_len(item.offer.size, opts.chunk_size, i) as u64)
                            .sum();
                        skipped = skipped.saturating_add(held);
                        let percent = (u128::from(held) * 100)
                            .checked_div(u128::from(item.offer.size))
                            .unwrap_or(100)
                            .min(100) as u8;
                        let _ = events.send(Event::Resuming {
                            name: item.offer.name.clone(),
                            percent,
                        });
                        Plan {
                            id: file_id,
                            key,
                            have: Some(have),
                            fresh: false,
                            rejected: None,
                        }
                    }
                    _ => {
                        tracing::debug!(name = %text::escape(&item.offer.name), "resume offer not honoured: sending afresh");
                        fresh_plan(file_id, true)?
                    }
                }
            }
            FilePlan::Reject { reason } => Plan {
                id: [0; 16],
                key: FileKey::generate().map_err(StoreError::from)?,
                have: None,
                fresh: false,
                rejected: Some(text::from_peer(&reason)),
            },
        };
        tags.push(tag);
        match &next.rejected {
            None => log.record(&peer, &next.id, &tag),
            Some(why) => {
                let _ = events.send(Event::FileFailed {
                    name: item.offer.name.clone(),
                    message: why.clone(),
                });
                failures.push(format!("  {}: {why}", text::escape(&item.offer.name)));
            }
        }
        plan.push(next);
    }
    log.save()?;
    drop(log);
    let total = items
        .iter()
        .try_fold(0u64, |t, i| t.checked_add(i.offer.size))
        .ok_or_else(|| NetError::Protocol("the files to send exceed 2^64 bytes".into()))?;
    let _ = events.send(Event::Start {
        files: items.len(),
        bytes: total,
        skipped,
    });

    // Control writer, data writers, file reader.
    let streams = opts.streams.clamp(1, wire::MAX_STREAMS);
    let (ctrl_tx, mut ctrl_rx) = mpsc::unbounded_channel::<Msg>();
    let (data_tx, data_rx) = mpsc::channel::<(Vec<u8>, u64)>(streams * 2);
    let data_rx = Arc::new(Mutex::new(data_rx));
    let sent = Arc::new(AtomicU64::new(0));
    let done_bytes = Arc::new(AtomicU64::new(skipped));
    let mut wire_send = a.send;
    let ctrl_task = tokio::spawn(async move {
        while let Some(m) = ctrl_rx.recv().await {
            wire::write_msg(&mut wire_send, &m).await?;
        }
        Ok::<_, NetError>(wire_send)
    });
    let mut writers = Vec::new();
    for _ in 0..streams {
        let conn = a.conn.clone();
        let rx = data_rx.clone();
        let sent = sent.clone();
        let done = done_bytes.clone();
        let ev = events.clone();
        writers.push(tokio::spawn(async move {
            // A stream is opened with its first chunk: nothing to send (a
            // plan that rejected everything) opens nothing.
            let mut stream: Option<quinn::SendStream> = None;
            loop {
                let next = rx.lock().await.recv().await;
                let Some((frame, plain)) = next else { break };
                let s = match stream.as_mut() {
                    Some(s) => s,
                    None => {
                        let mut s = conn.open_uni().await.map_err(|e| closed_error(&e))?;
                        s.write_all(DATA_MAGIC)
                            .await
                            .map_err(|e| NetError::lost(&e))?;
                        stream.insert(s)
                    }
                };
                let n = frame.len() as u64;
                // Handing quinn the buffer itself saves a copy per chunk.
                s.write_chunk(bytes::Bytes::from(frame))
                    .await
                    .map_err(|e| NetError::lost(&e))?;
                sent.fetch_add(n, Ordering::Relaxed);
                let d = done.fetch_add(plain, Ordering::Relaxed) + plain;
                let _ = ev.send(Event::Progress { done: d });
            }
            if let Some(mut s) = stream {
                let _ = s.finish();
            }
            Ok::<_, NetError>(())
        }));
    }
    let mac = a.session.mac_tx.clone();
    let wrap_keys: Vec<Option<Vec<u8>>> = plan
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.rejected.is_some() {
                Ok(None)
            } else {
                wrap_file_key(&a.session, i as u32, &p.id, &p.key).map(Some)
            }
        })
        .collect::<Result<_, _>>()?;
    let expected_results = plan.iter().filter(|p| p.rejected.is_none()).count();
    let plan_ids: Vec<Option<FileId>> = plan
        .iter()
        .map(|p| p.rejected.is_none().then_some(p.id))
        .collect();
    let hashes = Arc::new(std::sync::Mutex::new(vec![None::<[u8; 32]>; items.len()]));
    let reader_hashes = hashes.clone();
    let reader_items = items.clone();
    let chunk_size = opts.chunk_size;
    let ev = events.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<(), NetError> {
        for (i, (item, p)) in reader_items.iter().zip(plan.iter()).enumerate() {
            if p.rejected.is_some() {
                continue;
            }
            let _ = ev.send(Event::FileStart {
                name: item.offer.name.clone(),
                size: item.offer.size,
            });
            let Some(wk) = &wrap_keys[i] else { continue };
            if ctrl_tx
                .send(Msg::FileStart {
                    file: i as u32,
                    wrapped_key: wk.clone(),
                    fresh: p.fresh,
                })
                .is_err()
            {
                return Ok(());
            }
            let blake3 = read_file(i as u32, item, p, chunk_size, &mac, &data_tx)?;
            if let Ok(mut h) = reader_hashes.lock() {
                h[i] = Some(blake3);
            }
            if ctrl_tx
                .send(Msg::FileEnd {
                    file: i as u32,
                    blake3,
                })
                .is_err()
            {
                return Ok(());
            }
        }
        Ok(())
    });

    // Results: one per accepted file, each at most once. Once everything
    // is sent, a receiver that stays silent for RESULT_WAIT is given up on.
    let mut results = 0usize;
    let mut answered = vec![false; items.len()];
    let mut committed: Vec<[u8; 32]> = Vec::new();
    let mut ok_files = 0usize;
    let mut reader = reader;
    let mut reader_done = false;
    while results < expected_results {
        let wait = if reader_done {
            RESULT_WAIT
        } else {
            Duration::MAX
        };
        tokio::select! {
            m = tokio::time::timeout(wait, wire::read_msg(&mut a.recv)) => {
                let Ok(m) = m else {
                    a.conn.close(quinn::VarInt::from_u32(close::DONE), b"no results");
                    return Err(NetError::Timeout("waiting for the receiver to confirm the files"));
                };
                match m {
                    Ok(Some(Msg::FileResult { file, ok, code, message })) => {
                        let i = file as usize;
                        let (Some(item), Some(p)) = (items.get(i), plan_ids.get(i)) else {
                            return Err(NetError::Protocol("result for an unknown file".into()));
                        };
                        if answered[i] || p.is_none() {
                            return Err(NetError::Protocol("a second result, or a result for a rejected file".into()));
                        }
                        answered[i] = true;
                        results += 1;
                        if ok {
                            ok_files += 1;
                            committed.extend(p.map(|_| tags[i]));
                            let b3 = hashes.lock().ok().and_then(|h| h.get(i).copied().flatten());
                            let _ = events.send(Event::FileDone { name: item.offer.name.clone(), size: item.offer.size, blake3: b3.map(|b| to_hex(&b)).unwrap_or_default() });
                        } else {
                            let message = text::from_peer(&message);
                            let why = if code == wire::result_code::DISK_FULL { format!("the receiver's disk is full: {message}") } else { message };
                            let _ = events.send(Event::FileFailed { name: item.offer.name.clone(), message: why.clone() });
                            failures.push(format!("  {}: {why}", text::escape(&item.offer.name)));
                        }
                    }
                    Ok(Some(Msg::Refused { code, message })) => return Err(refused(code, &message)),
                    Ok(Some(other)) => return Err(NetError::Protocol(format!("unexpected message {}", other.kind()))),
                    Ok(None) | Err(NetError::ConnectionLost(_)) => {
                        let e = a.conn.closed().await;
                        return Err(closed_error(&e));
                    }
                    Err(e) => return Err(e),
                }
            }
            r = &mut reader, if !reader_done => {
                reader_done = true;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        a.conn.close(quinn::VarInt::from_u32(close::DONE), b"sender aborted");
                        return Err(e);
                    }
                    Err(e) => return Err(NetError::Protocol(format!("reader failed: {e}"))),
                }
            }
        }
    }
    if !committed.is_empty() {
        let mut log = SentLog::open(home)?;
        for tag in &committed {
            log.forget(&peer, tag);
        }
        log.save()?;
    }
    for w in writers {
        let _ = w.await;
    }
    if let Ok(Ok(mut s)) = ctrl_task.await {
        let _ = wire::write_msg(&mut s, &Msg::Done).await;
        let _ = s.finish();
    }
    // Wait for the receiver to end the control stream, then close.
    let _ = tokio::time::timeout(Duration::from_secs(5), wire::read_msg(&mut a.recv)).await;
    let stats = a.conn.stats();
    tracing::debug!(
        mtu = stats.path.current_mtu,
        rtt_us = stats.path.rtt.as_micros() as u64,
        lost = stats.path.lost_packets,
        sent_packets = stats.path.sent_packets,
        cwnd = stats.path.cwnd,
        "connection statistics"
    );
    a.conn.close(quinn::VarInt::from_u32(close::DONE), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), a.endpoint.wait_idle()).await;
    let bytes_sent = sent.load(Ordering::Relaxed);
    let _ = events.send(Event::Done {
        files: ok_files,
        bytes_sent,
        bytes_skipped: skipped,
    });
    if !failures.is_empty() {
        return Err(NetError::FilesFailed {
            failed: failures.len(),
            details: failures.join("\n"),
        });
    }
    Ok(Summary {
        peer,
        peer_name,
        files: ok_files,
        bytes_sent,
        bytes_skipped: skipped,
    })
}

/// A refusal from the receiver, its message made safe to show.
fn refused(code: RefuseCode, message: &str) -> NetError {
    NetError::Refused {
        code,
        message: text::from_peer(message),
    }
}

/// Reads one file front to back: hashes the plaintext, seals, MACs and
/// queues the chunks the receiver lacks. Returns the BLAKE3.
fn read_file(
    file: u32,
    item: &Item,
    p: &Plan,
    chunk_size: u32,
    mac: &crate::crypto::mac::MacKey,
    data_tx: &mpsc::Sender<(Vec<u8>, u64)>,
) -> Result<[u8; 32], NetError> {
    let size = item.offer.size;
    let n = chunk_count(size, chunk_size);
    let changed = || {
        NetError::Store(StoreError::SourceChanged {
            path: item.path.clone(),
        })
    };
    let mut f: Option<File> = None;
    if item.offer.kind == EntryKind::File {
        // Never through a symbolic link swapped in after the walk, and
        // only the very file the walk saw: the token covers its device,
        // inode, size and times, taken from the opened descriptor.
        let (fh, m) = crate::store::fsutil::open_source(&item.path, None)?;
        if source_token(&m) != item.offer.token {
            return Err(changed());
        }
        f = Some(fh);
    }
    let h = wire::CHUNK_HEADER_LEN;
    let mut hasher = blake3::Hasher::new();
    let mut scratch = Vec::new();
    for i in 0..n {
        let len = chunk_plain_len(size, chunk_size, i);
        let held = p.have.as_ref().is_some_and(|b| bitmap::get(b, i));
        let mut frame = if held {
            std::mem::take(&mut scratch)
        } else {
            Vec::new()
        };
        frame.resize(h + len + CHUNK_OVERHEAD, 0);
        if let Some(fh) = f.as_mut() {
            let body = &mut frame[h + 12..h + 12 + len];
            read_full(fh, body).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    changed()
                } else {
                    NetError::Store(StoreError::io("cannot read", &item.path, e))
                }
            })?;
            hasher.update(body);
        }
        if held {
            scratch = frame;
            continue;
        }
        p.key
            .seal_chunk_in_place(&p.id, i, i + 1 == n, &mut frame[h..])
            .map_err(StoreError::from)?;
        let tag = mac.tag(&p.id, i, &frame[h..]);
        let hdr = ChunkHeader {
            file,
            index: i,
            len: (len + CHUNK_OVERHEAD) as u32,
            mac: tag,
        };
        frame[..h].copy_from_slice(&hdr.encode());
        if data_tx.blocking_send((frame, len as u64)).is_err() {
            return Err(NetError::ConnectionLost("data streams closed".into()));
        }
    }
    if let Some(fh) = f.as_mut() {
        let mut probe = [0u8; 1];
        if fh
            .read(&mut probe)
            .map_err(|e| StoreError::io("cannot read", &item.path, e))?
            != 0
        {
            return Err(changed());
        }
        let m = fh
            .metadata()
            .map_err(|e| StoreError::io("cannot read", &item.path, e))?;
        if source_token(&m) != item.offer.token {
            return Err(changed());
        }
    }
    Ok(*hasher.finalize().as_bytes())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match f.read(&mut buf[off..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
