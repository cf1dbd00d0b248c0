//! `p2pfs vault …`: import, list, export, rm, verify, passwd, rekey.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use p2pfs::{
    crypto::to_hex,
    store::{
        format::Kind,
        vault::{id_hex, Entry, Problem, Unlocked, Vault},
        StoreError,
    },
};

use super::{exit, passphrase, progress, walk, Ctx};

/// A failure whose message was already printed, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{1}")]
pub struct Failed(pub u8, pub String);

#[derive(Subcommand)]
pub enum VaultCmd {
    /// Encrypt files and folders (recursively) into the vault. No passphrase needed.
    Import {
        /// Files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List stored files (needs the passphrase: names are encrypted).
    List {
        /// JSON array output.
        #[arg(long)]
        json: bool,
    },
    /// Decrypt a stored file (or every file under a stored folder) to DEST.
    Export {
        /// Name, id or unique id prefix (8+ hex digits).
        what: String,
        /// Destination (default: the file's base name in the current directory).
        dest: Option<PathBuf>,
        /// Replace an existing destination file.
        #[arg(long)]
        force: bool,
    },
    /// Remove a stored file.
    Rm {
        /// Name, id or unique id prefix.
        what: String,
    },
    /// Check every object: ciphertext integrity (no passphrase), or with --full decrypt everything.
    Verify {
        /// Decrypt every object and check its BLAKE3 (needs the passphrase).
        #[arg(long)]
        full: bool,
    },
    /// Change the vault passphrase.
    Passwd {
        /// Read the new passphrase from FILE (else P2PFS_NEW_PASSPHRASE(_FILE) or the terminal).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Replace the vault key pair and rewrap every file key.
    Rekey,
}

pub fn run(ctx: &Ctx, cmd: VaultCmd) -> Result<()> {
    let vault = ctx.home.vault()?;
    match cmd {
        VaultCmd::Import { paths } => import(ctx, &vault, &paths),
        VaultCmd::List { json } => list(&unlock(ctx, &vault)?, json),
        VaultCmd::Export { what, dest, force } => {
            export(ctx, &unlock(ctx, &vault)?, &what, dest, force)
        }
        VaultCmd::Rm { what } => {
            let mut u = unlock(ctx, &vault)?;
            let e = u.resolve(&what)?;
            u.remove(&e.id)?;
            println!("removed {} ({})", e.meta.name, id_hex(&e.id));
            Ok(())
        }
        VaultCmd::Verify { full } => verify(ctx, &vault, full),
        VaultCmd::Passwd {
            new_passphrase_file,
        } => {
            let mut u = unlock(ctx, &vault)?;
            let new = passphrase::get(
                &passphrase::new_source(new_passphrase_file.as_deref()),
                passphrase::Purpose::New,
            )?;
            u.change_passphrase(&new)?;
            println!("passphrase changed");
            Ok(())
        }
        VaultCmd::Rekey => {
            let mut u = unlock(ctx, &vault)?;
            let n = u.rekey()?;
            println!("vault rekeyed: {n} file key(s) rewrapped to the new vault key");
            Ok(())
        }
    }
}

fn warn_problems(problems: &[Problem]) {
    for p in problems {
        eprintln!("p2pfs: warning: damaged object {p}");
    }
}

fn unlock<'v>(ctx: &Ctx, vault: &'v Vault) -> Result<Unlocked<'v>> {
    let pass = passphrase::get(
        &passphrase::vault_source(ctx.passphrase_file.as_deref()),
        passphrase::Purpose::Existing,
    )?;
    let u = vault.unlock(&pass)?;
    warn_problems(u.problems());
    Ok(u)
}

fn import(ctx: &Ctx, vault: &Vault, paths: &[PathBuf]) -> Result<()> {
    let items = walk::collect(paths)?;
    if items.is_empty() {
        bail!("nothing to import: only symbolic links or special files were given (they are never followed)");
    }
    let total: u64 = items.iter().map(|i| i.size).sum();
    let pb = progress::bytes(total, ctx.quiet, "importing");
    let mut base = 0u64;
    for it in &items {
        let entry = if it.dir {
            let m = fs::metadata(&it.path)?;
            vault.import_dir(&it.name, m.permissions().mode(), m.mtime())?
        } else {
            pb.set_message(it.name.clone());
            vault
                .import_file(&it.path, &it.name, &mut |done| pb.set_position(base + done))
                .with_context(|| format!("cannot import {}", walk::shown(&it.path)))?
        };
        base += it.size;
        pb.suspend(|| {
            println!(
                "stored {}  {}  {}",
                &id_hex(&entry.id)[..12],
                human(entry.meta.size),
                entry.meta.name
            )
        });
    }
    pb.finish_and_clear();
    println!(
        "{} item(s), {} sealed to vault key {}",
        items.len(),
        human(total),
        &vault.public_key().fingerprint()
    );
    Ok(())
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn entry_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "id": id_hex(&e.id),
        "name": e.meta.name,
        "kind": match e.meta.kind { Kind::File => "file", Kind::Dir => "dir" },
        "size": e.meta.size,
        "blake3": to_hex(&e.meta.blake3),
        "added": rfc3339_ms(e.meta.added_ms),
        "mtime": e.meta.mtime,
        "mode": format!("{:o}", e.meta.mode),
        "origin": e.meta.origin.map(|o| o.to_id()),
    })
}

fn list(u: &Unlocked<'_>, json: bool) -> Result<()> {
    let entries = u.entries();
    if json {
        let v: Vec<_> = entries.iter().map(entry_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for e in &entries {
        let name = if e.meta.kind == Kind::Dir {
            format!("{}/", e.meta.name)
        } else {
            e.meta.name.clone()
        };
        println!(
            "{}  {:>10}  {}  {}",
            &id_hex(&e.id)[..12],
            human(e.meta.size),
            rfc3339_ms(e.meta.added_ms),
            name
        );
    }
    if entries.is_empty() {
        eprintln!("(vault is empty)");
    }
    Ok(())
}

fn export(
    ctx: &Ctx,
    u: &Unlocked<'_>,
    what: &str,
    dest: Option<PathBuf>,
    force: bool,
) -> Result<()> {
    let base_of = |name: &str| name.rsplit('/').next().unwrap_or(name).to_owned();
    match u.resolve(what) {
        Ok(e) => {
            let dest = match dest {
                None => PathBuf::from(base_of(&e.meta.name)),
                Some(d) if d.is_dir() && e.meta.kind == Kind::File => d.join(base_of(&e.meta.name)),
                Some(d) => d,
            };
            export_one(ctx, u, &e, &dest, force)
        }
        Err(StoreError::NotFound { .. }) => {
            // A folder: every stored name under `what/`.
            let prefix = format!("{}/", what.trim_end_matches('/'));
            let under: Vec<Entry> = u
                .entries()
                .into_iter()
                .filter(|e| e.meta.name.starts_with(&prefix))
                .collect();
            if under.is_empty() {
                return Err(StoreError::NotFound { query: what.into() }.into());
            }
            let root = dest.unwrap_or_else(|| PathBuf::from(base_of(what.trim_end_matches('/'))));
            for e in &under {
                let rel = &e.meta.name[prefix.len()..];
                let target = root.join(rel);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                export_one(ctx, u, e, &target, force)?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn export_one(ctx: &Ctx, u: &Unlocked<'_>, e: &Entry, dest: &Path, force: bool) -> Result<()> {
    let pb = progress::bytes(e.meta.size, ctx.quiet, &e.meta.name);
    u.export(&e.id, dest, force, &mut |d| pb.set_position(d))?;
    pb.finish_and_clear();
    println!(
        "exported {} -> {} (BLAKE3 verified)",
        e.meta.name,
        dest.display()
    );
    Ok(())
}

fn verify(ctx: &Ctx, vault: &Vault, full: bool) -> Result<()> {
    let report = if full {
        let u = unlock(ctx, vault)?;
        let pb = progress::count(0, ctx.quiet, "verifying");
        let r = u.verify_full(&mut |n, t| {
            pb.set_length(t as u64);
            pb.set_position(n as u64)
        });
        pb.finish_and_clear();
        r
    } else {
        let pb = progress::count(0, ctx.quiet, "verifying");
        let r = vault.verify_ciphertext(&mut |n, t| {
            pb.set_length(t as u64);
            pb.set_position(n as u64)
        })?;
        pb.finish_and_clear();
        r
    };
    if report.leftovers > 0 {
        eprintln!(
            "p2pfs: note: {} data file(s) without an envelope: leftovers of interrupted stores, removed by the next unlocked command (list, export, verify --full)",
            report.leftovers
        );
    }
    if report.problems.is_empty() {
        println!(
            "{} object(s) checked{}: all intact",
            report.checked,
            if full {
                " (decrypted, BLAKE3 verified)"
            } else {
                " (ciphertext digests)"
            }
        );
        return Ok(());
    }
    let lines: Vec<String> = report.problems.iter().map(|p| format!("  {p}")).collect();
    bail!(Failed(
        exit::CORRUPT,
        format!(
            "{} of {} object(s) damaged:\n{}",
            report.problems.len(),
            report.checked,
            lines.join("\n")
        )
    ))
}
