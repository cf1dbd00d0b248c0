//! The `p2pfs` binary: argument handling only; everything else is in the
//! library (`p2pfs::{crypto, store, net}`) and in [`cli`].
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
