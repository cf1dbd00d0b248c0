//! Typed errors of the store. Each message says what happened and, where
//! there is one, what to do next.

use std::{io, path::PathBuf};

use thiserror::Error;

use crate::crypto::CryptoError;

/// Failures of vault and home-directory operations.
#[derive(Debug, Error)]
pub enum StoreError {
    /// There is no node in this home directory.
    #[error(
        "no p2pfs node in {}: run `p2pfs init` first (or pass --home / set P2PFS_HOME)",
        shown(home)
    )]
    NotInitialised {
        /// The home directory looked at.
        home: PathBuf,
    },
    /// `init` found a node already there.
    #[error(
        "a p2pfs node already exists in {}; refusing to overwrite it",
        shown(home)
    )]
    AlreadyInitialised {
        /// The home directory.
        home: PathBuf,
    },
    /// The passphrase does not open the vault.
    #[error("wrong passphrase for the vault")]
    WrongPassphrase,
    /// A file is damaged or was altered.
    #[error("{what} is corrupt: {detail}")]
    Corrupt {
        /// The file or object concerned.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A file was written by a newer p2pfs.
    #[error("{what} has unsupported format version {version}: upgrade p2pfs")]
    UnsupportedVersion {
        /// The file concerned.
        what: String,
        /// The version found.
        version: u16,
    },
    /// The disk is full. Named by the directory written to: the file's own
    /// name is a temporary or an object id, nothing a user acts on.
    #[error("disk full in {}: free some space and try again", full_dir(path))]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// Another I/O failure. The OS error is part of the message and not
    /// a `source`: a chain printer would show it twice.
    #[error("{action} {}: {error}", shown(path))]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// No vault object matches the name or id.
    #[error("no file named or with id {query:?} in the vault (see `p2pfs vault list`)")]
    NotFound {
        /// What was asked for.
        query: String,
    },
    /// A name matches several objects.
    #[error(
        "{:?} matches several files; use an id (or --from ORIGIN when their origins differ):\n{}",
        query,
        candidates.join("\n")
    )]
    Ambiguous {
        /// What was asked for.
        query: String,
        /// `id  origin  name` lines of the matches.
        candidates: Vec<String>,
    },
    /// The export destination exists.
    #[error(
        "{} already exists: choose another destination or pass --force",
        shown(path)
    )]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },
    /// One or more objects failed verification.
    #[error("{} damaged object(s):\n{}", problems.len(), problems.join("\n"))]
    Damaged {
        /// One line per damaged object, naming it.
        problems: Vec<String>,
    },
    /// The source changed while it was read.
    #[error("{} changed while it was being read; try again", shown(path))]
    SourceChanged {
        /// The source file.
        path: PathBuf,
    },
    /// A source path is not a regular file (checked on the opened file, so
    /// a link or a device swapped in after the directory walk is caught).
    #[error(
        "{} is {what}: only regular files are read, and symbolic links are never followed",
        shown(path)
    )]
    NotRegularFile {
        /// The source path.
        path: PathBuf,
        /// What it is instead ("a symbolic link", "not a regular file").
        what: &'static str,
    },
    /// A directory inside an export destination is a symbolic link.
    #[error(
        "{} is a symbolic link: export never writes through links inside the destination; \
         remove it or choose another destination",
        shown(path)
    )]
    DestinationLink {
        /// The link.
        path: PathBuf,
    },
    /// A folder holds files of several origins and none was chosen.
    #[error(
        "{folder:?} holds files of several origins ({}): received files are never merged \
         with yours; export one origin with --from local or --from PEER (see `p2pfs vault list`)",
        origins.join(", ")
    )]
    MixedOrigins {
        /// The folder asked for.
        folder: String,
        /// The origins found (`local` or a sender's fingerprint).
        origins: Vec<String>,
    },
    /// No stored object came from the origin asked for.
    #[error(
        "no file in the vault came from {query:?}: give `local`, a node id, an id prefix \
         (8+ characters) or a fingerprint as `p2pfs vault list` shows it"
    )]
    UnknownOrigin {
        /// What was asked for.
        query: String,
    },
    /// A store (import or transfer) is in progress.
    #[error(
        "the vault is busy: an import or a transfer is in progress; try again when it has finished"
    )]
    Busy,
    /// The vault header names a vault key the owner did not set (pin).
    #[error(
        "vault/header names vault key {found}, but the owner set {pinned} (HOME/vault.pin): \
         the header was replaced or rolled back. Refusing to seal files to a key the owner \
         did not set. Restore the vault's own header; if you replaced the vault on purpose, \
         unlock it once with its passphrase (for example `p2pfs vault list`) to pin its key"
    )]
    VaultKeyChanged {
        /// Fingerprint of the key the header names.
        found: String,
        /// Fingerprint of the pinned key.
        pinned: String,
    },
    /// Storing needs the vault key pin, and there is no valid one.
    #[error(
        "this node has no valid vault key pin (HOME/vault.pin): files are sealed only to a \
         vault key the owner confirmed. Run any vault command that asks for the passphrase \
         once (for example `p2pfs vault list`) to pin the vault key, then try again"
    )]
    VaultNotPinned,
    /// An envelope is sealed to a key that is none of this vault's keys,
    /// current or old.
    #[error(
        "envelope {id} is sealed to vault key {recipient}, which is not a key of this vault \
         (current or older, vault/keys): it belongs to another vault"
    )]
    ForeignEnvelope {
        /// The object id.
        id: String,
        /// Fingerprint of the key it is sealed to.
        recipient: String,
    },
    /// The object is a sealed deposit of another node: it cannot be opened here.
    #[error(
        "{id} is a sealed deposit from {depositor}: it is sealed to that node's vault key; \
         only its depositor can fetch and open it (`p2pfs vault rm {id}` removes it)"
    )]
    SealedDeposit {
        /// The deposit's id.
        id: String,
        /// The depositor's fingerprint (and alias, when known).
        depositor: String,
    },
    /// A name or argument is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A cryptographic failure not covered above.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl StoreError {
    /// Wraps an I/O error, turning "no space" into [`StoreError::DiskFull`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            return StoreError::DiskFull { path };
        }
        StoreError::Io {
            action,
            path,
            error: source,
        }
    }

    /// The message for a peer: the same, without local paths (a file
    /// system layout, a user name) that are nobody else's business.
    pub fn for_peer(&self) -> String {
        match self {
            StoreError::Io { action, error, .. } => {
                format!("{action} a file in its vault: {error}")
            }
            StoreError::DiskFull { .. } => "its disk is full".to_string(),
            other => other.to_string(),
        }
    }

    /// A corruption error.
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// A path as it may be shown on a terminal: control and escape characters
/// escaped, so a hostile file name cannot drive the terminal.
pub fn shown(path: &std::path::Path) -> String {
    crate::text::escape(&path.to_string_lossy())
}

/// The directory a disk-full write went to, as shown: the file's parent.
pub fn full_dir(path: &std::path::Path) -> String {
    shown(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(path),
    )
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, item 7: an import error repeated its cause
    /// ("Input/output error (os error 5): Input/output error (os error 5)").
    #[test]
    fn an_io_error_says_its_cause_once() {
        let e = StoreError::io(
            "cannot write",
            "/x",
            io::Error::from_raw_os_error(libc::EIO),
        );
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(shown.matches("os error 5").count(), 1, "{shown}");
    }
}
