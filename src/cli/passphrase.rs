//! Where passphrases come from: `--passphrase-file`, then the
//! `P2PFS_PASSPHRASE_FILE` and `P2PFS_PASSPHRASE` variables, then the
//! terminal. Never a command-line argument; never a hang without a terminal.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
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
    } else if let Some(v) = std::env::var_os(src.var) {
        Zeroizing::new(v.into_encoded_bytes())
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
             use --passphrase-file FILE, or set {} or {}",
            src.file_var,
            src.var
        );
    };
    if purpose == Purpose::New && pass.is_empty() {
        bail!("the passphrase must not be empty");
    }
    Ok(pass)
}
