//! The trust store (`HOME/peers.json`, 0600, `docs/VAULT.md` *Trust store*):
//! the keys this node knows, like SSH's `known_hosts` plus
//! `authorized_keys`. An entry pins a node key and says
//!
//! * which **aliases** name it here — only words the user chose
//!   (`trust add --name`, or the word typed at a confirmed first contact);
//!   an alias names exactly one key;
//! * what the peer **calls itself** (its `Welcome` name): display only, it
//!   never decides where a send goes;
//! * the **addresses** (`host:port`) at which it proved that key;
//! * what it may do here (receiver side: `send`, `get`, `owner`), and how
//!   many bytes it may keep here (`quota`, for deposits).
//!
//! Everything in it is validated and bounded, so the file stays far below
//! its own read limit whatever peers say or do. Errors say what to do.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    error::{Result, StoreError},
    format::validate_node_name,
    fsutil,
};
use crate::{crypto::keys::PublicKey, text};

/// The format version written (`peers.json` `version`).
pub const VERSION: u32 = 2;
/// Most keys kept.
pub const MAX_PEERS: usize = 1024;
/// Most aliases of one key.
pub const MAX_ALIASES: usize = 4;
/// Most address pins of one key (the oldest goes first).
pub const MAX_ADDRESSES: usize = 8;
/// Longest address pin: `[` + a 253-byte host + `]:` + a 5-digit port.
pub const MAX_ADDRESS: usize = 262;
/// The largest quota that can be set (1 EiB): far above any disk, and far
/// below where byte counts could overflow.
pub const MAX_QUOTA: u64 = 1 << 60;
/// The largest file read back. The bounds above keep a full store at a
/// few MiB, far below it (a unit test checks the worst case).
const MAX_FILE: u64 = 16 << 20;

/// What a peer may do on this node.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Send files into this node's vault.
    Send,
    /// Retrieve files from this node's vault that are shared with it.
    Get,
    /// One of the owner's own devices: may retrieve from the vault as the
    /// owner (it opens the sealed vault key with the passphrase typed there).
    Owner,
}

/// Refusals of the trust store. Each says what to do instead.
#[derive(Debug, Error)]
pub enum TrustError {
    /// The alias already names another key.
    #[error(
        "the alias {alias:?} already names another node here (fingerprint {}, id {holder}): \
         an alias names exactly one key. Choose another alias; or, if that node is gone or was \
         reinstalled with a new key (compare fingerprints with `p2pfs id` on it), forget the old \
         key first with `p2pfs trust rm {}`",
        holder.fingerprint(),
        &holder.to_id()[..12]
    )]
    AliasTaken {
        /// The alias (escaped).
        alias: String,
        /// The key it names.
        holder: PublicKey,
    },
    /// The alias is not a usable word.
    #[error("{alias:?} cannot be an alias: {why}")]
    InvalidAlias {
        /// The alias (escaped).
        alias: String,
        /// Why not.
        why: &'static str,
    },
    /// The key has as many aliases as it may.
    #[error(
        "node {key} already has {MAX_ALIASES} aliases; `p2pfs trust rm` it and add it again \
         with the aliases you want"
    )]
    TooManyAliases {
        /// The key.
        key: PublicKey,
    },
    /// The store holds as many keys as it may.
    #[error(
        "the trust store is full ({MAX_PEERS} known nodes): forget some with `p2pfs trust rm` \
         (see `p2pfs trust list`)"
    )]
    Full,
    /// An address that cannot be pinned.
    #[error("cannot pin the address {address:?}: {why}")]
    InvalidAddress {
        /// The address (escaped).
        address: String,
        /// Why not.
        why: &'static str,
    },
    /// A quota that cannot be set.
    #[error("invalid quota: {why}")]
    InvalidQuota {
        /// Why not.
        why: &'static str,
    },
    /// One word names several keys (an alias and another key's id prefix,
    /// or a store edited by hand): never resolved by order.
    #[error("{}", ambiguous_message(word, keys))]
    Ambiguous {
        /// The word (escaped).
        word: String,
        /// The keys it names.
        keys: Vec<PublicKey>,
    },
}

fn ambiguous_message(word: &str, keys: &[PublicKey]) -> String {
    let mut s = format!(
        "{word:?} names {} different keys in this node's trust store; nothing was sent:\n",
        keys.len()
    );
    for k in keys {
        s.push_str(&format!("  fingerprint {}  id {k}\n", k.fingerprint()));
    }
    s.push_str(
        "Send by node id (or a unique id prefix, 8+ characters) instead. To make the word name \
         one key again, forget the other one: `p2pfs trust rm <its id>` (its rights and pins go \
         with it).",
    );
    s
}

/// One known key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node key (its node id).
    pub key: PublicKey,
    /// The user's own names for it (valid aliases, at most [`MAX_ALIASES`]).
    pub aliases: Vec<String>,
    /// What the peer calls itself (a valid node name): display only.
    pub peer_name: Option<String>,
    /// What it may do here; empty = pinned only (known key, no rights).
    pub allow: Vec<Capability>,
    /// Addresses (`host:port`) at which this key answered, oldest first.
    pub addresses: Vec<String>,
    /// How many bytes it may keep here (deposits); `None` = no quota set.
    pub quota: Option<u64>,
}

impl Peer {
    fn new(key: PublicKey) -> Self {
        Self {
            key,
            aliases: Vec::new(),
            peer_name: None,
            allow: Vec::new(),
            addresses: Vec::new(),
            quota: None,
        }
    }

    /// Whether `word` names this key: an alias (ignoring case), the node id,
    /// or an id prefix of 8 or more characters.
    fn named_by(&self, word: &str) -> bool {
        let lower = word.to_lowercase();
        let id = self.key.to_id();
        self.aliases.iter().any(|a| a.to_lowercase() == lower)
            || id == lower
            || (lower.len() >= 8 && id.starts_with(&lower))
    }
}

/// Checks a word the user wants as an alias: a valid node name that a
/// PEER argument would take as a LAN word (not an address).
pub fn validate_alias(alias: &str) -> std::result::Result<(), &'static str> {
    validate_node_name(alias)?;
    if alias.trim() != alias {
        return Err("it starts or ends with a space");
    }
    if alias.contains(['@', ':', '[']) || alias.parse::<IpAddr>().is_ok() {
        return Err(
            "it would be read as an address (it contains '@', ':' or '[', or is an IP address)",
        );
    }
    Ok(())
}

fn validate_quota(q: u64) -> std::result::Result<(), &'static str> {
    if q > MAX_QUOTA {
        return Err("a quota is at most 1 EiB (1152921504606846976 bytes)");
    }
    Ok(())
}

/// Parses a size as `trust add --quota` takes it: a number of bytes,
/// optionally followed by a unit. `K`, `M`, `G`, `T` (and `KB`…, `KiB`…)
/// are all powers of 1024: `500M` = `500MiB` = 524288000 bytes. Case and
/// a space before the unit are ignored; at most [`MAX_QUOTA`].
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shown = text::escape(&text::bounded(t, 64));
    let bad = || {
        format!(
            "{shown:?} is not a size: give bytes, or a number with K, M, G or T (powers of 1024; \
             KiB, MiB, GiB, TiB also work), e.g. 500M or 2GiB"
        )
    };
    if num.is_empty() {
        return Err(bad());
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let v = n
        .checked_mul(1u64 << shift)
        .filter(|v| validate_quota(*v).is_ok())
        .ok_or_else(|| format!("{shown} is too large: a quota is at most 1 EiB"))?;
    Ok(v)
}

fn validate_address(address: &str) -> std::result::Result<(), &'static str> {
    if address.is_empty() || address.len() > MAX_ADDRESS {
        return Err("an address pin is 1 to 262 bytes");
    }
    if address.chars().any(text::is_forbidden_in_name) {
        return Err("control or invisible character in the address");
    }
    Ok(())
}

/// One entry as stored (version 2).
#[derive(Serialize, Deserialize)]
struct Record {
    id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer_name: Option<String>,
    #[serde(default)]
    allow: Vec<Capability>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<u64>,
}

/// One entry as c3e3ae4 wrote it (version 1).
#[derive(Deserialize)]
struct RecordV1 {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    allow: Vec<Capability>,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
struct Version {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct File<R> {
    version: u32,
    peers: Vec<R>,
}

/// The trust store of one home.
pub struct TrustStore {
    path: PathBuf,
    peers: Vec<Peer>,
    /// The file as loaded: [`TrustStore::save`] of the same content writes
    /// nothing (every contact pins its address again).
    loaded: Option<Vec<u8>>,
    /// Held by [`TrustStore::load_for_change`] until the store is dropped.
    _lock: Option<std::fs::File>,
}

impl TrustStore {
    /// Loads `HOME/peers.json` (empty when absent). A version-1 file still
    /// loads (and is written back as version 2 at the next change).
    pub fn load(home: &Path) -> Result<Self> {
        Self::load_locked(home, None)
    }

    /// Loads the store to change it: an exclusive lock on
    /// `HOME/peers.json.lock` is held from before the read until the store
    /// is dropped, so two changes at once (`serve --accept ask` answered
    /// "always" while `trust add` runs, a `send` pinning a key) cannot
    /// lose one another. Readers ([`TrustStore::load`]) never wait: the
    /// file is replaced atomically.
    pub fn load_for_change(home: &Path) -> Result<Self> {
        let lock = fsutil::lock_exclusive(&home.join("peers.json.lock"))?;
        Self::load_locked(home, Some(lock))
    }

    fn load_locked(home: &Path, lock: Option<std::fs::File>) -> Result<Self> {
        let path = home.join("peers.json");
        if !path.exists() {
            return Ok(Self {
                path,
                peers: Vec::new(),
                loaded: None,
                _lock: lock,
            });
        }
        let what = path.display().to_string();
        // What to do about it, whatever is wrong: the file only lists keys.
        let hint = format!(
            " (it lists the keys this node knows: move it aside, e.g. `mv {what} {what}.bad`, \
             and keys are asked about again at their next contact; `trust add` restores rights)"
        );
        let corrupt = |e: String| StoreError::corrupt(what.clone(), format!("{e}{hint}"));
        let bytes = fsutil::read_limited(&path, MAX_FILE).map_err(|e| match e {
            StoreError::Corrupt { detail, .. } => corrupt(detail),
            other => other,
        })?;
        let v: Version = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let peers: std::result::Result<Vec<Peer>, String> = match v.version {
            1 => {
                let f: File<RecordV1> =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                f.peers.into_iter().map(from_v1).collect()
            }
            VERSION => {
                let f: File<Record> =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                f.peers.into_iter().map(from_v2).collect()
            }
            other => {
                return Err(StoreError::UnsupportedVersion {
                    what,
                    version: u16::try_from(other).unwrap_or(u16::MAX),
                })
            }
        };
        let peers = peers.map_err(corrupt)?;
        if peers.len() > MAX_PEERS {
            return Err(corrupt(format!(
                "{} entries, more than {MAX_PEERS}",
                peers.len()
            )));
        }
        for (i, p) in peers.iter().enumerate() {
            if peers[..i].iter().any(|q| q.key == p.key) {
                return Err(corrupt(format!("node {} is listed twice", p.key)));
            }
        }
        Ok(Self {
            path,
            peers,
            loaded: Some(bytes),
            _lock: lock,
        })
    }

    /// Writes the store atomically (always version 2), unless that is
    /// what the file already holds.
    pub fn save(&self) -> Result<()> {
        let f = File {
            version: VERSION,
            peers: self
                .peers
                .iter()
                .map(|p| Record {
                    id: p.key.to_id(),
                    aliases: p.aliases.clone(),
                    peer_name: p.peer_name.clone(),
                    allow: p.allow.clone(),
                    addresses: p.addresses.clone(),
                    quota: p.quota,
                })
                .collect(),
        };
        let bytes =
            serde_json::to_vec_pretty(&f).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if self.loaded.as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        fsutil::write_atomic(&self.path, &bytes)
    }

    /// All entries.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The entry of a key: present means the key is pinned (known here).
    pub fn get(&self, key: &PublicKey) -> Option<&Peer> {
        self.peers.iter().find(|p| p.key == *key)
    }

    fn entry(&mut self, key: &PublicKey) -> std::result::Result<&mut Peer, TrustError> {
        let i = match self.peers.iter().position(|p| p.key == *key) {
            Some(i) => i,
            None if self.peers.len() >= MAX_PEERS => return Err(TrustError::Full),
            None => {
                self.peers.push(Peer::new(*key));
                self.peers.len() - 1
            }
        };
        Ok(&mut self.peers[i])
    }

    /// True when `key` may do `cap` here.
    pub fn allows(&self, key: &PublicKey, cap: Capability) -> bool {
        self.get(key).is_some_and(|p| p.allow.contains(&cap))
    }

    /// The quota of `key` here in bytes, if one is set.
    pub fn quota(&self, key: &PublicKey) -> Option<u64> {
        self.get(key).and_then(|p| p.quota)
    }

    /// Sets (or, with `None`, clears) the quota of `key`, pinning the key.
    pub fn set_quota(
        &mut self,
        key: &PublicKey,
        quota: Option<u64>,
    ) -> std::result::Result<(), TrustError> {
        if let Some(q) = quota {
            validate_quota(q).map_err(|why| TrustError::InvalidQuota { why })?;
        }
        self.entry(key)?.quota = quota;
        Ok(())
    }

    /// Pins `key` (no rights, no alias) if it is not known yet.
    pub fn pin_key(&mut self, key: &PublicKey) -> std::result::Result<(), TrustError> {
        self.entry(key).map(|_| ())
    }

    /// Pins `key` and lets it do `allow` here.
    pub fn trust(
        &mut self,
        key: &PublicKey,
        allow: &[Capability],
    ) -> std::result::Result<(), TrustError> {
        let p = self.entry(key)?;
        for c in allow {
            if !p.allow.contains(c) {
                p.allow.push(*c);
            }
        }
        p.allow.sort();
        Ok(())
    }

    /// Makes `alias` (a word the user chose) name `key`, pinning the key.
    /// Refused when the alias names another key: an alias names exactly
    /// one. False when the key already had it.
    pub fn add_alias(
        &mut self,
        key: &PublicKey,
        alias: &str,
    ) -> std::result::Result<bool, TrustError> {
        validate_alias(alias).map_err(|why| TrustError::InvalidAlias {
            alias: text::escape(alias),
            why,
        })?;
        let lower = alias.to_lowercase();
        let holds = |p: &Peer| p.aliases.iter().any(|a| a.to_lowercase() == lower);
        if let Some(other) = self.peers.iter().find(|p| p.key != *key && holds(p)) {
            return Err(TrustError::AliasTaken {
                alias: alias.to_owned(),
                holder: other.key,
            });
        }
        if self.get(key).is_some_and(holds) {
            return Ok(false);
        }
        if self
            .get(key)
            .is_some_and(|p| p.aliases.len() >= MAX_ALIASES)
        {
            return Err(TrustError::TooManyAliases { key: *key });
        }
        self.entry(key)?.aliases.push(alias.to_owned());
        Ok(true)
    }

    /// Records what a known key calls itself (display only). A name that is
    /// not a valid node name is not stored; an unknown key is not added.
    pub fn set_peer_name(&mut self, key: &PublicKey, name: &str) {
        if validate_node_name(name).is_err() {
            return;
        }
        if let Some(p) = self.peers.iter_mut().find(|p| p.key == *key) {
            p.peer_name = Some(name.to_owned());
        }
    }

    /// The key pinned for an address, if any.
    pub fn pinned_for_address(&self, addr: &str) -> Option<PublicKey> {
        self.peers
            .iter()
            .find(|p| p.addresses.iter().any(|a| a == addr))
            .map(|p| p.key)
    }

    /// Records that `key` answered at `addr` (moving the address pin to it,
    /// and pinning the key). Each key keeps its latest [`MAX_ADDRESSES`].
    pub fn pin_address(
        &mut self,
        key: &PublicKey,
        addr: &str,
    ) -> std::result::Result<(), TrustError> {
        validate_address(addr).map_err(|why| TrustError::InvalidAddress {
            address: text::escape(&text::bounded(addr, MAX_ADDRESS)),
            why,
        })?;
        self.entry(key)?;
        for p in &mut self.peers {
            p.addresses.retain(|a| a != addr);
        }
        let p = self.entry(key)?;
        p.addresses.push(addr.to_owned());
        if p.addresses.len() > MAX_ADDRESSES {
            let extra = p.addresses.len() - MAX_ADDRESSES;
            p.addresses.drain(..extra);
        }
        Ok(())
    }

    /// The entries `word` names: by alias (ignoring case), node id, or id
    /// prefix of 8+ characters.
    pub fn named(&self, word: &str) -> Vec<&Peer> {
        let w = word.trim();
        self.peers.iter().filter(|p| p.named_by(w)).collect()
    }

    /// The one key `word` names here, if any; several are
    /// [`TrustError::Ambiguous`], never picked by order.
    pub fn key_for_word(&self, word: &str) -> std::result::Result<Option<PublicKey>, TrustError> {
        match self.named(word).as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.key)),
            many => Err(TrustError::Ambiguous {
                word: text::escape(word),
                keys: many.iter().map(|p| p.key).collect(),
            }),
        }
    }

    /// Removes an entry (its aliases, rights and pins).
    pub fn remove(&mut self, key: &PublicKey) -> bool {
        let before = self.peers.len();
        self.peers.retain(|p| p.key != *key);
        self.peers.len() != before
    }
}

fn parse_key(id: &str) -> std::result::Result<PublicKey, String> {
    PublicKey::parse_id(id).ok_or_else(|| format!("{:?} is not a node id", text::escape(id)))
}

fn from_v2(r: Record) -> std::result::Result<Peer, String> {
    let key = parse_key(&r.id)?;
    let bad = |what: &str| Err(format!("node {key}: {what}"));
    if r.aliases.len() > MAX_ALIASES {
        return bad("too many aliases");
    }
    if let Some(a) = r.aliases.iter().find(|a| validate_alias(a).is_err()) {
        return bad(&format!("invalid alias {:?}", text::escape(a)));
    }
    if r.peer_name
        .as_deref()
        .is_some_and(|n| validate_node_name(n).is_err())
    {
        return bad("invalid peer name");
    }
    if r.addresses.len() > MAX_ADDRESSES || r.addresses.iter().any(|a| validate_address(a).is_err())
    {
        return bad("invalid or too many addresses");
    }
    if r.quota.is_some_and(|q| validate_quota(q).is_err()) {
        return bad("quota over 1 EiB");
    }
    Ok(Peer {
        key,
        aliases: r.aliases,
        peer_name: r.peer_name,
        allow: r.allow,
        addresses: r.addresses,
        quota: r.quota,
    })
}

/// Version 1 stored, as `name`, what the peer *called itself* (its
/// `Welcome` name) or an alias indistinguishable from it: it becomes the
/// display-only peer name, never an alias (a name a peer chose must not
/// decide where later sends go). Invalid names (c3e3ae4 stored them
/// unchecked) are dropped, and only the latest addresses are kept.
fn from_v1(r: RecordV1) -> std::result::Result<Peer, String> {
    let key = parse_key(&r.id)?;
    let mut addresses: Vec<String> = r
        .addresses
        .into_iter()
        .filter(|a| validate_address(a).is_ok())
        .collect();
    if addresses.len() > MAX_ADDRESSES {
        addresses.drain(..addresses.len() - MAX_ADDRESSES);
    }
    Ok(Peer {
        key,
        aliases: Vec::new(),
        peer_name: r.name.filter(|n| validate_node_name(n).is_ok()),
        allow: r.allow,
        addresses,
        quota: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::Keypair;

    fn key() -> PublicKey {
        Keypair::generate().unwrap().public()
    }

    fn store() -> (tempfile::TempDir, TrustStore) {
        let d = tempfile::tempdir().unwrap();
        let s = TrustStore::load(d.path()).unwrap();
        (d, s)
    }

    #[test]
    fn two_changes_at_once_keep_both() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (key(), key());
        let mut first = TrustStore::load_for_change(d.path()).unwrap();
        first.trust(&a, &[Capability::Send]).unwrap();
        let home = d.path().to_path_buf();
        let (started_tx, started) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            started_tx.send(()).unwrap();
            // Waits for the first change, then loads what it saved.
            let mut t = TrustStore::load_for_change(&home).unwrap();
            t.trust(&b, &[Capability::Get]).unwrap();
            t.save().unwrap();
        });
        started.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Readers never wait for a change in progress.
        assert!(TrustStore::load(d.path()).unwrap().get(&a).is_none());
        first.save().unwrap();
        drop(first);
        second.join().unwrap();
        let t = TrustStore::load(d.path()).unwrap();
        assert!(t.allows(&a, Capability::Send), "the first change was lost");
        assert!(t.allows(&b, Capability::Get));
    }

    #[test]
    fn a_save_that_changes_nothing_writes_nothing() {
        use std::os::unix::fs::MetadataExt;
        let (d, mut s) = store();
        let a = key();
        s.pin_address(&a, "127.0.0.1:47474").unwrap();
        s.save().unwrap();
        let file = d.path().join("peers.json");
        let inode = || std::fs::metadata(&file).unwrap().ino();
        let first = inode();
        // Every contact pins its address again: the same pin, no write.
        let mut s = TrustStore::load(d.path()).unwrap();
        s.pin_address(&a, "127.0.0.1:47474").unwrap();
        s.save().unwrap();
        assert_eq!(inode(), first);
        // A new address is written (atomically: a new file).
        s.pin_address(&a, "127.0.0.1:47475").unwrap();
        s.save().unwrap();
        assert_ne!(inode(), first);
        let s = TrustStore::load(d.path()).unwrap();
        assert_eq!(s.pinned_for_address("127.0.0.1:47475"), Some(a));
    }

    #[test]
    fn an_alias_names_exactly_one_key() {
        let (d, mut s) = store();
        let (a, b) = (key(), key());
        assert!(s.add_alias(&a, "vault-b").unwrap());
        assert!(!s.add_alias(&a, "VAULT-B").unwrap());
        match s.add_alias(&b, "Vault-B") {
            Err(e @ TrustError::AliasTaken { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains(&a.fingerprint()) && m.contains("trust rm"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.key_for_word("vault-b").unwrap(), Some(a));
        assert_eq!(s.key_for_word("VAULT-B").unwrap(), Some(a));
        assert_eq!(s.key_for_word(&b.to_id()).unwrap(), None);
        for bad in [
            "",
            " x",
            "a:b",
            "id@host",
            "[::1]",
            "10.0.0.1",
            "a\u{202e}b",
            "a\u{1b}",
        ] {
            assert!(
                matches!(s.add_alias(&b, bad), Err(TrustError::InvalidAlias { .. })),
                "{bad:?}"
            );
        }
        for i in 1..MAX_ALIASES {
            s.add_alias(&a, &format!("a{i}")).unwrap();
        }
        assert!(matches!(
            s.add_alias(&a, "one-more"),
            Err(TrustError::TooManyAliases { .. })
        ));
        s.save().unwrap();
        let s = TrustStore::load(d.path()).unwrap();
        assert_eq!(s.get(&a).unwrap().aliases.len(), MAX_ALIASES);
        assert!(s.get(&b).is_none(), "a refused alias pins nothing");
    }

    #[test]
    fn a_peers_own_name_is_display_only() {
        let (_d, mut s) = store();
        let squatter = key();
        s.pin_address(&squatter, "10.0.0.9:47474").unwrap();
        s.set_peer_name(&squatter, "recv");
        assert_eq!(s.get(&squatter).unwrap().peer_name.as_deref(), Some("recv"));
        assert_eq!(s.key_for_word("recv").unwrap(), None);
        // Invalid names are not stored; unknown keys are not added.
        s.set_peer_name(&squatter, "x\r\u{1b}[8m");
        s.set_peer_name(&squatter, &"n".repeat(20 << 20));
        assert_eq!(s.get(&squatter).unwrap().peer_name.as_deref(), Some("recv"));
        let stranger = key();
        s.set_peer_name(&stranger, "hello");
        assert!(s.get(&stranger).is_none());
    }

    #[test]
    fn two_keys_behind_one_word_are_ambiguous() {
        let (d, mut s) = store();
        let (a, b) = (key(), key());
        let prefix = b.to_id()[..10].to_owned();
        s.add_alias(&a, &prefix).unwrap();
        s.pin_key(&b).unwrap();
        match s.key_for_word(&prefix) {
            Err(e @ TrustError::Ambiguous { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains(&a.fingerprint()) && m.contains(&b.fingerprint()),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A store edited by hand: one alias on two keys loads, and stays
        // ambiguous.
        let f = serde_json::json!({"version": 2, "peers": [
            {"id": a.to_id(), "aliases": ["twin"]},
            {"id": b.to_id(), "aliases": ["TWIN"]},
        ]});
        std::fs::write(d.path().join("peers.json"), f.to_string()).unwrap();
        let s = TrustStore::load(d.path()).unwrap();
        assert!(matches!(
            s.key_for_word("twin"),
            Err(TrustError::Ambiguous { keys, .. }) if keys.len() == 2
        ));
    }

    #[test]
    fn version_1_names_become_display_only_and_bad_ones_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (key(), key());
        let addrs: Vec<String> = (0..20).map(|i| format!("10.0.0.{i}:47474")).collect();
        let f = serde_json::json!({"version": 1, "peers": [
            {"id": a.to_id(), "name": "recv", "allow": ["send"], "addresses": addrs},
            {"id": b.to_id(), "name": "evil\r\u{1b}[8m\u{202e}", "addresses": []},
        ]});
        std::fs::write(d.path().join("peers.json"), f.to_string()).unwrap();
        let s = TrustStore::load(d.path()).unwrap();
        let pa = s.get(&a).unwrap().clone();
        assert_eq!(pa.peer_name.as_deref(), Some("recv"));
        assert!(pa.aliases.is_empty());
        assert_eq!(pa.allow, [Capability::Send]);
        assert_eq!(pa.addresses.len(), MAX_ADDRESSES);
        assert_eq!(pa.addresses.last().unwrap(), "10.0.0.19:47474");
        assert_eq!(s.get(&b).unwrap().peer_name, None);
        assert_eq!(s.key_for_word("recv").unwrap(), None);
        s.save().unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("peers.json")).unwrap()).unwrap();
        assert_eq!(v["version"], 2);
        assert!(TrustStore::load(d.path()).unwrap().get(&a).is_some());
    }

    #[test]
    fn invalid_version_2_files_are_refused_and_newer_ones_too() {
        let d = tempfile::tempdir().unwrap();
        let a = key();
        let p = d.path().join("peers.json");
        let cases = [
            serde_json::json!({"version": 2, "peers": [{"id": "nope"}]}),
            serde_json::json!({"version": 2, "peers": [{"id": a.to_id(), "aliases": ["a\u{1b}"]}]}),
            serde_json::json!({"version": 2, "peers": [{"id": a.to_id(), "peer_name": "n".repeat(65)}]}),
            serde_json::json!({"version": 2, "peers": [{"id": a.to_id()}, {"id": a.to_id()}]}),
        ];
        for c in cases {
            std::fs::write(&p, c.to_string()).unwrap();
            assert!(
                matches!(TrustStore::load(d.path()), Err(StoreError::Corrupt { .. })),
                "{c}"
            );
        }
        // Too large to read (c3e3ae4 could write that): the error says what to do.
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_FILE + 1).unwrap();
        let e = TrustStore::load(d.path()).err().unwrap().to_string();
        assert!(
            e.contains("move it aside") && e.contains("peers.json.bad"),
            "{e}"
        );
        std::fs::write(&p, r#"{"version": 3, "peers": []}"#).unwrap();
        assert!(matches!(
            TrustStore::load(d.path()),
            Err(StoreError::UnsupportedVersion { version: 3, .. })
        ));
    }

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        for (s, v) in [
            ("123", 123),
            ("0", 0),
            ("500M", 500 << 20),
            ("500MiB", 500 << 20),
            ("500 mb", 500 << 20),
            ("10G", 10 << 30),
            ("1T", 1 << 40),
            ("64KiB", 64 << 10),
            ("64k", 64 << 10),
            ("2GiB", 2 << 30),
            ("7b", 7),
            ("1048576T", 1 << 60),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "10X",
            "1 0",
            "10GG",
            "1e3",
            "+5",
            "1048577T",
            "99999999999999999999",
            "18446744073709551615T",
            "5\u{1b}[2J",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(!e.contains('\u{1b}'), "{e}");
        }
    }

    #[test]
    fn quotas_and_the_owner_right_round_trip_and_are_bounded() {
        let (d, mut s) = store();
        let (a, b) = (key(), key());
        s.trust(&a, &[Capability::Owner, Capability::Get]).unwrap();
        s.set_quota(&a, Some(10 << 30)).unwrap();
        s.pin_key(&b).unwrap();
        assert!(matches!(
            s.set_quota(&b, Some(MAX_QUOTA + 1)),
            Err(TrustError::InvalidQuota { .. })
        ));
        s.save().unwrap();
        let text = std::fs::read_to_string(d.path().join("peers.json")).unwrap();
        assert!(text.contains("\"owner\"") && text.contains("\"quota\": 10737418240"));
        let s = TrustStore::load(d.path()).unwrap();
        assert_eq!(s.quota(&a), Some(10 << 30));
        assert_eq!(s.quota(&b), None);
        assert_eq!(s.quota(&key()), None);
        assert!(s.allows(&a, Capability::Owner) && s.allows(&a, Capability::Get));
        assert!(!s.allows(&a, Capability::Send));
        // Files without the field load; one over the bound is refused.
        let p = d.path().join("peers.json");
        let f = serde_json::json!({"version": 2, "peers": [{"id": a.to_id(), "allow": ["get"]}]});
        std::fs::write(&p, f.to_string()).unwrap();
        assert_eq!(TrustStore::load(d.path()).unwrap().quota(&a), None);
        for q in [
            serde_json::json!(MAX_QUOTA + 1),
            serde_json::json!(-1),
            serde_json::json!("1G"),
        ] {
            let f = serde_json::json!({"version": 2, "peers": [{"id": a.to_id(), "quota": q}]});
            std::fs::write(&p, f.to_string()).unwrap();
            assert!(
                matches!(TrustStore::load(d.path()), Err(StoreError::Corrupt { .. })),
                "{q}"
            );
        }
    }

    #[test]
    fn address_pins_move_and_are_bounded() {
        let (_d, mut s) = store();
        let (a, b) = (key(), key());
        s.pin_address(&a, "h:1").unwrap();
        s.pin_address(&b, "h:1").unwrap();
        assert_eq!(s.pinned_for_address("h:1"), Some(b));
        assert!(s.get(&a).unwrap().addresses.is_empty());
        for i in 0..100 {
            s.pin_address(&a, &format!("h:{}", i + 2)).unwrap();
        }
        assert_eq!(s.get(&a).unwrap().addresses.len(), MAX_ADDRESSES);
        assert!(s.pin_address(&a, &"h".repeat(MAX_ADDRESS + 1)).is_err());
        assert!(s.pin_address(&a, "h\u{1b}:1").is_err());
    }

    #[test]
    fn a_full_store_stays_far_below_its_read_limit() {
        let (d, mut s) = store();
        // Worst case: every bound reached with the longest strings JSON
        // escapes most (quotes double in size).
        let name = "\"".repeat(64);
        for i in 0..MAX_PEERS {
            let k = key();
            s.trust(&k, &[Capability::Send, Capability::Get, Capability::Owner])
                .unwrap();
            s.set_quota(&k, Some(MAX_QUOTA)).unwrap();
            for j in 0..MAX_ALIASES {
                let alias = format!("{i:04}{j}{}", "\"".repeat(59));
                s.add_alias(&k, &alias).unwrap();
            }
            s.set_peer_name(&k, &name);
            for j in 0..MAX_ADDRESSES {
                let a = format!("{i:04}{j}{}", "\"".repeat(MAX_ADDRESS - 5));
                s.pin_address(&k, &a).unwrap();
            }
        }
        assert!(matches!(s.pin_key(&key()), Err(TrustError::Full)));
        s.save().unwrap();
        let len = std::fs::metadata(d.path().join("peers.json"))
            .unwrap()
            .len();
        assert!(len < MAX_FILE / 2, "{len} bytes");
        assert_eq!(TrustStore::load(d.path()).unwrap().peers().len(), MAX_PEERS);
    }
}
