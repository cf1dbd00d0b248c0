//! Who gets in, and how many at once, on a serving node: caps on
//! connections that have not authenticated yet (in all and per source
//! address), on transfers (in all and per peer), and the one queue of
//! prompts to the local user (`--accept ask`). Pure bookkeeping with RAII
//! guards, testable without sockets; the receiver applies it.
//!
//! Without these caps, 200 connections that stall the handshake took the
//! daemon from 7.5 MB to 1.65 GB, and 530 idle transfers or pending prompts
//! exhausted its thread pool (issue 7, M3).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::wire::{FileOffer, OfferTotals};
use crate::crypto::keys::PublicKey;

/// The caps (`docs/PROTOCOL.md`, *Limits*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections not yet authenticated, in all.
    pub unauthenticated: usize,
    /// Connections not yet authenticated, per source IP address.
    pub unauthenticated_per_ip: usize,
    /// Transfers (authenticated, authorised connections), in all.
    pub transfers: usize,
    /// Transfers per peer node.
    pub transfers_per_peer: usize,
    /// Transfers from peers that are not trusted (`--accept any` or
    /// `ask`), in all: the rest stays free for trusted senders.
    pub untrusted_transfers: usize,
    /// Offers waiting for (or at) the local user's prompt.
    pub prompts: usize,
    /// Offered entries of all transfers in progress (their bookkeeping
    /// costs a few hundred bytes each).
    pub entries: usize,
    /// Chunk bytes one connection may hold in memory before they are
    /// written (read, MAC-checked, queued).
    pub chunk_bytes_per_connection: u32,
    /// The same, over all connections.
    pub chunk_bytes: u32,
    /// How long a transfer may go without progress (at least
    /// [`MIN_PROGRESS`] new bytes stored or control messages) before it is
    /// ended.
    pub idle: std::time::Duration,
    /// Partials untouched for this long are removed (`serve
    /// --expire-partials`).
    pub partial_ttl: std::time::Duration,
}

/// Progress a transfer must make in each [`Limits::idle`] window, in bytes
/// of new chunks stored (each control message counts as
/// [`CONTROL_PROGRESS`]).
pub const MIN_PROGRESS: u64 = 1 << 20;
/// What one control message (a file's start or end, a result) counts as.
pub const CONTROL_PROGRESS: u64 = 64 << 10;

impl Default for Limits {
    fn default() -> Self {
        Self {
            unauthenticated: 64,
            unauthenticated_per_ip: 8,
            transfers: 16,
            transfers_per_peer: 4,
            untrusted_transfers: 8,
            prompts: 4,
            entries: 200_000,
            chunk_bytes_per_connection: 40 << 20,
            chunk_bytes: 128 << 20,
            idle: std::time::Duration::from_secs(60),
            partial_ttl: super::server::PARTIAL_TTL,
        }
    }
}

#[derive(Default)]
struct Counts {
    entries: usize,
    unauthenticated: usize,
    by_ip: HashMap<IpAddr, usize>,
    transfers: usize,
    untrusted: usize,
    by_peer: HashMap<PublicKey, usize>,
}

/// The shared counters of one serving node.
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
    chunk_bytes: Arc<Semaphore>,
}

/// The memory budgets of one connection's chunks in flight: its own and
/// the node's. A chunk's place is taken before its bytes are read and given
/// back once they are written.
#[derive(Clone)]
pub struct ChunkBudget {
    connection: Arc<Semaphore>,
    node: Arc<Semaphore>,
}

/// The places one chunk holds in the budgets.
pub struct ChunkPlace {
    _connection: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

impl ChunkBudget {
    /// Waits for room for `bytes` (at most the connection's budget).
    pub async fn reserve(&self, bytes: u32) -> Option<ChunkPlace> {
        let c = self
            .connection
            .clone()
            .acquire_many_owned(bytes)
            .await
            .ok()?;
        let n = self.node.clone().acquire_many_owned(bytes).await.ok()?;
        Some(ChunkPlace {
            _connection: c,
            _node: n,
        })
    }
}

/// The address a per-address cap counts: IPv4 as is, IPv6 by its /64.
fn per_host(ip: IpAddr) -> IpAddr {
    // An IPv4 peer of a dual-stack socket arrives as `::ffff:a.b.c.d`: it
    // is counted by its IPv4 address, not with every other one in ::ffff:0:0/64.
    match ip.to_canonical() {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = m.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(k);
        }
    }
}

impl Admission {
    /// Counters under `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
            chunk_bytes: Arc::new(Semaphore::new(limits.chunk_bytes as usize)),
        })
    }

    /// A new connection's chunk budget.
    pub fn chunk_budget(&self) -> ChunkBudget {
        ChunkBudget {
            connection: Arc::new(Semaphore::new(
                self.limits.chunk_bytes_per_connection as usize,
            )),
            node: self.chunk_bytes.clone(),
        }
    }

    /// Takes `n` entries from the budget of entries in progress, or says no.
    pub fn entries(self: &Arc<Self>, n: usize) -> Option<EntriesGuard> {
        let mut c = self.counts();
        if c.entries.saturating_add(n) > self.limits.entries {
            return None;
        }
        c.entries += n;
        Some(EntriesGuard {
            adm: self.clone(),
            n,
        })
    }

    /// The caps.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when a connection from an address that has not proved it can
    /// receive (no QUIC Retry yet) should be asked to: once half the places
    /// are taken, so spoofed source addresses cannot fill them.
    pub fn wants_retry(&self) -> bool {
        self.counts().unauthenticated >= self.limits.unauthenticated / 2
    }

    /// Admits a new, unauthenticated connection from `ip`, or says no. IPv6
    /// addresses count per /64 (what one host usually has).
    pub fn connection(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionGuard> {
        let ip = per_host(ip);
        let mut c = self.counts();
        let from_ip = c.by_ip.get(&ip).copied().unwrap_or(0);
        if c.unauthenticated >= self.limits.unauthenticated
            || from_ip >= self.limits.unauthenticated_per_ip
        {
            return None;
        }
        c.unauthenticated += 1;
        *c.by_ip.entry(ip).or_default() += 1;
        Some(ConnectionGuard {
            adm: self.clone(),
            ip,
        })
    }

    /// Admits a transfer from an authenticated `peer`, or says no.
    pub fn transfer(self: &Arc<Self>, peer: PublicKey, trusted: bool) -> Option<TransferGuard> {
        let mut c = self.counts();
        let of_peer = c.by_peer.get(&peer).copied().unwrap_or(0);
        if c.transfers >= self.limits.transfers
            || of_peer >= self.limits.transfers_per_peer
            || (!trusted && c.untrusted >= self.limits.untrusted_transfers)
        {
            return None;
        }
        c.transfers += 1;
        c.untrusted += usize::from(!trusted);
        *c.by_peer.entry(peer).or_default() += 1;
        Some(TransferGuard {
            adm: self.clone(),
            peer,
            trusted,
        })
    }
}

/// Holds a place among the unauthenticated connections; dropped when the
/// peer has authenticated or the connection ended.
pub struct ConnectionGuard {
    adm: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut c = self.adm.counts();
        c.unauthenticated = c.unauthenticated.saturating_sub(1);
        dec(&mut c.by_ip, &self.ip);
    }
}

/// Holds a place among the transfers.
pub struct TransferGuard {
    adm: Arc<Admission>,
    peer: PublicKey,
    trusted: bool,
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        let mut c = self.adm.counts();
        c.transfers = c.transfers.saturating_sub(1);
        if !self.trusted {
            c.untrusted = c.untrusted.saturating_sub(1);
        }
        dec(&mut c.by_peer, &self.peer);
    }
}

/// Holds a transfer's entries in the budget.
pub struct EntriesGuard {
    adm: Arc<Admission>,
    n: usize,
}

impl Drop for EntriesGuard {
    fn drop(&mut self) {
        let mut c = self.adm.counts();
        c.entries = c.entries.saturating_sub(self.n);
    }
}

/// Asks the local user whether to accept an offer (blocking; runs on the
/// prompt thread only).
pub trait Asker: Send + Sync {
    /// Returns true to accept. `claimed` is the name the peer gives itself
    /// (`Hello`): a valid node name, unproven.
    fn ask(
        &self,
        peer: &PublicKey,
        claimed: &str,
        files: &[FileOffer],
        totals: &OfferTotals,
    ) -> bool;
}

struct Question {
    peer: PublicKey,
    claimed: String,
    files: Vec<FileOffer>,
    totals: OfferTotals,
    answer: oneshot::Sender<bool>,
}

/// One thread asks the user, one offer at a time; at most `prompts` wait.
/// The thread is never joined: shutting down never waits for a person.
pub struct PromptQueue {
    tx: std::sync::mpsc::SyncSender<Question>,
}

impl PromptQueue {
    /// Starts the prompt thread.
    pub fn start(asker: Arc<dyn Asker>, limits: &Limits) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Question>(limits.prompts.max(1));
        std::thread::Builder::new()
            .name("p2pfs-prompt".into())
            .spawn(move || {
                for q in rx {
                    // The connection gave up (timeout, peer gone): skip it.
                    if q.answer.is_closed() {
                        continue;
                    }
                    let yes = asker.ask(&q.peer, &q.claimed, &q.files, &q.totals);
                    let _ = q.answer.send(yes);
                }
            })?;
        Ok(Self { tx })
    }

    /// Queues a question; `None` when the queue is full (busy).
    pub fn ask(
        &self,
        peer: PublicKey,
        claimed: String,
        files: Vec<FileOffer>,
        totals: OfferTotals,
    ) -> Option<oneshot::Receiver<bool>> {
        let (answer, rx) = oneshot::channel();
        self.tx
            .try_send(Question {
                peer,
                claimed,
                files,
                totals,
                answer,
            })
            .ok()?;
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_in_all_and_per_address() {
        let adm = Admission::new(Limits {
            unauthenticated: 3,
            unauthenticated_per_ip: 2,
            ..Limits::default()
        });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let g1 = adm.connection(a).unwrap();
        let _g2 = adm.connection(a).unwrap();
        assert!(adm.connection(a).is_none(), "per-address cap");
        let _g3 = adm.connection(b).unwrap();
        assert!(adm.connection(c).is_none(), "global cap");
        assert!(adm.wants_retry());
        drop(g1);
        assert!(adm.connection(c).is_some(), "a place freed");
        // One IPv6 host's /64 is one address.
        let adm = Admission::new(Limits {
            unauthenticated_per_ip: 1,
            ..Limits::default()
        });
        let _v = adm.connection("fd00::1".parse().unwrap()).unwrap();
        assert!(adm.connection("fd00::2:3".parse().unwrap()).is_none());
        assert!(adm.connection("fd00:0:0:1::1".parse().unwrap()).is_some());
    }

    #[test]
    fn entry_budget_is_shared_by_transfers_in_progress() {
        let adm = Admission::new(Limits {
            entries: 10,
            ..Limits::default()
        });
        let a = adm.entries(6).unwrap();
        assert!(adm.entries(5).is_none());
        let _b = adm.entries(4).unwrap();
        drop(a);
        assert!(adm.entries(6).is_some());
    }

    #[tokio::test]
    async fn chunk_budgets_wait_for_room() {
        let adm = Admission::new(Limits {
            chunk_bytes_per_connection: 10,
            chunk_bytes: 15,
            ..Limits::default()
        });
        let (c1, c2) = (adm.chunk_budget(), adm.chunk_budget());
        let p = c1.reserve(8).await.unwrap();
        let wait = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(wait, c1.reserve(3)).await.is_err(),
            "per connection"
        );
        let _q = c2.reserve(7).await.unwrap();
        assert!(
            tokio::time::timeout(wait, c2.reserve(1)).await.is_err(),
            "per node"
        );
        drop(p);
        assert!(tokio::time::timeout(wait, c1.reserve(3)).await.is_ok());
    }

    #[test]
    fn transfer_caps_in_all_and_per_peer() {
        let adm = Admission::new(Limits {
            transfers: 3,
            transfers_per_peer: 1,
            untrusted_transfers: 1,
            ..Limits::default()
        });
        let key = |b| PublicKey([b; 32]);
        let t = adm.transfer(key(1), true).unwrap();
        assert!(adm.transfer(key(1), true).is_none(), "per peer");
        let u = adm.transfer(key(2), false).unwrap();
        assert!(adm.transfer(key(3), false).is_none(), "untrusted pool full");
        let _v = adm.transfer(key(4), true).unwrap();
        assert!(adm.transfer(key(5), true).is_none(), "all full");
        drop(t);
        let _t = adm.transfer(key(1), true).unwrap();
        assert!(adm.transfer(key(3), false).is_none(), "all full again");
        drop(u);
        assert!(
            adm.transfer(key(3), false).is_some(),
            "the untrusted place is free"
        );
    }

    struct Slow(std::sync::mpsc::Receiver<()>);
    // The receiver is only touched on the prompt thread.
    struct SlowAsker(Mutex<Slow>);
    impl Asker for SlowAsker {
        fn ask(&self, _: &PublicKey, _: &str, _: &[FileOffer], _: &OfferTotals) -> bool {
            let g = self.0.lock().unwrap();
            g.0.recv().is_ok()
        }
    }

    #[tokio::test]
    async fn prompts_are_queued_with_a_bound_and_answered_in_turn() {
        let (go, wait) = std::sync::mpsc::channel();
        let q = PromptQueue::start(
            Arc::new(SlowAsker(Mutex::new(Slow(wait)))),
            &Limits {
                prompts: 2,
                ..Limits::default()
            },
        )
        .unwrap();
        let t = OfferTotals::default();
        let first = q.ask(PublicKey([1; 32]), String::new(), vec![], t).unwrap();
        // Give the thread time to take the first question off the queue.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let _second = q.ask(PublicKey([2; 32]), String::new(), vec![], t).unwrap();
        let _third = q.ask(PublicKey([3; 32]), String::new(), vec![], t).unwrap();
        assert!(
            q.ask(PublicKey([4; 32]), String::new(), vec![], t)
                .is_none(),
            "queue full"
        );
        go.send(()).unwrap();
        assert!(first.await.unwrap());
    }
}
