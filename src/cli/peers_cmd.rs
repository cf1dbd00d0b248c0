//! `p2pfs peers`: the p2pfs nodes advertised on the LAN (mDNS), and what
//! this node knows of each (trusted, pinned, itself). Works without a node
//! in the home directory too: then nothing is known of anyone.

use std::time::Duration;

use anyhow::{bail, Result};
use p2pfs::{
    crypto::keys::PublicKey,
    net::discovery::{self, Peer},
    store::trust::TrustStore,
    text,
};

use super::Ctx;

/// Longest `--wait`, in seconds.
const MAX_WAIT: f64 = 600.0;

/// What this node knows of a discovered node.
struct Known {
    this_node: bool,
    pinned: bool,
    allow: Vec<String>,
    aliases: Vec<String>,
}

fn known(p: &Peer, me: Option<&PublicKey>, trust: Option<&TrustStore>) -> Known {
    let entry = trust.and_then(|t| t.get(&p.id));
    Known {
        this_node: me == Some(&p.id),
        pinned: entry.is_some(),
        allow: entry
            .map(|e| {
                e.allow
                    .iter()
                    .map(|c| format!("{c:?}").to_lowercase())
                    .collect()
            })
            .unwrap_or_default(),
        aliases: entry.map(|e| e.aliases.clone()).unwrap_or_default(),
    }
}

impl Known {
    fn status(&self) -> String {
        let mut s = if self.this_node {
            "this node".to_owned()
        } else if !self.allow.is_empty() {
            format!("trusted ({})", self.allow.join(","))
        } else if self.pinned {
            "pinned".to_owned()
        } else {
            "new".to_owned()
        };
        if !self.aliases.is_empty() {
            s.push_str(&format!(" as {}", text::escape(&self.aliases.join(","))));
        }
        s
    }
}

pub fn run(ctx: &Ctx, wait: f64, json: bool) -> Result<()> {
    if !(wait.is_finite() && wait > 0.0 && wait <= MAX_WAIT) {
        bail!("--wait takes a number of seconds, more than 0 and at most {MAX_WAIT}");
    }
    let wait = Duration::from_secs_f64(wait);
    let (me, trust) = if ctx.home.is_initialised() {
        (
            Some(ctx.home.load_identity()?.id()),
            Some(TrustStore::load(ctx.home.root())?),
        )
    } else {
        (None, None)
    };
    let rt = super::runtime(false)?;
    // What is on the LAN now: pairs withdrawn by a goodbye are not listed.
    let found = rt.block_on(discovery::browse(wait, |_| false))?;
    let peers: Vec<&Peer> = found.live().collect();
    if found.truncated {
        eprintln!(
            "warning: more than {} records were announced; only the first were kept (is the LAN flooded?)",
            discovery::MAX_PEERS
        );
    }

    if json {
        let v: Vec<serde_json::Value> = peers
            .iter()
            .map(|p| {
                let k = known(p, me.as_ref(), trust.as_ref());
                serde_json::json!({
                    "name": p.name,
                    "instance": p.instance,
                    "id": p.id.to_id(),
                    "fingerprint": p.id.fingerprint(),
                    "addresses": p.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "port": p.port,
                    "trusted": !k.allow.is_empty(),
                    "allow": k.allow,
                    "pinned": k.pinned,
                    "aliases": k.aliases,
                    "self": k.this_node,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if peers.is_empty() {
        eprintln!(
            "no p2pfs node answered on the LAN within {:.1} s (mDNS).\n  \
             - is `p2pfs serve` running there, without --no-mdns?\n  \
             - a firewall must let UDP port 5353 (mDNS) through, and the node's port for sending;\n  \
             - `--wait 5` listens longer; without discovery, send to host:port",
            wait.as_secs_f32()
        );
        return Ok(());
    }
    let rows: Vec<[String; 5]> = peers
        .iter()
        .map(|p| {
            let addrs: Vec<String> = p.socket_addrs().iter().map(|a| a.to_string()).collect();
            [
                p.shown_name(),
                p.id.fingerprint(),
                p.id.to_id()[..12].to_owned(),
                addrs.join(" "),
                known(p, me.as_ref(), trust.as_ref()).status(),
            ]
        })
        .collect();
    let head = ["NAME", "FINGERPRINT", "ID", "ADDRESSES", "HERE"];
    let mut width = head.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(width[i] - c.chars().count() + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    Ok(())
}
