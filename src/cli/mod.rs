//! Command-line front end: clap arguments → validated settings → library
//! calls; progress bars (indicatif) and exit codes. No protocol or crypto
//! logic lives here.

mod passphrase;
mod progress;
mod vault_cmd;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use p2pfs::{
    crypto::kdf::KdfParams,
    store::{home::Home, StoreError},
};

/// Exit codes (documented in README.md).
pub mod exit {
    /// Any other failure.
    pub const FAILURE: u8 = 1;
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
    /// No such file in the vault, or ambiguous name.
    pub const NOT_FOUND: u8 = 9;
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
    /// Read the vault passphrase from FILE (first line) instead of the terminal.
    /// P2PFS_PASSPHRASE_FILE and P2PFS_PASSPHRASE also work.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this node: identity key and an empty encrypted vault.
    Init {
        /// Node name shown to peers (default: the host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Show this node's id, fingerprint and name.
    Id {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Work with the encrypted vault.
    #[command(subcommand)]
    Vault(vault_cmd::VaultCmd),
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

fn default_home() -> Result<PathBuf> {
    directories::ProjectDirs::from("", "", "p2pfs")
        .map(|d| d.data_dir().to_path_buf())
        .context("cannot find a data directory for this user: pass --home DIR or set P2PFS_HOME")
}

fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return match e {
                StoreError::WrongPassphrase => exit::WRONG_PASSPHRASE,
                StoreError::Corrupt { .. } | StoreError::Damaged { .. } => exit::CORRUPT,
                StoreError::NotInitialised { .. } => exit::NOT_INITIALISED,
                StoreError::UnsupportedVersion { .. } => exit::UNSUPPORTED_VERSION,
                StoreError::AlreadyInitialised { .. } | StoreError::DestinationExists { .. } => {
                    exit::EXISTS
                }
                StoreError::DiskFull { .. } => exit::DISK_FULL,
                StoreError::NotFound { .. } | StoreError::Ambiguous { .. } => exit::NOT_FOUND,
                _ => exit::FAILURE,
            };
        }
        if let Some(code) = cause.downcast_ref::<vault_cmd::Failed>() {
            return code.0;
        }
    }
    exit::FAILURE
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("P2PFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2pfs: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let home = match cli.home {
        Some(h) => h,
        None => default_home()?,
    };
    let ctx = Ctx {
        home: Home::new(home),
        passphrase_file: cli.passphrase_file,
        quiet: cli.quiet,
    };
    match cli.cmd {
        Command::Init { name } => init(&ctx, name),
        Command::Id { json } => id(&ctx, json),
        Command::Vault(cmd) => vault_cmd::run(&ctx, cmd),
    }
}

/// The default node name: the host name, made valid.
fn host_name() -> String {
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
    let pass = passphrase::get(
        &passphrase::vault_source(ctx.passphrase_file.as_deref()),
        passphrase::Purpose::New,
    )?;
    let ident = ctx.home.init(&name, &pass, KdfParams::DEFAULT)?;
    println!("created node {}", ident.name);
    println!("  id:          {}", ident.id());
    println!("  fingerprint: {}", ident.id().fingerprint());
    println!("  home:        {}", ctx.home.root().display());
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
            "home": ctx.home.root().display().to_string(),
        });
        println!("{v}");
    } else {
        println!("name:        {}", ident.name);
        println!("id:          {}", ident.id());
        println!("fingerprint: {}", ident.id().fingerprint());
    }
    Ok(())
}
