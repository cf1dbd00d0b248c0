//! LAN discovery with mDNS / DNS-SD (`mdns-sd`): `serve` advertises
//! `_p2pfs._udp.local.` with a TXT record naming the protocol version, the
//! node id and the node name; `peers` and `send NAME` browse for it
//! (`docs/PROTOCOL.md`, *Discovery*).
//!
//! What a record says is a **hint**, never an identity: anyone on the LAN
//! can advertise any name and any id. The id from the TXT record (or the key
//! pinned for the name) only becomes the key the Noise handshake must prove;
//! the handshake decides. Malformed and foreign records are skipped, never an
//! error. This module never prints: outcomes are values and
//! [`DiscoveryError`]s.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use thiserror::Error;

use crate::crypto::keys::PublicKey;

/// The DNS-SD service type of p2pfs nodes.
pub const SERVICE_TYPE: &str = "_p2pfs._udp.local.";
/// The protocol version a node advertises in TXT `v` (ALPN `p2pfs/1`).
pub const PROTOCOL_VERSION: &str = "1";
/// Longest instance label we advertise, in bytes. DNS labels end at 63
/// bytes, and a name conflict makes mdns-sd append " (N)".
const MAX_INSTANCE: usize = 56;
/// Longest node name (`docs/VAULT.md`, identity file).
const MAX_NAME: usize = 64;
/// A hostile LAN can advertise any number of instances: keep at most this many.
const MAX_PEERS: usize = 1024;
/// After the first node matching a name, how long to wait for another one
/// with the same name (which makes the name ambiguous).
const MATCH_GRACE: Duration = Duration::from_millis(300);
/// When the name is pinned to a key but only other keys answer, how long to
/// wait for the pinned node before letting the handshake reject the others.
const PINNED_GRACE: Duration = Duration::from_millis(1500);
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
        /// The matching nodes (distinct ids).
        candidates: Vec<Peer>,
    },
}

fn ambiguous_message(query: &str, candidates: &[Peer]) -> String {
    let mut s = format!(
        "{query:?} matches {} different nodes on the LAN; nothing was sent:\n",
        candidates.len()
    );
    for p in candidates {
        let shown = if p.instance == p.name {
            p.name.clone()
        } else {
            format!("{} [{}]", p.name, p.instance)
        };
        s.push_str(&format!(
            "  {:<20} fingerprint {}  id {}  at {}\n",
            shown,
            p.id.fingerprint(),
            p.id,
            p.socket_addrs()
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    s.push_str(
        "Compare the fingerprints with `p2pfs id` on the node you mean, then send to it by \
         node id or a unique id prefix (8 characters or more). That first send pins the name \
         to that node's key, and later sends by name pick it.",
    );
    s
}

fn mdns_err(e: mdns_sd::Error) -> DiscoveryError {
    DiscoveryError::Mdns(e.to_string())
}

/// A p2pfs node found on the LAN, merged from every record seen for its
/// instance. Everything here is what the node *claims*.
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
}

impl Peer {
    /// The addresses with the port, in the order to try them.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }

    /// Reads a resolved record; `None` for foreign or malformed ones.
    pub fn from_info(info: &ServiceInfo) -> Option<Peer> {
        let fullname = info.get_fullname();
        let cut = fullname.len().checked_sub(SERVICE_TYPE.len() + 1)?;
        let (instance, suffix) = (fullname.get(..cut)?, fullname.get(cut..)?);
        if !suffix.strip_prefix('.')?.eq_ignore_ascii_case(SERVICE_TYPE) {
            return None;
        }
        if instance.is_empty() || instance.chars().any(char::is_control) {
            return None;
        }
        if info.get_property_val_str("v")?.trim() != PROTOCOL_VERSION {
            return None;
        }
        let id = PublicKey::parse_id(info.get_property_val_str("id")?)?;
        let name = match info.get_property_val_str("name") {
            Some(n) if valid_name(n) => n.to_owned(),
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
        if addresses.is_empty() {
            return None;
        }
        Some(Peer {
            instance: instance.to_owned(),
            name,
            id,
            addresses,
            port,
        })
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= MAX_NAME && !n.chars().any(char::is_control)
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
        .map(|c| if c == '.' || c.is_control() { '-' } else { c })
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

/// Peers merged by instance: mdns-sd reports an instance again each time
/// more of its records (addresses) arrive.
#[derive(Default)]
struct Merged {
    by_fullname: BTreeMap<String, Peer>,
}

impl Merged {
    /// Applies one event; true when the set changed.
    fn apply(&mut self, ev: ServiceEvent) -> bool {
        match ev {
            ServiceEvent::ServiceResolved(info) => {
                let key = info.get_fullname().to_lowercase();
                let Some(new) = Peer::from_info(&info) else {
                    tracing::debug!(
                        name = info.get_fullname(),
                        "ignoring a malformed or foreign record"
                    );
                    // An instance that turned malformed is no longer listed.
                    return self.by_fullname.remove(&key).is_some();
                };
                let room = self.by_fullname.len() < MAX_PEERS;
                match self.by_fullname.get_mut(&key) {
                    // Same node: keep every address seen so far.
                    Some(old) if old.id == new.id => {
                        let before = old.clone();
                        let mut addrs = old.addresses.clone();
                        addrs.extend(new.addresses);
                        addrs.sort_by_key(|ip| (rank(ip), *ip));
                        addrs.dedup();
                        *old = Peer {
                            addresses: addrs,
                            ..new
                        };
                        *old != before
                    }
                    // Another key under that instance now: start over.
                    Some(old) => {
                        *old = new;
                        true
                    }
                    None if room => {
                        self.by_fullname.insert(key, new);
                        true
                    }
                    None => false,
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                self.by_fullname.remove(&fullname.to_lowercase()).is_some()
            }
            _ => false,
        }
    }

    fn peers(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = self.by_fullname.values().cloned().collect();
        v.sort_by(|a, b| (&a.name, &a.instance, a.id).cmp(&(&b.name, &b.instance, b.id)));
        v
    }
}

fn daemon() -> Result<ServiceDaemon, DiscoveryError> {
    let d = ServiceDaemon::new().map_err(mdns_err)?;
    // Loopback makes nodes on one host find each other without a LAN.
    d.enable_interface(IfKind::LoopbackV4).map_err(mdns_err)?;
    Ok(d)
}

/// Browses the LAN for p2pfs nodes until `timeout` or until `stop_when`
/// holds. `stop_when` sees the merged peers after every change and every
/// 50 ms, so it may also stop on time (see [`Lookup::settled`]).
pub async fn browse(
    timeout: Duration,
    mut stop_when: impl FnMut(&[Peer]) -> bool,
) -> Result<Vec<Peer>, DiscoveryError> {
    let d = daemon()?;
    let rx = d.browse(SERVICE_TYPE).map_err(mdns_err)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut merged = Merged::default();
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
    let _ = d.stop_browse(SERVICE_TYPE);
    let _ = d.shutdown();
    Ok(merged.peers())
}

/// Resolving a PEER argument (a node name, a node id or a unique id prefix
/// of 8+ characters) against what [`browse`] finds.
pub struct Lookup {
    query: String,
    id: Option<PublicKey>,
    prefix: Option<String>,
    pinned: Vec<PublicKey>,
    first_match: Option<Instant>,
}

/// Where a [`Lookup`] says to connect.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The key the handshake must prove (the advertised id, or the pinned key).
    pub expected: PublicKey,
    /// The matching instances, to try in order.
    pub candidates: Vec<Peer>,
}

impl Lookup {
    /// A lookup of `query`; `pinned` are the keys this node already pinned
    /// for that name, id or prefix (the trust store's answer).
    pub fn new(query: &str, pinned: Vec<PublicKey>) -> Self {
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
        let mut pinned = pinned;
        pinned.sort();
        pinned.dedup();
        Self {
            query: q.to_owned(),
            id,
            prefix,
            pinned,
            first_match: None,
        }
    }

    /// True when `p` is what the query names.
    pub fn matches(&self, p: &Peer) -> bool {
        if let Some(id) = self.id {
            return p.id == id;
        }
        let by_name = p.name.to_lowercase() == self.query.to_lowercase()
            || p.instance.to_lowercase() == self.query.to_lowercase();
        let by_prefix = self
            .prefix
            .as_ref()
            .is_some_and(|pre| p.id.to_id().starts_with(pre.as_str()));
        by_name || by_prefix
    }

    /// Whether browsing can stop: at once when the node with the exact or
    /// pinned key is found; a short while after the first other match (to
    /// notice a second node with the same name).
    pub fn settled(&mut self, peers: &[Peer], now: Instant) -> bool {
        let mut any = false;
        for p in peers.iter().filter(|p| self.matches(p)) {
            if self.id.is_some() || self.pinned.contains(&p.id) {
                return true;
            }
            any = true;
        }
        if !any {
            return false;
        }
        let first = *self.first_match.get_or_insert(now);
        let grace = if self.pinned.is_empty() {
            MATCH_GRACE
        } else {
            PINNED_GRACE
        };
        now.duration_since(first) >= grace
    }

    /// Decides from what was found. With a pinned key that none of the
    /// matches advertises, they are still returned, with the pinned key as
    /// `expected`: the handshake then refuses them as a possible
    /// man-in-the-middle.
    pub fn resolve(&self, peers: &[Peer], waited: Duration) -> Result<Resolved, DiscoveryError> {
        let matching: Vec<&Peer> = peers.iter().filter(|p| self.matches(p)).collect();
        if matching.is_empty() {
            return Err(DiscoveryError::NotFound {
                query: self.query.clone(),
                waited,
            });
        }
        let pinned: Vec<&Peer> = matching
            .iter()
            .copied()
            .filter(|p| self.pinned.contains(&p.id))
            .collect();
        let (chosen, expected) = if !pinned.is_empty() {
            (pinned, None)
        } else if let [only] = self.pinned.as_slice() {
            (matching, Some(*only))
        } else {
            (matching, None)
        };
        let expected = match expected {
            Some(k) => k,
            None => {
                let mut ids: Vec<PublicKey> = chosen.iter().map(|p| p.id).collect();
                ids.sort();
                ids.dedup();
                match ids.as_slice() {
                    [one] => *one,
                    _ => {
                        let mut seen = Vec::new();
                        let mut candidates = Vec::new();
                        for p in chosen {
                            if !seen.contains(&p.id) {
                                seen.push(p.id);
                                candidates.push(p.clone());
                            }
                        }
                        return Err(DiscoveryError::Ambiguous {
                            query: self.query.clone(),
                            candidates,
                        });
                    }
                }
            }
        };
        Ok(Resolved {
            expected,
            candidates: chosen.into_iter().cloned().collect(),
        })
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
    let host = format!("p2pfs-{}.local.", &id_text[..16]);
    let props = [
        ("v", PROTOCOL_VERSION.to_owned()),
        ("id", id_text),
        ("name", name.to_owned()),
    ];
    let info = if ip.is_unspecified() {
        ServiceInfo::new(SERVICE_TYPE, &instance, &host, (), bound.port(), &props[..])
            .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(SERVICE_TYPE, &instance, &host, ip, bound.port(), &props[..])
    }
    .map_err(mdns_err)?;
    let fullname = info.get_fullname().to_owned();
    d.register(info).map_err(mdns_err)?;
    Ok(Advertisement {
        daemon: d,
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
                        .strip_suffix(&format!(".{SERVICE_TYPE}"))
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
            &[("v", "1".into()), ("id", id.to_id())],
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
                ("v", "1".into()),
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
            info("x", &[("v", "2".into()), ("id", id.clone())], "10.0.0.1", 1),
            info("x", &[("v", "1".into())], "10.0.0.1", 1),
            info(
                "x",
                &[("v", "1".into()), ("id", "not-an-id".into())],
                "10.0.0.1",
                1,
            ),
            info(
                "x",
                &[("v", "1".into()), ("id", id[..40].into())],
                "10.0.0.1",
                1,
            ),
            info("x", &[("v", "1".into()), ("id", id.clone())], "10.0.0.1", 0),
            info(
                "x",
                &[("v", "1".into()), ("id", id.clone())],
                "fe80::1,224.0.0.1",
                1,
            ),
            info(
                "x",
                &[
                    ("v", "1".into()),
                    ("id", id.clone()),
                    ("name", "a\u{1b}[2J".into()),
                ],
                "10.0.0.1",
                1,
            ),
            info(
                "x",
                &[
                    ("v", "1".into()),
                    ("id", id.clone()),
                    ("name", "n".repeat(65)),
                ],
                "10.0.0.1",
                1,
            ),
            info(
                "\u{7}bell",
                &[("v", "1".into()), ("id", id.clone())],
                "10.0.0.1",
                1,
            ),
            ServiceInfo::new(
                "_other._udp.local.",
                "x",
                "h.local.",
                "10.0.0.1",
                1,
                &[("v", "1"), ("id", id.as_str())][..],
            )
            .unwrap(),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(Peer::from_info(c), None, "case {i} should be skipped");
        }
    }

    #[test]
    fn repeated_resolutions_merge_by_instance() {
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
        // A new key under the same instance replaces the old addresses.
        let other = key();
        assert!(m.apply(ServiceEvent::ServiceResolved(good("a", &other, "10.0.0.3"))));
        assert_eq!(m.peers()[0].id, other);
        assert_eq!(m.peers()[0].addresses.len(), 1);
        // An instance whose record turns malformed is dropped.
        let broken = info("a", &[("v", "1".into())], "10.0.0.3", 47474);
        assert!(m.apply(ServiceEvent::ServiceResolved(broken)));
        assert!(m.peers().is_empty());
        assert!(m.apply(ServiceEvent::ServiceResolved(good("b", &id, "10.0.0.4"))));
        assert!(m.apply(ServiceEvent::ServiceRemoved(
            SERVICE_TYPE.into(),
            format!("B.{SERVICE_TYPE}")
        )));
        assert!(m.peers().is_empty());
    }

    #[test]
    fn instance_labels_are_valid() {
        assert_eq!(instance_label("vault-b"), "vault-b");
        assert_eq!(instance_label("my.host.name"), "my-host-name");
        assert_eq!(instance_label("   "), "p2pfs");
        let long = "é".repeat(40);
        let l = instance_label(&long);
        assert!(l.len() <= MAX_INSTANCE && long.starts_with(&l));
    }

    #[test]
    fn lookup_by_name_id_and_prefix() {
        let (a, b) = (key(), key());
        let peers = vec![peer("vault-b", a), peer("laptop", b)];
        let r = Lookup::new("vault-b", vec![])
            .resolve(&peers, Duration::ZERO)
            .unwrap();
        assert_eq!((r.expected, r.candidates.len()), (a, 1));
        assert_eq!(
            Lookup::new("VAULT-B", vec![])
                .resolve(&peers, Duration::ZERO)
                .unwrap()
                .expected,
            a
        );
        assert_eq!(
            Lookup::new(&b.to_id(), vec![])
                .resolve(&peers, Duration::ZERO)
                .unwrap()
                .expected,
            b
        );
        let pre = b.to_id()[..10].to_ascii_uppercase();
        assert_eq!(
            Lookup::new(&pre, vec![])
                .resolve(&peers, Duration::ZERO)
                .unwrap()
                .expected,
            b
        );
        // Too short to be a prefix, and not a name.
        assert!(matches!(
            Lookup::new(&b.to_id()[..7], vec![]).resolve(&peers, Duration::ZERO),
            Err(DiscoveryError::NotFound { .. })
        ));
        let e = Lookup::new("nobody", vec![])
            .resolve(&peers, Duration::from_secs(3))
            .unwrap_err();
        assert!(e.to_string().contains("p2pfs peers") && e.to_string().contains("5353"));
    }

    #[test]
    fn same_name_is_ambiguous_unless_one_is_pinned() {
        let (a, b) = (key(), key());
        let mut twin2 = peer("twin", b);
        twin2.instance = "twin (2)".into();
        let peers = vec![peer("twin", a), twin2];
        match Lookup::new("twin", vec![]).resolve(&peers, Duration::ZERO) {
            Err(DiscoveryError::Ambiguous { candidates, .. }) => assert_eq!(candidates.len(), 2),
            other => panic!("{other:?}"),
        }
        let msg = Lookup::new("twin", vec![])
            .resolve(&peers, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&a.fingerprint()) && msg.contains(&b.fingerprint()));
        let r = Lookup::new("twin", vec![b])
            .resolve(&peers, Duration::ZERO)
            .unwrap();
        assert_eq!(r.expected, b);
        assert_eq!(r.candidates.len(), 1);
        assert_eq!(r.candidates[0].instance, "twin (2)");
    }

    #[test]
    fn a_pinned_name_expects_the_pinned_key_from_anyone() {
        let (pinned, impostor) = (key(), key());
        let peers = vec![peer("laptop", impostor)];
        let r = Lookup::new("laptop", vec![pinned])
            .resolve(&peers, Duration::ZERO)
            .unwrap();
        assert_eq!(r.expected, pinned);
        assert_eq!(r.candidates[0].id, impostor);
    }

    #[test]
    fn settling_waits_for_duplicates_but_not_for_exact_keys() {
        let (a, b) = (key(), key());
        let t0 = Instant::now();
        let peers = vec![peer("x", a)];
        let mut l = Lookup::new("x", vec![]);
        assert!(!l.settled(&[], t0));
        assert!(!l.settled(&peers, t0));
        assert!(!l.settled(&peers, t0 + MATCH_GRACE / 2));
        assert!(l.settled(&peers, t0 + MATCH_GRACE));
        assert!(Lookup::new(&a.to_id(), vec![]).settled(&peers, t0));
        assert!(Lookup::new("x", vec![a]).settled(&peers, t0));
        let mut l = Lookup::new("x", vec![b]);
        assert!(!l.settled(&peers, t0));
        assert!(!l.settled(&peers, t0 + MATCH_GRACE));
        assert!(l.settled(&peers, t0 + PINNED_GRACE));
    }
}
