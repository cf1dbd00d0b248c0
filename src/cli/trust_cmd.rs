//! `p2pfs trust …`: the peers this node trusts and the keys it pinned.

use anyhow::{bail, Result};
use clap::Subcommand;
use p2pfs::{
    crypto::keys::PublicKey,
    store::trust::{Capability, TrustStore},
};

use super::Ctx;

#[derive(Subcommand)]
pub enum TrustCmd {
    /// Trust a node: pin its key and let it send (and/or get).
    Add {
        /// The node id (52 characters, from `p2pfs id` on that node).
        id: String,
        /// A local alias.
        #[arg(long)]
        name: Option<String>,
        /// What it may do here: send, get (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "send")]
        allow: Vec<String>,
    },
    /// List known and trusted peers.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Forget a peer: its rights and its pinned key.
    Rm {
        /// Node id, unique id prefix or alias.
        what: String,
    },
}

pub fn run(ctx: &Ctx, cmd: TrustCmd) -> Result<()> {
    ctx.home.load_identity()?;
    let mut store = TrustStore::load(ctx.home.root())?;
    match cmd {
        TrustCmd::Add { id, name, allow } => {
            let Some(key) = PublicKey::parse_id(&id) else {
                bail!("{id:?} is not a node id (52 base32 characters, as `p2pfs id` prints)");
            };
            let mut caps = Vec::new();
            for a in &allow {
                caps.push(match a.trim() {
                    "send" => Capability::Send,
                    "get" => Capability::Get,
                    other => bail!("unknown capability {other:?} (use send, get)"),
                });
            }
            store.trust(&key, name, &caps);
            store.save()?;
            println!(
                "trusted {} (fingerprint {}), allowed: {}",
                key,
                key.fingerprint(),
                allow.join(",")
            );
        }
        TrustCmd::List { json } => {
            if json {
                let v: Vec<_> = store
                    .peers()
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "id": p.id,
                            "fingerprint": p.key().map(|k| k.fingerprint()),
                            "name": p.name,
                            "allow": p.allow,
                            "addresses": p.addresses,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for p in store.peers() {
                    let allow: Vec<String> = p
                        .allow
                        .iter()
                        .map(|c| format!("{c:?}").to_lowercase())
                        .collect();
                    println!(
                        "{}  {:<16} allow: {:<9} {}  {}",
                        p.key().map(|k| k.fingerprint()).unwrap_or_default(),
                        p.name.as_deref().unwrap_or("-"),
                        if allow.is_empty() {
                            "-".into()
                        } else {
                            allow.join(",")
                        },
                        p.id,
                        p.addresses.join(" ")
                    );
                }
                if store.peers().is_empty() {
                    eprintln!("(no known peers)");
                }
            }
        }
        TrustCmd::Rm { what } => {
            let hits: Vec<String> = store.find(&what).iter().map(|p| p.id.clone()).collect();
            match hits.as_slice() {
                [one] => {
                    store.remove(one);
                    store.save()?;
                    println!("removed {one}; its key will be pinned again at the next contact");
                }
                [] => bail!("no known peer matches {what:?} (see `p2pfs trust list`)"),
                many => bail!("{what:?} matches several peers:\n  {}", many.join("\n  ")),
            }
        }
    }
    Ok(())
}
