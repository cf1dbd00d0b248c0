//! Pairing by code (`p2pfs pair`, `docs/PROTOCOL.md`, *Pairing by code*):
//! the code, the SPAKE2 exchange and its proofs, and the two sides' state
//! machines, driven by the I/O in `cli::pair_cmd` over an authenticated
//! connection and by the tests in memory.
//!
//! The code (`7-orbit-velvet`) is a nameplate (1–99, only for finding the
//! pairing node on the LAN, not secret) and two words of a 256-word list:
//! 16 secret bits. The code is the SPAKE2 password; both static keys are
//! the SPAKE2 identities, and the proofs are keyed by the SPAKE2 key mixed
//! with the Noise handshake hash, which covers both static keys and the
//! TLS exporter. So an attacker who does not know the code gets one guess
//! per connection (SPAKE2 gives nothing to test guesses offline), the
//! hosting side ends the session after [`MAX_FAILURES`] wrong proofs, and a
//! man in the middle, who runs a separate Noise session with each side,
//! cannot make the proofs of one session match the other's.

use std::fmt;

use rand_core::{OsRng, RngCore};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use super::wire::{Msg, RefuseCode};
use crate::{
    crypto::{keys::PublicKey, mac::hmac_sha256, wrap::hkdf_key},
    text,
};

/// Length of a SPAKE2 (Ed25519 group) message: a side byte and a point.
pub const PAKE_MSG_LEN: usize = 33;
/// Wrong proofs after which the hosting side ends the session.
pub const MAX_FAILURES: u32 = 3;
/// How long a code stays valid, at most.
pub const CODE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);
/// The UDP port `pair` listens on by default (beside `serve`'s 47474).
pub const DEFAULT_PAIR_PORT: u16 = 47475;
/// Largest nameplate.
const MAX_NAMEPLATE: u16 = 99;

/// The words of a code: 256, so each word is one uniform byte.
pub const WORDS: [&str; 256] = [
    "acid", "acorn", "actor", "adobe", "agent", "album", "alpine", "amber", "anchor", "angel",
    "ankle", "apple", "apron", "arcade", "arctic", "arena", "armor", "arrow", "aspen", "atlas",
    "atom", "august", "autumn", "badge", "bagel", "bamboo", "banjo", "barrel", "basil", "basket",
    "beacon", "beaver", "bison", "blanket", "blossom", "bonfire", "border", "bottle", "bounce",
    "branch", "breeze", "brick", "bridge", "bronze", "bubble", "bucket", "buffalo", "bugle",
    "button", "cabin", "cactus", "camel", "canal", "candle", "canyon", "carpet", "castle", "cedar",
    "cellar", "cherry", "chess", "cider", "cinema", "circus", "citrus", "clay", "cliff", "clover",
    "cobalt", "coconut", "comet", "copper", "coral", "cotton", "cougar", "crater", "crayon",
    "cricket", "crystal", "dagger", "daisy", "dancer", "delta", "denim", "desert", "dolphin",
    "domino", "donkey", "dragon", "drum", "dune", "eagle", "easel", "echo", "eclipse", "elbow",
    "ember", "emerald", "engine", "fabric", "falcon", "feather", "ferry", "fiddle", "flannel",
    "flute", "forest", "fossil", "fountain", "fox", "frost", "galaxy", "garden", "garlic", "gecko",
    "geyser", "ginger", "glacier", "goblet", "granite", "gravel", "guitar", "hammer", "harbor",
    "harvest", "hazel", "helmet", "heron", "honey", "hornet", "igloo", "indigo", "iris", "island",
    "ivory", "jacket", "jaguar", "jasmine", "jelly", "jungle", "juniper", "kayak", "kettle",
    "kiwi", "koala", "ladder", "lagoon", "lantern", "lava", "lemon", "library", "lilac", "linen",
    "lizard", "lobster", "lotus", "magnet", "mango", "maple", "marble", "meadow", "melon",
    "meteor", "mirror", "mitten", "muffin", "nectar", "needle", "nickel", "noodle", "nugget",
    "oasis", "ocean", "olive", "onion", "orbit", "orchid", "otter", "oyster", "paddle", "panda",
    "parrot", "peanut", "pebble", "pelican", "pepper", "piano", "pigeon", "pillow", "pilot",
    "planet", "plum", "pocket", "polar", "pony", "poppy", "pretzel", "pumpkin", "puzzle", "quartz",
    "quiver", "rabbit", "radar", "raft", "raven", "recipe", "ribbon", "rocket", "rooster", "ruby",
    "saddle", "salmon", "satin", "scarf", "shadow", "sierra", "silver", "sketch", "sleigh",
    "sparrow", "spider", "spruce", "squid", "statue", "summit", "sunset", "swan", "tango",
    "teapot", "temple", "thistle", "thunder", "tiger", "timber", "tomato", "topaz", "tulip",
    "turtle", "umbrella", "unicorn", "valley", "vanilla", "velvet", "violet", "volcano", "voyage",
    "walnut", "walrus", "willow", "window", "winter", "wizard", "yacht", "yogurt", "zebra", "zinc",
];

/// Failures of pairing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PairError {
    /// The code as typed is not a code.
    /// The code as typed is not a code (never quoted: it is a secret).
    #[error("that is not a pairing code: {0} (a code looks like 7-orbit-velvet; `p2pfs pair` on the other node shows it)")]
    BadCode(&'static str),
    /// The hosting side says the code is wrong.
    #[error("the other node refused the code: it is wrong, mistyped or expired. Nothing was pinned; check the code `p2pfs pair` shows there and try again")]
    WrongCode,
    /// The hosting side's proof is wrong: it does not know the code.
    #[error("the node that answered does not know this code (a wrong node, or someone in the middle): nothing was pinned")]
    NotThatNode,
    /// Too many wrong codes were tried.
    #[error("{MAX_FAILURES} wrong codes were tried: the pairing session ended and nothing was pinned. Run `p2pfs pair` again for a new code")]
    TooManyFailures,
    /// The code expired.
    #[error("the code expired unused: nothing was pinned. Run `p2pfs pair` again for a new code")]
    Expired,
    /// The pairing peer broke the protocol.
    #[error("pairing protocol error: {0}")]
    Protocol(String),
    /// The host is deciding as many guesses as it has left; this joiner's
    /// was not taken (no guess was made).
    #[error("the node showing the code is busy with other pairing attempts (someone else may be guessing): nothing was pinned. Try again in a moment; if this repeats, run `p2pfs pair` there again for a new code")]
    HostBusy,
    /// The host was stopped (Ctrl-C or SIGTERM) before anyone paired.
    #[error("stopped: the pairing session ended and nothing was pinned. Run `p2pfs pair` again for a new code")]
    Stopped,
}

/// A pairing code, normalised (`N-word-word`, lower case). It is the
/// SPAKE2 password: never logged, zeroised on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(Zeroizing<String>);

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(..)")
    }
}

impl Code {
    /// A fresh random code.
    pub fn generate() -> Code {
        let mut r = [0u8; 4];
        OsRng.fill_bytes(&mut r);
        let plate = u16::from_be_bytes([r[0], r[1]]) % MAX_NAMEPLATE + 1;
        let code = format!(
            "{plate}-{}-{}",
            WORDS[usize::from(r[2])],
            WORDS[usize::from(r[3])]
        );
        r.zeroize();
        Code(Zeroizing::new(code))
    }

    /// Parses a code as a user typed it: case, spaces around it and
    /// spaces instead of dashes do not matter; each word must be one of
    /// [`WORDS`], so a typo is caught before anything is sent.
    pub fn parse(typed: &str) -> Result<Code, PairError> {
        let bad = PairError::BadCode;
        let lower = Zeroizing::new(typed.trim().to_lowercase());
        let parts: Vec<&str> = lower
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        let [plate, w1, w2] = parts.as_slice() else {
            return Err(bad("it has not three parts"));
        };
        let n: u16 = plate
            .parse()
            .ok()
            .filter(|n| (1..=MAX_NAMEPLATE).contains(n))
            .ok_or_else(|| bad("it does not start with a number from 1 to 99"))?;
        for w in [w1, w2] {
            if !WORDS.contains(w) {
                return Err(bad("a word is not one a code is made of (a typo?)"));
            }
        }
        Ok(Code(Zeroizing::new(format!("{n}-{w1}-{w2}"))))
    }

    /// The nameplate: the number in front, which finds the pairing node on
    /// the LAN. Not secret.
    pub fn nameplate(&self) -> u16 {
        self.0
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The code, to show the user on the hosting side.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Which side of a pairing this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Shows the code and waits (`p2pfs pair`): the Noise responder,
    /// SPAKE2 side B.
    Host,
    /// Types the code (`p2pfs pair CODE`): the Noise initiator, SPAKE2 side A.
    Joiner,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Joiner => "joiner",
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Host => Role::Joiner,
            Role::Joiner => Role::Host,
        }
    }
}

/// What one side of a pairing knows before the exchange: both static keys
/// (authenticated by Noise) and the Noise handshake hash.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    /// The hosting side's static key.
    pub host: PublicKey,
    /// The joining side's static key.
    pub joiner: PublicKey,
    /// The Noise handshake hash of the connection.
    pub transcript: [u8; 32],
}

/// One side's SPAKE2 run, before the peer's message.
struct Pake {
    spake: Spake2<Ed25519Group>,
    role: Role,
    binding: Binding,
}

/// The two proofs of a finished exchange.
struct Proofs {
    mine: Zeroizing<[u8; 32]>,
    theirs: Zeroizing<[u8; 32]>,
}

impl Proofs {
    fn check(&self, got: &[u8; 32]) -> bool {
        bool::from(self.theirs.ct_eq(got))
    }
}

impl Pake {
    fn start(role: Role, code: &Code, binding: Binding) -> (Pake, Vec<u8>) {
        let pw = Password::new(code.0.as_bytes());
        let a = Identity::new(binding.joiner.as_bytes());
        let b = Identity::new(binding.host.as_bytes());
        let (spake, msg) = match role {
            Role::Joiner => Spake2::<Ed25519Group>::start_a(&pw, &a, &b),
            Role::Host => Spake2::<Ed25519Group>::start_b(&pw, &a, &b),
        };
        (
            Pake {
                spake,
                role,
                binding,
            },
            msg,
        )
    }

    fn finish(self, theirs: &[u8]) -> Result<Proofs, PairError> {
        let key = Zeroizing::new(
            self.spake
                .finish(theirs)
                .map_err(|_| PairError::Protocol("invalid SPAKE2 message".into()))?,
        );
        let b = self.binding;
        let proof = |role: Role| {
            let k = hkdf_key(
                &key,
                &b.transcript,
                format!("p2pfs/3 pair proof {}", role.label()).as_bytes(),
            );
            let mut data = [0u8; 64];
            data[..32].copy_from_slice(b.host.as_bytes());
            data[32..].copy_from_slice(b.joiner.as_bytes());
            Zeroizing::new(hmac_sha256(&k, &data))
        };
        Ok(Proofs {
            mine: proof(self.role),
            theirs: proof(self.role.other()),
        })
    }
}

/// What the I/O does after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these and read the next message.
    Reply(Vec<Msg>),
    /// The code was wrong (host): refuse with [`RefuseCode::WrongCode`],
    /// close, count a failure.
    Wrong,
    /// Both proofs checked: record the peer (its name, what it granted
    /// us), then send `then` (the joiner's `Paired`, the host's `Done`).
    Commit {
        /// The peer's node name.
        name: String,
        /// What the peer lets this node do (bit 0 send, 1 get, 2 owner).
        granted_to_us: u8,
        /// To send once recorded.
        then: Msg,
    },
}

enum State {
    /// Joiner: sent its SPAKE2 message. Host: waiting for the joiner's.
    Started(Option<Box<Pake>>),
    /// Waiting for the peer's proof.
    Proving(Proofs),
    /// Proofs checked (joiner: waiting for the host's `Paired`; host:
    /// waiting for the joiner's).
    Proven,
    /// Committed, or failed.
    Over,
}

/// One side's pairing exchange on one connection, as a state machine:
/// [`Exchange::on_msg`] takes each message from the peer and says what to do.
pub struct Exchange {
    role: Role,
    code: Code,
    binding: Binding,
    name: String,
    grant: u8,
    state: State,
}

impl Exchange {
    /// Starts an exchange. The joiner gets its first message to send.
    pub fn new(
        role: Role,
        code: Code,
        binding: Binding,
        name: String,
        grant: u8,
    ) -> (Exchange, Option<Msg>) {
        let (state, first) = match role {
            Role::Joiner => {
                let (pake, msg) = Pake::start(role, &code, binding);
                (
                    State::Started(Some(Box::new(pake))),
                    Some(Msg::PairStart { pake: msg }),
                )
            }
            Role::Host => (State::Started(None), None),
        };
        (
            Exchange {
                role,
                code,
                binding,
                name,
                grant,
                state,
            },
            first,
        )
    }

    /// Whether the peer's SPAKE2 message has arrived (the host counts an
    /// attempt as a guess from then on).
    pub fn guessed(&self) -> bool {
        !matches!(self.state, State::Started(_))
    }

    /// Handles one message from the peer.
    pub fn on_msg(&mut self, msg: Msg) -> Result<Step, PairError> {
        let state = std::mem::replace(&mut self.state, State::Over);
        let unexpected =
            |m: &Msg| PairError::Protocol(format!("unexpected {} during pairing", m.kind()));
        match (self.role, state, msg) {
            (Role::Host, State::Started(None), Msg::PairStart { pake: theirs }) => {
                let (pake, mine) = Pake::start(Role::Host, &self.code, self.binding);
                self.state = State::Proving(pake.finish(&theirs)?);
                Ok(Step::Reply(vec![Msg::PairStart { pake: mine }]))
            }
            (Role::Joiner, State::Started(Some(pake)), Msg::PairStart { pake: theirs }) => {
                let proofs = pake.finish(&theirs)?;
                let proof = *proofs.mine;
                self.state = State::Proving(proofs);
                Ok(Step::Reply(vec![Msg::PairProof { proof }]))
            }
            (Role::Host, State::Proving(proofs), Msg::PairProof { proof }) => {
                if !proofs.check(&proof) {
                    return Ok(Step::Wrong);
                }
                self.state = State::Proven;
                Ok(Step::Reply(vec![
                    Msg::PairProof {
                        proof: *proofs.mine,
                    },
                    Msg::Paired {
                        name: self.name.clone(),
                        granted: self.grant,
                    },
                ]))
            }
            (Role::Joiner, State::Proving(proofs), Msg::PairProof { proof }) => {
                if !proofs.check(&proof) {
                    return Err(PairError::NotThatNode);
                }
                self.state = State::Proven;
                Ok(Step::Reply(Vec::new()))
            }
            (
                Role::Joiner,
                State::Proving(_),
                Msg::Refused {
                    code: RefuseCode::WrongCode,
                    ..
                },
            ) => Err(PairError::WrongCode),
            (role, State::Proven, Msg::Paired { name, granted }) => Ok(Step::Commit {
                name,
                granted_to_us: granted,
                then: match role {
                    Role::Joiner => Msg::Paired {
                        name: self.name.clone(),
                        granted: self.grant,
                    },
                    Role::Host => Msg::Done,
                },
            }),
            (_, _, Msg::Welcome { .. }) => {
                Err(PairError::Protocol(super::server::NOT_A_PAIR_HOST.into()))
            }
            (
                Role::Joiner,
                _,
                Msg::Refused {
                    code: RefuseCode::Busy,
                    ..
                },
            ) => Err(PairError::HostBusy),
            (_, _, Msg::Refused { message, .. }) => Err(PairError::Protocol(format!(
                "the other node refused: {}",
                text::from_peer(&message)
            ))),
            (_, _, m) => Err(unexpected(&m)),
        }
    }
}

/// The hosting side's session: one code, at most [`MAX_FAILURES`] wrong
/// guesses, then over.
///
/// Joiners are answered side by side, so a silent one (connected, never
/// guessing) holds up nobody. Guesses under way count against the budget
/// before they are decided: a guess starts only while failures plus
/// guesses under way are below [`MAX_FAILURES`], so however many joiners
/// guess at once, no more than [`MAX_FAILURES`] wrong guesses are ever
/// checked.
#[derive(Debug, Default)]
pub struct Session {
    failures: u32,
    guessing: u32,
}

impl Session {
    /// Starts a guess (a joiner's SPAKE2 message arrived) if the budget
    /// allows one more; false when the guesses under way could use it up
    /// (the joiner is told the host is busy, and no guess is made).
    pub fn begin_guess(&mut self) -> bool {
        if self.failures + self.guessing >= MAX_FAILURES {
            return false;
        }
        self.guessing += 1;
        true
    }

    /// Ends a started guess that did not pair; the session is over once
    /// there were [`MAX_FAILURES`]. Returns the failures still allowed.
    pub fn failed(&mut self) -> Result<u32, PairError> {
        self.guessing = self.guessing.saturating_sub(1);
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            Err(PairError::TooManyFailures)
        } else {
            Ok(MAX_FAILURES - self.failures)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    fn binding(t: u8) -> Binding {
        Binding {
            host: key(1),
            joiner: key(2),
            transcript: [t; 32],
        }
    }

    /// What [`run`] returns: the joiner's commit or error, the host's
    /// commit, and whether the host saw a wrong code.
    type Outcome = (Result<(String, u8), PairError>, Option<(String, u8)>, bool);

    /// Runs both machines against each other in memory; returns what each
    /// side committed (name, granted) or the first error, and the host's.
    fn run(host_code: &str, join_code: &str, hb: Binding, jb: Binding) -> Outcome {
        let (mut host, none) = Exchange::new(
            Role::Host,
            Code::parse(host_code).unwrap(),
            hb,
            "host".into(),
            0b001,
        );
        assert!(none.is_none());
        let (mut join, first) = Exchange::new(
            Role::Joiner,
            Code::parse(join_code).unwrap(),
            jb,
            "joiner".into(),
            0b011,
        );
        let mut to_host = vec![first.unwrap()];
        let mut host_commit = None;
        let mut wrong = false;
        let mut joined = None;
        for _ in 0..8 {
            let mut to_join = Vec::new();
            for m in to_host.drain(..) {
                match host.on_msg(m).unwrap() {
                    Step::Reply(r) => to_join.extend(r),
                    Step::Wrong => {
                        wrong = true;
                        to_join.push(Msg::Refused {
                            code: RefuseCode::WrongCode,
                            message: "wrong pairing code".into(),
                        })
                    }
                    Step::Commit {
                        name,
                        granted_to_us,
                        then,
                    } => {
                        host_commit = Some((name, granted_to_us));
                        assert_eq!(then, Msg::Done);
                    }
                }
            }
            for m in to_join {
                match join.on_msg(m) {
                    Err(e) => return (Err(e), host_commit, wrong),
                    Ok(Step::Reply(r)) => to_host.extend(r),
                    Ok(Step::Commit {
                        name,
                        granted_to_us,
                        then,
                    }) => {
                        joined = Some((name, granted_to_us));
                        to_host.push(then);
                    }
                    Ok(Step::Wrong) => unreachable!(),
                }
            }
            if to_host.is_empty() {
                break;
            }
        }
        (joined.ok_or(PairError::Expired), host_commit, wrong)
    }

    #[test]
    fn the_right_code_pairs_both_sides() {
        let (j, h, wrong) = run("7-orbit-velvet", "7 Orbit VELVET", binding(9), binding(9));
        assert_eq!(j, Ok(("host".into(), 0b001)));
        assert_eq!(h, Some(("joiner".into(), 0b011)));
        assert!(!wrong);
    }

    #[test]
    fn a_wrong_code_is_refused_and_nothing_commits() {
        let (j, h, wrong) = run("7-orbit-velvet", "7-orbit-violet", binding(9), binding(9));
        assert_eq!(j, Err(PairError::WrongCode));
        assert_eq!(h, None);
        assert!(wrong);
    }

    #[test]
    fn another_transcript_or_key_fails_even_with_the_code() {
        // A relay between two Noise sessions has two transcripts.
        let (j, h, wrong) = run("7-orbit-velvet", "7-orbit-velvet", binding(9), binding(8));
        assert_eq!(j, Err(PairError::WrongCode));
        assert!(h.is_none() && wrong);
        // A joiner that believes it talks to another host key.
        let mut other = binding(9);
        other.host = key(3);
        let (j, h, _) = run("7-orbit-velvet", "7-orbit-velvet", binding(9), other);
        assert_eq!(j, Err(PairError::WrongCode));
        assert!(h.is_none());
    }

    #[test]
    fn a_host_that_does_not_know_the_code_is_caught_by_the_joiner() {
        // The host's machine with another code answers a right-looking
        // proof only if it checked ours; force its proof through.
        let b = binding(9);
        let (mut host, _) = Exchange::new(
            Role::Host,
            Code::parse("7-orbit-velvet").unwrap(),
            b,
            "h".into(),
            1,
        );
        let (mut join, first) = Exchange::new(
            Role::Joiner,
            Code::parse("8-orbit-velvet").unwrap(),
            b,
            "j".into(),
            1,
        );
        let Step::Reply(r) = host.on_msg(first.unwrap()).unwrap() else {
            panic!()
        };
        let Step::Reply(p) = join.on_msg(r[0].clone()).unwrap() else {
            panic!()
        };
        assert!(matches!(p[0], Msg::PairProof { .. }));
        // A forged host proof.
        assert_eq!(
            join.on_msg(Msg::PairProof { proof: [0; 32] }),
            Err(PairError::NotThatNode)
        );
    }

    /// A joiner whose guess found no room (the host's budget is held by
    /// guesses under way) is told so: `HostBusy`, "try again", not a wrong
    /// code, and nothing to commit. Before its guess or after it alike.
    #[test]
    fn a_busy_host_is_reported_as_busy_not_as_a_wrong_code() {
        let busy = || Msg::Refused {
            code: RefuseCode::Busy,
            message: "busy with other pairing attempts".into(),
        };
        let joiner = || {
            let (j, first) = Exchange::new(
                Role::Joiner,
                Code::parse("7-orbit-velvet").unwrap(),
                binding(9),
                "j".into(),
                1,
            );
            assert!(matches!(first, Some(Msg::PairStart { .. })));
            (j, first.unwrap())
        };
        // Refused in answer to its guess.
        assert_eq!(joiner().0.on_msg(busy()), Err(PairError::HostBusy));
        // Refused once the guess was answered (proofs under way).
        let (mut j, first) = joiner();
        let (mut host, _) = Exchange::new(
            Role::Host,
            Code::parse("7-orbit-velvet").unwrap(),
            binding(9),
            "h".into(),
            1,
        );
        let Step::Reply(r) = host.on_msg(first).unwrap() else {
            panic!()
        };
        assert!(matches!(j.on_msg(r[0].clone()), Ok(Step::Reply(_))));
        assert_eq!(j.on_msg(busy()), Err(PairError::HostBusy));
        // The message says what to do, and is not the wrong-code one.
        let said = PairError::HostBusy.to_string();
        assert!(
            said.contains("Try again") && said.contains("nothing was pinned"),
            "{said}"
        );
        assert_ne!(said, PairError::WrongCode.to_string());
    }

    /// Guesses under way hold their share of the budget: with joiners
    /// guessing side by side, never more than MAX_FAILURES are checked.
    #[test]
    fn guesses_at_once_never_exceed_the_budget() {
        let mut s = Session::default();
        assert!(s.begin_guess() && s.begin_guess() && s.begin_guess());
        assert!(!s.begin_guess(), "a fourth guess while three are under way");
        assert_eq!(s.failed(), Ok(2));
        assert!(!s.begin_guess(), "two under way and one failure use it up");
        assert_eq!(s.failed(), Ok(1));
        assert!(!s.begin_guess());
        assert_eq!(s.failed(), Err(PairError::TooManyFailures));
        assert!(!s.begin_guess());
    }

    #[test]
    fn codes_parse_strictly_and_sessions_end_after_three_failures() {
        for bad in [
            "",
            "7-orbit",
            "0-orbit-velvet",
            "100-orbit-velvet",
            "7-orbit-velvets",
            "x-a-b",
        ] {
            assert!(
                matches!(Code::parse(bad), Err(PairError::BadCode(_))),
                "{bad}"
            );
        }
        let c = Code::generate();
        assert_eq!(Code::parse(c.expose()).unwrap(), c);
        assert!((1..=99).contains(&c.nameplate()));
        assert_eq!(format!("{c:?}"), "Code(..)");
        let mut s = Session::default();
        for left in [Ok(2), Ok(1), Err(PairError::TooManyFailures)] {
            assert!(s.begin_guess());
            assert_eq!(s.failed(), left);
        }
        let mut w = WORDS.to_vec();
        w.sort();
        w.dedup();
        assert_eq!(w.len(), 256);
    }
}
