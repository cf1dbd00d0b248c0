//! The protocol decisions of a transfer, as state machines with no sockets
//! and no clock (`docs/PROTOCOL.md`): what a server lets a peer ask for,
//! and, on either end of a transfer, which control message may come when.
//! The quinn layer feeds them what arrives and does what they answer;
//! tests drive them in memory, one end's output into the other's input.

use crate::{
    crypto::chunk::{chunk_count, chunk_plain_len, FileId, CHUNK_OVERHEAD},
    net::{
        wire::{ChunkHeader, FilePlan, Msg, RefuseCode},
        NetError,
    },
};

fn violation(what: impl Into<String>) -> NetError {
    NetError::Protocol(what.into())
}

// ------------------------------------------------------------- requests

/// What an authenticated peer may do here (from the trust store and the
/// accept policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    /// It may push files (trusted with `send`, or the policy admits it).
    pub send: bool,
    /// It may list and fetch what was shared with it, and its deposits.
    pub get: bool,
    /// It may list and fetch everything (one of the owner's devices).
    pub owner: bool,
    /// It is in the trust store with some right (windows, limits).
    pub trusted: bool,
    /// It may leave sealed deposits (trusted with `send`: a deposit counts
    /// against its quota, so it needs an entry in the trust store).
    pub deposit: bool,
}

/// A request the server accepted, to be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Receive the offered files (this node is the sink).
    Push,
    /// Receive sealed deposits (this node is the sink, and never gets a key).
    Deposit,
    /// List what the peer may fetch.
    List,
    /// Send these objects (this node is the source).
    Fetch(Vec<FileId>, usize),
}

/// A refusal: its code and the message the peer is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefuseCode,
    /// What the peer is told (never what exists here).
    pub message: String,
}

/// The message a peer without the right to list or fetch is shown: the
/// same whatever the vault holds, so a refusal reveals nothing.
pub const NO_ACCESS: &str =
    "this node lets you fetch nothing (the owner grants it with `p2pfs trust add YOUR-ID --allow get` and `p2pfs vault share`)";

/// Decides the first message after `Welcome`. A push needs the right to
/// send (the ask policy asks later, per offer); a list or fetch needs
/// `get` or `owner`. Which objects a fetch may name is decided with the
/// server's view of its shares ([`authorise_fetch`]).
pub fn decide(first: &Msg, rights: Rights) -> Result<Request, Refusal> {
    let no_access = || Refusal {
        code: RefuseCode::Untrusted,
        message: NO_ACCESS.into(),
    };
    match first {
        Msg::Offer { .. } if rights.send => Ok(Request::Push),
        Msg::Offer { .. } => Err(Refusal {
            code: RefuseCode::Untrusted,
            message: "this node does not let you send to it".into(),
        }),
        Msg::Deposit { .. } if rights.deposit => Ok(Request::Deposit),
        Msg::Deposit { .. } => Err(Refusal {
            code: RefuseCode::Untrusted,
            message: "this node takes sealed deposits only from peers it trusts to send (`p2pfs trust add YOUR-ID --allow send --quota SIZE` there)".into(),
        }),
        Msg::List if rights.get || rights.owner => Ok(Request::List),
        Msg::Fetch { ids, streams } if rights.get || rights.owner => {
            Ok(Request::Fetch(ids.clone(), usize::from(*streams)))
        }
        Msg::List | Msg::Fetch { .. } => Err(no_access()),
        other => Err(Refusal {
            code: RefuseCode::BadOffer,
            message: format!(
                "expected a request (Offer, List or Fetch), got {}",
                other.kind()
            ),
        }),
    }
}

/// Checks that every requested id is one the peer may fetch (`allowed`
/// answers for one id). An id that does not exist and one that exists but
/// is not the peer's get the same answer.
pub fn authorise_fetch(ids: &[FileId], allowed: impl Fn(&FileId) -> bool) -> Result<(), Refusal> {
    if ids.iter().all(allowed) {
        Ok(())
    } else {
        Err(Refusal {
            code: RefuseCode::Untrusted,
            message: "an object you asked for is not available to you here (it may not exist, or not be shared with you)".into(),
        })
    }
}

// ------------------------------------------------------------- source

/// The source's view of a transfer once the sink's plan is in: one result
/// per accepted file, each at most once.
#[derive(Debug)]
pub struct SourceMachine {
    accepted: Vec<bool>,
    answered: Vec<bool>,
    expected: usize,
    results: usize,
}

impl SourceMachine {
    /// Checks the sink's plan against an offer of `n` entries.
    pub fn on_plan(n: usize, plans: &[FilePlan]) -> Result<Self, NetError> {
        if plans.len() != n {
            return Err(violation(format!(
                "expected a plan for {n} file(s), got one for {}",
                plans.len()
            )));
        }
        let accepted: Vec<bool> = plans
            .iter()
            .map(|p| !matches!(p, FilePlan::Reject { .. } | FilePlan::Unchanged { .. }))
            .collect();
        let expected = accepted.iter().filter(|a| **a).count();
        Ok(Self {
            answered: vec![false; n],
            accepted,
            expected,
            results: 0,
        })
    }

    /// Whether file `i` is to be sent.
    pub fn is_accepted(&self, i: usize) -> bool {
        self.accepted.get(i).copied().unwrap_or(false)
    }

    /// A result arrived for `file`: its index, or a violation (unknown
    /// file, a rejected one, a second result).
    pub fn on_result(&mut self, file: u32) -> Result<usize, NetError> {
        let i = file as usize;
        match (self.accepted.get(i), self.answered.get(i)) {
            (Some(true), Some(false)) => {
                self.answered[i] = true;
                self.results += 1;
                Ok(i)
            }
            (None, _) => Err(violation("result for an unknown file")),
            _ => Err(violation(
                "a second result, or a result for a rejected file",
            )),
        }
    }

    /// True once every accepted file has its result.
    pub fn finished(&self) -> bool {
        self.results == self.expected
    }
}

// ------------------------------------------------------------- sink

/// How the sink of a transfer learns each file's key and BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFlow {
    /// A push: the source sends `FileStart` (the key, under the session)
    /// and `FileEnd` (the BLAKE3) for every accepted file.
    Announced,
    /// A pull: both came sealed with the served entry; the source sends
    /// only chunks, and a `FileStart` or `FileEnd` is a violation.
    Known,
    /// A deposit: the sink never learns the key; the source sends
    /// `DepositStart` (its key sealed to itself) and `DepositEnd` (the
    /// envelope sealed to its vault key) for every accepted file.
    Sealed,
}

/// A control message the sink acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkStep {
    /// The key of `file` (its `FileStart`).
    Start(u32),
    /// The BLAKE3 of `file` (its `FileEnd`).
    End(u32),
    /// The initiator has every result (`Done`).
    PeerDone,
}

/// The sink's view of a transfer: each file started and ended once, one
/// result per file, and when it is over.
#[derive(Debug)]
pub struct SinkMachine {
    flow: KeyFlow,
    started: Vec<bool>,
    ended: Vec<bool>,
    results: Vec<bool>,
    sent: usize,
    peer_done: bool,
    /// The sink is the initiator (a pull): it ends the transfer itself
    /// once every result is sent; a push sink waits for `Done`.
    initiator: bool,
}

impl SinkMachine {
    /// A sink of `n` planned files.
    pub fn new(n: usize, flow: KeyFlow, initiator: bool) -> Self {
        Self {
            flow,
            started: vec![false; n],
            ended: vec![false; n],
            results: vec![false; n],
            sent: 0,
            peer_done: false,
            initiator,
        }
    }

    fn once(seen: &mut [bool], file: u32, what: &str) -> Result<(), NetError> {
        match seen.get_mut(file as usize) {
            None => Err(violation("file index out of range")),
            Some(true) => Err(violation(format!("a second {what} for file {file}"))),
            Some(s) => {
                *s = true;
                Ok(())
            }
        }
    }

    /// A control message from the source.
    pub fn on_msg(&mut self, m: &Msg) -> Result<SinkStep, NetError> {
        match (m, self.flow) {
            (Msg::FileStart { file, .. }, KeyFlow::Announced) => {
                Self::once(&mut self.started, *file, "FileStart")?;
                Ok(SinkStep::Start(*file))
            }
            (Msg::FileEnd { file, .. }, KeyFlow::Announced) => {
                Self::once(&mut self.ended, *file, "FileEnd")?;
                Ok(SinkStep::End(*file))
            }
            (Msg::DepositStart { file, .. }, KeyFlow::Sealed) => {
                Self::once(&mut self.started, *file, "DepositStart")?;
                Ok(SinkStep::Start(*file))
            }
            (Msg::DepositEnd { file, .. }, KeyFlow::Sealed) => {
                Self::once(&mut self.ended, *file, "DepositEnd")?;
                Ok(SinkStep::End(*file))
            }
            (Msg::Done, _) if !self.initiator => {
                self.peer_done = true;
                Ok(SinkStep::PeerDone)
            }
            (other, _) => Err(violation(format!("unexpected message {}", other.kind()))),
        }
    }

    /// `file` needs nothing (its plan says `Unchanged`): it has its result
    /// from the plan, and any announcement of it is a violation.
    pub fn skip(&mut self, file: u32) -> Result<(), NetError> {
        Self::once(&mut self.started, file, "plan")?;
        if let Some(e) = self.ended.get_mut(file as usize) {
            *e = true;
        }
        self.on_result(file)
    }

    /// The sink reports `file`'s result (each once: the disk side decides
    /// it, this checks it).
    pub fn on_result(&mut self, file: u32) -> Result<(), NetError> {
        Self::once(&mut self.results, file, "result")?;
        self.sent += 1;
        Ok(())
    }

    /// True when the transfer is over for the sink: every result sent and,
    /// for a push, the initiator's `Done` received.
    pub fn finished(&self) -> bool {
        self.sent == self.results.len() && (self.initiator || self.peer_done)
    }

    /// True while the sink still reads control messages from the source.
    pub fn reading(&self) -> bool {
        !self.peer_done
    }
}

// ------------------------------------------------------------- resume

/// What a sink knows of a partial it found in an entry's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialFacts {
    /// Its keyed version tag (sender, name, size, chunk size, token).
    pub version: [u8; 32],
    /// Its declared size.
    pub size: u64,
    /// Its chunk size.
    pub chunk_size: u32,
    /// Its file id.
    pub file_id: FileId,
    /// Whether it holds a key sealed to the source (push and deposit).
    pub sealed_key: bool,
}

/// What the entry being planned is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// The version tag of the entry offered now.
    pub version: [u8; 32],
    /// Its size.
    pub size: u64,
    /// Its chunk size.
    pub chunk_size: u32,
    /// A pull's fixed object id.
    pub fixed_id: Option<FileId>,
    /// How its key arrives.
    pub flow: KeyFlow,
}

/// Whether a partial found in an entry's slot is resumed: only the very
/// same source version, size and chunk size (and, in a pull, the same
/// object), never mixed with another; a push or a deposit needs the key
/// sealed to its source, who continues with it, a pull gets its key again
/// with the served entry. Anything else is removed and the file starts
/// over.
pub fn resume_partial(found: &PartialFacts, want: &Wanted) -> bool {
    found.version == want.version
        && found.size == want.size
        && found.chunk_size == want.chunk_size
        && want.fixed_id.is_none_or(|id| id == found.file_id)
        && (want.flow == KeyFlow::Known || found.sealed_key)
}

/// Whether a source continues a partial its sink offers back: only one of
/// a transfer it started with this very sink for this entry (`recorded`),
/// whose sealed key opened for the two of them, with a bitmap of exactly
/// the entry's chunk count. Otherwise it sends afresh (`fresh`).
pub fn honour_resume(recorded: bool, key_opened: bool, have_len: usize, chunks: u64) -> bool {
    recorded && key_opened && have_len as u64 == chunks.div_ceil(8)
}

/// One planned file as the data streams see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    /// The chunks' file id.
    pub id: FileId,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Whether chunks of it are taken (not for an `Unchanged` entry).
    pub open: bool,
}

/// Bounds a chunk frame's header against the plan before anything is read
/// for it: a known file, an index in range, the exact sealed length.
/// Returns the file's id and the sealed length.
pub fn chunk_bounds(plans: &[ChunkPlan], h: &ChunkHeader) -> Result<(FileId, usize), NetError> {
    let p = plans
        .get(h.file as usize)
        .ok_or_else(|| violation(format!("chunk for unknown file {}", h.file)))?;
    if !p.open {
        return Err(violation(format!(
            "chunk for file {}, which needs none",
            h.file
        )));
    }
    if h.index >= chunk_count(p.size, p.chunk_size) {
        return Err(violation(format!("chunk index {} out of range", h.index)));
    }
    let want = chunk_plain_len(p.size, p.chunk_size, h.index) + CHUNK_OVERHEAD;
    if h.len as usize != want {
        return Err(violation(format!(
            "chunk {} has length {} (expected {want})",
            h.index, h.len
        )));
    }
    Ok((p.id, want))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_new() -> FilePlan {
        FilePlan::New { file_id: [1; 16] }
    }

    fn start(file: u32) -> Msg {
        Msg::FileStart {
            file,
            wrapped_key: vec![0; 48],
            fresh: false,
        }
    }

    fn end(file: u32) -> Msg {
        Msg::FileEnd {
            file,
            blake3: [0; 32],
        }
    }

    /// A push driven in memory: the sink's plan goes to the source, the
    /// source's announcements to the sink, the sink's results back.
    #[test]
    fn a_push_runs_to_its_end_in_memory() {
        let plans = vec![
            plan_new(),
            FilePlan::Reject {
                reason: "no".into(),
            },
            plan_new(),
        ];
        let mut src = SourceMachine::on_plan(3, &plans).unwrap();
        let mut sink = SinkMachine::new(3, KeyFlow::Announced, false);
        let accepted: Vec<usize> = (0..3).filter(|i| src.is_accepted(*i)).collect();
        assert_eq!(accepted, [0, 2]);
        for i in accepted {
            let f = i as u32;
            assert_eq!(sink.on_msg(&start(f)).unwrap(), SinkStep::Start(f));
            assert_eq!(sink.on_msg(&end(f)).unwrap(), SinkStep::End(f));
            sink.on_result(f).unwrap();
            assert_eq!(src.on_result(f).unwrap(), i);
        }
        // The rejected file gets its result from the plan itself.
        sink.on_result(1).unwrap();
        assert!(src.finished());
        assert!(!sink.finished(), "a push sink waits for Done");
        assert_eq!(sink.on_msg(&Msg::Done).unwrap(), SinkStep::PeerDone);
        assert!(sink.finished() && !sink.reading());
    }

    /// An unchanged entry is neither announced nor answered: the source
    /// sends nothing of it and expects no result; the sink counts it done
    /// from its plan and refuses any announcement or result for it.
    #[test]
    fn an_unchanged_entry_needs_nothing_and_takes_nothing() {
        let plans = vec![FilePlan::Unchanged { file_id: [2; 16] }, plan_new()];
        let mut src = SourceMachine::on_plan(2, &plans).unwrap();
        assert!(!src.is_accepted(0) && src.is_accepted(1));
        assert!(
            src.on_result(0).is_err(),
            "no result for an unchanged entry"
        );
        let mut sink = SinkMachine::new(2, KeyFlow::Announced, false);
        sink.skip(0).unwrap();
        assert!(sink.on_msg(&start(0)).is_err(), "a start for it");
        assert!(sink.on_msg(&end(0)).is_err(), "an end for it");
        assert!(sink.on_result(0).is_err(), "a result for it");
        assert!(sink.skip(0).is_err(), "skipped twice");
        sink.on_msg(&start(1)).unwrap();
        sink.on_msg(&end(1)).unwrap();
        sink.on_result(1).unwrap();
        assert_eq!(src.on_result(1).unwrap(), 1);
        assert!(src.finished());
        sink.on_msg(&Msg::Done).unwrap();
        assert!(sink.finished());
    }

    #[test]
    fn repeated_or_unknown_announcements_are_violations() {
        let mut sink = SinkMachine::new(2, KeyFlow::Announced, false);
        sink.on_msg(&start(0)).unwrap();
        assert!(sink.on_msg(&start(0)).is_err(), "a second FileStart");
        sink.on_msg(&end(1)).unwrap();
        assert!(sink.on_msg(&end(1)).is_err(), "a second FileEnd");
        assert!(sink.on_msg(&start(2)).is_err(), "out of range");
        assert!(sink.on_msg(&Msg::Plan { files: vec![] }).is_err());
        sink.on_result(0).unwrap();
        assert!(sink.on_result(0).is_err(), "a second result");
    }

    #[test]
    fn a_deposit_sink_takes_only_sealed_announcements() {
        let mut sink = SinkMachine::new(1, KeyFlow::Sealed, false);
        assert!(sink.on_msg(&start(0)).is_err(), "a key must never come");
        assert!(sink.on_msg(&end(0)).is_err());
        let ds = Msg::DepositStart {
            file: 0,
            sealed_key: vec![0; 80],
            fresh: false,
        };
        let de = Msg::DepositEnd {
            file: 0,
            envelope: vec![1],
        };
        assert_eq!(sink.on_msg(&ds).unwrap(), SinkStep::Start(0));
        assert!(sink.on_msg(&ds).is_err());
        assert_eq!(sink.on_msg(&de).unwrap(), SinkStep::End(0));
        assert!(sink.on_msg(&de).is_err());
        let deposit = Msg::Deposit {
            chunk_size: 1 << 20,
            files: vec![],
        };
        let sender = Rights {
            send: true,
            ..Rights::default()
        };
        assert!(
            decide(&deposit, sender).is_err(),
            "untrusted senders may not deposit"
        );
        let trusted = Rights {
            deposit: true,
            ..sender
        };
        assert_eq!(decide(&deposit, trusted), Ok(Request::Deposit));
    }

    #[test]
    fn a_pull_sink_takes_no_announcements_and_ends_itself() {
        let mut sink = SinkMachine::new(1, KeyFlow::Known, true);
        assert!(sink.on_msg(&start(0)).is_err());
        assert!(sink.on_msg(&end(0)).is_err());
        assert!(sink.on_msg(&Msg::Done).is_err(), "the initiator sends Done");
        sink.on_result(0).unwrap();
        assert!(sink.finished());
    }

    #[test]
    fn the_source_takes_each_result_once_and_only_for_accepted_files() {
        assert!(SourceMachine::on_plan(2, &[plan_new()]).is_err());
        let mut src =
            SourceMachine::on_plan(2, &[plan_new(), FilePlan::Reject { reason: "x".into() }])
                .unwrap();
        assert!(src.on_result(1).is_err(), "rejected");
        assert!(src.on_result(7).is_err(), "unknown");
        assert!(!src.finished());
        assert_eq!(src.on_result(0).unwrap(), 0);
        assert!(src.on_result(0).is_err(), "second");
        assert!(src.finished());
    }

    #[test]
    fn requests_need_their_rights() {
        let offer = Msg::Offer {
            again: false,
            chunk_size: 1 << 20,
            files: vec![],
        };
        let fetch = Msg::Fetch {
            ids: vec![[0; 16]],
            streams: 4,
        };
        let none = Rights::default();
        let sender = Rights {
            send: true,
            trusted: true,
            ..none
        };
        let getter = Rights {
            get: true,
            trusted: true,
            ..none
        };
        assert_eq!(decide(&offer, sender), Ok(Request::Push));
        assert!(decide(&offer, getter).is_err());
        assert_eq!(decide(&Msg::List, getter), Ok(Request::List));
        assert_eq!(decide(&fetch, getter), Ok(Request::Fetch(vec![[0; 16]], 4)));
        // Without get or owner, a list and a fetch are refused with the
        // one message that says nothing of the vault.
        for m in [&Msg::List, &fetch] {
            let r = decide(m, sender).unwrap_err();
            assert_eq!(
                (r.code, r.message.as_str()),
                (RefuseCode::Untrusted, NO_ACCESS)
            );
        }
        assert!(decide(&Msg::Done, getter).is_err());
        let owner = Rights {
            owner: true,
            ..none
        };
        assert_eq!(decide(&Msg::List, owner), Ok(Request::List));
    }

    #[test]
    fn a_fetch_of_a_missing_or_unshared_object_is_refused_alike() {
        let shared = [[1u8; 16]];
        let allowed = |id: &FileId| shared.contains(id);
        assert!(authorise_fetch(&[[1; 16]], allowed).is_ok());
        let missing = authorise_fetch(&[[2; 16]], allowed).unwrap_err();
        let unshared = authorise_fetch(&[[1; 16], [3; 16]], allowed).unwrap_err();
        assert_eq!(missing, unshared);
    }

    #[test]
    fn a_partial_resumes_only_for_the_same_source_and_a_usable_key() {
        let found = PartialFacts {
            version: [1; 32],
            size: 100,
            chunk_size: 4096,
            file_id: [2; 16],
            sealed_key: true,
        };
        let want = Wanted {
            version: [1; 32],
            size: 100,
            chunk_size: 4096,
            fixed_id: None,
            flow: KeyFlow::Announced,
        };
        assert!(resume_partial(&found, &want));
        for other in [
            Wanted {
                version: [9; 32],
                ..want
            },
            Wanted { size: 101, ..want },
            Wanted {
                chunk_size: 8192,
                ..want
            },
            Wanted {
                fixed_id: Some([3; 16]),
                flow: KeyFlow::Known,
                ..want
            },
        ] {
            assert!(!resume_partial(&found, &other), "{other:?}");
        }
        // A push without the sealed key cannot continue; a pull can.
        let keyless = PartialFacts {
            sealed_key: false,
            ..found
        };
        assert!(!resume_partial(&keyless, &want));
        assert!(!resume_partial(
            &keyless,
            &Wanted {
                flow: KeyFlow::Sealed,
                ..want
            }
        ));
        assert!(resume_partial(
            &keyless,
            &Wanted {
                fixed_id: Some([2; 16]),
                flow: KeyFlow::Known,
                ..want
            }
        ));
    }

    #[test]
    fn a_source_continues_only_its_own_recorded_transfer() {
        assert!(honour_resume(true, true, 2, 16));
        assert!(!honour_resume(false, true, 2, 16), "not started here");
        assert!(
            !honour_resume(true, false, 2, 16),
            "a key sealed by someone else"
        );
        assert!(
            !honour_resume(true, true, 3, 16),
            "a bitmap of another size"
        );
    }

    #[test]
    fn chunk_headers_are_bounded_by_the_plan() {
        let plans = [
            ChunkPlan {
                id: [5; 16],
                size: 10_000,
                chunk_size: 4096,
                open: true,
            },
            ChunkPlan {
                id: [6; 16],
                size: 10_000,
                chunk_size: 4096,
                open: false,
            },
        ];
        let h = |file, index, len| ChunkHeader {
            file,
            index,
            len,
            mac: [0; 32],
        };
        assert_eq!(
            chunk_bounds(&plans, &h(0, 2, (10_000 - 8192 + 28) as u32)).unwrap(),
            ([5; 16], 10_000 - 8192 + 28)
        );
        assert!(
            chunk_bounds(&plans, &h(1, 0, 4124)).is_err(),
            "a file that needs no chunk (unchanged)"
        );
        assert!(
            chunk_bounds(&plans, &h(2, 0, 4124)).is_err(),
            "no such file"
        );
        assert!(chunk_bounds(&plans, &h(0, 3, 4124)).is_err());
        assert!(chunk_bounds(&plans, &h(0, 0, 4125)).is_err());
    }
}
