//! `p2pfs get PEER NAME|ID|FOLDER [DEST]` and `p2pfs remote list PEER`:
//! what a peer lets this node fetch — files it shared with this node
//! (their keys sealed to this node's key), everything when this node is
//! one of its owner's devices (opened with that vault's passphrase, typed
//! here), and this node's own deposits — and fetching it, verified, into
//! plain files or the local vault.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use p2pfs::{
    crypto::{
        chunk::{FileId, FileKey},
        keys::{Keypair, PublicKey},
        to_hex,
    },
    net::{
        client::{self, Listing, Opener, PullTo, Target},
        engine::sink::{Commit, Expect, Known},
        wire::{Access, EntryKind, RemoteFile},
        NetError,
    },
    store::{
        format::{EnvelopeBody, Kind},
        fsutil,
        home::Identity,
        remote::{open_remote_envelope, open_remote_vault},
        shares::open_share,
        vault::{id_hex, Unlocked, Vault},
        StoreError,
    },
    text,
};

use super::{
    passphrase,
    send_cmd::{self, classify, first_that_answers, human, pin_proven, ui_task},
    Ctx,
};

/// Options shared by `get` and `remote list`.
pub struct Common {
    /// The PEER argument.
    pub peer: String,
    /// JSON output.
    pub json: bool,
    /// Pin a new key without asking.
    pub trust_new: bool,
    /// `--remote-passphrase-file`.
    pub remote_passphrase_file: Option<PathBuf>,
}

/// One listed entry, opened here.
struct Opened {
    remote: RemoteFile,
    body: EnvelopeBody,
}

/// Opens the sealed keys of what a peer listed or served: shares with this
/// node's identity, owner entries with the peer's vault key (from its
/// header and the passphrase typed here, asked at most once).
struct Keys<'a> {
    identity: &'a Keypair,
    peer: PublicKey,
    remote_file: Option<&'a Path>,
    vault: Option<Keypair>,
    /// This node's vault, unlocked with its own passphrase when a deposit
    /// of this node's is to be opened.
    local: (&'a Ctx, &'static Vault, Option<Unlocked<'static>>),
}

impl<'a> Keys<'a> {
    fn new(
        ctx: &'a Ctx,
        identity: &'a Keypair,
        peer: PublicKey,
        c: &'a Common,
        vault: &'static Vault,
    ) -> Self {
        Self {
            identity,
            peer,
            remote_file: c.remote_passphrase_file.as_deref(),
            vault: None,
            local: (ctx, vault, None),
        }
    }

    fn open(&mut self, header: Option<&[u8]>, f: &RemoteFile) -> Result<EnvelopeBody, StoreError> {
        match f.access {
            Access::Share => open_share(self.identity, &self.peer, &f.id, &f.key),
            Access::Owner => {
                if self.vault.is_none() {
                    let Some(h) = header else {
                        return Err(StoreError::corrupt(
                            "the peer's answer",
                            "owner entries without the vault header",
                        ));
                    };
                    self.vault = Some(store_error(passphrase::open_with(
                        &passphrase::remote_source(self.remote_file),
                        |pass| open_remote_vault(h, pass),
                    ))?);
                }
                match &self.vault {
                    Some(kp) => open_remote_envelope(kp, &f.id, &f.key),
                    None => Err(StoreError::WrongPassphrase),
                }
            }
            Access::Deposit => {
                let (ctx, vault, unlocked) = &mut self.local;
                if unlocked.is_none() {
                    *unlocked = Some(store_error(passphrase::open_with(
                        &passphrase::vault_source(ctx.passphrase_file.as_deref()),
                        |pass| vault.unlock(pass),
                    ))?);
                }
                match unlocked {
                    // Sealed to this vault's key now or before a rekey.
                    Some(u) => u.open_envelope_bytes(&f.key),
                    None => Err(StoreError::WrongPassphrase),
                }
            }
        }
    }

    /// Opens every entry; one that does not open is reported and left out
    /// (a wrong passphrase stops everything).
    fn open_all(&mut self, header: Option<&[u8]>, files: Vec<RemoteFile>) -> Result<Vec<Opened>> {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            match self.open(header, &f) {
                Ok(body) => out.push(Opened { remote: f, body }),
                Err(e @ (StoreError::WrongPassphrase | StoreError::Invalid(_))) => {
                    return Err(e.into())
                }
                Err(e) => eprintln!(
                    "p2pfs: warning: {} offered by the peer does not open here: {}",
                    id_hex(&f.id),
                    text::escape(&e.to_string())
                ),
            }
        }
        out.sort_by(|a, b| a.body.meta.name.cmp(&b.body.meta.name));
        Ok(out)
    }
}

/// A passphrase step's error as a [`StoreError`]: its own when it is one
/// (a wrong passphrase), else the message.
fn store_error<T>(r: Result<T>) -> Result<T, StoreError> {
    r.map_err(|e| match e.downcast::<StoreError>() {
        Ok(e) => e,
        Err(e) => StoreError::Invalid(format!("{e:#}")),
    })
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
    }
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Share => "share",
        Access::Owner => "owner",
        Access::Deposit => "deposit",
    }
}

/// Resolves PEER and lists what it lets this node fetch.
async fn listing(ctx: &Ctx, me: &Identity, c: &Common) -> Result<(Vec<Target>, Listing)> {
    let plan = send_cmd::plan(ctx, &me.keypair, classify(&c.peer)?, c.trust_new, c.json).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let (res, proven) = first_that_answers(&plan.targets, tx, |t, tx| async move {
        client::list(me, &t, tx).await
    })
    .await;
    let _ = drain.await;
    if let Some(p) = &proven {
        pin_proven(ctx.home.root(), &plan.targets[p.target], p.name.as_deref());
    }
    let l = res?;
    // Fetch from the address that answered.
    let targets = match proven {
        Some(p) => vec![plan.targets[p.target].clone()],
        None => plan.targets,
    };
    Ok((targets, l))
}

/// `p2pfs remote list PEER [--json]`.
pub fn remote_list(ctx: &Ctx, c: Common) -> Result<()> {
    let identity = ctx.home.load_identity()?;
    let rt = super::runtime(false)?;
    let (_, l) = rt.block_on(listing(ctx, &identity, &c))?;
    let vault: &'static Vault = Box::leak(Box::new(ctx.home.vault()?));
    let mut keys = Keys::new(ctx, &identity.keypair, l.peer, &c, vault);
    let opened = keys.open_all(l.header.as_deref(), l.files)?;
    if c.json {
        let v: Vec<_> = opened
            .iter()
            .map(|o| {
                serde_json::json!({
                    "id": id_hex(&o.remote.id),
                    "name": o.body.meta.name,
                    "size": o.body.meta.size,
                    "kind": kind_name(o.body.meta.kind),
                    "sealed": o.remote.access == Access::Deposit,
                    "access": access_name(o.remote.access),
                    "blake3": to_hex(&o.body.meta.blake3),
                    "mtime": o.body.meta.mtime,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if opened.is_empty() {
        println!(
            "{} ({}) lets this node fetch nothing",
            text::escape(&l.peer_name),
            l.peer.fingerprint()
        );
        return Ok(());
    }
    for o in &opened {
        println!(
            "{}  {:>10}  {:<7}  {}{}",
            &id_hex(&o.remote.id)[..12],
            human(o.body.meta.size),
            access_name(o.remote.access),
            text::escape(&o.body.meta.name),
            if o.body.meta.kind == Kind::Dir {
                "/"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Options of `get`.
pub struct GetArgs {
    /// What to fetch: a name, an id or unique id prefix, or a folder.
    pub what: String,
    /// Where to put it.
    pub dest: Option<PathBuf>,
    /// Into the local vault instead.
    pub into_vault: bool,
    /// Replace existing files.
    pub force: bool,
    /// Data streams.
    pub streams: usize,
}

/// The entries `what` names among those listed: an id (or unique prefix of
/// 8+ hex digits), an exact name, or a folder (every name under it).
/// Returns them and the folder's name when it named one.
fn select(opened: Vec<Opened>, what: &str) -> Result<(Vec<Opened>, Option<String>)> {
    let lower = what.to_lowercase();
    let by_id: Vec<usize> = opened
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            lower.len() >= 8
                && lower.chars().all(|c| c.is_ascii_hexdigit())
                && id_hex(&o.remote.id).starts_with(&lower)
        })
        .map(|(i, _)| i)
        .collect();
    let by_name: Vec<usize> = opened
        .iter()
        .enumerate()
        .filter(|(_, o)| o.body.meta.name == what)
        .map(|(i, _)| i)
        .collect();
    let pick = if by_id.len() == 1 { by_id } else { by_name };
    if pick.len() > 1 {
        let list: Vec<String> = pick
            .iter()
            .map(|i| format!("  {}", id_hex(&opened[*i].remote.id)))
            .collect();
        bail!(super::vault_cmd::Failed(
            super::exit::NOT_FOUND,
            format!(
                "{:?} matches {} files on the peer; fetch one by id:\n{}",
                text::escape(what),
                pick.len(),
                list.join("\n")
            )
        ));
    }
    if let Some(&i) = pick.first() {
        let mut opened = opened;
        return Ok((vec![opened.swap_remove(i)], None));
    }
    let folder = what.trim_end_matches('/');
    let prefix = format!("{folder}/");
    let under: Vec<Opened> = opened
        .into_iter()
        .filter(|o| o.body.meta.name.starts_with(&prefix))
        .collect();
    if under.is_empty() || folder.is_empty() {
        bail!(super::vault_cmd::Failed(
            super::exit::NOT_FOUND,
            format!(
                "the peer lets this node fetch nothing named {:?} (see `p2pfs remote list PEER`)",
                text::escape(what)
            )
        ));
    }
    Ok((under, Some(folder.to_owned())))
}

/// Serves the sink its expected files from what the peer served (opened
/// again from the served keys: only what was served counts).
struct Pull<'a> {
    keys: Keys<'a>,
    /// Where each id goes.
    layout: Vec<(FileId, Commit)>,
}

impl Opener for Pull<'_> {
    fn open(
        &mut self,
        header: Option<&[u8]>,
        files: &[RemoteFile],
    ) -> Result<Vec<Expect>, NetError> {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let body = self.keys.open(header, f)?;
            let i = self
                .layout
                .iter()
                .position(|(id, _)| id == &f.id)
                .ok_or_else(|| NetError::Protocol("served an object not asked for".into()))?;
            let (_, commit) = self.layout.swap_remove(i);
            let meta = body.meta;
            if meta.size != f.size || meta.chunk_size != f.chunk_size {
                return Err(NetError::Protocol(format!(
                    "object {} is served with another size than its sealed metadata says",
                    id_hex(&f.id)
                )));
            }
            let mut token = [0u8; 16];
            token.copy_from_slice(&f.id);
            out.push(Expect {
                name: meta.name.clone(),
                kind: match meta.kind {
                    Kind::File => EntryKind::File,
                    Kind::Dir => EntryKind::Dir,
                },
                size: meta.size,
                chunk_size: meta.chunk_size,
                mtime: meta.mtime,
                mode: meta.mode,
                token,
                known: Some(Box::new(Known {
                    id: f.id,
                    key: FileKey::from_secret(body.file_key),
                    meta,
                })),
                commit,
            });
        }
        Ok(out)
    }
}

fn base_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// `p2pfs get PEER NAME|ID|FOLDER [DEST]`.
pub fn get(ctx: &Ctx, c: Common, a: GetArgs) -> Result<()> {
    let identity = ctx.home.load_identity()?;
    let vault: &'static Vault = Box::leak(Box::new(ctx.home.vault()?));
    if a.into_vault {
        vault.check_pin()?;
    }
    let rt = super::runtime(true)?;
    let (targets, l) = rt.block_on(listing(ctx, &identity, &c))?;
    let mut keys = Keys::new(ctx, &identity.keypair, l.peer, &c, vault);
    let opened = keys.open_all(l.header.as_deref(), l.files)?;
    let (chosen, folder) = select(opened, &a.what)?;
    let to_stdout = a.dest.as_deref() == Some(Path::new("-"));
    if to_stdout {
        check_stdout(
            folder.is_some() || chosen[0].body.meta.kind != Kind::File,
            c.json,
        )?;
    }
    // Where each file goes: into the vault, standard output, or a plain
    // file published under the destination (a folder keeps its structure).
    let (dest, rels): (Option<fsutil::Dir>, Vec<String>) = if a.into_vault || to_stdout {
        (None, Vec::new())
    } else {
        match &folder {
            None => {
                let name = &chosen[0].body.meta.name;
                let path = match &a.dest {
                    None => PathBuf::from(base_of(name)),
                    Some(d) if d.is_dir() && chosen[0].body.meta.kind == Kind::File => {
                        d.join(base_of(name))
                    }
                    Some(d) => d.clone(),
                };
                let Some(file) = path.file_name().map(|f| f.to_string_lossy().into_owned()) else {
                    bail!("{} does not name a file", path.display());
                };
                if !a.force && path.exists() && chosen[0].body.meta.kind == Kind::File {
                    bail!(super::vault_cmd::Failed(
                        super::exit::EXISTS,
                        format!("{} exists (use --force to replace it)", path.display())
                    ));
                }
                (
                    Some(fsutil::Dir::open(&fsutil::parent_of(&path))?),
                    vec![file],
                )
            }
            Some(folder) => {
                let root = a
                    .dest
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(base_of(folder)));
                let rels: Vec<String> = chosen
                    .iter()
                    .map(|o| o.body.meta.name[folder.len() + 1..].to_owned())
                    .collect();
                if !a.force {
                    if let Some(r) = rels
                        .iter()
                        .zip(&chosen)
                        .find(|(r, o)| o.body.meta.kind == Kind::File && root.join(r).exists())
                    {
                        bail!(super::vault_cmd::Failed(
                            super::exit::EXISTS,
                            format!(
                                "{} exists (use --force to replace it)",
                                root.join(r.0).display()
                            )
                        ));
                    }
                }
                (Some(fsutil::Dir::create_all(&root)?), rels)
            }
        }
    };
    let layout: Vec<(FileId, Commit)> = chosen
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let commit = match rels.get(i) {
                Some(rel) => Commit::Publish { rel: rel.clone() },
                None if to_stdout => Commit::Stream,
                None => Commit::Vault,
            };
            (o.remote.id, commit)
        })
        .collect();
    let ids: Vec<FileId> = chosen.iter().map(|o| o.remote.id).collect();
    let shown: Vec<(String, String)> = chosen
        .iter()
        .zip(layout.iter())
        .map(|(o, (_, c))| {
            let to = match c {
                Commit::Vault | Commit::Deposit => "the vault".to_string(),
                Commit::Stream => "standard output".to_string(),
                Commit::Publish { rel } => match (&folder, &a.dest) {
                    (Some(f), d) => d
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(base_of(f)))
                        .join(rel)
                        .display()
                        .to_string(),
                    (None, _) => rel.clone(),
                },
            };
            (o.body.meta.name.clone(), to)
        })
        .collect();
    let mut pull = Pull { keys, layout };
    let (tx, ui) = {
        let _in = rt.enter();
        ui_task(c.json, ctx.quiet, false, "fetching")
    };
    let to = PullTo {
        vault,
        dest,
        force: a.force,
        stream: to_stdout.then(|| {
            let out: Box<dyn std::io::Write + Send> = Box::new(std::io::stdout());
            std::sync::Arc::new(std::sync::Mutex::new(out))
        }),
    };
    let res = rt.block_on(async {
        let target = &targets[0];
        send_cmd::until_ctrl_c(client::get(
            &identity, target, ids, a.streams, &mut pull, to, tx,
        ))
        .await
    });
    rt.block_on(async {
        let _ = ui.await;
    });
    let p = res?;
    if !c.json && !ctx.quiet {
        // Standard output holds the file: what was done goes to stderr.
        let say = |line: String| {
            if to_stdout {
                eprintln!("{line}")
            } else {
                println!("{line}")
            }
        };
        for (name, to) in &shown {
            say(format!(
                "fetched {} -> {} (MACs and BLAKE3 verified)",
                text::escape(name),
                text::escape(to)
            ));
        }
        let resumed = if p.bytes_skipped > 0 {
            format!(", {} already here (resumed)", human(p.bytes_skipped))
        } else {
            String::new()
        };
        say(format!(
            "fetched {} file(s) from {} ({}){resumed}",
            p.files,
            text::escape(&p.peer_name),
            p.peer.fingerprint(),
        ));
    }
    Ok(())
}

/// Refuses what cannot go to standard output (`get PEER NAME -`,
/// `vault export NAME -`): a folder, events (`--json` writes them
/// there), or a terminal (binary data; redirect it, as `age` asks).
pub(crate) fn check_stdout(folder: bool, json: bool) -> Result<()> {
    use std::io::IsTerminal;
    if folder {
        bail!("a folder cannot be written to standard output: give a destination folder");
    }
    if json {
        bail!("--json writes its events to standard output: give a destination file, not -");
    }
    if std::io::stdout().is_terminal() {
        bail!("standard output is a terminal: redirect it (`> FILE` or `| COMMAND`), or give a destination file");
    }
    Ok(())
}
