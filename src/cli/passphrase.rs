//! Where passphrases come from: `--passphrase-file`, then the
//! `P2PFS_PASSPHRASE_FILE` and `P2PFS_PASSPHRASE` variables, then the
//! terminal. Never a command-line argument; never a hang without a terminal.
//!
//! The passphrase variables themselves are taken out of the process's
//! environment at start-up ([`capture_env`]): a long-running `serve` would
//! otherwise show the passphrase in `/proc/PID/environ` for its whole life
//! and hand it to every child process.

use std::{
    ffi::CStr,
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{bail, Context, Result};
use p2pfs::crypto::kdf::Passphrase;
use zeroize::Zeroizing;

/// Whether a passphrase is being created (asked twice) or entered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Unlock an existing vault.
    Existing,
    /// Choose a new passphrase.
    New,
}

/// Names of the environment variables for one passphrase slot.
pub struct Source<'a> {
    /// An explicit file (from a flag).
    pub file: Option<&'a Path>,
    /// Variable naming a file.
    pub file_var: &'static str,
    /// Variable holding the passphrase.
    pub var: &'static str,
    /// The terminal prompt.
    pub prompt: &'static str,
}

/// The variables holding a passphrase itself (not a file name).
const SECRET_VARS: [(&str, &CStr); 3] = [
    ("P2PFS_PASSPHRASE", c"P2PFS_PASSPHRASE"),
    ("P2PFS_NEW_PASSPHRASE", c"P2PFS_NEW_PASSPHRASE"),
    ("P2PFS_REMOTE_PASSPHRASE", c"P2PFS_REMOTE_PASSPHRASE"),
];

/// Values of [`SECRET_VARS`] taken out of the environment, until used.
static CAPTURED: Mutex<Vec<(&'static str, Passphrase)>> = Mutex::new(Vec::new());

/// Moves the passphrase variables out of the environment into zeroizing
/// memory: the value bytes are overwritten with zeros where the process's
/// environment block holds them (the memory `/proc/PID/environ` shows;
/// removing the variable alone leaves them there), then the variable is
/// removed. Call first thing in `main`, while the process has one thread.
pub fn capture_env() {
    for (name, cname) in SECRET_VARS {
        // SAFETY: called at the start of `main`, before any other thread
        // exists, so nothing else reads or changes the environment
        // meanwhile. `getenv` returns null or a pointer to the NUL-ended
        // value inside the environment block, which stays valid and
        // writable (the initial stack area, or memory setenv allocated)
        // until the variable is changed; `strlen` bytes from it are the
        // value, copied out and then zeroed in place, length unchanged.
        let value = unsafe {
            let p = libc::getenv(cname.as_ptr());
            if p.is_null() {
                continue;
            }
            let len = libc::strlen(p);
            let value = Zeroizing::new(std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec());
            std::ptr::write_bytes(p, 0, len);
            value
        };
        std::env::remove_var(name);
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, value));
    }
}

/// The captured value of `var`, taken (each is used at most once).
fn captured(var: &str) -> Option<Passphrase> {
    let mut c = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
    let i = c.iter().position(|(n, _)| *n == var)?;
    Some(c.swap_remove(i).1)
}

/// Drops (and zeroizes) every captured passphrase not used yet.
pub fn forget_all() {
    CAPTURED.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The vault passphrase slot.
pub fn vault_source(file: Option<&Path>) -> Source<'_> {
    Source {
        file,
        file_var: "P2PFS_PASSPHRASE_FILE",
        var: "P2PFS_PASSPHRASE",
        prompt: "Vault passphrase",
    }
}

/// The new-passphrase slot of `vault passwd`.
pub fn new_source(file: Option<&Path>) -> Source<'_> {
    Source {
        file,
        file_var: "P2PFS_NEW_PASSPHRASE_FILE",
        var: "P2PFS_NEW_PASSPHRASE",
        prompt: "New vault passphrase",
    }
}

/// The passphrase of a peer's vault, typed on this device for owner
/// access (`get`, `remote list`).
pub fn remote_source(file: Option<&Path>) -> Source<'_> {
    Source {
        file,
        file_var: "P2PFS_REMOTE_PASSPHRASE_FILE",
        var: "P2PFS_REMOTE_PASSPHRASE",
        prompt: "Passphrase of the peer's vault",
    }
}

fn from_file(path: &Path) -> Result<Passphrase> {
    let mut bytes = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read passphrase file {}", path.display()))?,
    );
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(Zeroizing::new(std::mem::take(&mut *bytes)))
}

/// Gets a passphrase from the first available source.
pub fn get(src: &Source<'_>, purpose: Purpose) -> Result<Passphrase> {
    let pass = if let Some(f) = src.file {
        from_file(f)?
    } else if let Some(f) = std::env::var_os(src.file_var) {
        from_file(&PathBuf::from(f))?
    } else if let Some(v) = captured(src.var) {
        v
    } else if std::io::stdin().is_terminal() {
        let first = Zeroizing::new(
            rpassword::prompt_password(format!("{}: ", src.prompt))
                .context("cannot read the passphrase from the terminal")?,
        );
        if purpose == Purpose::New {
            let again = Zeroizing::new(
                rpassword::prompt_password(format!("{} (again): ", src.prompt))
                    .context("cannot read the passphrase from the terminal")?,
            );
            if *first != *again {
                bail!("the two passphrases differ; nothing was changed");
            }
        }
        Zeroizing::new(first.as_bytes().to_vec())
    } else {
        bail!(
            "a passphrase is needed and there is no terminal to ask on: \
             use {} FILE, or set {} or {}",
            if src.var == "P2PFS_REMOTE_PASSPHRASE" {
                "--remote-passphrase-file"
            } else {
                "--passphrase-file"
            },
            src.file_var,
            src.var
        );
    };
    if purpose == Purpose::New && pass.is_empty() {
        bail!("the passphrase must not be empty");
    }
    Ok(pass)
}
