//! The transfer engine: one machinery for every direction
//! (`docs/PROTOCOL.md`, *Transfer engine*).
//!
//! A transfer moves files from a **source** to a **sink** over one
//! authenticated connection ([`Link`]):
//! - the source ([`source`]) reads chunks from local files (hashing the
//!   plaintext, sealing and MACing them) or straight from vault objects
//!   (already sealed: encrypt once, only MACed), and spreads them over
//!   parallel QUIC streams;
//! - the sink ([`sink`]) plans the files (new, resumed from its partials,
//!   rejected), checks every chunk's MAC before writing it, verifies each
//!   file end to end and commits it into the vault or publishes it as a
//!   plain file.
//!
//! `send` is a client source and a server sink, `get` a server source and a
//! client sink. The protocol decisions of both ends (which message may come
//! when, each file started and ended once, each result once, chunk bounds,
//! who may ask for what) are the pure state machines of [`proto`], which
//! tests drive in memory; this module and its children only move their
//! frames over quinn and the disk.

pub mod proto;
pub mod sink;
pub mod source;

use std::{sync::Arc, time::Duration};

use super::{close, handshake::Session, wire, wire::Msg, NetError};
use crate::{crypto::keys::PublicKey, text};

/// An authenticated connection and its control stream.
pub struct Link {
    /// The connection.
    pub conn: quinn::Connection,
    /// Control stream, send half.
    pub send: quinn::SendStream,
    /// Control stream, receive half.
    pub recv: super::wire::ControlRecv,
    /// Session keys and the peer's proven key.
    pub session: Session,
}

impl Link {
    /// The peer's proven key.
    pub fn peer(&self) -> PublicKey {
        self.session.peer
    }

    /// Writes a control message, bounded by [`WRITE_TIMEOUT`]: a peer that
    /// stops reading cannot hold the connection by withholding credit.
    pub async fn send_msg(&mut self, m: &Msg) -> Result<(), NetError> {
        send_msg(&mut self.send, m).await
    }

    /// Reads the next control message within `wait`; a closed connection
    /// is mapped to why it closed.
    pub async fn next_msg(&mut self, wait: Duration, what: &'static str) -> Result<Msg, NetError> {
        match tokio::time::timeout(wait, self.recv.read_msg()).await {
            Err(_) => Err(NetError::Timeout(what)),
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) | Ok(Err(NetError::ConnectionLost(_))) => match self.conn.close_reason() {
                Some(e) => Err(closed_error(&e)),
                None => Err(NetError::ConnectionLost(
                    "the peer closed the control stream".into(),
                )),
            },
            Ok(Err(e)) => Err(e),
        }
    }

    /// Sends a refusal (worth a few seconds, no more), ends the stream and
    /// waits briefly for the peer to read it and close.
    pub async fn refuse(&mut self, code: wire::RefuseCode, message: String) -> NetError {
        let e = refuse(&mut self.send, code, message).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.closed()).await;
        e
    }

    /// Closes the connection with an application code.
    pub fn close(&self, code: u32, why: &str) {
        close_with(&self.conn, code, why);
    }

    /// Answers the peer's stop notice (`docs/PROTOCOL.md`, *Stop notice*):
    /// closes with `close::INTERRUPTED` and returns what this side reports.
    pub fn answer_stop(&self) -> NetError {
        tracing::info!("the peer sent a stop notice (Ctrl-C)");
        self.close(close::INTERRUPTED, "Ctrl-C");
        NetError::ConnectionLost(wire::PEER_STOPPED.into())
    }
}

/// How long a write to the peer may wait for its flow-control credit.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a control message, bounded by [`WRITE_TIMEOUT`].
pub async fn send_msg(send: &mut quinn::SendStream, m: &Msg) -> Result<(), NetError> {
    tokio::time::timeout(WRITE_TIMEOUT, wire::write_msg(send, m))
        .await
        .map_err(|_| NetError::Timeout("waiting for the peer to read"))?
}

/// Sends a refusal and ends the control stream; returns it as an error.
pub async fn refuse(
    send: &mut quinn::SendStream,
    code: wire::RefuseCode,
    message: String,
) -> NetError {
    let message = text::bounded(&message, text::MAX_MESSAGE - 4);
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

/// Closes a connection with an application code and reason.
pub fn close_with(conn: &quinn::Connection, code: u32, why: &str) {
    conn.close(quinn::VarInt::from_u32(code), why.as_bytes());
}

/// A refusal from the peer, its message made safe to show.
pub fn refused(code: wire::RefuseCode, message: &str) -> NetError {
    let message = text::from_peer(message);
    NetError::Refused {
        code,
        // Said by the code, however the peer words it.
        message: if code == wire::RefuseCode::DiskFull {
            format!(
                "its disk is full: {message}; once space is freed there, run the same command again to resume"
            )
        } else {
            message
        },
    }
}

/// Maps how a connection ended to an error. The reason is the peer's
/// text: bounded and escaped here, once.
pub fn closed_error(e: &quinn::ConnectionError) -> NetError {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let reason = text::from_peer(&String::from_utf8_lossy(&c.reason));
            match c.error_code.into_inner() as u32 {
                close::TAMPERED => NetError::Tampered(format!("the peer rejected data: {reason}")),
                close::REFUSED => NetError::Refused {
                    code: wire::RefuseCode::Declined,
                    message: reason,
                },
                close::SHUTDOWN => NetError::ConnectionLost("the peer is shutting down".into()),
                close::HANDSHAKE => {
                    NetError::Handshake(format!("the peer ended the handshake: {reason}"))
                }
                close::PROTOCOL => NetError::Protocol(format!("the peer reported: {reason}")),
                close::INTERRUPTED => {
                    NetError::ConnectionLost(format!("the peer stopped it ({reason})"))
                }
                _ => NetError::ConnectionLost(reason),
            }
        }
        // A transport close carries a reason from the peer too.
        other => NetError::lost(other),
    }
}

/// True if a stream's first read failed as a stop notice does: reset
/// with [`wire::STOP_CODE`] before any byte (`docs/PROTOCOL.md`, *Stop
/// notice*).
pub fn is_stop_notice(e: &quinn::ReadExactError) -> bool {
    matches!(e, quinn::ReadExactError::ReadError(quinn::ReadError::Reset(c))
        if c.into_inner() == u64::from(wire::STOP_CODE))
}

/// Maps a failed stream write to an error: a closed connection to why it
/// closed ([`closed_error`]).
pub fn write_error(e: &quinn::WriteError) -> NetError {
    match e {
        quinn::WriteError::ConnectionLost(c) => closed_error(c),
        other => NetError::lost(other),
    }
}

/// What a transfer reports to its host, which shows it (a progress bar,
/// NDJSON events, the daemon's log). Names are the sink's or source's own
/// (never shown raw: the host escapes them).
#[derive(Debug, Clone)]
pub enum Note {
    /// The transfer starts: entries, total bytes, bytes already held.
    Start {
        /// Entries.
        files: usize,
        /// Plaintext bytes in all.
        bytes: u64,
        /// Bytes the sink already held (resume).
        skipped: u64,
    },
    /// An entry the sink already holds unchanged: not sent again.
    Unchanged {
        /// Its name.
        name: String,
    },
    /// A file is resumed.
    Resuming {
        /// Its name.
        name: String,
        /// Percent already held.
        percent: u8,
    },
    /// A file began.
    FileStart {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
    },
    /// New plaintext bytes moved (sent by a source, stored by a sink).
    Bytes(u64),
    /// A file was verified and committed by the sink.
    FileDone {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
        /// An empty folder, not a file.
        folder: bool,
        /// BLAKE3 of the plaintext, when known here.
        blake3: Option<[u8; 32]>,
    },
    /// A file failed.
    FileFailed {
        /// Its name.
        name: String,
        /// Why (already bounded and escaped).
        message: String,
    },
}

/// Where a transfer's notes go.
pub type Reporter = Arc<dyn Fn(Note) + Send + Sync>;

/// A reporter that drops everything.
pub fn quiet() -> Reporter {
    Arc::new(|_| {})
}
