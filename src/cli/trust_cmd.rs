//! `p2pfs trust …`: the keys this node knows, the aliases the user gave
//! them, what each may do here, and how much it may keep here (quota).

use anyhow::{bail, Result};
use clap::Subcommand;
use p2pfs::{
    crypto::keys::PublicKey,
    store::{
        pending::{self, Pending},
        trust::{self, Capability, TrustStore},
    },
    text,
};

use super::Ctx;

#[derive(Subcommand)]
pub enum TrustCmd {
    /// Trust a node: pin its key, optionally name it, and let it send (and/or get, or act as owner).
    Add {
        /// The node id (52 characters, from `p2pfs id` on that node); or, for a
        /// sender refused lately (`p2pfs trust pending`) or a peer known here,
        /// its fingerprint or an id prefix of 16 characters or more; or an
        /// alias you gave.
        id: String,
        /// Your own name for it: `p2pfs send FILE ALIAS` then wants this key only.
        /// An alias names exactly one key.
        #[arg(long, value_name = "ALIAS")]
        name: Option<String>,
        /// What it may do here, comma-separated: send (into this vault), get (files
        /// shared with it), owner (one of your own devices); or none (pin and name only).
        #[arg(long, value_delimiter = ',', default_value = "send")]
        allow: Vec<String>,
        /// How much it may keep here (deposits): bytes, or with K, M, G, T — powers of
        /// 1024, so 500M = 500MiB = 524288000 bytes; KiB, MiB, GiB, TiB also work.
        #[arg(long, value_name = "SIZE", value_parser = parse_quota)]
        quota: Option<u64>,
    },
    /// List known and trusted peers.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Senders refused lately for not being trusted (the last 64, for 7 days):
    /// fingerprint, address, when, how often. Let one in with
    /// `p2pfs trust add FINGERPRINT` after comparing it with what `p2pfs id`
    /// shows on that node.
    Pending {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Forget a peer: its aliases, its rights and its pinned key.
    Rm {
        /// Node id, unique id prefix or alias.
        what: String,
    },
}

pub(crate) fn caps(allow: &[String]) -> Result<Vec<Capability>> {
    let mut caps = Vec::new();
    for a in allow {
        match a.trim() {
            "send" => caps.push(Capability::Send),
            "get" => caps.push(Capability::Get),
            "owner" => caps.push(Capability::Owner),
            "none" if allow.len() == 1 => {}
            other => bail!(
                "unknown capability {:?} (use send, get, owner, or none alone)",
                text::escape(other)
            ),
        }
    }
    Ok(caps)
}

fn parse_quota(s: &str) -> std::result::Result<u64, String> {
    trust::parse_size(s)
}

/// A quota for people: exact bytes, with the binary unit when it is round.
pub fn shown_quota(q: Option<u64>) -> String {
    let Some(q) = q else {
        return "-".into();
    };
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if q >= 1 << shift && q % (1 << shift) == 0 {
            return format!("{}{unit}", q >> shift);
        }
    }
    format!("{q}B")
}

fn shown_caps(allow: &[Capability]) -> String {
    if allow.is_empty() {
        return "-".into();
    }
    allow
        .iter()
        .map(|c| format!("{c:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// The key `word` names for `trust add`: a full node id; an alias given
/// here; or the fingerprint, or an id prefix of at least
/// [`pending::MIN_PREFIX`] characters, of a sender refused lately or a peer
/// known here. Shorter prefixes never name a key to trust: a peer could
/// grind a key to match them.
fn key_for_add(store: &TrustStore, pending: &Pending, word: &str) -> Result<PublicKey> {
    if let Some(k) = PublicKey::parse_id(word) {
        return Ok(k);
    }
    let mut hits: Vec<PublicKey> = pending.named(word);
    for p in store.peers() {
        let by_key = pending::names_key(word, &p.key);
        if (by_key || p.aliases.iter().any(|a| a == word)) && !hits.contains(&p.key) {
            hits.push(p.key);
        }
    }
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "{:?} is not a node id (52 base32 characters, as `p2pfs id` prints), nor the fingerprint, \
             an id prefix of {} or more characters, or an alias of a sender refused lately \
             (`p2pfs trust pending`) or a peer known here",
            text::escape(word),
            pending::MIN_PREFIX
        ),
        many => bail!(
            "{:?} matches several keys; give the full node id:\n  {}",
            text::escape(word),
            many.iter()
                .map(|k| format!("{k}  fingerprint {}", k.fingerprint()))
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
    }
}

pub fn run(ctx: &Ctx, cmd: TrustCmd) -> Result<()> {
    ctx.home.load_identity()?;
    let mut store = TrustStore::load_for_change(ctx.home.root())?;
    match cmd {
        TrustCmd::Add {
            id,
            name,
            allow,
            quota,
        } => {
            let mut pending = Pending::open(ctx.home.root())?;
            let key = key_for_add(&store, &pending, &id)?;
            let caps = caps(&allow)?;
            // Check the alias before anything changes.
            if let Some(alias) = &name {
                store.add_alias(&key, alias)?;
            }
            store.trust(&key, &caps)?;
            if quota.is_some() {
                store.set_quota(&key, quota)?;
            }
            store.save()?;
            pending.remove(&key);
            if let Err(e) = pending.save() {
                eprintln!("p2pfs: warning: {e}");
            }
            let named = name
                .map(|a| format!(", alias {:?}", text::escape(&a)))
                .unwrap_or_default();
            let now = store.get(&key).map(|p| p.allow.clone()).unwrap_or_default();
            println!(
                "trusted {} (fingerprint {}){named}, allowed: {}, quota: {}",
                key,
                key.fingerprint(),
                shown_caps(&now),
                shown_quota(store.quota(&key))
            );
        }
        TrustCmd::List { json } => {
            if json {
                let v: Vec<_> = store
                    .peers()
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "id": p.key.to_id(),
                            "fingerprint": p.key.fingerprint(),
                            "aliases": p.aliases,
                            "peer_name": p.peer_name,
                            "allow": p.allow,
                            "quota": p.quota,
                            "addresses": p.addresses,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                if !store.peers().is_empty() {
                    println!(
                        "{:<19}  {:<16} {:<16} {:<14} ID  ADDRESSES",
                        "FINGERPRINT", "ALIASES", "ALLOW", "QUOTA"
                    );
                }
                for p in store.peers() {
                    let aliases = if p.aliases.is_empty() {
                        "-".to_owned()
                    } else {
                        text::escape(&p.aliases.join(","))
                    };
                    let calls = p
                        .peer_name
                        .as_deref()
                        .map(|n| format!("  (calls itself {:?})", text::escape(n)))
                        .unwrap_or_default();
                    println!(
                        "{}  {:<16} {:<16} {:<14} {}  {}{calls}",
                        p.key.fingerprint(),
                        aliases,
                        shown_caps(&p.allow),
                        shown_quota(p.quota),
                        p.key,
                        text::escape(&p.addresses.join(" ")),
                    );
                }
                if store.peers().is_empty() {
                    eprintln!("(no known peers)");
                }
            }
        }
        TrustCmd::Pending { json } => {
            let pending = Pending::open(ctx.home.root())?;
            // Most recent first.
            let seen: Vec<_> = pending.entries().iter().rev().collect();
            // Times come from disk: any value must print, never panic.
            let when = |t: i64| {
                u64::try_from(t)
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .and_then(super::vault_cmd::rfc3339_ms)
                    .unwrap_or_else(|| "-".into())
            };
            if json {
                let v: Vec<_> = seen
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "id": e.key.to_id(),
                            "fingerprint": e.key.fingerprint(),
                            "address": e.addr,
                            "name": e.name,
                            "last_refused": when(e.last),
                            "times": e.count,
                            "trusted": store.get(&e.key).is_some_and(|p| !p.allow.is_empty()),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if seen.is_empty() {
                eprintln!("(no sender was refused lately)");
            } else {
                println!(
                    "{:<19}  {:<16}  {:<21}  {:<24}  {:>5}  ID",
                    "FINGERPRINT", "CALLS ITSELF", "LAST REFUSED", "ADDRESS", "TIMES"
                );
                for e in &seen {
                    let name = if e.name.is_empty() {
                        "-".to_owned()
                    } else {
                        text::escape(&e.name)
                    };
                    println!(
                        "{:<19}  {:<16}  {:<21}  {:<24}  {:>5}  {}",
                        e.key.fingerprint(),
                        name,
                        when(e.last),
                        text::escape(&e.addr),
                        e.count,
                        e.key
                    );
                }
                println!(
                    "(CALLS ITSELF is what each sender says, unproven: compare the fingerprint with `p2pfs id` on that node, then `p2pfs trust add FINGERPRINT`)"
                );
            }
        }
        TrustCmd::Rm { what } => {
            let hits: Vec<PublicKey> = store.named(&what).iter().map(|p| p.key).collect();
            match hits.as_slice() {
                [one] => {
                    store.remove(one);
                    store.save()?;
                    println!(
                        "removed {one}: its aliases, rights and pins are gone; its key is new here again"
                    );
                }
                [] => bail!(
                    "no known peer matches {:?} (see `p2pfs trust list`)",
                    text::escape(&what)
                ),
                many => bail!(
                    "{:?} matches several peers; give a node id:\n  {}",
                    text::escape(&what),
                    many.iter()
                        .map(|k| format!("{k}  fingerprint {}", k.fingerprint()))
                        .collect::<Vec<_>>()
                        .join("\n  ")
                ),
            }
        }
    }
    Ok(())
}
