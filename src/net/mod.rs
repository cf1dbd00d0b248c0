//! The network layer: QUIC endpoints (quinn + rustls), the Noise
//! handshake bound to the TLS session, the wire frames, the transfer
//! engine (one source and one sink for every direction, their protocol
//! decisions as pure state machines), the client and server ends of each
//! request, and LAN discovery over mDNS (`docs/PROTOCOL.md`).
//!
//! This module never prints: progress and outcomes go to the caller as
//! [`events::Event`]s over a channel and as typed [`NetError`]s.

pub mod admission;
pub mod client;
pub mod discovery;
pub mod endpoint;
pub mod engine;
pub mod events;
pub mod handshake;
pub mod pair;
pub mod server;
pub mod wire;

use thiserror::Error;

use crate::{crypto::keys::PublicKey, store::StoreError};

/// The ALPN protocol id (the protocol version).
pub const ALPN: &[u8] = b"p2pfs/5";
/// The default UDP port.
pub const DEFAULT_PORT: u16 = 47474;

/// Application close codes (`docs/PROTOCOL.md`, *Close codes*).
pub mod close {
    /// Finished normally.
    pub const DONE: u32 = 0;
    /// Refused.
    pub const REFUSED: u32 = 1;
    /// Protocol violation.
    pub const PROTOCOL: u32 = 2;
    /// Peer key does not match the pin.
    pub const KEY_MISMATCH: u32 = 3;
    /// A chunk MAC failed.
    pub const TAMPERED: u32 = 4;
    /// Receiver shutting down.
    pub const SHUTDOWN: u32 = 5;
    /// Noise handshake failed.
    pub const HANDSHAKE: u32 = 6;
    /// The user interrupted the transfer (Ctrl-C); it is resumable.
    pub const INTERRUPTED: u32 = 7;
}

/// Failures of network operations.
#[derive(Debug, Error)]
pub enum NetError {
    /// The peer could not be reached in time.
    #[error("cannot reach {addr}: {detail}. Is `p2pfs serve` running there? Check the address, the UDP port and the firewall")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What happened.
        detail: String,
    },
    /// The peer presented another key than the pinned or given one.
    #[error("{}", key_changed_message(addr, expected, actual, hint))]
    KeyChanged {
        /// The address.
        addr: String,
        /// The key we expected.
        expected: PublicKey,
        /// The key it presented.
        actual: PublicKey,
        /// What made us expect that key (for the advice).
        hint: KeyHint,
    },
    /// The peer is this node itself (its own serve).
    #[error("{addr} is this node itself ({fingerprint}): nothing was sent. To store files in this node's own vault, use `p2pfs vault import`")]
    ToSelf {
        /// The address.
        addr: String,
        /// This node's fingerprint.
        fingerprint: String,
    },
    /// The receiver refused.
    #[error("refused by the receiver: {message}")]
    Refused {
        /// Why.
        code: wire::RefuseCode,
        /// Its explanation.
        message: String,
    },
    /// The Noise handshake failed.
    #[error("authentication failed: {0}")]
    Handshake(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A chunk failed its MAC.
    #[error("tampered data: {0}")]
    Tampered(String),
    /// Some files did not arrive intact.
    #[error("{failed} file(s) failed:\n{details}")]
    FilesFailed {
        /// How many.
        failed: usize,
        /// One line each.
        details: String,
        /// The worst kind among them (tampering, a full disk, storage).
        kind: engine::source::Failure,
    },
    /// The connection was lost.
    #[error("connection lost: {0} (run the same command again to resume)")]
    ConnectionLost(String),
    /// A timeout elapsed.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// This side was interrupted (Ctrl-C): its connections were closed
    /// with a reason, so the peer knows at once.
    #[error("interrupted: the connection was closed and the peer told why; what was verified is kept (run the same command again to resume)")]
    Interrupted,
    /// A local storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local I/O.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// TLS / QUIC configuration.
    #[error("network setup: {0}")]
    Setup(String),
}

/// Not a `source`: the error is in the message, and a chain printer would
/// show it twice.
impl From<std::io::Error> for NetError {
    fn from(e: std::io::Error) -> Self {
        NetError::Io(e)
    }
}

/// What made the sender expect a key: the advice after a mismatch differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHint {
    /// The key pinned for this address.
    Address,
    /// The key the user's word names here (an alias, the id or an id
    /// prefix), tried at an address a LAN record announced for that word.
    Name {
        /// The word typed.
        word: String,
        /// The id the record at that address announced (boxed: errors stay
        /// small).
        advertised: Box<PublicKey>,
    },
    /// The key given on the command line (`NODEID@host:port`, or a full
    /// node id on the LAN).
    Given,
}

fn key_changed_message(
    addr: &str,
    expected: &PublicKey,
    actual: &PublicKey,
    hint: &KeyHint,
) -> String {
    let addr = crate::text::escape(addr);
    let mut s = format!(
        "PEER KEY CHANGED — POSSIBLE MAN-IN-THE-MIDDLE ATTACK!\n  expected {expected} (fingerprint {})\n  but {addr} answered as {actual} (fingerprint {})\nNothing was sent.",
        expected.fingerprint(),
        actual.fingerprint()
    );
    match hint {
        KeyHint::Given => s.push_str(
            " The node id was given on the command line: check that it is the right one (`p2pfs id` on that node).",
        ),
        KeyHint::Address => s.push_str(&format!(
            "\n  - If another node now has this address, send to it as NODEID@{addr}: that moves the address pin and leaves {} alone.\n  - Only if that node itself was reinstalled and you compared the new fingerprint out of band: `p2pfs trust rm {}`.",
            expected.fingerprint(),
            &expected.to_id()[..12]
        )),
        // The pin is the user's own word for a key; the node that answered
        // is most likely another one behind the same name. The advice never
        // drops that pin: it may be the only thing standing between the
        // user and an impostor.
        KeyHint::Name { word, advertised } => {
            let word = crate::text::escape(word);
            if **advertised == *actual {
                s.push_str(&format!(
                    "\n  - {word:?} names the key with fingerprint {} here (your own choice), but the node at {addr} announces {word:?} with another key of its own: most likely another node using the same name. Your pin of {word:?} stays as it is.",
                    expected.fingerprint()
                ));
            } else {
                s.push_str(&format!(
                    "\n  - {word:?} names the key with fingerprint {} here (your own choice); the record at {addr} announced fingerprint {} but the node there proved another key: someone may be impersonating it. Your pin of {word:?} stays as it is.",
                    expected.fingerprint(),
                    advertised.fingerprint()
                ));
            }
            s.push_str(&format!(
                "\n  - To send to the node that answered, compare fingerprint {} with `p2pfs id` on it, then send by its id (`p2pfs send FILE {}`) or give it a name of its own (`p2pfs trust add {actual} --name OTHER-NAME --allow none`).",
                actual.fingerprint(),
                &actual.to_id()[..12]
            ));
        }
    }
    s
}

impl NetError {
    /// Maps a stream I/O error. Its text can carry the peer's close
    /// reason, so it is bounded and escaped here.
    pub fn io(e: std::io::Error) -> Self {
        Self::lost(&e)
    }

    /// A lost connection. The error may carry the peer's close reason: it
    /// is bounded and escaped here, so no caller can show it raw.
    /// quinn's own "connection lost" prefix is dropped: the message says
    /// it once.
    pub fn lost(e: &dyn std::fmt::Display) -> Self {
        let s = e.to_string();
        let s = s
            .strip_prefix("connection lost")
            .map_or(s.as_str(), |r| r.trim_start_matches([':', ' ']));
        let s = if s.is_empty() { "the peer is gone" } else { s };
        NetError::ConnectionLost(crate::text::from_peer(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::Keypair;

    #[test]
    fn a_lost_connection_says_so_once() {
        for inner in ["connection lost", "connection lost: timed out", "timed out"] {
            let m = NetError::lost(&inner).to_string();
            assert_eq!(m.matches("connection lost").count(), 1, "{m}");
        }
    }

    #[test]
    fn the_name_hint_never_advises_dropping_the_users_pin() {
        let key = || Keypair::generate().unwrap().public();
        let (pinned, other, claimed) = (key(), key(), key());
        let msg = |advertised: PublicKey| {
            NetError::KeyChanged {
                addr: "10.0.0.2:47474".into(),
                expected: pinned,
                actual: other,
                hint: KeyHint::Name {
                    word: "twin".into(),
                    advertised: Box::new(advertised),
                },
            }
            .to_string()
        };
        // Same name, other node (it proved the key its record announced).
        let m = msg(other);
        assert!(m.contains("MAN-IN-THE-MIDDLE") && m.contains("another node using the same name"));
        assert!(
            m.contains(&other.to_id()[..12]) && m.contains("stays as it is"),
            "{m}"
        );
        assert!(!m.contains("trust rm"), "{m}");
        // A record claiming another key than the one that answered.
        let m = msg(claimed);
        assert!(
            m.contains("impersonating") && m.contains(&claimed.fingerprint()),
            "{m}"
        );
        assert!(!m.contains("trust rm"), "{m}");
    }
}
