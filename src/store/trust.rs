//! The trust store (`HOME/peers.json`, 0600): peers this node knows, like
//! SSH's `known_hosts` plus `authorized_keys`. An entry pins a node id to a
//! name and the addresses it was reached at (sender side, trust on first
//! use), and says what the peer may do here (receiver side: `send`, `get`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    error::{Result, StoreError},
    fsutil,
};
use crate::crypto::keys::PublicKey;

/// What a peer may do on this node.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Send files into this node's vault.
    Send,
    /// Retrieve files from this node's vault.
    Get,
}

/// One known peer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node id (base32 public key).
    pub id: String,
    /// Local alias or advertised name.
    #[serde(default)]
    pub name: Option<String>,
    /// What it may do here; empty = pinned only (known key, no rights).
    #[serde(default)]
    pub allow: Vec<Capability>,
    /// Addresses (`host:port`) at which this key answered.
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl Peer {
    /// The parsed node id.
    pub fn key(&self) -> Option<PublicKey> {
        PublicKey::parse_id(&self.id)
    }
}

#[derive(Serialize, Deserialize, Default)]
struct File {
    version: u32,
    peers: Vec<Peer>,
}

/// The trust store of one home.
pub struct TrustStore {
    path: PathBuf,
    peers: Vec<Peer>,
}

impl TrustStore {
    /// Loads `HOME/peers.json` (empty when absent).
    pub fn load(home: &Path) -> Result<Self> {
        let path = home.join("peers.json");
        if !path.exists() {
            return Ok(Self {
                path,
                peers: Vec::new(),
            });
        }
        let bytes = fsutil::read_limited(&path, 16 << 20)?;
        let f: File = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::corrupt(path.display().to_string(), e.to_string()))?;
        if f.version != 1 {
            return Err(StoreError::UnsupportedVersion {
                what: path.display().to_string(),
                version: f.version as u16,
            });
        }
        Ok(Self {
            path,
            peers: f.peers,
        })
    }

    /// Writes the store atomically.
    pub fn save(&self) -> Result<()> {
        let f = File {
            version: 1,
            peers: self.peers.clone(),
        };
        let bytes =
            serde_json::to_vec_pretty(&f).map_err(|e| StoreError::Invalid(e.to_string()))?;
        fsutil::write_atomic(&self.path, &bytes)
    }

    /// All entries.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The entry of a node id.
    pub fn get(&self, id: &PublicKey) -> Option<&Peer> {
        let s = id.to_id();
        self.peers.iter().find(|p| p.id == s)
    }

    fn get_mut(&mut self, id: &PublicKey) -> &mut Peer {
        let s = id.to_id();
        if let Some(i) = self.peers.iter().position(|p| p.id == s) {
            return &mut self.peers[i];
        }
        self.peers.push(Peer {
            id: s,
            name: None,
            allow: Vec::new(),
            addresses: Vec::new(),
        });
        let last = self.peers.len() - 1;
        &mut self.peers[last]
    }

    /// True when `id` may do `cap` here.
    pub fn allows(&self, id: &PublicKey, cap: Capability) -> bool {
        self.get(id).is_some_and(|p| p.allow.contains(&cap))
    }

    /// Adds or updates a trusted peer.
    pub fn trust(&mut self, id: &PublicKey, name: Option<String>, allow: &[Capability]) {
        let p = self.get_mut(id);
        if name.is_some() {
            p.name = name;
        }
        for c in allow {
            if !p.allow.contains(c) {
                p.allow.push(*c);
            }
        }
        p.allow.sort();
    }

    /// The key pinned for an address, if any.
    pub fn pinned_for_address(&self, addr: &str) -> Option<PublicKey> {
        self.peers
            .iter()
            .find(|p| p.addresses.iter().any(|a| a == addr))
            .and_then(Peer::key)
    }

    /// Records that `id` answered at `addr` (moving the address pin to it).
    pub fn pin(&mut self, id: &PublicKey, addr: &str, name: Option<&str>) {
        for p in &mut self.peers {
            p.addresses.retain(|a| a != addr);
        }
        let p = self.get_mut(id);
        p.addresses.push(addr.to_owned());
        if p.name.is_none() {
            p.name = name.map(str::to_owned);
        }
    }

    /// Finds entries by node id, unique id prefix or alias.
    pub fn find(&self, query: &str) -> Vec<&Peer> {
        let q = query.to_ascii_lowercase();
        let exact: Vec<&Peer> = self
            .peers
            .iter()
            .filter(|p| p.id == q || p.name.as_deref() == Some(query))
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        if q.len() >= 8 {
            return self.peers.iter().filter(|p| p.id.starts_with(&q)).collect();
        }
        Vec::new()
    }

    /// Removes an entry (its rights and its pins).
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.peers.len();
        self.peers.retain(|p| p.id != id);
        self.peers.len() != before
    }
}
