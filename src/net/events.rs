//! Progress and outcome events sent from the network layer to the user
//! interface task over a channel.

use crate::crypto::keys::PublicKey;

/// Something the UI may want to show.
#[derive(Debug, Clone)]
pub enum Event {
    /// Connected and authenticated.
    Connected {
        /// Peer node id.
        peer: PublicKey,
        /// Peer's self-declared name (a valid node name; display only).
        name: String,
    },
    /// The receiver is busy: the sender waits for room and tries again
    /// (at most `client::BUSY_WAIT`).
    Waiting {
        /// The receiver's reason (checked peer text).
        reason: String,
    },
    /// The receiver has not answered the offer yet (it may be asking its
    /// user, `serve --accept ask`); the sender waits up to `secs`.
    Deciding {
        /// The receiver's name (its `Welcome.name`; display only).
        name: String,
        /// How long the sender waits for the answer, in seconds.
        secs: u64,
    },
    /// A transfer is starting.
    Start {
        /// Number of entries.
        files: usize,
        /// Total plaintext bytes.
        bytes: u64,
        /// Bytes the receiver already holds (resume).
        skipped: u64,
        /// Entries not sent: the receiver already holds them, unchanged
        /// (not in `files` nor `bytes`).
        unchanged: usize,
    },
    /// An entry is not sent: the receiver already committed it from this
    /// node, unchanged, and still holds it.
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
    /// Bytes progressed (plaintext bytes of chunks sent or received).
    Progress {
        /// Bytes done so far, including skipped ones.
        done: u64,
    },
    /// A file was committed and verified by the receiver.
    FileDone {
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
        /// BLAKE3 hex.
        blake3: String,
    },
    /// A file failed.
    FileFailed {
        /// Its name.
        name: String,
        /// Why.
        message: String,
    },
    /// Everything done.
    Done {
        /// Files completed.
        files: usize,
        /// Chunk bytes that crossed the wire.
        bytes_sent: u64,
        /// Plaintext bytes skipped thanks to resume.
        bytes_skipped: u64,
        /// Entries not sent because the receiver holds them unchanged.
        unchanged: usize,
    },
}

/// The sending half of an event channel.
pub type EventTx = tokio::sync::mpsc::UnboundedSender<Event>;

/// What a serving node reports.
#[derive(Debug, Clone)]
pub enum ServerEvent {
    /// A peer authenticated.
    PeerConnected {
        /// Its node id.
        peer: PublicKey,
        /// Its address.
        addr: String,
        /// The name it gives itself (`Hello`; unproven, display only).
        claimed: String,
    },
    /// A peer was refused.
    PeerRefused {
        /// Its node id.
        peer: PublicKey,
        /// The name it gives itself (`Hello`; unproven, display only).
        claimed: String,
        /// Why.
        reason: String,
    },
    /// An offer was accepted.
    Offer {
        /// The sender.
        peer: PublicKey,
        /// Entries.
        files: usize,
        /// Total bytes.
        bytes: u64,
        /// Bytes already held (resume).
        held: u64,
    },
    /// Chunk bytes received from a peer.
    Received {
        /// The sender.
        peer: PublicKey,
        /// Plaintext bytes in this chunk.
        bytes: u64,
    },
    /// A file was verified and committed to the vault.
    Stored {
        /// The sender.
        peer: PublicKey,
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
        /// An empty folder, not a file.
        folder: bool,
    },
    /// A file or connection failed.
    Failed {
        /// The sender, when authenticated.
        peer: Option<PublicKey>,
        /// What happened.
        message: String,
    },
    /// A peer listed what it may fetch.
    Listed {
        /// The peer.
        peer: PublicKey,
        /// Entries shown to it.
        files: usize,
    },
    /// A pull starts: objects to send to a peer.
    Serving {
        /// The peer.
        peer: PublicKey,
        /// Objects.
        files: usize,
        /// Their plaintext bytes.
        bytes: u64,
        /// Bytes the peer already holds (resume).
        held: u64,
    },
    /// A pull ended: objects sent to a peer that verified them.
    Served {
        /// The peer.
        peer: PublicKey,
        /// Objects it verified and stored.
        files: usize,
        /// Chunk bytes sent.
        bytes: u64,
    },
    /// A connection ended.
    Closed {
        /// The sender.
        peer: PublicKey,
    },
    /// Partials nothing continued for longer than `serve
    /// --expire-partials` were removed.
    PartialsExpired {
        /// How many transfers.
        count: usize,
        /// The age limit.
        after: std::time::Duration,
    },
}

/// The sending half of a server event channel.
pub type ServerEventTx = tokio::sync::mpsc::UnboundedSender<ServerEvent>;
