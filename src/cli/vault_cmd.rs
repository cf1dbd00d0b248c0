//! `p2pfs vault …`: import, list, export, rm, verify, passwd, rekey; shares
//! of stored files with trusted peers, and the access log. Sealed deposits
//! of other nodes are listed (without a name), verified and removed here,
//! never exported: no key of this node opens them.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use p2pfs::{
    crypto::{chunk::FileId, keys::PublicKey, to_hex},
    store::{
        deposit::{Deposit, DepositList},
        format::Kind,
        fsutil,
        log::{LogAction, LogRecord},
        partial::{PartialInfo, PartialKind},
        shares::{ShareRecord, Shares},
        trust::{Capability, TrustStore},
        vault::{self, id_hex, Entry, Origin, Problem, Unlocked, Vault},
        StoreError,
    },
    text::escape,
};

use super::{exit, passphrase, progress, walk, Ctx, PassphraseArg, QuietArg};

/// A failure with its own exit code (`exit::*`) and its message.
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
        /// Import nothing when any path has a name the vault cannot store
        /// (by default such paths are skipped, each with one line, the rest
        /// is imported, and the exit code is 23).
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        quiet: QuietArg,
    },
    /// List stored files with their origin: `local`, or the fingerprint of
    /// the peer that sent them (needs the passphrase: names are encrypted);
    /// and the sealed deposits other nodes keep here (no name: only their
    /// depositor can open them). A file stored again changed is a new
    /// version: only the newest of each is listed, unless --all.
    List {
        /// Only this file, or the files under this folder.
        #[arg(value_name = "PREFIX")]
        prefix: Option<String>,
        /// JSON array output (`added` is null for a stored time outside
        /// RFC 3339's years 0000-9999; `version` counts from 1, the oldest).
        #[arg(long)]
        json: bool,
        /// Every version of each file, not only the newest.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// Remove the older versions of every file, keeping the newest KEEP.
    Prune {
        /// Versions of each file to keep (at least 1: the newest is never removed).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        keep: u32,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// Decrypt a stored file (or every file under a stored folder) to DEST.
    Export {
        /// Name, id or unique id prefix (8+ hex digits).
        what: String,
        /// Destination (default: the file's base name in the current
        /// directory); `-` is standard output (one file, not a terminal).
        dest: Option<PathBuf>,
        /// Replace an existing destination file.
        #[arg(long)]
        force: bool,
        /// Only files of this origin: `local` (imported here), or the sender's
        /// node id, id prefix (8+ characters) or fingerprint. Needed for a
        /// folder that holds files of several origins.
        #[arg(long, value_name = "ORIGIN")]
        from: Option<String>,
        #[command(flatten)]
        pass: PassphraseArg,
        #[command(flatten)]
        quiet: QuietArg,
    },
    /// Remove a stored file (its newest version; an older one by id), a
    /// sealed deposit (by its id), or a stored folder: every version of
    /// every file under it, after a confirmation on a terminal.
    Rm {
        /// Name, id or unique id prefix, or a stored folder.
        what: String,
        /// Only among files of this origin (as for export).
        #[arg(long, value_name = "ORIGIN")]
        from: Option<String>,
        /// Remove a folder without asking (for scripts: without a terminal
        /// a folder is only removed with --yes).
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// Check every object: ciphertext integrity (no passphrase), or with --full decrypt everything.
    Verify {
        /// Decrypt every object and check its BLAKE3 (needs the passphrase).
        #[arg(long)]
        full: bool,
        /// One JSON object: `mode`, `checked`, `intact`, `damaged` (id and
        /// problem of each), `leftovers`. The exit code is as without it.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pass: PassphraseArg,
        #[command(flatten)]
        quiet: QuietArg,
    },
    /// Change the vault passphrase.
    Passwd {
        /// Read the new passphrase from FILE (else P2PFS_NEW_PASSPHRASE(_FILE) or the terminal).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// Replace the vault key pair and rewrap every file key.
    Rekey {
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// Let a trusted peer retrieve a stored file, or every file under a stored folder as it
    /// is now (a snapshot: files stored under the folder later are not shared). The file key
    /// is sealed to the peer's node key, so `serve` can hand it out without the passphrase.
    Share {
        /// Name, id or unique id prefix (8+ hex digits), or a stored folder.
        what: String,
        /// The peer: an alias, node id or unique id prefix (8+ characters) from `p2pfs trust list`.
        peer: String,
        /// Only files of this origin (as for export).
        #[arg(long, value_name = "ORIGIN")]
        from: Option<String>,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// Stop sharing a stored file (or the files under a stored folder) with a peer.
    Unshare {
        /// Name, id or unique id prefix (8+ hex digits), or a stored folder.
        what: String,
        /// The peer: an alias, node id or unique id prefix (8+ characters).
        peer: String,
        /// Only files of this origin (as for export).
        #[arg(long, value_name = "ORIGIN")]
        from: Option<String>,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// List what is shared with whom.
    Shares {
        /// JSON array output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// Show the access log: retrievals, listings, shares, deposits and refusals.
    Log {
        /// JSON array output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// List the interrupted transfers kept to resume: id, peer, name, size,
    /// progress, age (names need the passphrase: they are sealed to the
    /// vault key). `partials rm ID|--all` removes them (no passphrase).
    Partials {
        #[command(subcommand)]
        cmd: Option<PartialsCmd>,
        /// JSON array output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pass: PassphraseArg,
    },
}

/// `vault partials …`.
#[derive(Subcommand)]
pub enum PartialsCmd {
    /// Remove partial transfers: by id (a unique prefix of 4+ hex digits),
    /// or all. Refused while a transfer is being stored.
    Rm {
        /// The id as `vault partials` lists it.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every partial.
        #[arg(long)]
        all: bool,
    },
}

impl VaultCmd {
    /// The `--passphrase-file` and `-q` given after the command's name.
    pub fn flags(&self) -> (PassphraseArg, QuietArg) {
        use VaultCmd::*;
        let file = |p: &PassphraseArg| PassphraseArg {
            passphrase_file: p.passphrase_file.clone(),
        };
        let q = |q: &QuietArg| QuietArg { quiet: q.quiet };
        match self {
            Import { quiet, .. } => (PassphraseArg::default(), q(quiet)),
            Export { pass, quiet, .. } | Verify { pass, quiet, .. } => (file(pass), q(quiet)),
            List { pass, .. }
            | Prune { pass, .. }
            | Rm { pass, .. }
            | Passwd { pass, .. }
            | Rekey { pass }
            | Share { pass, .. }
            | Unshare { pass, .. }
            | Shares { pass, .. }
            | Log { pass, .. }
            | Partials { pass, .. } => (file(pass), QuietArg::default()),
        }
    }
}

pub fn run(ctx: &Ctx, cmd: VaultCmd) -> Result<()> {
    let vault = ctx.home.vault()?;
    match cmd {
        VaultCmd::Import { paths, strict, .. } => import(ctx, &vault, &paths, strict),
        VaultCmd::List {
            prefix, json, all, ..
        } => list(
            ctx,
            &vault,
            &unlock(ctx, &vault)?,
            prefix.as_deref(),
            json,
            all,
        ),
        VaultCmd::Prune { keep, .. } => {
            let mut u = unlock(ctx, &vault)?;
            let old = u.older_versions(keep);
            for e in &old {
                u.remove(&e.id)?;
            }
            println!(
                "removed {} older version(s); the newest {keep} of each file stay",
                old.len()
            );
            Ok(())
        }
        VaultCmd::Export {
            what,
            dest,
            force,
            from,
            ..
        } => {
            let u = unlock(ctx, &vault)?;
            let from = from.map(|f| u.origin(&f)).transpose()?;
            export(ctx, &vault, &u, &what, dest, force, from)
        }
        VaultCmd::Rm {
            what, from, yes, ..
        } => {
            let mut u = unlock(ctx, &vault)?;
            let from = from.map(|f| u.origin(&f)).transpose()?;
            let found = match resolve(ctx, &vault, &u, &what, from) {
                Err(e)
                    if matches!(
                        e.downcast_ref::<StoreError>(),
                        Some(StoreError::NotFound { .. })
                    ) =>
                {
                    None
                }
                r => Some(r?),
            };
            match found {
                Some(Resolved::Entry(e)) if e.meta.kind == Kind::File => rm_file(&mut u, &e),
                Some(Resolved::Deposit(d)) => {
                    vault.remove_deposit(&d.id)?;
                    println!(
                        "removed sealed deposit {} from {}",
                        id_hex(&d.id),
                        Depositor::new(ctx, &d)
                    );
                    Ok(())
                }
                // A folder, stored as one (an empty folder sent) or not.
                Some(Resolved::Entry(_)) | None => rm_folder(&mut u, &what, from, yes),
            }
        }
        VaultCmd::Verify { full, json, .. } => verify(ctx, &vault, full, json),
        VaultCmd::Passwd {
            new_passphrase_file,
            ..
        } => {
            let mut u = unlock(ctx, &vault)?;
            let new = passphrase::get_new(&passphrase::new_source(new_passphrase_file.as_deref()))?;
            u.change_passphrase(&new)?;
            println!("passphrase changed");
            Ok(())
        }
        VaultCmd::Rekey { .. } => {
            let mut u = unlock(ctx, &vault)?;
            let n = u.rekey()?;
            println!("vault rekeyed: {n} file key(s) rewrapped to the new vault key");
            Ok(())
        }
        VaultCmd::Share {
            what, peer, from, ..
        } => share(ctx, &vault, &what, &peer, from),
        VaultCmd::Unshare {
            what, peer, from, ..
        } => unshare(ctx, &vault, &what, &peer, from),
        VaultCmd::Shares { json, .. } => list_shares(ctx, &vault, json),
        VaultCmd::Log { json, .. } => show_log(ctx, &vault, json),
        VaultCmd::Partials {
            cmd: None, json, ..
        } => list_partials(ctx, &vault, json),
        VaultCmd::Partials {
            cmd: Some(PartialsCmd::Rm { id, all }),
            ..
        } => rm_partials(&vault, id.as_deref(), all),
    }
}

/// `vault partials`: what each partial is (its label, opened with the
/// vault key), how far it got, and how long ago it last moved.
fn list_partials(ctx: &Ctx, vault: &Vault, json: bool) -> Result<()> {
    let parts = vault.partials()?;
    let u = unlock(ctx, vault)?;
    let store = TrustStore::load(ctx.home.root())?;
    let now = std::time::SystemTime::now();
    let age = |p: &PartialInfo| {
        p.modified
            .and_then(|m| now.duration_since(m).ok())
            .map(|d| std::time::Duration::from_secs(d.as_secs()))
    };
    let rows: Vec<_> = parts
        .iter()
        .map(|p| (p, u.partial_label(p), age(p)))
        .collect();
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|(p, l, a)| {
                serde_json::json!({
                    "id": to_hex(&p.slot.0),
                    "kind": l.as_ref().map(|l| l.kind.as_str()),
                    "peer": l.as_ref().map(|l| l.peer.to_id()),
                    "peer_fingerprint": l.as_ref().map(|l| l.peer.fingerprint()),
                    "alias": l.as_ref().and_then(|l| store.get(&l.peer)).and_then(|t| t.aliases.first().cloned()),
                    "name": l.as_ref().filter(|l| l.kind != PartialKind::Deposit).map(|l| l.name.clone()),
                    "size": p.size,
                    "held": p.held,
                    "age_secs": a.map(|a| a.as_secs()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("(no interrupted transfer is kept)");
        return Ok(());
    }
    println!(
        "{:<12}  {:<8}  {:<30}  {:>10}  {:>5}  {:>10}  NAME",
        "ID", "KIND", "PEER", "SIZE", "DONE", "AGE"
    );
    for (p, l, a) in &rows {
        let pct = p
            .held
            .saturating_mul(100)
            .checked_div(p.size)
            .unwrap_or(100);
        let (kind, peer, name) = match l {
            Some(l) => (
                l.kind.as_str(),
                peer_label(&store, &l.peer),
                match l.kind {
                    PartialKind::Deposit => "(sealed deposit: no name here)".to_owned(),
                    _ => escape(&l.name),
                },
            ),
            None => ("-", "-".to_owned(), "(not recorded)".to_owned()),
        };
        println!(
            "{:<12}  {:<8}  {:<30}  {:>10}  {:>4}%  {:>10}  {}",
            &to_hex(&p.slot.0)[..12],
            kind,
            peer,
            human(p.size),
            pct,
            a.map_or_else(
                || "-".to_owned(),
                |a| humantime::format_duration(a).to_string()
            ),
            name
        );
    }
    Ok(())
}

/// `vault partials rm ID|--all`.
fn rm_partials(vault: &Vault, id: Option<&str>, all: bool) -> Result<()> {
    let parts = vault.partials()?;
    let chosen: Vec<&PartialInfo> = match id {
        _ if all => parts.iter().collect(),
        Some(q) => {
            let q = q.trim().to_ascii_lowercase();
            if q.len() < 4 || !q.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("a partial is named by 4 or more hex digits of its id (see `p2pfs vault partials`)");
            }
            let hits: Vec<&PartialInfo> = parts
                .iter()
                .filter(|p| to_hex(&p.slot.0).starts_with(&q))
                .collect();
            match hits.len() {
                1 => hits,
                0 => return Err(StoreError::NotFound { query: q }.into()),
                _ => {
                    return Err(StoreError::Ambiguous {
                        query: q,
                        candidates: hits
                            .iter()
                            .map(|p| format!("  {}", to_hex(&p.slot.0)))
                            .collect(),
                    }
                    .into())
                }
            }
        }
        None => bail!("give the id of a partial, or --all"),
    };
    let slots: Vec<_> = chosen.iter().map(|p| p.slot).collect();
    if !vault.remove_partials(&slots)? {
        bail!("a transfer is being stored here right now (by `serve` or `get`): nothing was removed; try again when it ends");
    }
    let bytes: u64 = chosen.iter().map(|p| p.held).sum();
    println!(
        "removed {} interrupted transfer(s), {} held; a sender that continues one starts it over",
        slots.len(),
        human(bytes)
    );
    Ok(())
}

/// `vault rm NAME`: the newest version of one file; says what stays.
fn rm_file(u: &mut Unlocked<'_>, e: &Entry) -> Result<()> {
    let older = u
        .entries()
        .iter()
        .filter(|o| o.id != e.id && o.origin() == e.origin() && o.meta.name == e.meta.name)
        .count();
    u.remove(&e.id)?;
    println!("removed {} ({})", escape(&e.meta.name), id_hex(&e.id));
    // A name names the newest version: say what stays.
    if older > 0 {
        println!(
            "{older} older version(s) of it remain, the newest of them now listed under its name (`p2pfs vault list --all`; remove each by id)"
        );
    }
    Ok(())
}

/// `vault rm FOLDER`: every version of every file under the folder (of
/// one origin, as for export) and the folder entries themselves, in one
/// commit, once confirmed.
fn rm_folder(u: &mut Unlocked<'_>, what: &str, from: Option<Origin>, yes: bool) -> Result<()> {
    let folder = what.trim_end_matches('/');
    let prefix = format!("{folder}/");
    let all = u.entries();
    // The folder's own entry (an empty folder sent as such), of that origin.
    let own = |e: &&Entry| e.meta.name == folder && from.is_none_or(|o| e.origin() == o);
    let newest = match u.folder(folder, from) {
        Ok(v) => v,
        Err(StoreError::NotFound { .. }) if all.iter().any(|e| own(&e)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    // One origin: the folder's (`folder` refused a mix), or the one asked for.
    let origin = newest.first().map(Entry::origin).or(from);
    let doomed: Vec<&Entry> = all
        .iter()
        .filter(|e| {
            (e.meta.name == folder || e.meta.name.starts_with(&prefix))
                && origin.is_none_or(|o| e.origin() == o)
        })
        .collect();
    let files = newest.iter().filter(|e| e.meta.kind == Kind::File).count();
    let bytes: u64 = doomed.iter().map(|e| e.meta.size).sum();
    let what_goes = format!(
        "{files} file(s) under {}/ ({} object(s) with their older versions, {})",
        escape(folder),
        doomed.len(),
        human(bytes)
    );
    if !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            bail!(Failed(
                exit::NOT_CONFIRMED,
                format!("not removing {what_goes}: there is no terminal to confirm on; add --yes to remove a folder from a script")
            ));
        }
        if !super::confirm(&format!("Remove {what_goes} from the vault?")) {
            bail!(Failed(
                exit::NOT_CONFIRMED,
                "not confirmed: nothing was removed".to_owned()
            ));
        }
    }
    let ids: Vec<FileId> = doomed.iter().map(|e| e.id).collect();
    u.remove_all(&ids)?;
    println!("removed {what_goes}");
    Ok(())
}

fn warn_problems(problems: &[Problem]) {
    for p in problems {
        eprintln!("p2pfs: warning: damaged object {p}");
    }
}

fn unlock<'v>(ctx: &Ctx, vault: &'v Vault) -> Result<Unlocked<'v>> {
    let u = unlock_quietly(ctx, vault)?;
    warn_problems(u.problems());
    Ok(u)
}

/// As [`unlock`], without warning of damaged objects: for `verify --full`,
/// whose report names them (once).
fn unlock_quietly<'v>(ctx: &Ctx, vault: &'v Vault) -> Result<Unlocked<'v>> {
    passphrase::open_with(
        &passphrase::vault_source(ctx.passphrase_file.as_deref()),
        |pass| vault.unlock(pass),
    )
}

fn import(ctx: &Ctx, vault: &Vault, paths: &[PathBuf], strict: bool) -> Result<()> {
    vault.check_pin()?;
    let walk::Collected { items, refused } = walk::collect(paths, strict)?;
    if items.is_empty() {
        bail!("nothing to import: {}", walk::nothing_left(refused));
    }
    let total: u64 = items.iter().map(|i| i.size).sum();
    let pb = progress::bytes(total, ctx.quiet, "importing");
    // Files are staged here while the group before them is committed on
    // another thread (its envelopes sealed, its `syncfs` waited for), as a
    // receive's committer does; at most one group waits for it.
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Vec<vault::Staged<'_>>>(1);
        let (pb, failed) = (&pb, &failed);
        let committer = s.spawn(move || {
            let mut first = None;
            for group in rx {
                if let Err(e) = commit_and_say(group, pb) {
                    failed.store(true, Ordering::Relaxed);
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), Err)
        });
        let staged = stage_all(vault, &items, pb, failed, &tx);
        drop(tx);
        let committed = committer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the commit thread panicked")));
        // A failure to stage is the one to report: a commit that failed
        // stopped the staging without one.
        staged.and(committed)
    })?;
    pb.finish_and_clear();
    println!(
        "{} item(s), {} sealed to vault key {}",
        items.len(),
        human(total),
        &vault.public_key().fingerprint()
    );
    walk::partial(refused, "imported")
}

/// Most objects one group commit of `vault import` makes durable together
/// (each holds an open staging file until then).
const IMPORT_GROUP_FILES: usize = 128;
/// Most plaintext bytes one group commit of `vault import` covers.
const IMPORT_GROUP_BYTES: u64 = 64 << 20;

/// Stages `items` in groups (`IMPORT_GROUP_FILES`, `IMPORT_GROUP_BYTES`)
/// and hands each group to the committer; stops early when a commit
/// `failed`. What was staged before a failure is still committed.
fn stage_all<'v>(
    vault: &'v Vault,
    items: &[walk::Item],
    pb: &indicatif::ProgressBar,
    failed: &AtomicBool,
    tx: &mpsc::SyncSender<Vec<vault::Staged<'v>>>,
) -> Result<()> {
    let stager = vault.stager()?;
    let mut base = 0u64;
    let mut group = Vec::new();
    let mut bytes = 0u64;
    for it in items {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let staged = if it.dir {
            fs::symlink_metadata(&it.path)
                .map_err(anyhow::Error::from)
                .and_then(|m| Ok(stager.dir(&it.name, m.permissions().mode(), m.mtime())?))
        } else {
            pb.set_message(it.name.clone());
            stager
                .file(&it.path, &it.name, Some(it.identity), &mut |done| {
                    pb.set_position(base + done)
                })
                .map_err(anyhow::Error::from)
        };
        let staged = match staged {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(group);
                return Err(e.context(format!("cannot import {}", walk::shown(&it.path))));
            }
        };
        base += it.size;
        bytes += staged.size();
        group.push(staged);
        if group.len() >= IMPORT_GROUP_FILES || bytes >= IMPORT_GROUP_BYTES {
            bytes = 0;
            if tx.send(std::mem::take(&mut group)).is_err() {
                return Ok(());
            }
        }
    }
    let _ = tx.send(group);
    Ok(())
}

/// Commits one group of imported objects (one `syncfs` or a few fsyncs for
/// many small files: docs/VAULT.md, *Group commit*) and says `stored` for
/// each file that is. The first failure is returned after the others were
/// committed.
fn commit_and_say(group: Vec<vault::Staged<'_>>, pb: &indicatif::ProgressBar) -> Result<()> {
    let mut first = None;
    for r in vault::commit_staged(group) {
        match r {
            Ok(entry) => pb.suspend(|| {
                println!(
                    "stored {}  {}  {}",
                    &id_hex(&entry.id)[..12],
                    human(entry.meta.size),
                    entry.meta.name
                )
            }),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), |e| Err(e.into()))
}

fn human(n: u64) -> String {
    p2pfs::text::human_bytes(n)
}

/// The latest time RFC 3339 (and humantime, which panics past it) can
/// write: 9999-12-31T23:59:59Z.
const RFC3339_MAX_SECS: u64 = 253_402_300_799;

/// A stored time in unix milliseconds as RFC 3339, if it has one. Stored
/// times come from disk (or a peer): any u64 must print, never panic.
pub(crate) fn rfc3339_ms(ms: u64) -> Option<String> {
    if ms / 1000 > RFC3339_MAX_SECS {
        return None;
    }
    let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms))?;
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

fn entry_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "id": id_hex(&e.id),
        "name": e.meta.name,
        "kind": kind_name(e.meta.kind),
        "size": e.meta.size,
        "blake3": to_hex(&e.meta.blake3),
        "added": rfc3339_ms(e.meta.added_ms),
        "mtime": e.meta.mtime,
        "mode": format!("{:o}", e.meta.mode),
        "origin": e.meta.origin.map(|o| o.to_id()),
        "sealed": false,
    })
}

/// What a query names: a stored object, or a sealed deposit (by id).
enum Resolved {
    Entry(Entry),
    Deposit(Deposit),
}

/// Resolves `what` among stored objects and, by id or id prefix, sealed
/// deposits; an id prefix that matches one of each is ambiguous.
fn resolve(
    ctx: &Ctx,
    vault: &Vault,
    u: &Unlocked<'_>,
    what: &str,
    from: Option<Origin>,
) -> Result<Resolved> {
    let deposit = || -> Result<Option<Deposit>> {
        Ok(match from {
            Some(_) => None,
            None => vault.resolve_deposit(what)?,
        })
    };
    match u.resolve_from(what, from) {
        Ok(e) if e.meta.name != what => match deposit()? {
            Some(d) => Err(StoreError::Ambiguous {
                query: what.to_owned(),
                candidates: vec![
                    format!("  {}  {:<19}  {}", id_hex(&e.id), e.origin(), e.meta.name),
                    format!(
                        "  {}  sealed deposit from {}",
                        id_hex(&d.id),
                        Depositor::new(ctx, &d)
                    ),
                ],
            }
            .into()),
            None => Ok(Resolved::Entry(e)),
        },
        Ok(e) => Ok(Resolved::Entry(e)),
        Err(err @ StoreError::NotFound { .. }) => match deposit()? {
            Some(d) => Ok(Resolved::Deposit(d)),
            None => Err(err.into()),
        },
        Err(err) => Err(err.into()),
    }
}

/// A depositor as shown: its fingerprint, and the alias (or the name it
/// gives itself) when this node knows it.
struct Depositor {
    fingerprint: String,
    alias: Option<String>,
}

impl Depositor {
    fn new(ctx: &Ctx, d: &Deposit) -> Self {
        let alias = TrustStore::load(ctx.home.root()).ok().and_then(|t| {
            t.get(&d.depositor)
                .and_then(|p| p.aliases.first().cloned().or_else(|| p.peer_name.clone()))
        });
        Self {
            fingerprint: d.depositor.fingerprint(),
            alias,
        }
    }
}

impl std::fmt::Display for Depositor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.alias {
            // Aliases and peer names are valid node names; escaped anyway.
            Some(a) => write!(f, "{} ({})", self.fingerprint, p2pfs::text::escape(a)),
            None => f.write_str(&self.fingerprint),
        }
    }
}

/// A deposit in `list --json`: no name, no BLAKE3 (this node knows neither).
fn deposit_json(d: &Deposit, who: &Depositor) -> serde_json::Value {
    serde_json::json!({
        "id": id_hex(&d.id),
        "sealed": true,
        "kind": "file",
        "size": d.size,
        "added": rfc3339_ms(d.added_ms),
        "depositor": d.depositor.to_id(),
        "depositor_fingerprint": who.fingerprint,
        "depositor_alias": who.alias,
    })
}

/// The deposits kept here; a failure to read them is a warning, never a
/// reason for `list` to fail.
fn deposits(vault: &Vault) -> DepositList {
    match vault.deposit_scan() {
        Ok(l) => {
            for p in &l.problems {
                eprintln!("p2pfs: warning: skipped {p} (see `p2pfs vault verify`)");
            }
            l
        }
        Err(e) => {
            eprintln!("p2pfs: warning: sealed deposits not listed: {e}");
            DepositList::default()
        }
    }
}

fn list(
    ctx: &Ctx,
    vault: &Vault,
    u: &Unlocked<'_>,
    prefix: Option<&str>,
    json: bool,
    all: bool,
) -> Result<()> {
    let versions = u.versions();
    let version = |e: &Entry| versions.get(&e.id).map_or(1, |(n, _)| *n);
    let mut entries = if all { u.entries() } else { u.latest() };
    // A prefix is a name or a folder, never part of a word: `list tax`
    // shows `tax` and `tax/…`, not `taxi`. Deposits have no name here.
    let deps = match prefix.map(|p| p.trim_end_matches('/')) {
        Some(p) => {
            let under = format!("{p}/");
            entries.retain(|e| e.meta.name == p || e.meta.name.starts_with(&under));
            if entries.is_empty() {
                return Err(StoreError::NotFound {
                    query: p.to_owned(),
                }
                .into());
            }
            Vec::new()
        }
        None => deposits(vault).deposits,
    };
    // Versions of one name in order, oldest first.
    entries.sort_by(|a, b| (&a.meta.name, version(a), a.id).cmp(&(&b.meta.name, version(b), b.id)));
    let who: Vec<Depositor> = deps.iter().map(|d| Depositor::new(ctx, d)).collect();
    if json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                let mut v = entry_json(e);
                v["version"] = version(e).into();
                v
            })
            .chain(deps.iter().zip(&who).map(|(d, w)| deposit_json(d, w)))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if !entries.is_empty() {
        println!(
            "{:<12}  {:>10}  {:<20}  {:<19}  NAME",
            "ID", "SIZE", "ADDED", "ORIGIN"
        );
    }
    for e in &entries {
        let mut name = if e.meta.kind == Kind::Dir {
            format!("{}/", e.meta.name)
        } else {
            e.meta.name.clone()
        };
        if all {
            name += &format!("  (version {})", version(e));
        }
        println!(
            "{}  {:>10}  {:<20}  {:<19}  {}",
            &id_hex(&e.id)[..12],
            human(e.meta.size),
            rfc3339_ms(e.meta.added_ms).unwrap_or_else(|| "(time out of range)".into()),
            e.origin(),
            name
        );
    }
    for (d, w) in deps.iter().zip(&who) {
        println!(
            "{}  sealed deposit from {w}, {}, {}",
            &id_hex(&d.id)[..12],
            human(d.size),
            rfc3339_ms(d.added_ms).unwrap_or_else(|| "(time out of range)".into()),
        );
    }
    if entries.is_empty() && deps.is_empty() {
        eprintln!("(vault is empty)");
    }
    Ok(())
}

fn export(
    ctx: &Ctx,
    vault: &Vault,
    u: &Unlocked<'_>,
    what: &str,
    dest: Option<PathBuf>,
    force: bool,
    from: Option<Origin>,
) -> Result<()> {
    let base_of = |name: &str| name.rsplit('/').next().unwrap_or(name).to_owned();
    match resolve(ctx, vault, u, what, from) {
        // Refused before anything is written.
        Ok(Resolved::Deposit(d)) => {
            return Err(StoreError::SealedDeposit {
                id: id_hex(&d.id),
                depositor: Depositor::new(ctx, &d).to_string(),
            }
            .into())
        }
        Err(e)
            if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Ambiguous { .. })
            ) =>
        {
            return Err(e)
        }
        _ => {}
    }
    let Target { entries, folder } = target(u, what, from)?;
    if dest.as_deref() == Some(Path::new("-")) {
        let e = &entries[0];
        super::get_cmd::check_stdout(folder.is_some() || e.meta.kind != Kind::File, false)?;
        // Each chunk is authenticated before it is written; the BLAKE3 of
        // the whole is checked at the end: a failure there is an error
        // (exit code), as with `age -d`, since bytes already went out.
        let pb = progress::bytes(e.meta.size, ctx.quiet, &e.meta.name);
        let mut out = std::io::stdout().lock();
        u.decrypt_to(&e.id, &mut out, &mut |d| pb.set_position(d))?;
        std::io::Write::flush(&mut out)
            .map_err(|e| StoreError::io("cannot write", "standard output", e))?;
        pb.finish_and_clear();
        eprintln!(
            "exported {} -> standard output (BLAKE3 verified)",
            escape(&e.meta.name)
        );
        return Ok(());
    }
    let Some(folder) = folder else {
        let e = &entries[0];
        let dest = match dest {
            None => PathBuf::from(base_of(&e.meta.name)),
            Some(d) if d.is_dir() && e.meta.kind == Kind::File => d.join(base_of(&e.meta.name)),
            Some(d) => d,
        };
        let pb = progress::bytes(e.meta.size, ctx.quiet, &e.meta.name);
        u.export(&e.id, &dest, force, &mut |d| pb.set_position(d))?;
        pb.finish_and_clear();
        exported(e, &dest);
        return Ok(());
    };
    let root = dest.unwrap_or_else(|| PathBuf::from(base_of(&folder)));
    // The root is the user's choice (a link there is followed);
    // below it, export creates and enters each directory itself.
    let root_dir = fsutil::Dir::create_all(&root)?;
    for e in &entries {
        let rel = &e.meta.name[folder.len() + 1..];
        let pb = progress::bytes(e.meta.size, ctx.quiet, &e.meta.name);
        u.export_under(&e.id, &root_dir, rel, force, &mut |d| pb.set_position(d))?;
        pb.finish_and_clear();
        exported(e, &root.join(rel));
    }
    Ok(())
}

/// What a NAME|ID|FOLDER argument names.
struct Target {
    /// One object, or every object under the folder (of one origin).
    entries: Vec<Entry>,
    /// The folder's name (without a trailing `/`), when it named one.
    folder: Option<String>,
}

/// Resolves a stored name, id or unique id prefix; failing that, a stored
/// folder: every name under `what/`, of one origin.
fn target(u: &Unlocked<'_>, what: &str, from: Option<Origin>) -> Result<Target> {
    match u.resolve_from(what, from) {
        Ok(e) => Ok(Target {
            entries: vec![e],
            folder: None,
        }),
        Err(StoreError::NotFound { .. }) => Ok(Target {
            entries: u.folder(what, from)?,
            folder: Some(what.trim_end_matches('/').to_owned()),
        }),
        Err(e) => Err(e.into()),
    }
}

fn exported(e: &Entry, dest: &Path) {
    println!(
        "exported {} -> {} (BLAKE3 verified)",
        e.meta.name,
        dest.display()
    );
}

fn verify(ctx: &Ctx, vault: &Vault, full: bool, json: bool) -> Result<()> {
    let report = if full {
        // The report starts with what the unlock found: named once, there.
        let u = unlock_quietly(ctx, vault)?;
        let pb = progress::count(0, ctx.quiet, "verifying");
        let r = u.verify_full(&mut |n, t| {
            pb.set_length(t as u64);
            pb.set_position(n as u64)
        })?;
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
    if json {
        let damaged: Vec<_> = report
            .problems
            .iter()
            .map(|p| serde_json::json!({ "id": id_hex(&p.id), "name": p.name, "problem": p.what }))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "mode": if full { "full" } else { "ciphertext" },
                "checked": report.checked,
                "intact": report.problems.is_empty(),
                "damaged": damaged,
                "leftovers": report.leftovers,
            })
        );
        if report.problems.is_empty() {
            return Ok(());
        }
        bail!(Failed(
            exit::CORRUPT,
            format!(
                "{} of {} object(s) damaged",
                report.problems.len(),
                report.checked
            )
        ));
    }
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

/// How a peer is shown: its alias (escaped) and fingerprint.
fn peer_label(store: &TrustStore, key: &PublicKey) -> String {
    super::peer_label(Some(store), key)
}

/// The peer a PEER argument names in the trust store; shares go to known
/// peers only.
fn known_peer(store: &TrustStore, word: &str) -> Result<PublicKey> {
    match store.key_for_word(word)? {
        Some(k) => Ok(k),
        None => bail!(
            "{:?} is not a peer this node knows (see `p2pfs trust list`): files are shared only \
             with trusted peers. Add it first with `p2pfs trust add ID --allow get` (ID as \
             `p2pfs id` prints it on that node), then share again",
            escape(word)
        ),
    }
}

fn share(ctx: &Ctx, vault: &Vault, what: &str, peer: &str, from: Option<String>) -> Result<()> {
    let me = ctx.home.load_identity()?.id();
    let u = unlock(ctx, vault)?;
    let from = from.map(|f| u.origin(&f)).transpose()?;
    let store = TrustStore::load(ctx.home.root())?;
    let key = known_peer(&store, peer)?;
    let label = peer_label(&store, &key);
    let Target { entries, folder } = target(&u, what, from)?;
    // Loaded while the vault is unlocked: the index lock keeps other
    // owners' commands from rewriting the file meanwhile.
    let mut shares = Shares::load(vault.dir())?;
    let mut recs = Vec::with_capacity(entries.len());
    for e in &entries {
        let body = u.envelope_body(&e.id)?;
        shares.add(ShareRecord::seal(&me, &key, &e.id, &body)?);
        recs.push(LogRecord::now(
            Some(key),
            LogAction::Share,
            &e.meta.name,
            &format!("shared (id {})", id_hex(&e.id)),
        ));
    }
    shares.save()?;
    vault
        .log_all(&recs)
        .context("the files are shared, but the access log could not be written")?;
    match &folder {
        None => println!(
            "shared {} ({}) with {label}",
            escape(&entries[0].meta.name),
            &id_hex(&entries[0].id)[..12]
        ),
        Some(f) => {
            for e in &entries {
                println!("shared {} ({})", escape(&e.meta.name), &id_hex(&e.id)[..12]);
            }
            println!(
                "shared {} file(s) under {}/ with {label}: a snapshot of the folder as it is now \
                 (files stored under it later are not shared; run `p2pfs vault share` again)",
                entries.len(),
                escape(f)
            );
        }
    }
    if !(store.allows(&key, Capability::Get) || store.allows(&key, Capability::Owner)) {
        println!(
            "note: {label} may not retrieve files from this node yet; allow it with \
             `p2pfs trust add {key} --allow get`"
        );
    }
    Ok(())
}

/// The peer an `unshare` names: as for `share`, or, for a peer no longer
/// in the trust store, its node id or a unique id prefix among the shares.
fn shared_peer(store: &TrustStore, shares: &Shares, word: &str) -> Result<PublicKey> {
    if let Some(k) = store.key_for_word(word)? {
        return Ok(k);
    }
    let w = word.trim().to_ascii_lowercase();
    let mut hits: Vec<PublicKey> = shares
        .records()
        .iter()
        .map(|r| r.peer)
        .filter(|k| {
            let id = k.to_id();
            id == w || (w.len() >= 8 && id.starts_with(&w))
        })
        .collect();
    hits.sort();
    hits.dedup();
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "nothing is shared with {:?} (see `p2pfs vault shares`)",
            escape(word)
        ),
        _ => bail!(
            "{:?} matches several peers; give more of the node id (see `p2pfs vault shares`)",
            escape(word)
        ),
    }
}

fn unshare(ctx: &Ctx, vault: &Vault, what: &str, peer: &str, from: Option<String>) -> Result<()> {
    let u = unlock(ctx, vault)?;
    let from = from.map(|f| u.origin(&f)).transpose()?;
    let store = TrustStore::load(ctx.home.root())?;
    let mut shares = Shares::load(vault.dir())?;
    let key = shared_peer(&store, &shares, peer)?;
    let label = peer_label(&store, &key);
    let Target { entries, .. } = target(&u, what, from)?;
    let mut recs = Vec::new();
    for e in &entries {
        if shares.remove(&key, &e.id) {
            println!(
                "unshared {} ({})",
                escape(&e.meta.name),
                &id_hex(&e.id)[..12]
            );
            recs.push(LogRecord::now(
                Some(key),
                LogAction::Unshare,
                &e.meta.name,
                &format!("unshared (id {})", id_hex(&e.id)),
            ));
        }
    }
    if recs.is_empty() {
        bail!(
            "{:?} is not shared with {label} (see `p2pfs vault shares`)",
            escape(what)
        );
    }
    shares.save()?;
    vault
        .log_all(&recs)
        .context("the shares are withdrawn, but the access log could not be written")?;
    println!("{} file(s) no longer shared with {label}", recs.len());
    Ok(())
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
    }
}

fn list_shares(ctx: &Ctx, vault: &Vault, json: bool) -> Result<()> {
    let u = unlock(ctx, vault)?;
    let store = TrustStore::load(ctx.home.root())?;
    let shares = Shares::load(vault.dir())?;
    let entries = u.entries();
    let names: std::collections::HashMap<FileId, &Entry> =
        entries.iter().map(|e| (e.id, e)).collect();
    let alias = |k: &PublicKey| store.get(k).and_then(|p| p.aliases.first().cloned());
    let name = |r: &ShareRecord| names.get(&r.id).map(|e| e.meta.name.clone());
    let mut recs: Vec<&ShareRecord> = shares.records().iter().collect();
    recs.sort_by_key(|r| (alias(&r.peer), r.peer, name(r), r.id));
    if json {
        let v: Vec<_> = recs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "peer": r.peer.to_id(),
                    "peer_fingerprint": r.peer.fingerprint(),
                    "alias": alias(&r.peer),
                    "id": id_hex(&r.id),
                    "name": name(r),
                    "size": r.size,
                    "kind": kind_name(r.kind),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if !recs.is_empty() {
        println!(
            "{:<19}  {:<16}  {:<12}  {:>10}  NAME",
            "PEER", "ALIAS", "ID", "SIZE"
        );
    }
    for r in &recs {
        println!(
            "{}  {:<16}  {}  {:>10}  {}",
            r.peer.fingerprint(),
            alias(&r.peer).map_or_else(|| "-".to_owned(), |a| escape(&a)),
            &id_hex(&r.id)[..12],
            human(r.size),
            name(r).map_or_else(|| "(no longer in the vault)".to_owned(), |n| escape(&n)),
        );
    }
    if recs.is_empty() {
        eprintln!("(nothing is shared)");
    }
    Ok(())
}

fn show_log(ctx: &Ctx, vault: &Vault, json: bool) -> Result<()> {
    let u = unlock(ctx, vault)?;
    let store = TrustStore::load(ctx.home.root())?;
    let (recs, damaged) = u.read_log()?;
    let alias = |k: &PublicKey| store.get(k).and_then(|p| p.aliases.first().cloned());
    if json {
        let v: Vec<_> = recs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "time": rfc3339_ms(r.time_ms),
                    "time_ms": r.time_ms,
                    "peer": r.peer.map(|k| k.to_id()),
                    "peer_fingerprint": r.peer.map(|k| k.fingerprint()),
                    "alias": r.peer.as_ref().and_then(alias),
                    "action": r.action,
                    "object": r.object,
                    "outcome": r.outcome,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if !recs.is_empty() {
            println!(
                "{:<20}  {:<30}  {:<8}  OBJECT  OUTCOME",
                "TIME", "PEER", "ACTION"
            );
        }
        for r in &recs {
            println!(
                "{:<20}  {:<30}  {:<8}  {}  {}",
                rfc3339_ms(r.time_ms).unwrap_or_else(|| "(time out of range)".into()),
                r.peer
                    .map_or_else(|| "-".to_owned(), |k| peer_label(&store, &k)),
                r.action.as_str(),
                escape(&r.object),
                escape(&r.outcome),
            );
        }
        if recs.is_empty() {
            eprintln!("(the access log is empty)");
        }
    }
    if damaged > 0 {
        eprintln!(
            "p2pfs: warning: {damaged} access-log record(s) could not be opened: cut short by a \
             crash, altered, or sealed to a vault key replaced by `vault rekey`"
        );
    }
    Ok(())
}
