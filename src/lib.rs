//! p2pfs: move files securely between machines on a LAN and keep them
//! encrypted at rest.
//!
//! The library is layered, and dependencies point one way:
//! `net` → `store` → `crypto` (the command-line front end lives in the
//! binary). `crypto` never touches files or sockets, `store` never knows
//! about the network, and nothing here prints to the terminal.
//!
//! On-disk formats are specified in `docs/VAULT.md`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod codec;
pub mod crypto;
pub mod net;
pub mod store;
pub mod text;
