//! The source of a transfer: once the sink's plan is in, reads each file
//! once and queues its chunks — sealing and MACing those of local files,
//! only MACing those read from vault objects (sealed once, when stored) —
//! on parallel QUIC streams, then collects the sink's results.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, Mutex};

use super::{closed_error, proto::SourceMachine, refused, write_error, Link, Note, Reporter};
use crate::{
    crypto::{
        chunk::{
            chunk_count, chunk_plain_len, ct_digest, sealed_chunk_hash, FileId, FileKey,
            CHUNK_OVERHEAD,
        },
        mac::MacKey,
    },
    net::{
        close,
        wire::{self, bitmap, ChunkHeader, EntryKind, FileOffer, FilePlan, Msg, DATA_MAGIC},
        NetError,
    },
    store::{format::ObjectHeader, StoreError},
    text,
};

/// How long a sink may stay silent, once every chunk is sent, before the
/// source gives up on its results.
pub const RESULT_WAIT: Duration = Duration::from_secs(120);

/// One local entry to send.
#[derive(Debug, Clone)]
pub struct Item {
    /// Local path (for standard input, `-`: never opened).
    pub path: PathBuf,
    /// What is offered.
    pub offer: FileOffer,
    /// Standard input as spooled (`send -`, [`crate::net::client::stdin_item`]):
    /// read from here instead of `path`; its token is its content's.
    pub spool: Option<Arc<File>>,
}

/// A vault object to send as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its id (the chunks' file id).
    pub id: FileId,
    /// Its data file.
    pub path: PathBuf,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// What the host calls it (this side may not know its name).
    pub label: String,
}

/// What a source reads from.
#[derive(Debug, Clone)]
pub enum From {
    /// A local file (or empty directory), sealed here.
    Local(Item),
    /// A vault object, sent as stored.
    Stored(Stored),
}

impl From {
    fn label(&self) -> &str {
        match self {
            From::Local(i) => &i.offer.name,
            From::Stored(s) => &s.label,
        }
    }

    fn size(&self) -> u64 {
        match self {
            From::Local(i) => i.offer.size,
            From::Stored(s) => s.size,
        }
    }

    /// An empty folder (only a local entry can be one: a vault object
    /// sent as stored is a file).
    fn is_folder(&self) -> bool {
        matches!(self, From::Local(i) if i.offer.kind == EntryKind::Dir)
    }
}

/// How one file goes, after the plan.
pub struct Sending {
    /// The chunks' file id.
    pub id: FileId,
    /// The key local chunks are sealed with (none for stored objects).
    pub key: Option<FileKey>,
    /// Chunks the sink already holds.
    pub have: Option<Vec<u8>>,
    /// True when the sink's partial is to be discarded.
    pub fresh: bool,
    /// Why the sink rejected it (nothing is sent).
    pub rejected: Option<String>,
    /// The sink already committed this very entry (nothing is sent).
    pub unchanged: bool,
    /// A deposit: how the file is sealed for its depositor.
    pub deposit: Option<Seal>,
}

/// How a deposited file is sealed: the sink gets chunks and, at the end, an
/// envelope sealed to the depositor's own vault key — never a key.
pub struct Seal {
    /// The depositor's vault key (the envelope's recipient).
    pub vault_pk: crate::crypto::keys::PublicKey,
    /// The file key sealed to the depositor's node key (for its resume).
    pub sealed_key: Vec<u8>,
    /// The BLAKE3 of each sealed chunk the sink holds, in index order.
    pub held: Vec<[u8; 32]>,
    /// The metadata to seal (its BLAKE3 and time are filled in at the end).
    pub meta: crate::store::format::Metadata,
}

/// What the sink said of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not sent: rejected in the plan, or no result.
    Pending,
    /// Not sent: the sink already holds this very entry.
    Unchanged,
    /// Committed and verified.
    Ok,
    /// Failed: how, and why (bounded and escaped).
    Failed(Failure, String),
}

/// How a file failed at the sink (from its `FileResult` code): the exit
/// code and message differ for tampering and for the sink's own storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// The sink could not store it (its disk or file system failed).
    Storage,
    /// The sink's disk is full.
    DiskFull,
    /// It did not verify there (tampered or broken data).
    Verify,
}

impl Failure {
    /// The kind of a `FileResult.code`.
    pub fn of(code: u8) -> Self {
        match code {
            wire::result_code::DISK_FULL => Failure::DiskFull,
            wire::result_code::STORE => Failure::Storage,
            _ => Failure::Verify,
        }
    }
}

/// What a source run did.
#[derive(Debug)]
pub struct Ran {
    /// One outcome per file.
    pub outcomes: Vec<Outcome>,
    /// The BLAKE3 of each local file read.
    pub blake3: Vec<Option<[u8; 32]>>,
    /// Chunk bytes sent.
    pub bytes_sent: u64,
}

/// Runs the source side once the plan is known. `initiator`: this end
/// opened the connection (a push), and ends it with `Done`; otherwise (a
/// pull) it waits for the peer's `Done`.
pub async fn run(
    link: &mut Link,
    files: Vec<(From, Sending)>,
    streams: usize,
    chunk_size: u32,
    initiator: bool,
    report: Reporter,
) -> Result<Ran, NetError> {
    let plans: Vec<FilePlan> = files
        .iter()
        .map(|(_, s)| match &s.rejected {
            Some(r) => FilePlan::Reject { reason: r.clone() },
            None if s.unchanged => FilePlan::Unchanged { file_id: s.id },
            None => FilePlan::New { file_id: s.id },
        })
        .collect();
    let mut machine = SourceMachine::on_plan(files.len(), &plans)?;
    let unchanged: Vec<bool> = files.iter().map(|(_, s)| s.unchanged).collect();
    let n = files.len();
    let streams = streams.clamp(1, wire::MAX_STREAMS);
    let (ctrl_tx, mut ctrl_rx) = mpsc::unbounded_channel::<Msg>();
    let (data_tx, data_rx) = mpsc::channel::<(Vec<u8>, u64)>(streams * 2);
    let data_rx = Arc::new(Mutex::new(data_rx));
    let sent = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..streams {
        let conn = link.conn.clone();
        let rx = data_rx.clone();
        let sent = sent.clone();
        let report = report.clone();
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
                        s.write_all(DATA_MAGIC).await.map_err(|e| write_error(&e))?;
                        stream.insert(s)
                    }
                };
                let len = frame.len() as u64;
                // Handing quinn the buffer itself saves a copy per chunk.
                s.write_chunk(bytes::Bytes::from(frame))
                    .await
                    .map_err(|e| write_error(&e))?;
                sent.fetch_add(len, Ordering::Relaxed);
                report(Note::Bytes(plain));
            }
            if let Some(mut s) = stream {
                let _ = s.finish();
            }
            Ok::<_, NetError>(())
        }));
    }
    let mac = link.session.mac_tx.clone();
    let wrap_keys: Vec<Option<Vec<u8>>> = files
        .iter()
        .enumerate()
        .map(|(i, (_, s))| match (&s.key, &s.rejected, &s.deposit) {
            (Some(k), None, None) => wrap_file_key(&link.session, i as u32, &s.id, k).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    let hashes = Arc::new(std::sync::Mutex::new(vec![None::<[u8; 32]>; n]));
    let reader_hashes = hashes.clone();
    let labels: Vec<(String, u64, bool)> = files
        .iter()
        .map(|(f, _)| (f.label().to_string(), f.size(), f.is_folder()))
        .collect();
    let rep = report.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<(), NetError> {
        for (i, (from, s)) in files.iter().enumerate() {
            if s.rejected.is_some() || s.unchanged {
                continue;
            }
            rep(Note::FileStart {
                name: from.label().to_string(),
                size: from.size(),
            });
            match from {
                From::Local(item) => {
                    let Some(key) = &s.key else { continue };
                    let start = match (&s.deposit, &wrap_keys[i]) {
                        (Some(seal), _) => Msg::DepositStart {
                            file: i as u32,
                            sealed_key: seal.sealed_key.clone(),
                            fresh: s.fresh,
                        },
                        (None, Some(wk)) => Msg::FileStart {
                            file: i as u32,
                            wrapped_key: wk.clone(),
                            fresh: s.fresh,
                        },
                        (None, None) => continue,
                    };
                    if ctrl_tx.send(start).is_err() {
                        return Ok(());
                    }
                    let (blake3, leaves) =
                        read_local(i as u32, item, s, key, chunk_size, &mac, &data_tx)?;
                    if let Ok(mut h) = reader_hashes.lock() {
                        h[i] = Some(blake3);
                    }
                    let end = match &s.deposit {
                        Some(seal) => Msg::DepositEnd {
                            file: i as u32,
                            envelope: seal_deposit(seal, &s.id, key, blake3, &leaves)?,
                        },
                        None => Msg::FileEnd {
                            file: i as u32,
                            blake3,
                        },
                    };
                    if ctrl_tx.send(end).is_err() {
                        return Ok(());
                    }
                }
                From::Stored(st) => read_stored(i as u32, st, s, &mac, &data_tx)?,
            }
        }
        Ok(())
    });

    // Results: one per accepted file, each at most once. Once everything
    // is sent, a sink that stays silent for RESULT_WAIT is given up on.
    let mut outcomes = vec![Outcome::Pending; n];
    for (o, s) in outcomes.iter_mut().zip(&unchanged) {
        if *s {
            *o = Outcome::Unchanged;
        }
    }
    let mut reader = reader;
    let mut reader_done = false;
    // A sink sends no streams but its stop notice (`wire::STOP_CODE`).
    let mut notice = std::pin::pin!(stop_notice(link.conn.clone()));
    while !machine.finished() {
        let wait = if reader_done {
            RESULT_WAIT
        } else {
            Duration::MAX
        };
        tokio::select! {
            // The reader's FileStart and FileEnd go out on the control
            // stream in its order.
            Some(m) = ctrl_rx.recv() => {
                link.send_msg(&m).await?;
            }
            m = tokio::time::timeout(wait, link.recv.read_msg()) => {
                let Ok(m) = m else {
                    link.close(close::DONE, "no results");
                    return Err(NetError::Timeout("waiting for the peer to confirm the files"));
                };
                match m {
                    Ok(Some(Msg::FileResult { file, ok, code, message })) => {
                        let i = machine.on_result(file)?;
                        let (name, size, folder) = &labels[i];
                        if ok {
                            outcomes[i] = Outcome::Ok;
                            let b3 = hashes.lock().ok().and_then(|h| h.get(i).copied().flatten());
                            report(Note::FileDone { name: name.clone(), size: *size, folder: *folder, blake3: b3 });
                        } else {
                            let message = text::from_peer(&message);
                            // The code says why; the peer's words add nothing.
                            let why = if code == wire::result_code::DISK_FULL {
                                "not stored: the receiver's disk is full".to_string()
                            } else {
                                message
                            };
                            report(Note::FileFailed { name: name.clone(), message: why.clone() });
                            outcomes[i] = Outcome::Failed(Failure::of(code), why);
                        }
                    }
                    Ok(Some(Msg::Refused { code, message })) => return Err(refused(code, &message)),
                    Ok(Some(other)) => return Err(NetError::Protocol(format!("unexpected message {}", other.kind()))),
                    Ok(None) | Err(NetError::ConnectionLost(_)) => {
                        let e = link.conn.closed().await;
                        return Err(closed_error(&e));
                    }
                    Err(e) => return Err(e),
                }
            }
            e = &mut notice => {
                if matches!(e, NetError::Interrupted) {
                    return Err(link.answer_stop());
                }
                link.close(close::PROTOCOL, &e.to_string());
                return Err(e);
            }
            r = &mut reader, if !reader_done => {
                reader_done = true;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        link.close(close::DONE, "sender aborted");
                        return Err(e);
                    }
                    Err(e) => return Err(NetError::Protocol(format!("reader failed: {e}"))),
                }
            }
        }
    }
    for w in writers {
        let _ = w.await;
    }
    if initiator {
        let _ = wire::write_msg(&mut link.send, &Msg::Done).await;
        let _ = link.send.finish();
        // Wait for the peer to end the control stream.
        let _ = tokio::time::timeout(Duration::from_secs(5), link.recv.read_msg()).await;
    } else {
        // The initiator ends the transfer once it has every result.
        match link
            .next_msg(RESULT_WAIT, "waiting for the peer to finish")
            .await
        {
            Ok(Msg::Done) => {}
            Ok(other) => {
                return Err(NetError::Protocol(format!(
                    "expected Done, got {}",
                    other.kind()
                )))
            }
            Err(e) => return Err(e),
        }
        let _ = link.send.finish();
    }
    let blake3 = hashes.lock().map(|h| h.clone()).unwrap_or_default();
    Ok(Ran {
        outcomes,
        blake3,
        bytes_sent: sent.load(Ordering::Relaxed),
    })
}

/// Waits for a stream from the sink, which may only be its stop notice
/// (`wire::STOP_CODE`): [`NetError::Interrupted`] for one, a protocol
/// error for anything else. A closed connection never ends this (the
/// transfer sees the close on its control stream and reports it).
async fn stop_notice(conn: quinn::Connection) -> NetError {
    let Ok(mut s) = conn.accept_uni().await else {
        return std::future::pending().await;
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte)).await {
        Ok(Err(e)) if super::is_stop_notice(&e) => NetError::Interrupted,
        Ok(Err(_)) if conn.close_reason().is_some() => std::future::pending().await,
        _ => NetError::Protocol("unexpected stream from the receiver".into()),
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
    session: &crate::net::handshake::Session,
    file: u32,
    id: &FileId,
    key: &FileKey,
) -> Result<Vec<u8>, NetError> {
    session
        .wrap_tx
        .seal(key_nonce(file), &key_ad(id), key.secret().expose())
        .map_err(|e| NetError::Protocol(e.to_string()))
}

/// Opens a transported file key.
pub fn unwrap_file_key(
    session: &crate::net::handshake::Session,
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
    Ok(FileKey::from_secret(
        crate::crypto::keys::Secret32::from_bytes(arr),
    ))
}

/// Frames a sealed chunk that sits at `frame[CHUNK_HEADER_LEN..]`: MAC and
/// header in place; queues it.
fn queue(
    frame: &mut Vec<u8>,
    file: u32,
    id: &FileId,
    index: u64,
    plain: usize,
    mac: &MacKey,
    data_tx: &mpsc::Sender<(Vec<u8>, u64)>,
) -> Result<[u8; 32], NetError> {
    let h = wire::CHUNK_HEADER_LEN;
    let leaf = sealed_chunk_hash(&frame[h..]);
    let tag = mac.tag_leaf(id, index, (frame.len() - h) as u64, &leaf);
    let hdr = ChunkHeader {
        file,
        index,
        len: (plain + CHUNK_OVERHEAD) as u32,
        mac: tag,
    };
    frame[..h].copy_from_slice(&hdr.encode());
    if data_tx
        .blocking_send((std::mem::take(frame), plain as u64))
        .is_err()
    {
        return Err(NetError::ConnectionLost("data streams closed".into()));
    }
    Ok(leaf)
}

/// Seals a deposited file's envelope to its depositor's vault key: its
/// metadata with the BLAKE3, and the ciphertext digest over every sealed
/// chunk (those the sink held, then those sent now, in index order).
fn seal_deposit(
    seal: &Seal,
    id: &FileId,
    key: &FileKey,
    blake3: [u8; 32],
    leaves: &[[u8; 32]],
) -> Result<Vec<u8>, NetError> {
    let meta = crate::store::format::Metadata {
        blake3,
        added_ms: crate::store::vault::now_ms(),
        ..seal.meta.clone()
    };
    Ok(crate::store::vault::seal_envelope(
        &seal.vault_pk,
        *id,
        ct_digest(leaves),
        key.secret(),
        &meta,
    )?)
}

/// Reads one local file front to back: hashes the plaintext, seals, MACs
/// and queues the chunks the sink lacks. Returns the BLAKE3 and, for a
/// deposit, the BLAKE3 of every sealed chunk in index order.
fn read_local(
    file: u32,
    item: &Item,
    s: &Sending,
    key: &FileKey,
    chunk_size: u32,
    mac: &MacKey,
    data_tx: &mpsc::Sender<(Vec<u8>, u64)>,
) -> Result<([u8; 32], Vec<[u8; 32]>), NetError> {
    let size = item.offer.size;
    let mut held_leaves = s.deposit.as_ref().map(|d| d.held.iter());
    let mut leaves = Vec::new();
    let n = chunk_count(size, chunk_size);
    let changed = || {
        NetError::Store(StoreError::SourceChanged {
            path: item.path.clone(),
        })
    };
    let mut f: Option<File> = None;
    if let Some(spool) = &item.spool {
        // Only this process holds it: nothing can change it under us.
        let mut fh = spool
            .try_clone()
            .map_err(|e| StoreError::io("cannot read", "standard input", e))?;
        std::io::Seek::rewind(&mut fh)
            .map_err(|e| StoreError::io("cannot read", "standard input", e))?;
        f = Some(fh);
    } else if item.offer.kind == EntryKind::File {
        // Never through a symbolic link swapped in after the walk, and
        // only the very file the walk saw: the token covers its device,
        // inode, size and times, taken from the opened descriptor.
        let (fh, m) = crate::store::fsutil::open_source(&item.path, None)?;
        if crate::net::client::source_token(&m) != item.offer.token {
            return Err(changed());
        }
        f = Some(fh);
    }
    let h = wire::CHUNK_HEADER_LEN;
    let mut hasher = blake3::Hasher::new();
    let mut scratch = Vec::new();
    for i in 0..n {
        let len = chunk_plain_len(size, chunk_size, i);
        let held = s.have.as_ref().is_some_and(|b| bitmap::get(b, i));
        let mut frame = if held {
            std::mem::take(&mut scratch)
        } else {
            Vec::with_capacity(h + len + CHUNK_OVERHEAD)
        };
        // Header and nonce first, then the body read straight in after
        // them (never zeroed first: that cost the sender 5% of its time).
        frame.clear();
        frame.resize(h + 12, 0);
        if let Some(fh) = f.as_mut() {
            let got = append_up_to(fh, len, &mut frame)
                .map_err(|e| NetError::Store(StoreError::io("cannot read", &item.path, e)))?;
            if got != len {
                return Err(changed());
            }
            hasher.update(&frame[h + 12..]);
        }
        frame.resize(h + len + CHUNK_OVERHEAD, 0);
        if held {
            if let Some(it) = held_leaves.as_mut() {
                let leaf = it.next().ok_or_else(|| {
                    NetError::Protocol(
                        "the receiver's plan lists fewer chunks than it holds".into(),
                    )
                })?;
                leaves.push(*leaf);
            }
            scratch = frame;
            continue;
        }
        key.seal_chunk_in_place(&s.id, i, i + 1 == n, &mut frame[h..])
            .map_err(StoreError::from)?;
        let leaf = queue(&mut frame, file, &s.id, i, len, mac, data_tx)?;
        if s.deposit.is_some() {
            leaves.push(leaf);
        }
    }
    if let Some(fh) = f.as_mut().filter(|_| item.spool.is_none()) {
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
        if crate::net::client::source_token(&m) != item.offer.token {
            return Err(changed());
        }
    }
    Ok((*hasher.finalize().as_bytes(), leaves))
}

/// Reads a vault object's sealed chunks as stored (no key: they are sent
/// exactly as they were sealed when stored), MACs and queues those the
/// sink lacks. The data file must match the object it claims to be.
fn read_stored(
    file: u32,
    st: &Stored,
    s: &Sending,
    mac: &MacKey,
    data_tx: &mpsc::Sender<(Vec<u8>, u64)>,
) -> Result<(), NetError> {
    let damaged = |what: &str| {
        NetError::Store(StoreError::corrupt(
            format!("object {}", crate::store::vault::id_hex(&st.id)),
            what.to_string(),
        ))
    };
    let f = File::open(&st.path).map_err(|e| StoreError::io("cannot open", &st.path, e))?;
    let mut hb = [0u8; ObjectHeader::LEN as usize];
    f.read_exact_at(&mut hb, 0)
        .map_err(|_| damaged("data file truncated"))?;
    let hdr = ObjectHeader::decode(&hb).map_err(|e| damaged(&e.to_string()))?;
    let n = chunk_count(st.size, st.chunk_size);
    if hdr.id != st.id || hdr.chunk_size != st.chunk_size || hdr.chunk_count != n {
        return Err(damaged("data file header does not match the object"));
    }
    let h = wire::CHUNK_HEADER_LEN;
    for i in 0..n {
        if s.have.as_ref().is_some_and(|b| bitmap::get(b, i)) {
            continue;
        }
        let len = chunk_plain_len(st.size, st.chunk_size, i);
        let mut frame = Vec::with_capacity(h + len + CHUNK_OVERHEAD);
        frame.resize(h, 0);
        let io = |e| NetError::Store(StoreError::io("cannot read", &st.path, e));
        let mut at = &f;
        std::io::Seek::seek(&mut at, std::io::SeekFrom::Start(hdr.chunk_offset(i))).map_err(io)?;
        if append_up_to(&mut at, len + CHUNK_OVERHEAD, &mut frame).map_err(io)?
            != len + CHUNK_OVERHEAD
        {
            return Err(damaged("data file truncated"));
        }
        queue(&mut frame, file, &st.id, i, len, mac, data_tx)?;
    }
    Ok(())
}

/// Appends up to `len` bytes of `r` to `buf` (fewer only at its end),
/// reading into the spare capacity as it is: the bytes are never zeroed
/// first. Returns how many were appended.
fn append_up_to(r: &mut impl Read, len: usize, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve_exact(len);
    r.take(len as u64).read_to_end(buf)
}

#[cfg(test)]
mod tests {
    use super::append_up_to;

    #[test]
    fn reads_append_after_what_is_there_and_stop_at_the_end() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut buf = vec![7u8; 3];
        let mut r = &data[..];
        assert_eq!(append_up_to(&mut r, 4096, &mut buf).unwrap(), 4096);
        assert_eq!(&buf[..3], &[7, 7, 7]);
        assert_eq!(&buf[3..], &data[..4096]);
        // Fewer only at the end: a short count tells the caller it was cut.
        assert_eq!(append_up_to(&mut r, 8192, &mut buf).unwrap(), 10_000 - 4096);
        assert_eq!(&buf[3..], &data[..]);
        assert_eq!(append_up_to(&mut r, 1, &mut buf).unwrap(), 0);
    }
}
