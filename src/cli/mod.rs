//! Command-line front end: clap arguments → validated settings → library
//! calls; progress bars (indicatif) and exit codes. No protocol or crypto
//! logic lives here.

mod console;
mod get_cmd;
mod pair_cmd;
mod passphrase;
mod peers_cmd;
mod progress;
mod send_cmd;
mod serve_cmd;
mod trust_cmd;
mod vault_cmd;
mod walk;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use p2pfs::{
    crypto::{kdf::KdfParams, keys::PublicKey},
    net::{
        discovery::DiscoveryError, engine::source::Failure, server::AcceptPolicy, wire::RefuseCode,
        NetError,
    },
    store::{
        home::Home,
        trust::{TrustError, TrustStore},
        StoreError,
    },
    text,
};

/// Exit codes (documented in README.md).
pub mod exit {
    /// Any other failure.
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage (clap's own code for the errors it finds).
    pub const USAGE: u8 = 2;
    /// Wrong passphrase.
    pub const WRONG_PASSPHRASE: u8 = 3;
    /// Corrupt or damaged data (verify failures, tampered objects).
    pub const CORRUPT: u8 = 4;
    /// No node in the home directory.
    pub const NOT_INITIALISED: u8 = 5;
    /// A file was written by a newer p2pfs.
    pub const UNSUPPORTED_VERSION: u8 = 6;
    /// Refused to overwrite (existing node, existing destination).
    pub const EXISTS: u8 = 7;
    /// Disk full.
    pub const DISK_FULL: u8 = 8;
    /// No such file in the vault, ambiguous name, or a folder of mixed origins.
    pub const NOT_FOUND: u8 = 9;
    /// The peer could not be reached.
    pub const UNREACHABLE: u8 = 10;
    /// The receiver refused (not trusted, declined, bad offer).
    pub const REFUSED: u8 = 11;
    /// The peer's key differs from the pinned or given one.
    pub const KEY_CHANGED: u8 = 12;
    /// The transfer failed verification or integrity checks (tampering).
    pub const TRANSFER_FAILED: u8 = 13;
    /// The receiver's disk is full.
    pub const PEER_DISK_FULL: u8 = 14;
    /// The connection was lost; running the same command again resumes.
    pub const CONNECTION_LOST: u8 = 15;
    /// No node with that name or id answered on the LAN, or the name is ambiguous.
    pub const PEER_NOT_FOUND: u8 = 16;
    /// The peer's key is new here and was not confirmed (declined, or no
    /// terminal and no `--trust-new`).
    pub const NOT_CONFIRMED: u8 = 17;
    /// The receiver could not store what arrived intact (a storage error
    /// there: not a full disk, not tampering).
    pub const PEER_STORAGE: u8 = 19;
    /// The file is a sealed deposit of another node: only its depositor
    /// can fetch and open it.
    pub const SEALED_DEPOSIT: u8 = 18;
    /// Some paths were skipped for names that cannot be stored (each named
    /// on stderr); everything else was sent or imported (as rsync's 23).
    pub const PARTIAL: u8 = 23;
    /// Pairing failed: a wrong or expired code, too many wrong tries, or
    /// a node that does not know the code. Nothing was pinned.
    pub const PAIRING_FAILED: u8 = 24;
    /// Interrupted by Ctrl-C (128 + SIGINT, as shells report it); the
    /// transfer resumes when the same command is run again.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "p2pfs",
    version,
    about = "Move files securely between machines on a LAN and keep them encrypted at rest"
)]
struct Cli {
    /// Node home directory (default: $P2PFS_HOME, else the platform data directory).
    #[arg(long, global = true, env = "P2PFS_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    // The two flags below are accepted here, before any command, and after
    // the commands that use them (`PassphraseArg`, `QuietArg`); no other
    // command lists or accepts them.
    #[command(flatten)]
    pass: PassphraseArg,
    #[command(flatten)]
    quiet: QuietArg,
    #[command(subcommand)]
    cmd: Command,
}

/// `--passphrase-file`, on the commands that open the vault.
#[derive(clap::Args, Default)]
pub struct PassphraseArg {
    /// Read the vault passphrase from FILE (first line) instead of the terminal.
    /// P2PFS_PASSPHRASE_FILE and P2PFS_PASSPHRASE also work.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// `--quiet`, on the commands that draw progress bars.
#[derive(clap::Args, Default)]
pub struct QuietArg {
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create this node: identity key and an empty encrypted vault.
    Init {
        /// Node name shown to peers (default: the host name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        pass: PassphraseArg,
    },
    /// Show this node's id, fingerprint and name.
    Id {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Rename this node (same key, same id): peers see the new name from
    /// their next connection; a running `serve` re-advertises at once.
    Rename {
        /// The new name (as for `init --name`).
        name: String,
    },
    /// Work with the encrypted vault.
    #[command(subcommand)]
    Vault(vault_cmd::VaultCmd),
    /// Print a shell completion script (for example:
    /// `p2pfs completions bash > ~/.local/share/bash-completion/completions/p2pfs`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page, roff (for example: `p2pfs man > ~/.local/share/man/man1/p2pfs.1`).
    Man,
    /// Run this node: receive files into the vault.
    Serve {
        /// UDP address to listen on (port 0 picks a free one). The default
        /// `[::]` is IPv4 and IPv6 on one socket; `0.0.0.0:PORT` is IPv4 only.
        #[arg(long, default_value_t = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, p2pfs::net::DEFAULT_PORT)))]
        listen: std::net::SocketAddr,
        /// Who may send: trusted (default), ask, any. `ask` shows each
        /// untrusted offer on the terminal (fingerprint, count, total, the
        /// largest entries) and takes yes, no, or always (trust that node
        /// with send from then on).
        #[arg(long, value_enum, default_value = "trusted")]
        accept: Accept,
        /// Do not advertise on the LAN (mDNS).
        #[arg(long)]
        no_mdns: bool,
        /// Node name when `serve` creates the node.
        #[arg(long)]
        name: Option<String>,
        /// End a transfer that stores less than 1 MiB (or a few control
        /// messages) in this many seconds; it stays resumable.
        #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
        idle_timeout: u64,
        /// Remove interrupted transfers (partials, `vault partials`) that
        /// nothing continued for this long: `7d`, `12h`, `30min`.
        #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_age)]
        expire_partials: std::time::Duration,
        /// One line per stored file (by default one summary line per transfer).
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        pass: PassphraseArg,
        #[command(flatten)]
        quiet: QuietArg,
    },
    /// Send files and folders to a peer: PATH... PEER, where PEER is a node name, a node id
    /// or a unique id prefix (8+ characters) found on the LAN, host:port, or NODEID@host:port.
    /// PATH `-` (alone, with --name NAME) sends standard input.
    #[command(override_usage = "p2pfs send [OPTIONS] PATH... PEER")]
    Send {
        /// One or more paths to send, then the peer (the last argument).
        #[arg(required = true, num_args = 1.., value_names = ["PATH", "PEER"])]
        args: Vec<String>,
        #[command(flatten)]
        flags: send_cmd::Flags,
        #[command(flatten)]
        quiet: QuietArg,
    },
    /// Fetch from a peer what it lets this node fetch (files it shared with this node,
    /// everything when this node is one of its owner's devices): PEER NAME|ID|FOLDER [DEST].
    /// Every chunk's MAC is checked before it is written, the BLAKE3 before a file is
    /// published; interrupted fetches resume.
    Get {
        /// The peer (as for `send`).
        peer: String,
        /// A name, an id or unique id prefix, or a folder (see `p2pfs remote list PEER`).
        what: String,
        /// Destination file or folder (default: its name, here); `-` is standard
        /// output (one file, verified whole before the first byte is written).
        dest: Option<PathBuf>,
        /// Store it encrypted in this node's vault instead of writing a plain file.
        #[arg(long, conflicts_with = "dest")]
        into_vault: bool,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Parallel QUIC data streams the peer may use, 1 to 16.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
        streams: u16,
        /// NDJSON events on stdout (as for `send`).
        #[arg(long)]
        json: bool,
        /// Pin the key of a node met for the first time without asking.
        #[arg(long)]
        trust_new: bool,
        /// Owner access: read the passphrase of the peer's vault from FILE (else
        /// P2PFS_REMOTE_PASSPHRASE_FILE, P2PFS_REMOTE_PASSPHRASE, or the terminal).
        #[arg(long, value_name = "FILE")]
        remote_passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        pass: PassphraseArg,
        #[command(flatten)]
        quiet: QuietArg,
    },
    /// What a peer lets this node fetch.
    #[command(subcommand)]
    Remote(RemoteCmd),
    /// List the p2pfs nodes advertised on the LAN (mDNS).
    Peers {
        /// How long to listen, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 2.0)]
        wait: f64,
        /// JSON output (an array of nodes).
        #[arg(long)]
        json: bool,
    },
    /// Manage trusted peers and pinned keys.
    #[command(subcommand)]
    Trust(trust_cmd::TrustCmd),
    /// Pair with another node by a short code, once: each pins the other's
    /// key and lets it send (no node id to copy). `p2pfs pair` shows a code;
    /// `p2pfs pair CODE HOST:PORT` on the other node types it.
    Pair(pair_cmd::PairArgs),
}

/// `p2pfs remote …`.
#[derive(clap::Subcommand)]
enum RemoteCmd {
    /// List what PEER lets this node fetch (names are opened here).
    List {
        /// The peer (as for `send`).
        peer: String,
        /// JSON output: an array of {id, name, size, kind, sealed, access, blake3, mtime}.
        #[arg(long)]
        json: bool,
        /// Pin the key of a node met for the first time without asking.
        #[arg(long)]
        trust_new: bool,
        /// Owner access: read the passphrase of the peer's vault from FILE.
        #[arg(long, value_name = "FILE")]
        remote_passphrase_file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Accept {
    Trusted,
    Ask,
    Any,
}

/// Everything a command needs from the global flags.
pub struct Ctx {
    /// The home directory.
    pub home: Home,
    /// --passphrase-file.
    pub passphrase_file: Option<PathBuf>,
    /// No progress bars.
    pub quiet: bool,
}

impl Ctx {
    /// The context of a command that takes `--passphrase-file` or `-q`
    /// after its name as well as before it: either place sets them.
    fn with(&self, pass: PassphraseArg, quiet: QuietArg) -> Ctx {
        Ctx {
            home: self.home.clone(),
            passphrase_file: pass
                .passphrase_file
                .or_else(|| self.passphrase_file.clone()),
            quiet: quiet.quiet || self.quiet,
        }
    }
}

/// How a peer is shown: the first name this node gave it (escaped) and
/// its fingerprint, or the fingerprint alone.
pub fn peer_label(store: Option<&TrustStore>, key: &PublicKey) -> String {
    match store
        .and_then(|s| s.get(key))
        .and_then(|p| p.aliases.first())
    {
        Some(a) => format!("{} ({})", text::escape(a), key.fingerprint()),
        None => key.fingerprint(),
    }
}

/// [`peer_label`], or for a peer without an alias the name it gives itself
/// (`Hello`), marked as its claim: `FINGERPRINT (calls itself "NAME")`.
pub fn claimed_label(store: Option<&TrustStore>, key: &PublicKey, claimed: &str) -> String {
    match store
        .and_then(|s| s.get(key))
        .and_then(|p| p.aliases.first())
    {
        Some(_) => peer_label(store, key),
        None if claimed.is_empty() => key.fingerprint(),
        None => format!(
            "{} (calls itself \"{}\")",
            key.fingerprint(),
            text::escape(claimed)
        ),
    }
}

/// "3 file(s)", or "3 file(s) and 1 empty folder(s)": how both ends of a
/// transfer count what it moved (an empty folder is no file).
pub(crate) fn files_and_folders(files: u64, folders: u64) -> String {
    match folders {
        0 => format!("{files} file(s)"),
        n => format!("{files} file(s) and {n} empty folder(s)"),
    }
}

/// Asks `question [y/N]` on the terminal (prompt on stderr, answer from
/// stdin): true only for a yes.
pub(crate) fn confirm(question: &str) -> bool {
    use std::io::{BufRead, Write};
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let answered = std::io::stdin().lock().read_line(&mut line).is_ok();
    answered && matches!(line.trim(), "y" | "Y" | "yes" | "Yes")
}

/// An age such as `7d` or `90min` (humantime), at least one second.
fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{e} (for example 7d, 12h, 30min)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err("at least 1s".into());
    }
    Ok(d)
}

fn default_home() -> Result<PathBuf> {
    directories::ProjectDirs::from("", "", "p2pfs")
        .map(|d| d.data_dir().to_path_buf())
        .context("cannot find a data directory for this user: pass --home DIR or set P2PFS_HOME")
}

/// The exit code of a network failure.
pub fn net_exit_code(e: &NetError) -> u8 {
    match e {
        NetError::Unreachable { .. } => exit::UNREACHABLE,
        NetError::Refused {
            code: RefuseCode::DiskFull,
            ..
        } => exit::PEER_DISK_FULL,
        NetError::Refused {
            code: RefuseCode::Storage,
            ..
        } => exit::PEER_STORAGE,
        NetError::Refused { .. } => exit::REFUSED,
        NetError::KeyChanged { .. } => exit::KEY_CHANGED,
        NetError::Tampered(_) | NetError::Handshake(_) | NetError::Protocol(_) => {
            exit::TRANSFER_FAILED
        }
        NetError::FilesFailed { kind, .. } => match kind {
            Failure::Verify => exit::TRANSFER_FAILED,
            Failure::DiskFull => exit::PEER_DISK_FULL,
            Failure::Storage => exit::PEER_STORAGE,
        },
        NetError::ConnectionLost(_) | NetError::Timeout(_) => exit::CONNECTION_LOST,
        NetError::Interrupted => exit::INTERRUPTED,
        NetError::Store(StoreError::SourceChanged { .. }) => exit::FAILURE,
        NetError::Store(StoreError::DiskFull { .. }) => exit::DISK_FULL,
        _ => exit::FAILURE,
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return match e {
                StoreError::WrongPassphrase => exit::WRONG_PASSPHRASE,
                StoreError::Corrupt { .. }
                | StoreError::Damaged { .. }
                | StoreError::VaultKeyChanged { .. } => exit::CORRUPT,
                StoreError::NotInitialised { .. } => exit::NOT_INITIALISED,
                StoreError::UnsupportedVersion { .. } => exit::UNSUPPORTED_VERSION,
                StoreError::AlreadyInitialised { .. } | StoreError::DestinationExists { .. } => {
                    exit::EXISTS
                }
                StoreError::DiskFull { .. } => exit::DISK_FULL,
                StoreError::SealedDeposit { .. } => exit::SEALED_DEPOSIT,
                StoreError::NotFound { .. }
                | StoreError::Ambiguous { .. }
                | StoreError::MixedOrigins { .. }
                | StoreError::UnknownOrigin { .. } => exit::NOT_FOUND,
                _ => exit::FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<p2pfs::net::pair::PairError>() {
            return match e {
                p2pfs::net::pair::PairError::Stopped => exit::INTERRUPTED,
                _ => exit::PAIRING_FAILED,
            };
        }
        if cause.downcast_ref::<walk::Partial>().is_some() {
            return exit::PARTIAL;
        }
        if let Some(code) = cause.downcast_ref::<vault_cmd::Failed>() {
            return code.0;
        }
        if let Some(e) = cause.downcast_ref::<NetError>() {
            return net_exit_code(e);
        }
        if let Some(e) = cause.downcast_ref::<DiscoveryError>() {
            return match e {
                DiscoveryError::NotFound { .. }
                | DiscoveryError::NoPairing { .. }
                | DiscoveryError::SeveralPairing { .. }
                | DiscoveryError::Ambiguous { .. }
                | DiscoveryError::Flooded { .. } => exit::PEER_NOT_FOUND,
                _ => exit::FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<TrustError>() {
            return match e {
                TrustError::Ambiguous { .. } => exit::PEER_NOT_FOUND,
                _ => exit::FAILURE,
            };
        }
        if cause.downcast_ref::<send_cmd::NotConfirmed>().is_some() {
            return exit::NOT_CONFIRMED;
        }
    }
    exit::FAILURE
}

pub use passphrase::capture_env;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // Colour only for a person at a terminal (and not with NO_COLOR set):
    // a log file or a journal gets plain lines, each with its timestamp.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("P2PFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        // Through the console: a log line never cuts into a prompt.
        .with_writer(console::LogWriter)
        .try_init();
    let cli = {
        use clap::FromArgMatches;
        Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Peer text in the message is escaped where it enters; this is
            // the last guard before the terminal.
            eprintln!(
                "p2pfs: error: {}",
                p2pfs::text::escape_lines(&format!("{e:#}"))
            );
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The command line: `--home` (global, so every command accepts it) is
/// accepted but not shown on the commands that need no home.
fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    for name in ["completions", "man"] {
        // A subcommand's own `home` takes the place of the global one.
        cmd = cmd.mut_subcommand(name, |c| {
            c.arg(
                clap::Arg::new("home")
                    .long("home")
                    .value_name("DIR")
                    .value_parser(clap::value_parser!(PathBuf))
                    .hide(true),
            )
        });
    }
    cmd
}

fn run(cli: Cli) -> Result<()> {
    // Neither needs a home: they only describe the command line.
    match &cli.cmd {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut command(), "p2pfs", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            clap_mangen::Man::new(command()).render(&mut std::io::stdout())?;
            return Ok(());
        }
        _ => {}
    }
    let home = match cli.home {
        Some(h) => h,
        None => default_home()?,
    };
    let ctx = Ctx {
        home: Home::new(home),
        passphrase_file: cli.pass.passphrase_file,
        quiet: cli.quiet.quiet,
    };
    match cli.cmd {
        Command::Init { name, pass } => init(&ctx.with(pass, QuietArg::default()), name),
        Command::Id { json } => id(&ctx, json),
        Command::Rename { name } => rename(&ctx, &name),
        Command::Vault(cmd) => {
            let (pass, quiet) = cmd.flags();
            vault_cmd::run(&ctx.with(pass, quiet), cmd)
        }
        Command::Serve {
            listen,
            accept,
            no_mdns,
            name,
            idle_timeout,
            expire_partials,
            verbose,
            pass,
            quiet,
        } => serve_cmd::run(
            &ctx.with(pass, quiet),
            serve_cmd::ServeArgs {
                listen,
                accept: match accept {
                    Accept::Trusted => AcceptPolicy::Trusted,
                    Accept::Ask => AcceptPolicy::Ask,
                    Accept::Any => AcceptPolicy::Any,
                },
                name,
                mdns: !no_mdns,
                idle: std::time::Duration::from_secs(idle_timeout),
                partial_ttl: expire_partials,
                verbose,
            },
        ),
        Command::Send { args, flags, quiet } => {
            send_cmd::run(&ctx.with(PassphraseArg::default(), quiet), args, flags)
        }
        Command::Get {
            peer,
            what,
            dest,
            into_vault,
            force,
            streams,
            json,
            trust_new,
            remote_passphrase_file,
            pass,
            quiet,
        } => get_cmd::get(
            &ctx.with(pass, quiet),
            get_cmd::Common {
                peer,
                json,
                trust_new,
                remote_passphrase_file,
            },
            get_cmd::GetArgs {
                what,
                dest,
                into_vault,
                force,
                streams: streams as usize,
            },
        ),
        Command::Remote(RemoteCmd::List {
            peer,
            json,
            trust_new,
            remote_passphrase_file,
        }) => get_cmd::remote_list(
            &ctx,
            get_cmd::Common {
                peer,
                json,
                trust_new,
                remote_passphrase_file,
            },
        ),
        Command::Peers { wait, json } => peers_cmd::run(&ctx, wait, json),
        Command::Trust(cmd) => trust_cmd::run(&ctx, cmd),
        Command::Pair(args) => pair_cmd::run(&ctx, args),
        Command::Completions { .. } | Command::Man => Ok(()),
    }
}

/// SIGINT and SIGTERM, caught for as long as this lives (serve, the
/// pairing host): from its creation on, neither ends the process by
/// default disposition.
pub struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Stop {
    /// Catches both, from now on.
    pub fn catch() -> Result<Stop> {
        Ok(Stop {
            int: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("cannot catch Ctrl-C")?,
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot catch SIGTERM")?,
        })
    }

    /// Resolves when either signal arrives.
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// The async runtime of a command: a transfer or a daemon works on
/// every core (`multi_thread`); a command with one request and one reply
/// runs on one thread, without cross-thread wake-ups.
pub fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The default node name: the host name, made valid.
pub fn host_name() -> String {
    let h = gethostname::gethostname().to_string_lossy().into_owned();
    let mut s: String = h.chars().filter(|c| !c.is_control()).collect();
    while s.len() > 64 {
        s.pop();
    }
    if s.is_empty() {
        "p2pfs-node".into()
    } else {
        s
    }
}

fn init(ctx: &Ctx, name: Option<String>) -> Result<()> {
    if ctx.home.is_initialised() {
        return Err(StoreError::AlreadyInitialised {
            home: ctx.home.root().to_path_buf(),
        }
        .into());
    }
    let name = name.unwrap_or_else(host_name);
    let pass = passphrase::get_new(&passphrase::vault_source(ctx.passphrase_file.as_deref()))?;
    let ident = ctx.home.init(&name, &pass, KdfParams::DEFAULT)?;
    println!("created node {}", ident.name);
    println!("  id:          {}", ident.id());
    println!("  fingerprint: {}", ident.id().fingerprint());
    println!("  home:        {}", ctx.home.root().display());
    Ok(())
}

fn rename(ctx: &Ctx, name: &str) -> Result<()> {
    let old = ctx.home.load_identity()?.name;
    ctx.home.rename(name)?;
    let shown = p2pfs::text::escape(name);
    if old == name {
        println!("this node is already named {shown}");
        return Ok(());
    }
    match serve_cmd::reload_running(ctx.home.root())? {
        Some(pid) => println!(
            "renamed {} to {shown}: the running serve (process {pid}) takes it now (peers see it from their next connection; on the LAN it is re-advertised)",
            p2pfs::text::escape(&old)
        ),
        None => println!(
            "renamed {} to {shown}: peers see it from the next `p2pfs serve`",
            p2pfs::text::escape(&old)
        ),
    }
    Ok(())
}

fn id(ctx: &Ctx, json: bool) -> Result<()> {
    let ident = ctx.home.load_identity()?;
    let vault_pk = ctx.home.vault()?.public_key();
    if json {
        let v = serde_json::json!({
            "id": ident.id().to_id(),
            "fingerprint": ident.id().fingerprint(),
            "name": ident.name,
            "vault_key": vault_pk.to_id(),
            "vault_key_fingerprint": vault_pk.fingerprint(),
            "home": ctx.home.root().display().to_string(),
        });
        println!("{v}");
    } else {
        println!("name:        {}", ident.name);
        println!("id:          {}", ident.id());
        println!("fingerprint: {}", ident.id().fingerprint());
        println!("vault key:   {}", vault_pk.fingerprint());
    }
    Ok(())
}
