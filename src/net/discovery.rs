//! LAN discovery with mDNS / DNS-SD (`mdns-sd`): `serve` advertises
//! `_p2pfs._udp.local.` with a TXT record naming the protocol version, the
//! node id and the node name; `peers` and `send NAME` browse for it
//! (`docs/PROTOCOL.md`, *Discovery*).
//!
//! What a record says is a **hint**, never an identity: anyone on the LAN
//! can advertise any name and any id, or re-announce another node's
//! instance with its own. A browse therefore keeps every (instance, id) pair
//! it sees, and a word behind which two ids appear is ambiguous unless the
//! user's own word (an alias in the trust store) names one key; nothing is
//! ever picked by arrival order. The id chosen only becomes the key the
//! Noise handshake must prove; the handshake decides. Malformed and foreign
//! records are skipped, never an error. This module never prints: outcomes
//! are values and [`DiscoveryError`]s.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use thiserror::Error;

use crate::{crypto::keys::PublicKey, store::format::validate_node_name, text};

/// The DNS-SD service type of p2pfs nodes.
pub const SERVICE_TYPE: &str = "_p2pfs._udp.local.";
/// The DNS-SD service type of a node showing a pairing code (`p2pfs pair`):
/// its record names the code's nameplate (not secret), never the code.
pub const PAIR_SERVICE_TYPE: &str = "_p2pfs-pair._udp.local.";
/// Largest pairing nameplate (`net::pair`).
const MAX_PLATE: u16 = 99;
/// The protocol version a node advertises in TXT `v` (ALPN `p2pfs/5`).
pub const PROTOCOL_VERSION: &str = "5";
/// Longest instance label we advertise, in bytes. DNS labels end at 63
/// bytes, and a name conflict makes mdns-sd append " (N)".
const MAX_INSTANCE: usize = 56;
/// Longest instance label accepted from the LAN (a DNS label).
const MAX_LABEL: usize = 63;
/// A hostile LAN can advertise any number of records: keep at most this
/// many (instance, id) pairs per browse.
pub const MAX_PEERS: usize = 1024;
/// Most addresses kept for one (instance, id) pair.
const MAX_ADDRESSES: usize = 16;
/// After the first node matching a name that no key is decided for (a first
/// contact), how long to wait for another one with the same name (which
/// makes the name ambiguous). Long enough for a responder that rate-limits
/// its answers to once a second (RFC 6762 §6) to answer the browse's second
/// query: a spoofer must be heard to be refused.
const MATCH_GRACE: Duration = Duration::from_millis(1500);
/// When the name is pinned to a key but only other keys answer, how long to
/// wait for the pinned node before letting the handshake reject the others.
const PINNED_GRACE: Duration = Duration::from_millis(2000);
/// How often a browse re-evaluates its stop condition without new records.
const TICK: Duration = Duration::from_millis(50);
/// Bound on each step of withdrawing an advertisement.
const WITHDRAW_WAIT: Duration = Duration::from_secs(1);

/// Failures of discovery.
#[derive(Debug, Error)]
pub enum DiscoveryError {
    /// The mDNS daemon could not start or refused a command.
    #[error("mDNS is unavailable here: {0}")]
    Mdns(String),
    /// No advertised node matches the name or id.
    #[error(
        "no p2pfs node named or with id {query:?} answered on the LAN (mDNS) within {:.1} s.\n  \
         - `p2pfs peers` lists the nodes that can be found from here;\n  \
         - check that `p2pfs serve` runs there and was not started with --no-mdns;\n  \
         - a firewall must let UDP port 5353 (mDNS) and the node's UDP port (47474 by default) through;\n  \
         - or give its address: host:port (a DNS host name needs the port, e.g. fileserver:47474)",
        waited.as_secs_f32()
    )]
    NotFound {
        /// What was asked for.
        query: String,
        /// How long the LAN was browsed.
        waited: Duration,
    },
    /// Several different nodes match (the same name, or a short id prefix).
    #[error("{}", ambiguous_message(query, candidates))]
    Ambiguous {
        /// What was asked for.
        query: String,
        /// The matching nodes (one per distinct id).
        candidates: Vec<Peer>,
    },
    /// No node announces the pairing nameplate asked for.
    #[error(
        "no node showing a pairing code {plate}-… answered on the LAN (mDNS) within {} s: check \
         that `p2pfs pair` still runs there and was not started with --no-mdns, or give its \
         address: p2pfs pair CODE HOST (UDP port 47475 by default)",
        waited.as_secs()
    )]
    NoPairing {
        /// The nameplate.
        plate: u16,
        /// How long the LAN was browsed.
        waited: Duration,
    },
    /// Several nodes announce the pairing nameplate asked for (two
    /// pairings at once, or a spoofer): none is tried.
    #[error(
        "{} nodes show a pairing code {plate}-… on the LAN ({}); none was tried: give the address \
         of the one you mean: p2pfs pair CODE HOST (UDP port 47475 by default)",
        candidates.len(),
        candidates.iter().map(|p| format!("{} (fingerprint {})", p.shown_name(), p.id.fingerprint())).collect::<Vec<_>>().join(", ")
    )]
    SeveralPairing {
        /// The nameplate.
        plate: u16,
        /// One pair per distinct id.
        candidates: Vec<Peer>,
    },
    /// More records were announced than a browse keeps, so a second node
    /// behind the word may have gone unseen.
    #[error(
        "more than {MAX_PEERS} p2pfs records were announced on the LAN while looking for {query:?}: \
         some were dropped, so p2pfs cannot tell whether another node uses that name (the LAN \
         may be flooded); nothing was sent. Send by full node id, host:port or \
         NODEID@host:port, or name the node yourself: \
         `p2pfs trust add <its id> --name {query} --allow none`"
    )]
    Flooded {
        /// What was asked for.
        query: String,
    },
}

fn ambiguous_message(query: &str, candidates: &[Peer]) -> String {
    let mut s = format!(
        "{query:?} matches {} different nodes on the LAN; nothing was sent:\n",
        candidates.len()
    );
    for p in candidates {
        s.push_str(&format!(
            "  {:<20} fingerprint {}  id {}  at {}\n",
            p.shown_name(),
            p.id.fingerprint(),
            p.id,
            p.socket_addrs()
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    s.push_str(&format!(
        "Anyone on the LAN can announce any name. Compare the fingerprints with `p2pfs id` on the \
         node you mean, then send to it by node id or a unique id prefix (8 characters or more), \
         or make {query:?} your name for it: `p2pfs trust add <its id> --name {query} --allow none` \
         (later sends to {query:?} then want that key only)."
    ));
    s
}

fn mdns_err(e: mdns_sd::Error) -> DiscoveryError {
    DiscoveryError::Mdns(e.to_string())
}

/// A p2pfs node found on the LAN: one (instance, id) pair, merged from
/// every record seen for it. Everything here is what the record *claims*.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The mDNS instance label (the node name, or "name (2)" after a
    /// conflict on the LAN).
    pub instance: String,
    /// The node name (TXT `name`, else the instance label).
    pub name: String,
    /// The node id it advertises (TXT `id`): the key its handshake must prove.
    pub id: PublicKey,
    /// Its usable addresses, preferred first: IPv4, then IPv6, loopback
    /// after the others of its family.
    pub addresses: Vec<IpAddr>,
    /// Its UDP port.
    pub port: u16,
    /// The pairing nameplate it shows (TXT `plate`, 1–99): pairing records
    /// only, `None` on a node's record.
    pub plate: Option<u16>,
    /// A goodbye (or a record of TTL 0) withdrew it during the browse. It
    /// still counts when deciding whether a word is ambiguous: anyone can
    /// send a goodbye in another node's name.
    pub withdrawn: bool,
}

impl Peer {
    /// The name and, when it differs, the instance label, escaped for a
    /// terminal (both are validated already; this is the second guard).
    pub fn shown_name(&self) -> String {
        if self.instance == self.name {
            text::escape(&self.name)
        } else {
            format!(
                "{} [{}]",
                text::escape(&self.name),
                text::escape(&self.instance)
            )
        }
    }

    /// The addresses with the port, in the order to try them.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }

    /// Reads a resolved node record; `None` for foreign or malformed ones.
    pub fn from_info(info: &ServiceInfo) -> Option<Peer> {
        Self::from_record(info, SERVICE_TYPE)
    }

    /// Reads a resolved record of `service` ([`SERVICE_TYPE`] or
    /// [`PAIR_SERVICE_TYPE`], which must name a valid nameplate); `None`
    /// for foreign or malformed ones.
    pub fn from_record(info: &ServiceInfo, service: &str) -> Option<Peer> {
        let fullname = info.get_fullname();
        let cut = fullname.len().checked_sub(service.len() + 1)?;
        let (instance, suffix) = (fullname.get(..cut)?, fullname.get(cut..)?);
        if !suffix.strip_prefix('.')?.eq_ignore_ascii_case(service) {
            return None;
        }
        let plate = if service == PAIR_SERVICE_TYPE {
            let p = info.get_property_val_str("plate")?.trim();
            // Digits only: no sign, no space, no leading zero.
            if p.is_empty()
                || p.len() > 2
                || p.starts_with('0')
                || !p.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|n| (1..=MAX_PLATE).contains(n))?,
            )
        } else {
            None
        };
        if instance.is_empty()
            || instance.len() > MAX_LABEL
            || instance.chars().any(text::is_forbidden_in_name)
        {
            return None;
        }
        if info.get_property_val_str("v")?.trim() != PROTOCOL_VERSION {
            return None;
        }
        let id = PublicKey::parse_id(info.get_property_val_str("id")?)?;
        let name = match info.get_property_val_str("name") {
            Some(n) if validate_node_name(n).is_ok() => n.to_owned(),
            Some(_) => return None,
            None => instance.to_owned(),
        };
        let port = info.get_port();
        if port == 0 {
            return None;
        }
        let mut addresses: Vec<IpAddr> = info
            .get_addresses()
            .iter()
            .copied()
            .filter(usable)
            .collect();
        addresses.sort_by_key(|ip| (rank(ip), *ip));
        addresses.dedup();
        addresses.truncate(MAX_ADDRESSES);
        if addresses.is_empty() {
            return None;
        }
        Some(Peer {
            instance: instance.to_owned(),
            name,
            id,
            addresses,
            port,
            plate,
            withdrawn: false,
        })
    }
}

/// Addresses a connection can use: not unspecified, not multicast, and no
/// IPv6 link-local (mdns-sd does not report the interface they need).
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => {
            !v6.is_unspecified() && !v6.is_multicast() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

fn rank(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) if !v4.is_loopback() => 0,
        IpAddr::V4(_) => 1,
        IpAddr::V6(v6) if !v6.is_loopback() => 2,
        IpAddr::V6(_) => 3,
    }
}

/// The instance label advertised for a node name: no dots (mdns-sd cannot
/// escape them) and short enough to stay a valid label after a rename.
pub fn instance_label(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c == '.' || text::is_forbidden_in_name(c) {
                '-'
            } else {
                c
            }
        })
        .collect();
    while s.len() > MAX_INSTANCE {
        s.pop();
    }
    if s.trim().is_empty() {
        "p2pfs".into()
    } else {
        s
    }
}

/// Every (instance, id) pair seen during one browse. mdns-sd reports an
/// instance again each time more of its records (addresses) arrive, and
/// again when another responder re-announces the same instance with other
/// records: keyed by the pair, a second id under a name is *added*, never
/// replaces the first (which would let a spoofer take the name over).
struct Merged {
    /// The service browsed.
    service: &'static str,
    seen: BTreeMap<(String, PublicKey), Peer>,
    truncated: bool,
}

impl Default for Merged {
    fn default() -> Self {
        Self::of(SERVICE_TYPE)
    }
}

impl Merged {
    fn of(service: &'static str) -> Self {
        Self {
            service,
            seen: BTreeMap::new(),
            truncated: false,
        }
    }

    /// Applies one event; true when the set changed.
    fn apply(&mut self, ev: ServiceEvent) -> bool {
        match ev {
            ServiceEvent::ServiceResolved(info) => {
                let Some(new) = Peer::from_record(&info, self.service) else {
                    // Skipped, and nothing already seen is dropped: a
                    // malformed re-announcement must not hide a node.
                    tracing::debug!(
                        name = %text::escape(info.get_fullname()),
                        "ignoring a malformed or foreign record"
                    );
                    return false;
                };
                let key = (info.get_fullname().to_lowercase(), new.id);
                let room = self.seen.len() < MAX_PEERS;
                match self.seen.get_mut(&key) {
                    // Same pair: keep every address seen so far.
                    Some(old) => {
                        let before = old.clone();
                        let mut addrs = old.addresses.clone();
                        addrs.extend(new.addresses.iter().copied());
                        addrs.sort_by_key(|ip| (rank(ip), *ip));
                        addrs.dedup();
                        addrs.truncate(MAX_ADDRESSES);
                        *old = Peer {
                            addresses: addrs,
                            ..new
                        };
                        *old != before
                    }
                    None if room => {
                        self.seen.insert(key, new);
                        true
                    }
                    None => {
                        self.truncated = true;
                        false
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let name = fullname.to_lowercase();
                let mut changed = false;
                for (_, p) in self.seen.iter_mut().filter(|((n, _), _)| *n == name) {
                    changed |= !p.withdrawn;
                    p.withdrawn = true;
                }
                changed
            }
            _ => false,
        }
    }

    fn peers(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self.seen.values().cloned().collect();
        v.sort_by(|a, b| {
            (a.withdrawn, &a.name, &a.instance, a.id).cmp(&(
                b.withdrawn,
                &b.name,
                &b.instance,
                b.id,
            ))
        });
        v
    }
}

/// What a browse found.
#[derive(Debug, Clone, Default)]
pub struct Browsed {
    /// Every (instance, id) pair seen, live ones first, then by name,
    /// instance and id (never by arrival).
    pub peers: Vec<Peer>,
    /// More than [`MAX_PEERS`] pairs were announced: some were not kept.
    pub truncated: bool,
}

impl Browsed {
    /// The pairs not withdrawn (what is on the LAN now).
    pub fn live(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| !p.withdrawn)
    }
}

fn daemon() -> Result<ServiceDaemon, DiscoveryError> {
    let d = ServiceDaemon::new().map_err(mdns_err)?;
    // Loopback makes nodes on one host find each other without a LAN.
    d.enable_interface(IfKind::LoopbackV4).map_err(mdns_err)?;
    Ok(d)
}

/// Browses the LAN for p2pfs nodes until `timeout` or until `stop_when`
/// holds. `stop_when` sees every pair seen so far after every change and
/// every 50 ms, so it may also stop on time (see [`Lookup::settled`]).
pub async fn browse(
    timeout: Duration,
    stop_when: impl FnMut(&[Peer]) -> bool,
) -> Result<Browsed, DiscoveryError> {
    browse_service(SERVICE_TYPE, timeout, stop_when).await
}

/// Browses the LAN for nodes showing a pairing code with nameplate
/// `plate`: every (instance, id) pair advertising it (live ones first), a
/// short while after the first one (to notice a second node, or a
/// spoofer, behind the same nameplate), or at `timeout`. What a record
/// claims decides nothing: the code's proofs do (`net::pair`).
pub async fn browse_pairing(plate: u16, timeout: Duration) -> Result<Browsed, DiscoveryError> {
    let mut first: Option<Instant> = None;
    let found = browse_service(PAIR_SERVICE_TYPE, timeout, |peers| {
        if !peers.iter().any(|p| p.plate == Some(plate)) {
            return false;
        }
        let now = Instant::now();
        now.duration_since(*first.get_or_insert(now)) >= MATCH_GRACE
    })
    .await?;
    Ok(Browsed {
        peers: found
            .peers
            .into_iter()
            .filter(|p| p.plate == Some(plate))
            .collect(),
        truncated: found.truncated,
    })
}

/// The one node (other than `me`) a pairing browse found: none, or
/// several distinct ids, is an error (by id, never by arrival; withdrawn
/// records do not count: pairing trusts no record, the proofs decide).
pub fn pairing_host(
    found: &Browsed,
    plate: u16,
    me: &PublicKey,
    waited: Duration,
) -> Result<Peer, DiscoveryError> {
    let mut ids: Vec<&Peer> = Vec::new();
    for p in found
        .live()
        .filter(|p| p.plate == Some(plate) && p.id != *me)
    {
        if ids.iter().all(|q| q.id != p.id) {
            ids.push(p);
        }
    }
    match ids.as_slice() {
        [] => Err(DiscoveryError::NoPairing { plate, waited }),
        [one] => Ok((*one).clone()),
        many => Err(DiscoveryError::SeveralPairing {
            plate,
            candidates: many.iter().map(|p| (*p).clone()).collect(),
        }),
    }
}

async fn browse_service(
    service: &'static str,
    timeout: Duration,
    mut stop_when: impl FnMut(&[Peer]) -> bool,
) -> Result<Browsed, DiscoveryError> {
    let d = daemon()?;
    let rx = d.browse(service).map_err(mdns_err)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut merged = Merged::of(service);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ev = rx.recv_async() => match ev {
                Ok(ev) => {
                    if merged.apply(ev) && stop_when(&merged.peers()) {
                        break;
                    }
                }
                Err(_) => break,
            },
            _ = tick.tick() => {
                if stop_when(&merged.peers()) {
                    break;
                }
            }
        }
    }
    // The daemon blocks on a full event channel: let go of it first.
    drop(rx);
    let _ = d.stop_browse(service);
    let _ = d.shutdown();
    Ok(Browsed {
        peers: merged.peers(),
        truncated: merged.truncated,
    })
}

/// Resolving a PEER argument (a node name, a node id or a unique id prefix
/// of 8+ characters) against what [`browse`] finds (`docs/PROTOCOL.md`,
/// *Resolving a PEER argument*).
pub struct Lookup {
    query: String,
    id: Option<PublicKey>,
    prefix: Option<String>,
    pinned: Option<PublicKey>,
    first_match: Option<Instant>,
}

/// Where a [`Lookup`] says to connect.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The key the handshake must prove: the id asked for, the key the
    /// user's word names, else the one id advertised for the word.
    pub expected: PublicKey,
    /// The matching pairs, to try in order (those advertising `expected`
    /// when there are any; live ones first).
    pub candidates: Vec<Peer>,
}

impl Lookup {
    /// A lookup of `query`; `pinned` is the key the user's own word names
    /// here (an alias, the id or an id prefix: the trust store's answer).
    pub fn new(query: &str, pinned: Option<PublicKey>) -> Self {
        let q = query.trim();
        let id = if q.len() == 52 {
            PublicKey::parse_id(q)
        } else {
            None
        };
        let lower = q.to_ascii_lowercase();
        let prefix = (id.is_none()
            && lower.len() >= 8
            && lower
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)))
        .then_some(lower);
        Self {
            query: q.to_owned(),
            id,
            prefix,
            pinned: if id.is_some() { None } else { pinned },
            first_match: None,
        }
    }

    /// The node id, when the query is one (the key itself was given).
    pub fn exact_id(&self) -> Option<PublicKey> {
        self.id
    }

    /// True when `p` is what the query names: the id asked for; else its
    /// node name or instance label (ignoring case), an id prefix, or the
    /// key the word names here (an alias names a key, not a LAN name).
    pub fn matches(&self, p: &Peer) -> bool {
        if let Some(id) = self.id {
            return p.id == id;
        }
        let q = self.query.to_lowercase();
        let by_name = p.name.to_lowercase() == q || p.instance.to_lowercase() == q;
        let by_prefix = self
            .prefix
            .as_ref()
            .is_some_and(|pre| p.id.to_id().starts_with(pre.as_str()));
        by_name || by_prefix || self.pinned == Some(p.id)
    }

    /// The key decided before browsing (given, or named by the user's word).
    fn decided(&self) -> Option<PublicKey> {
        self.id.or(self.pinned)
    }

    /// Whether browsing can stop: at once when a pair with the decided key
    /// is seen; else a short while after the first match (to notice a
    /// second node, or a spoofer, behind the same word).
    pub fn settled(&mut self, peers: &[Peer], now: Instant) -> bool {
        let mut any = false;
        for p in peers.iter().filter(|p| self.matches(p)) {
            if self.decided() == Some(p.id) {
                return true;
            }
            any = true;
        }
        if !any {
            return false;
        }
        let first = *self.first_match.get_or_insert(now);
        let grace = if self.pinned.is_none() {
            MATCH_GRACE
        } else {
            PINNED_GRACE
        };
        now.duration_since(first) >= grace
    }

    /// Decides from what was found, never by arrival order:
    ///
    /// 1. a key given or named by the user's word is the expected key; the
    ///    pairs advertising it are the candidates, else every match is (the
    ///    handshake then refuses them as a possible man-in-the-middle);
    /// 2. otherwise one distinct advertised id is the expected key, and
    ///    several are [`DiscoveryError::Ambiguous`] (withdrawn pairs count:
    ///    a goodbye is as easy to forge as a record).
    pub fn resolve(&self, found: &Browsed, waited: Duration) -> Result<Resolved, DiscoveryError> {
        let matching: Vec<&Peer> = found.peers.iter().filter(|p| self.matches(p)).collect();
        if matching.is_empty() {
            return Err(DiscoveryError::NotFound {
                query: text::escape(&self.query),
                waited,
            });
        }
        if let Some(key) = self.decided() {
            let holding: Vec<&Peer> = matching.iter().copied().filter(|p| p.id == key).collect();
            let chosen = if holding.is_empty() {
                matching
            } else {
                holding
            };
            return Ok(Resolved {
                expected: key,
                candidates: chosen.into_iter().cloned().collect(),
            });
        }
        if found.truncated {
            return Err(DiscoveryError::Flooded {
                query: text::escape(&self.query),
            });
        }
        let mut distinct: Vec<&Peer> = Vec::new();
        for p in &matching {
            if distinct.iter().all(|d| d.id != p.id) {
                distinct.push(p);
            }
        }
        match distinct.as_slice() {
            [one] => Ok(Resolved {
                expected: one.id,
                candidates: matching.into_iter().cloned().collect(),
            }),
            _ => Err(DiscoveryError::Ambiguous {
                query: text::escape(&self.query),
                candidates: distinct.into_iter().cloned().collect(),
            }),
        }
    }
}

/// Something that happened to an advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvertEvent {
    /// Another node holds the instance name: advertised under this one instead.
    Renamed {
        /// The instance label now used.
        instance: String,
    },
    /// The host gained an address; the node is announced on it.
    AddressAdded(IpAddr),
    /// The host lost an address.
    AddressRemoved(IpAddr),
}

/// A node advertised on the LAN. Dropping it (or [`Advertisement::shutdown`],
/// which also waits for the goodbye to go out) withdraws it.
pub struct Advertisement {
    daemon: ServiceDaemon,
    service: &'static str,
    fullname: String,
    instance: String,
    monitor: mdns_sd::Receiver<DaemonEvent>,
    pending: std::collections::VecDeque<DaemonEvent>,
    withdrawn: bool,
}

/// Advertises node `name` with id `id`, reachable on `bound` (the address
/// the QUIC endpoint is bound to): every address of the host when it is
/// unspecified (IPv4 only for `0.0.0.0`), re-announced as addresses come
/// and go; only that address otherwise.
pub fn advertise(
    name: &str,
    id: &PublicKey,
    bound: SocketAddr,
) -> Result<Advertisement, DiscoveryError> {
    advertise_service(SERVICE_TYPE, "p2pfs", name, id, bound, None)
}

/// Advertises that node `name` (`id`) shows a pairing code with nameplate
/// `plate` on `bound` (as [`advertise`] does; the code itself never
/// leaves the node). Dropping it withdraws it.
pub fn advertise_pairing(
    name: &str,
    id: &PublicKey,
    bound: SocketAddr,
    plate: u16,
) -> Result<Advertisement, DiscoveryError> {
    advertise_service(
        PAIR_SERVICE_TYPE,
        "p2pfs-pair",
        name,
        id,
        bound,
        Some(plate),
    )
}

fn advertise_service(
    service: &'static str,
    host_prefix: &str,
    name: &str,
    id: &PublicKey,
    bound: SocketAddr,
    plate: Option<u16>,
) -> Result<Advertisement, DiscoveryError> {
    let d = daemon()?;
    let ip = bound.ip();
    if ip.is_unspecified() {
        if ip.is_ipv4() {
            d.disable_interface(IfKind::IPv6).map_err(mdns_err)?;
        } else {
            d.enable_interface(IfKind::LoopbackV6).map_err(mdns_err)?;
        }
    } else {
        d.disable_interface(IfKind::All).map_err(mdns_err)?;
        d.enable_interface(IfKind::Addr(ip)).map_err(mdns_err)?;
    }
    let monitor = d.monitor().map_err(mdns_err)?;
    let instance = instance_label(name);
    let id_text = id.to_id();
    // The host name is per node, so it never collides with the machine's
    // own mDNS responder or with another node on the same host.
    // (A pairing node has a host name of its own beside its `serve`.)
    let host = format!("{host_prefix}-{}.local.", &id_text[..16]);
    let mut props = vec![
        ("v", PROTOCOL_VERSION.to_owned()),
        ("id", id_text),
        ("name", name.to_owned()),
    ];
    if let Some(p) = plate {
        props.push(("plate", p.to_string()));
    }
    let info = if ip.is_unspecified() {
        ServiceInfo::new(service, &instance, &host, (), bound.port(), &props[..])
            .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(service, &instance, &host, ip, bound.port(), &props[..])
    }
    .map_err(mdns_err)?;
    let fullname = info.get_fullname().to_owned();
    d.register(info).map_err(mdns_err)?;
    Ok(Advertisement {
        daemon: d,
        service,
        fullname,
        instance,
        monitor,
        pending: Default::default(),
        withdrawn: false,
    })
}

impl Advertisement {
    /// The instance label asked for (see [`AdvertEvent::Renamed`] for changes).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The next notable event; `None` once the daemon has stopped.
    pub async fn next_event(&mut self) -> Option<AdvertEvent> {
        loop {
            let ev = match self.pending.pop_front() {
                Some(ev) => ev,
                None => self.monitor.recv_async().await.ok()?,
            };
            match ev {
                DaemonEvent::NameChange(c) if c.original.eq_ignore_ascii_case(&self.fullname) => {
                    let instance = c
                        .new_name
                        .strip_suffix(&format!(".{}", self.service))
                        .unwrap_or(&c.new_name)
                        .to_owned();
                    if instance != self.instance {
                        self.instance = instance.clone();
                        return Some(AdvertEvent::Renamed { instance });
                    }
                }
                DaemonEvent::IpAdd(ip) => return Some(AdvertEvent::AddressAdded(ip)),
                DaemonEvent::IpDel(ip) => return Some(AdvertEvent::AddressRemoved(ip)),
                _ => {}
            }
        }
    }

    /// Waits (at most `timeout`) until the daemon has announced the service
    /// — after probing its names (RFC 6762), about a second — so that
    /// browsers get answers from then on. False on timeout.
    pub async fn announced(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = match tokio::time::timeout_at(deadline, self.monitor.recv_async()).await {
                Ok(Ok(ev)) => ev,
                _ => return false,
            };
            match &ev {
                DaemonEvent::Announce(name, _) if name.eq_ignore_ascii_case(&self.fullname) => {
                    return true
                }
                DaemonEvent::Announce(..) => {}
                _ => self.pending.push_back(ev),
            }
        }
    }

    /// Withdraws the advertisement (mDNS goodbye) and stops the daemon,
    /// waiting a bounded time for the goodbye and its repeat to go out.
    pub async fn shutdown(mut self) {
        self.withdrawn = true;
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = tokio::time::timeout(WITHDRAW_WAIT, rx.recv_async()).await;
            // mdns-sd repeats the goodbye 120 ms later.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(WITHDRAW_WAIT, rx.recv_async()).await;
        }
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        if !self.withdrawn {
            let _ = self.daemon.unregister(&self.fullname);
            let _ = self.daemon.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::Keypair;

    fn key() -> PublicKey {
        Keypair::generate().unwrap().public()
    }

    fn info(instance: &str, props: &[(&str, String)], ips: &str, port: u16) -> ServiceInfo {
        ServiceInfo::new(SERVICE_TYPE, instance, "h.local.", ips, port, props).unwrap()
    }

    fn good(instance: &str, id: &PublicKey, ips: &str) -> ServiceInfo {
        info(
            instance,
            &[("v", PROTOCOL_VERSION.into()), ("id", id.to_id())],
            ips,
            47474,
        )
    }

    fn peer(name: &str, id: PublicKey) -> Peer {
        Peer {
            instance: name.into(),
            name: name.into(),
            id,
            addresses: vec!["10.0.0.1".parse().unwrap()],
            port: 47474,
            plate: None,
            withdrawn: false,
        }
    }

    /// A pairing record reads its nameplate; one without a valid one (or a
    /// node record read as a pairing one, and the reverse) is skipped.
    #[test]
    fn pairing_records_carry_a_valid_nameplate() {
        let id = key();
        let rec = |service: &str, plate: Option<&str>| {
            let mut props = vec![("v", PROTOCOL_VERSION.to_owned()), ("id", id.to_id())];
            if let Some(p) = plate {
                props.push(("plate", p.to_owned()));
            }
            ServiceInfo::new(
                service,
                "pairing",
                "h.local.",
                "10.0.0.1",
                47475,
                &props[..],
            )
            .unwrap()
        };
        let p = Peer::from_record(&rec(PAIR_SERVICE_TYPE, Some("7")), PAIR_SERVICE_TYPE).unwrap();
        assert_eq!((p.plate, p.id, p.port), (Some(7), id, 47475));
        assert_eq!(
            Peer::from_record(&rec(PAIR_SERVICE_TYPE, Some("99")), PAIR_SERVICE_TYPE)
                .unwrap()
                .plate,
            Some(99)
        );
        for bad in [
            None,
            Some(""),
            Some("0"),
            Some("100"),
            Some("07"),
            Some("+7"),
            Some("x"),
        ] {
            assert_eq!(
                Peer::from_record(&rec(PAIR_SERVICE_TYPE, bad), PAIR_SERVICE_TYPE),
                None,
                "{bad:?}"
            );
        }
        // A node record is no pairing record, nor the reverse; a node
        // record's stray `plate` is not read.
        assert_eq!(
            Peer::from_record(&rec(SERVICE_TYPE, Some("7")), PAIR_SERVICE_TYPE),
            None
        );
        assert_eq!(Peer::from_info(&rec(PAIR_SERVICE_TYPE, Some("7"))), None);
        assert_eq!(
            Peer::from_info(&rec(SERVICE_TYPE, Some("7")))
                .unwrap()
                .plate,
            None
        );
    }

    #[test]
    fn one_pairing_host_or_an_error() {
        let (me, a, b) = (key(), key(), key());
        let rec = |name: &str, id, plate| Peer {
            plate: Some(plate),
            port: 47475,
            ..peer(name, id)
        };
        let w = Duration::from_secs(5);
        let f = found(vec![rec("a", a, 7), rec("b", b, 8), rec("me", me, 7)]);
        assert_eq!(pairing_host(&f, 7, &me, w).unwrap().id, a);
        assert!(matches!(
            pairing_host(&f, 9, &me, w),
            Err(DiscoveryError::NoPairing { plate: 9, .. })
        ));
        // Two ids behind one nameplate: neither is chosen.
        let f = found(vec![rec("a", a, 7), rec("b", b, 7), rec("a2", a, 7)]);
        match pairing_host(&f, 7, &me, w) {
            Err(e @ DiscoveryError::SeveralPairing { .. }) => {
                assert!(e.to_string().contains(&b.fingerprint()), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // A withdrawn record is not a host to try.
        let gone = Peer {
            withdrawn: true,
            ..rec("a", a, 7)
        };
        assert!(pairing_host(&found(vec![gone]), 7, &me, w).is_err());
    }

    fn found(peers: Vec<Peer>) -> Browsed {
        Browsed {
            peers,
            truncated: false,
        }
    }

    #[test]
    fn reads_a_record_and_orders_addresses() {
        let id = key();
        let p = Peer::from_info(&good(
            "vault-b",
            &id,
            "::1,10.0.0.2,127.0.0.1,fe80::1,fd00::5",
        ))
        .unwrap();
        assert_eq!(
            (p.name.as_str(), p.instance.as_str(), p.id, p.port),
            ("vault-b", "vault-b", id, 47474)
        );
        let shown: Vec<String> = p.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["10.0.0.2", "127.0.0.1", "fd00::5", "::1"]);
        let named = info(
            "vault-b (2)",
            &[
                ("v", PROTOCOL_VERSION.into()),
                ("id", id.to_id()),
                ("name", "vault.b".into()),
            ],
            "10.0.0.2",
            9,
        );
        let p = Peer::from_info(&named).unwrap();
        assert_eq!(
            (p.name.as_str(), p.instance.as_str()),
            ("vault.b", "vault-b (2)")
        );
    }

    #[test]
    fn malformed_and_foreign_records_are_skipped() {
        let id = key().to_id();
        let cases: Vec<ServiceInfo> = vec![
            info("x", &[("id", id.clone())], "10.0.0.1", 1),
            info("x", &[("v", "1".into()), ("id", id.clone())], "10.0.0.1", 1),
            info("x", &[("v", PROTOCOL_VERSION.into())], "10.0.0.1", 1),
            info(
                "x",
                &[("v", PROTOCOL_VERSION.into()), ("id", "not-an-id".into())],
                "10.0.0.1",
                1,
            ),
            info(
                "x",
                &[("v", PROTOCOL_VERSION.into()), ("id", id[..40].into())],
                "10.0.0.1",
                1,
            ),
            info(
                "x",
                &[("v", PROTOCOL_VERSION.into()), ("id", id.clone())],
                "10.0.0.1",
                0,
            ),
            info(
                "x",
                &[("v", PROTOCOL_VERSION.into()), ("id", id.clone())],
                "fe80::1,224.0.0.1",
                1,
            ),
            info(
                "x",
                &[
                    ("v", PROTOCOL_VERSION.into()),
                    ("id", id.clone()),
                    ("name", "a\u{1b}[2J".into()),
                ],
                "10.0.0.1",
                1,
            ),
            info(
                "x",
                &[
                    ("v", PROTOCOL_VERSION.into()),
                    ("id", id.clone()),
                    ("name", "n".repeat(65)),
                ],
                "10.0.0.1",
                1,
            ),
            info(
                "\u{7}bell",
                &[("v", PROTOCOL_VERSION.into()), ("id", id.clone())],
                "10.0.0.1",
                1,
            ),
            ServiceInfo::new(
                "_other._udp.local.",
                "x",
                "h.local.",
                "10.0.0.1",
                1,
                &[("v", "2"), ("id", id.as_str())][..],
            )
            .unwrap(),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(Peer::from_info(c), None, "case {i} should be skipped");
        }
    }

    #[test]
    fn repeated_resolutions_merge_by_instance_and_id() {
        let id = key();
        let mut m = Merged::default();
        assert!(m.apply(ServiceEvent::ServiceResolved(good("a", &id, "10.0.0.2"))));
        assert!(m.apply(ServiceEvent::ServiceResolved(good("a", &id, "127.0.0.1"))));
        assert!(!m.apply(ServiceEvent::ServiceResolved(good("a", &id, "10.0.0.2"))));
        assert!(!m.apply(ServiceEvent::ServiceResolved(info(
            "junk",
            &[],
            "10.0.0.9",
            1
        ))));
        let peers = m.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].addresses.len(), 2);
        // Another key re-announcing the same instance is added beside the
        // first, never instead of it (M1: that let a spoofer take a name).
        let other = key();
        assert!(m.apply(ServiceEvent::ServiceResolved(good("a", &other, "10.0.0.3"))));
        let ids: Vec<PublicKey> = m.peers().iter().map(|p| p.id).collect();
        assert!(ids.len() == 2 && ids.contains(&id) && ids.contains(&other));
        // A malformed re-announcement is skipped and hides nothing.
        let broken = info("a", &[("v", PROTOCOL_VERSION.into())], "10.0.0.3", 47474);
        assert!(!m.apply(ServiceEvent::ServiceResolved(broken)));
        assert_eq!(m.peers().len(), 2);
        // A goodbye withdraws both pairs of the instance, which stay known
        // (a goodbye can be forged as easily as a record), listed last.
        assert!(m.apply(ServiceEvent::ServiceResolved(good("b", &id, "10.0.0.4"))));
        assert!(m.apply(ServiceEvent::ServiceRemoved(
            SERVICE_TYPE.into(),
            format!("A.{SERVICE_TYPE}")
        )));
        let peers = m.peers();
        assert_eq!(peers.len(), 3);
        assert_eq!(
            peers.iter().map(|p| p.withdrawn).collect::<Vec<_>>(),
            [false, true, true]
        );
        assert_eq!(peers[0].instance, "b");
    }

    #[test]
    fn at_most_max_peers_pairs_are_kept_and_overflow_is_noticed() {
        let mut m = Merged::default();
        let id = key();
        for i in 0..MAX_PEERS + 5 {
            m.apply(ServiceEvent::ServiceResolved(good(
                &format!("n{i}"),
                &id,
                "10.0.0.1",
            )));
        }
        assert_eq!(m.peers().len(), MAX_PEERS);
        assert!(m.truncated);
        // A flood hides nothing silently: a name lookup refuses to decide.
        let f = Browsed {
            peers: m.peers(),
            truncated: true,
        };
        assert!(matches!(
            Lookup::new("n1", None).resolve(&f, Duration::ZERO),
            Err(DiscoveryError::Flooded { .. })
        ));
        // The user's own choice still decides.
        assert_eq!(
            Lookup::new("n1", Some(id))
                .resolve(&f, Duration::ZERO)
                .unwrap()
                .expected,
            id
        );
        assert_eq!(
            Lookup::new(&id.to_id(), None)
                .resolve(&f, Duration::ZERO)
                .unwrap()
                .expected,
            id
        );
    }

    #[test]
    fn names_and_instances_are_validated_like_node_names() {
        let id = key().to_id();
        for (instance, name) in [
            ("ok", "a\u{202e}b"),
            ("ok", "zero\u{200b}width"),
            ("ok", "bom\u{feff}"),
            ("rtl\u{202e}txt", "ok"),
            ("iso\u{2066}late", "ok"),
        ] {
            let i = info(
                instance,
                &[
                    ("v", PROTOCOL_VERSION.into()),
                    ("id", id.clone()),
                    ("name", name.into()),
                ],
                "10.0.0.1",
                1,
            );
            assert_eq!(Peer::from_info(&i), None, "{instance:?} {name:?}");
        }
        let long = "l".repeat(MAX_LABEL + 1);
        let i = info(
            &long,
            &[("v", PROTOCOL_VERSION.into()), ("id", id.clone())],
            "10.0.0.1",
            1,
        );
        assert_eq!(Peer::from_info(&i), None);
    }

    #[test]
    fn instance_labels_are_valid() {
        assert_eq!(instance_label("vault-b"), "vault-b");
        assert_eq!(instance_label("my.host.name"), "my-host-name");
        assert_eq!(instance_label("   "), "p2pfs");
        assert_eq!(instance_label("a\u{202e}b"), "a-b");
        let long = "é".repeat(40);
        let l = instance_label(&long);
        assert!(l.len() <= MAX_INSTANCE && long.starts_with(&l));
    }

    #[test]
    fn lookup_by_name_id_and_prefix() {
        let (a, b) = (key(), key());
        let peers = found(vec![peer("vault-b", a), peer("laptop", b)]);
        let r = Lookup::new("vault-b", None)
            .resolve(&peers, Duration::ZERO)
            .unwrap();
        assert_eq!((r.expected, r.candidates.len()), (a, 1));
        assert_eq!(
            Lookup::new("VAULT-B", None)
                .resolve(&peers, Duration::ZERO)
                .unwrap()
                .expected,
            a
        );
        let by_id = Lookup::new(&b.to_id(), None);
        assert_eq!(by_id.exact_id(), Some(b));
        assert_eq!(by_id.resolve(&peers, Duration::ZERO).unwrap().expected, b);
        let pre = b.to_id()[..10].to_ascii_uppercase();
        assert_eq!(
            Lookup::new(&pre, None)
                .resolve(&peers, Duration::ZERO)
                .unwrap()
                .expected,
            b
        );
        // Too short to be a prefix, and not a name.
        assert!(matches!(
            Lookup::new(&b.to_id()[..7], None).resolve(&peers, Duration::ZERO),
            Err(DiscoveryError::NotFound { .. })
        ));
        let e = Lookup::new("nobody", None)
            .resolve(&peers, Duration::from_secs(3))
            .unwrap_err();
        assert!(e.to_string().contains("p2pfs peers") && e.to_string().contains("5353"));
        // An alias names a key, whatever name that node announces.
        let r = Lookup::new("my-laptop", Some(b))
            .resolve(&peers, Duration::ZERO)
            .unwrap();
        assert_eq!((r.expected, r.candidates[0].name.as_str()), (b, "laptop"));
    }

    #[test]
    fn two_ids_for_one_word_are_ambiguous_unless_the_user_pinned_one() {
        let (a, b) = (key(), key());
        let mut twin2 = peer("twin", b);
        twin2.instance = "twin (2)".into();
        // A spoofer re-announcing the very same instance with its own id.
        let spoof = peer("twin", b);
        let withdrawn = Peer {
            withdrawn: true,
            ..peer("twin", b)
        };
        for others in [vec![twin2.clone()], vec![spoof], vec![withdrawn]] {
            let mut all = vec![peer("twin", a)];
            all.extend(others);
            let f = found(all);
            match Lookup::new("twin", None).resolve(&f, Duration::ZERO) {
                Err(e @ DiscoveryError::Ambiguous { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&a.fingerprint()) && msg.contains(&b.fingerprint()));
                    assert!(
                        msg.contains("trust add") && msg.contains("--allow none"),
                        "{msg}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let f = found(vec![peer("twin", a), twin2]);
        let r = Lookup::new("twin", Some(b))
            .resolve(&f, Duration::ZERO)
            .unwrap();
        assert_eq!(r.expected, b);
        assert_eq!(r.candidates.len(), 1);
        assert_eq!(r.candidates[0].instance, "twin (2)");
    }

    #[test]
    fn a_pinned_word_expects_the_pinned_key_from_anyone() {
        let (pinned, impostor) = (key(), key());
        let f = found(vec![peer("laptop", impostor)]);
        let r = Lookup::new("laptop", Some(pinned))
            .resolve(&f, Duration::ZERO)
            .unwrap();
        assert_eq!(r.expected, pinned);
        assert_eq!(r.candidates[0].id, impostor);
    }

    #[test]
    fn settling_waits_for_duplicates_but_not_for_decided_keys() {
        let (a, b) = (key(), key());
        let t0 = Instant::now();
        let peers = vec![peer("x", a)];
        let mut l = Lookup::new("x", None);
        assert!(!l.settled(&[], t0));
        assert!(!l.settled(&peers, t0));
        assert!(!l.settled(&peers, t0 + MATCH_GRACE / 2));
        assert!(l.settled(&peers, t0 + MATCH_GRACE));
        assert!(Lookup::new(&a.to_id(), None).settled(&peers, t0));
        assert!(Lookup::new("x", Some(a)).settled(&peers, t0));
        let mut l = Lookup::new("x", Some(b));
        assert!(!l.settled(&peers, t0));
        assert!(!l.settled(&peers, t0 + MATCH_GRACE));
        assert!(l.settled(&peers, t0 + PINNED_GRACE));
    }
}
