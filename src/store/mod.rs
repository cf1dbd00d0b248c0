//! Everything p2pfs keeps on disk: the home directory, the node identity,
//! the encrypted vault (format, index, staging, crash-safe commit, verify,
//! rekey, old vault keys), sealed deposits of other nodes, the trust store,
//! the shares of vault objects with peers and the sealed access log.
//!
//! Every write, sync, rename and unlink goes through [`fileops`], the seam
//! the fault-injection tests use. This module never touches the network. Layouts are specified in
//! `docs/VAULT.md`; [`format`] encodes and decodes them, [`vault`] runs the
//! procedures.

pub mod chunks;
pub mod deposit;
pub mod error;
pub mod fileops;
pub mod format;
pub mod fsutil;
pub mod home;
pub(crate) mod keychain;
pub mod log;
pub mod partial;
pub mod pending;
pub mod pin;
pub mod received;
pub mod remote;
pub mod sent;
pub mod shares;
pub mod trust;
pub mod vault;

pub use error::StoreError;
