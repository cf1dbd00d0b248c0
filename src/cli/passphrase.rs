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

use anyhow::{anyhow, bail, Context, Result};
use p2pfs::{crypto::kdf::Passphrase, store::StoreError};
use zeroize::Zeroizing;

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
    /// What choosing this passphrase does, said before a new one is asked.
    pub setting: &'static str,
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
        setting: "Choosing the passphrase of a new vault",
    }
}

/// The new-passphrase slot of `vault passwd`.
pub fn new_source(file: Option<&Path>) -> Source<'_> {
    Source {
        file,
        file_var: "P2PFS_NEW_PASSPHRASE_FILE",
        var: "P2PFS_NEW_PASSPHRASE",
        prompt: "New vault passphrase",
        setting: "Choosing a new passphrase for this vault (the old one stops working)",
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
        setting: "Choosing the passphrase of the peer's vault",
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

/// The passphrase from a file or the environment, if one is given there.
fn given(src: &Source<'_>) -> Result<Option<Passphrase>> {
    Ok(if let Some(f) = src.file {
        Some(from_file(f)?)
    } else if let Some(f) = std::env::var_os(src.file_var) {
        Some(from_file(&PathBuf::from(f))?)
    } else {
        captured(src.var)
    })
}

/// Tries on a terminal: a wrong passphrase, an empty one or two that differ
/// are asked again this many times in all.
pub const TRIES: usize = 3;

fn no_terminal(src: &Source<'_>) -> anyhow::Error {
    anyhow!(
        "a passphrase is needed and there is no terminal to ask on: \
         use {} FILE, or set {} or {}",
        if src.var == "P2PFS_REMOTE_PASSPHRASE" {
            "--remote-passphrase-file"
        } else {
            "--passphrase-file"
        },
        src.file_var,
        src.var
    )
}

fn prompt(text: &str) -> Result<Passphrase> {
    let typed = Zeroizing::new(
        rpassword::prompt_password(format!("{text}: "))
            .context("cannot read the passphrase from the terminal")?,
    );
    Ok(Zeroizing::new(typed.as_bytes().to_vec()))
}

/// How strong a new passphrase is, by zxcvbn's guess count, as one line of
/// warning when it is weak (score below 3 of 4, "too weak" by zxcvbn's own
/// measure), else `None`. Argon2id slows each guess down, but a phrase in
/// the first 10^10 guesses of a dictionary attack still falls to a stolen
/// vault header in days; the warning says so and leaves the choice to the
/// user. (zxcvbn makes working copies of the phrase that it frees without
/// wiping: the cost of an estimate, paid once, at creation only.)
pub fn weakness(pass: &[u8]) -> Option<String> {
    let text = Zeroizing::new(String::from_utf8_lossy(pass).into_owned());
    let e = zxcvbn::zxcvbn(&text, &["p2pfs", "vault"]);
    if u8::from(e.score()) >= 3 {
        return None;
    }
    let mut line = format!(
        "this passphrase is weak (strength {} of 4, about 10^{:.0} guesses)",
        e.score(),
        e.guesses_log10().max(0.0)
    );
    if let Some(w) = e.feedback().and_then(|f| f.warning()) {
        line.push_str(&format!(": {w}"));
    }
    if let Some(s) = e.feedback().and_then(|f| f.suggestions().first()) {
        line.push_str(&format!(" ({s})"));
    }
    Some(line)
}

/// Gets a new passphrase (`init`, a first `serve`, `vault passwd`) from the
/// first available source. On a terminal the user is told that it cannot
/// be recovered, an empty one is refused at once, a weak one is warned of
/// before it is confirmed, and a mistake is asked again ([`TRIES`] in all).
pub fn get_new(src: &Source<'_>) -> Result<Passphrase> {
    if let Some(pass) = given(src)? {
        if pass.is_empty() {
            bail!("the passphrase must not be empty");
        }
        if let Some(w) = weakness(&pass) {
            eprintln!("p2pfs: warning: {w}");
        }
        return Ok(pass);
    }
    if !std::io::stdin().is_terminal() {
        return Err(no_terminal(src));
    }
    eprintln!(
        "{}: it protects every file in the vault and cannot be recovered: \
         without it, nothing stored here can be read.",
        src.setting
    );
    for _ in 0..TRIES {
        let first = prompt(src.prompt)?;
        if first.is_empty() {
            eprintln!("the passphrase must not be empty");
            continue;
        }
        if let Some(w) = weakness(&first) {
            eprintln!(
                "warning: {w}; type it again to use it anyway, or something else to choose again"
            );
        }
        let again = prompt(&format!("{} (again)", src.prompt))?;
        if *first != *again {
            eprintln!("the two passphrases differ");
            continue;
        }
        return Ok(first);
    }
    bail!("no passphrase chosen after {TRIES} tries; nothing was changed")
}

/// Opens something with an existing passphrase from the first available
/// source: `open` is tried with it; on a terminal, a wrong one
/// ([`StoreError::WrongPassphrase`]) is asked again, [`TRIES`] times in
/// all. A passphrase from a file or the environment is tried once.
pub fn open_with<T>(
    src: &Source<'_>,
    mut open: impl FnMut(&Passphrase) -> std::result::Result<T, StoreError>,
) -> Result<T> {
    if let Some(pass) = given(src)? {
        return Ok(open(&pass)?);
    }
    if !std::io::stdin().is_terminal() {
        return Err(no_terminal(src));
    }
    let mut tried = 0;
    loop {
        let pass = prompt(src.prompt)?;
        tried += 1;
        match open(&pass) {
            Err(StoreError::WrongPassphrase) if tried < TRIES => {
                eprintln!("wrong passphrase, try again ({} left)", TRIES - tried);
            }
            r => return Ok(r?),
        }
    }
}
