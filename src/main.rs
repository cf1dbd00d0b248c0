//! The `p2pfs` binary: argument handling only; everything else is in the
//! library (`p2pfs::{crypto, store, net}`) and in [`cli`].
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod cli;

fn main() -> std::process::ExitCode {
    // Before anything else, and while single-threaded: take the passphrase
    // variables out of the environment (and out of /proc/PID/environ).
    cli::capture_env();
    // Behave like other command-line tools when the reader of our output
    // goes away (`p2pfs send --json … | head`): end quietly, don't panic.
    // SAFETY: resetting a signal disposition at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}
