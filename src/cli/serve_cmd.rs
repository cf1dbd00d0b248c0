//! `p2pfs serve`: run a receiving node until Ctrl-C / SIGTERM; initialise
//! the node first on a fresh home when a passphrase is available; advertise
//! it on the LAN (mDNS) unless told not to, and withdraw it on shutdown.

use std::{
    collections::HashMap,
    io::{BufRead, IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use p2pfs::{
    crypto::{kdf::KdfParams, keys::PublicKey},
    net::{
        admission::Limits,
        discovery::{self, AdvertEvent},
        endpoint,
        events::ServerEvent,
        server::{self, AcceptPolicy, Asker, ServerCtx},
        wire::{FileOffer, OfferTotals},
    },
    store::trust::{Capability, TrustStore},
    text,
};

use super::console::{self, errln, outln};
use super::{passphrase, progress, Ctx};

/// Asks on the terminal; "always" also trusts the sender with `send` in
/// this home's trust store, so its next offers need no prompt.
struct TerminalAsker {
    home: PathBuf,
}

/// What the user answered to an offer.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    No,
    Yes,
    Always,
}

impl Answer {
    /// Anything but a clear yes or always is a no.
    fn parse(line: &str) -> Self {
        match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => Self::Yes,
            "a" | "always" => Self::Always,
            _ => Self::No,
        }
    }
}

impl TerminalAsker {
    /// Trusts `peer` with `send`; the offer is accepted even when that
    /// cannot be recorded (the user said yes to it), with a warning.
    fn always(&self, peer: &PublicKey) {
        let saved = (|| -> anyhow::Result<()> {
            let mut t = TrustStore::load_for_change(&self.home)?;
            t.trust(peer, &[Capability::Send])?;
            t.save()?;
            Ok(())
        })();
        match saved {
            Ok(()) => eprintln!(
                "trusted node {} (fingerprint {}) to send from now on (undo: p2pfs trust rm {})",
                peer,
                peer.fingerprint(),
                peer
            ),
            Err(e) => {
                eprintln!("p2pfs: warning: accepted this once, but trusting the node failed: {e}")
            }
        }
    }
}

/// Entries shown in a prompt: the largest first, so a huge file cannot hide
/// behind many small ones.
const PROMPT_ENTRIES: usize = 10;
/// Longest name shown in a prompt, in bytes.
const PROMPT_NAME: usize = 100;

impl Asker for TerminalAsker {
    fn ask(
        &self,
        peer: &PublicKey,
        claimed: &str,
        files: &[FileOffer],
        totals: &OfferTotals,
    ) -> bool {
        // Every other line waits until the user has answered.
        console::prompt(|| self.ask_now(peer, claimed, files, totals))
    }
}

impl TerminalAsker {
    /// Writes the question and reads the answer (the console is held).
    fn ask_now(
        &self,
        peer: &PublicKey,
        claimed: &str,
        files: &[FileOffer],
        totals: &OfferTotals,
    ) -> bool {
        eprintln!(
            "\nnode \"{}\" (its own name, unverified; node id {}, fingerprint {}) wants to send {} item(s), {} in all:",
            text::escape(claimed),
            peer,
            peer.fingerprint(),
            files.len(),
            indicatif::HumanBytes(totals.bytes)
        );
        let mut largest: Vec<&FileOffer> = files.iter().collect();
        largest.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));
        for f in largest.iter().take(PROMPT_ENTRIES) {
            // Quoted and cut short: one line per entry, so a long or
            // blank-padded name cannot draw lines of its own.
            eprintln!(
                "  {:>10}  \"{}\"",
                indicatif::HumanBytes(f.size).to_string(),
                text::escape(&text::bounded(&f.name, PROMPT_NAME))
            );
        }
        if files.len() > PROMPT_ENTRIES {
            let rest: u64 = largest[PROMPT_ENTRIES..]
                .iter()
                .fold(0u64, |t, f| t.saturating_add(f.size));
            eprintln!(
                "  … and {} smaller item(s), {} together",
                files.len() - PROMPT_ENTRIES,
                indicatif::HumanBytes(rest)
            );
        }
        eprint!("accept? [y]es, [N]o, [a]lways (trust this node to send) ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() {
            return false;
        }
        match Answer::parse(&line) {
            Answer::No => false,
            Answer::Yes => true,
            Answer::Always => {
                self.always(peer);
                true
            }
        }
    }
}

/// Resolves when `serve` is asked to stop (or the sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// What `serve` was asked to do.
pub struct ServeArgs {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Who may send.
    pub accept: AcceptPolicy,
    /// Node name when serve creates the node.
    pub name: Option<String>,
    /// Advertise on the LAN.
    pub mdns: bool,
    /// How long a transfer may go without progress.
    pub idle: std::time::Duration,
    /// Partials untouched for this long are removed.
    pub partial_ttl: std::time::Duration,
    /// One line per stored file.
    pub verbose: bool,
}

/// What the log says of one connection: the peer's label (looked up once)
/// and what it stored, for the one summary line of its transfer.
struct Conn {
    label: String,
    files: u64,
    folders: u64,
    bytes: u64,
    bar: Option<indicatif::ProgressBar>,
}

/// Takes `HOME/serve.lock` (0600, an exclusive `flock`, with this
/// process's id in it), or says which process holds it.
fn lock_serving(home: &std::path::Path) -> Result<std::fs::File> {
    use std::{
        io::{Seek, Write},
        os::unix::fs::OpenOptionsExt,
    };
    let path = home.join("serve.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let by = holder_pid(&f).map_or(String::new(), |pid| format!(" (process {pid})"));
            bail!(
                "another `p2pfs serve` is already running on this home{by}: {}\nstop it first, or give this one its own node with --home DIR",
                home.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    f.set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| writeln!(f, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(f)
}

/// The process id written in a held `serve.lock` (its first 32 bytes, a
/// decimal pid above 1 that fits a `pid_t`); `None` when unreadable (the
/// file is on disk: never trusted beyond that check).
fn holder_pid(f: &std::fs::File) -> Option<u32> {
    use std::io::Read;
    let mut held = String::new();
    f.take(32).read_to_string(&mut held).ok()?;
    held.trim()
        .parse()
        .ok()
        .filter(|p| *p > 1 && *p <= i32::MAX as u32)
}

/// Asks the `serve` running on `home`, if any, to reload its name (a
/// `SIGHUP` to the process that holds `HOME/serve.lock`); its pid if so.
pub fn reload_running(home: &std::path::Path) -> Result<Option<u32>> {
    let path = home.join("serve.lock");
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    match f.try_lock_shared() {
        // Nobody holds it exclusively: no serve runs.
        Ok(()) => return Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    let pid = match holder_pid(&f) {
        Some(p) => p,
        None => bail!(
            "a `p2pfs serve` holds {} but its process id is unreadable: restart it to take the new name",
            path.display()
        ),
    };
    // SAFETY: kill(2) with a checked positive pid and a valid signal.
    if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
        bail!(
            "cannot signal the running `p2pfs serve` (process {pid}): {}; restart it to take the new name",
            std::io::Error::last_os_error()
        );
    }
    Ok(Some(pid))
}

pub fn run(ctx: &Ctx, args: ServeArgs) -> Result<()> {
    let ServeArgs {
        listen,
        accept,
        name,
        mdns,
        idle,
        partial_ttl,
        verbose,
    } = args;
    // One daemon per home: a second would race the first for its partials,
    // receipts and port. Taken before a first run creates the node, held
    // until this function returns.
    // SIGHUP means "reload the name" (`p2pfs rename`), never "exit": ignored
    // from before the lock names this process until its handler is in.
    // SAFETY: setting a signal's disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let _serving = if ctx.home.is_initialised() {
        lock_serving(ctx.home.root())?
    } else {
        p2pfs::store::fsutil::create_private_dir(ctx.home.root())?;
        lock_serving(ctx.home.root())?
    };
    if !ctx.home.is_initialised() {
        let src = passphrase::vault_source(ctx.passphrase_file.as_deref());
        let pass = passphrase::get_new(&src).map_err(|e| {
            anyhow::anyhow!(
                "{e}\n(no node in {} yet: `p2pfs serve` creates one when it can get a passphrase for the new vault)",
                ctx.home.root().display()
            )
        })?;
        let ident = ctx.home.init(
            &name.clone().unwrap_or_else(super::host_name),
            &pass,
            KdfParams::DEFAULT,
        )?;
        outln!(
            "created node {} in {}",
            ident.name,
            ctx.home.root().display()
        );
    }
    // The daemon never needs a passphrase once the node exists: whatever
    // the environment gave is wiped now, not kept for the process's life.
    passphrase::forget_all();
    if accept == AcceptPolicy::Ask && !std::io::stdin().is_terminal() {
        bail!("--accept ask needs a terminal to ask on; use --accept trusted or any");
    }
    let identity = ctx.home.load_identity()?;
    let vault: &'static _ = Box::leak(Box::new(ctx.home.vault()?));
    // Refuse to start rather than seal to a vault key the owner did not set.
    vault.check_pin()?;
    match vault.remove_orphan_partials() {
        Ok(Some(n)) if n > 0 => {
            errln!("p2pfs: removed {n} interrupted reception(s) that ended before their first checkpoint (nothing of them could resume)")
        }
        Ok(_) => {}
        Err(e) => errln!("p2pfs: warning: cannot clean the staging area: {e}"),
    }
    match vault.drop_legacy_partials() {
        Ok(0) => {}
        Ok(n) => errln!(
            "p2pfs: removed {n} interrupted transfer(s) kept in the old partial format, which stored file names in clear; they will be sent again in full"
        ),
        Err(e) => errln!("p2pfs: warning: cannot remove old-format partials: {e}"),
    }
    let rt = super::runtime(true)?;
    let quiet = ctx.quiet;
    let res = rt.block_on(async move {
        // Stop signals are caught from before anything is printed: a
        // SIGTERM right after the banner stops the node cleanly, never by
        // the default disposition.
        let mut stop = super::Stop::catch()?;
        let ep = endpoint::server(listen)?;
        let may_send = p2pfs::store::trust::TrustStore::load(ctx.home.root())
            .map(|t| {
                t.peers()
                    .iter()
                    .filter(|p| p.allow.contains(&p2pfs::store::trust::Capability::Send))
                    .count()
            })
            .unwrap_or(0);
        let local = ep.local_addr().context("cannot read the listening address")?;
        outln!("p2pfs node {}", identity.name);
        outln!("  id:          {}", identity.id());
        outln!("  fingerprint: {}", identity.id().fingerprint());
        outln!("  listening:   {local} (UDP)");
        outln!(
            "  accepting:   {}",
            match accept {
                // The hint only while no peer may send here yet.
                AcceptPolicy::Trusted if may_send == 0 => "trusted peers only (add one with `p2pfs trust add NODEID`)",
                AcceptPolicy::Trusted => "trusted peers only",
                AcceptPolicy::Ask => "trusted peers, and asks about others",
                AcceptPolicy::Any => "ANY peer (open drop box)",
            }
        );
        outln!("  vault key:   {} (files are stored sealed; reading them needs the passphrase)", vault.public_key().fingerprint());
        let node_name = identity.name.clone();
        let local_id = identity.id();
        // Advertise only once the endpoint is bound, on the port it got.
        let advert = if mdns {
            match discovery::advertise(&identity.name, &identity.id(), local) {
                Ok(mut a) => {
                    // Say "advertised" once it is true: after mDNS probing.
                    if !a.announced(std::time::Duration::from_secs(5)).await {
                        errln!("p2pfs: warning: the mDNS announcement is not confirmed yet; discovery may take a few seconds");
                    }
                    outln!("  discovery:   advertised on the LAN as {:?} (mDNS {})", a.instance(), discovery::SERVICE_TYPE);
                    Some(a)
                }
                Err(e) => {
                    errln!("p2pfs: warning: not advertised on the LAN: {e}");
                    None
                }
            }
        } else {
            outln!("  discovery:   off (--no-mdns): peers must give this node's address");
            None
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server_ctx = Arc::new(ServerCtx::new(
            ctx.home.clone(),
            identity,
            vault,
            accept,
            (accept == AcceptPolicy::Ask).then(|| {
                Arc::new(TerminalAsker {
                    home: ctx.home.root().to_path_buf(),
                }) as Arc<dyn Asker>
            }),
            Limits {
                idle,
                partial_ttl,
                ..Limits::default()
            },
            tx,
        )?);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // `p2pfs rename` rewrites the identity file and sends SIGHUP: the
        // new name goes to peers from their next connection and, with
        // mDNS, the old advert is withdrawn and the new one announced.
        let (name_tx, name_rx) = tokio::sync::watch::channel(node_name.clone());
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            let home = ctx.home.clone();
            let sctx = server_ctx.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match home.load_identity() {
                        Ok(id) if id.name != sctx.name() => {
                            outln!("renamed to {}: peers see the new name from their next connection", text::escape(&id.name));
                            sctx.set_name(id.name.clone());
                            let _ = name_tx.send(id.name);
                        }
                        Ok(_) => {}
                        Err(e) => errln!("p2pfs: warning: cannot reload the node name: {e}"),
                    }
                }
            });
        }
        let advert_task = mdns.then(|| {
            let stop = stop_rx.clone();
            let mut name_rx = name_rx.clone();
            let mut advert = advert;
            tokio::spawn(async move {
                let stopped = stopped(stop);
                tokio::pin!(stopped);
                loop {
                    let name = name_rx.borrow().clone();
                    tokio::select! {
                        ev = async { match advert.as_mut() { Some(a) => a.next_event().await, None => std::future::pending().await } } => match ev {
                            Some(AdvertEvent::Renamed { instance }) => outln!("another node on the LAN already advertises {name:?}: advertised as {instance:?} instead (senders by name get both nodes listed and choose by id)"),
                            Some(AdvertEvent::AddressAdded(ip)) => outln!("new address {ip}: announced on the LAN"),
                            Some(AdvertEvent::AddressRemoved(ip)) => outln!("address {ip} is gone"),
                            None => {
                                (&mut stopped).await;
                                break;
                            }
                        },
                        changed = name_rx.changed() => {
                            if changed.is_err() {
                                continue;
                            }
                            let name = name_rx.borrow_and_update().clone();
                            if let Some(a) = advert.take() {
                                a.shutdown().await;
                            }
                            match discovery::advertise(&name, &local_id, local) {
                                Ok(mut a) => {
                                    if a.announced(std::time::Duration::from_secs(5)).await {
                                        outln!("advertised on the LAN as {:?}", a.instance());
                                    } else {
                                        errln!("p2pfs: warning: the mDNS announcement of {:?} is not confirmed yet", a.instance());
                                    }
                                    advert = Some(a);
                                }
                                Err(e) => errln!("p2pfs: warning: not advertised on the LAN: {e}"),
                            }
                        }
                        _ = &mut stopped => break,
                    }
                }
                // Withdraw first, so nobody finds a node that is going away.
                if let Some(a) = advert {
                    a.shutdown().await;
                }
            })
        });
        tokio::spawn(async move {
            stop.wait().await;
            let _ = stop_tx.send(true);
        });
        let home = ctx.home.root().to_path_buf();
        let ui = tokio::spawn(async move {
            let mut conns: HashMap<PublicKey, Conn> = HashMap::new();
            // The peer's label: looked up in the trust store (which `trust`
            // commands change while serving) when its connection appears.
            let label = |peer: &PublicKey| super::peer_label(TrustStore::load(&home).ok().as_ref(), peer);
            let claimed_label = |peer: &PublicKey, claimed: &str| super::claimed_label(TrustStore::load(&home).ok().as_ref(), peer, claimed);
            let human = |b: u64| indicatif::HumanBytes(b).to_string();
            while let Some(ev) = rx.recv().await {
                match ev {
                    ServerEvent::PeerConnected { peer, addr, claimed } => {
                        let c = Conn { label: claimed_label(&peer, &claimed), files: 0, folders: 0, bytes: 0, bar: None };
                        if verbose {
                            outln!("peer {} connected from {addr}", c.label);
                        }
                        conns.insert(peer, c);
                    }
                    ServerEvent::PeerRefused { peer, claimed, reason } => outln!("refused {} ({peer}): {reason}", claimed_label(&peer, &claimed)),
                    ServerEvent::Offer { peer, files, bytes, held } => {
                        let c = conns.entry(peer).or_insert_with(|| Conn { label: label(&peer), files: 0, folders: 0, bytes: 0, bar: None });
                        if files == 0 {
                            outln!("nothing new from {}: everything offered is already stored here, unchanged", c.label);
                            continue;
                        }
                        if held > 0 {
                            outln!("receiving {files} item(s), {} from {} (resuming, {} already here)", human(bytes), c.label, human(held));
                        } else {
                            outln!("receiving {files} item(s), {} from {}", human(bytes), c.label);
                        }
                        let b = console::track(progress::bytes(bytes, quiet, &peer.fingerprint()), quiet);
                        b.set_position(held);
                        c.bar = Some(b);
                    }
                    ServerEvent::Received { peer, bytes } => {
                        if let Some(b) = conns.get(&peer).and_then(|c| c.bar.as_ref()) {
                            b.inc(bytes);
                        }
                    }
                    ServerEvent::Stored { peer, name, size, folder } => {
                        if let Some(c) = conns.get_mut(&peer) {
                            if folder {
                                c.folders += 1;
                            } else {
                                c.files += 1;
                            }
                            c.bytes = c.bytes.saturating_add(size);
                            if verbose && folder {
                                outln!("stored empty folder {} from {}", text::escape(&name), c.label);
                            } else if verbose {
                                outln!("stored {} ({}) from {}", text::escape(&name), human(size), c.label);
                            }
                        }
                    }
                    ServerEvent::Failed { peer, message } => {
                        let who = peer.map(|p| conns.get(&p).map_or_else(|| label(&p), |c| c.label.clone())).unwrap_or_else(|| "?".into());
                        errln!("p2pfs: {who}: {}", text::escape(&message));
                    }
                    ServerEvent::Serving { peer, files, bytes, held } => {
                        let c = conns.entry(peer).or_insert_with(|| Conn { label: label(&peer), files: 0, folders: 0, bytes: 0, bar: None });
                        outln!("serving {files} item(s), {} to {}{}", human(bytes), c.label, if held > 0 { format!(" (resuming, {} already there)", human(held)) } else { String::new() });
                        let b = console::track(progress::bytes(bytes, quiet, &peer.fingerprint()), quiet);
                        b.set_position(held);
                        c.bar = Some(b);
                    }
                    ServerEvent::Listed { peer, files } => {
                        let who = conns.get(&peer).map_or_else(|| label(&peer), |c| c.label.clone());
                        outln!("listed {files} fetchable item(s) for {who}");
                    }
                    ServerEvent::Served { peer, files, bytes } => {
                        let who = conns.get(&peer).map_or_else(|| label(&peer), |c| c.label.clone());
                        outln!("served {files} item(s), {} on the wire, to {who} (verified there)", human(bytes));
                    }
                    ServerEvent::PartialsExpired { count, after } => outln!(
                        "removed {count} interrupted transfer(s) nothing continued for {} (--expire-partials); their senders start them over",
                        humantime::format_duration(after)
                    ),
                    ServerEvent::Closed { peer } => {
                        if let Some(c) = conns.remove(&peer) {
                            if let Some(b) = &c.bar {
                                b.finish_and_clear();
                            }
                            if c.files + c.folders > 0 {
                                outln!("stored {}, {} from {} (committed and verified)", super::files_and_folders(c.files, c.folders), human(c.bytes), c.label);
                            }
                        }
                    }
                }
            }
        });
        server::serve(ep, server_ctx, stop_rx).await?;
        if let Some(t) = advert_task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), t).await;
        }
        ui.abort();
        outln!("stopped; interrupted transfers are kept and resume when sent again");
        Ok::<_, anyhow::Error>(())
    });
    // Nothing left may hold the process up: a pending prompt, a blocked
    // read. Shutdown is bounded.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    res?;
    Ok(())
}

#[cfg(test)]
mod answer_tests {
    use super::Answer;

    #[test]
    fn only_a_clear_yes_or_always_accepts() {
        for (line, want) in [
            ("y\n", Answer::Yes),
            (" YES ", Answer::Yes),
            ("a\n", Answer::Always),
            ("Always", Answer::Always),
            ("", Answer::No),
            ("n", Answer::No),
            ("yess", Answer::No),
            ("ya", Answer::No),
        ] {
            assert_eq!(Answer::parse(line), want, "{line:?}");
        }
    }
}
