//! The Noise handshake (snow) that authenticates both node identities and
//! binds them to the QUIC/TLS session through the exporter prologue, the
//! initiator's key confirmation, and the session keys derived from the
//! Noise split (`docs/PROTOCOL.md`, *Authentication*). Generic over async
//! streams so it runs in memory in tests.
//!
//! Application keys never come from the handshake hash alone: `h` hashes
//! public data (protocol name, prologue, handshake messages), so anyone who
//! sees the transcript can recompute it. They are derived from the two
//! transport keys of `Split()`, which only the two ends whose static and
//! ephemeral keys took part know, mixed with `h` and the exporter value.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use super::NetError;
use crate::crypto::{
    aead::AeadKey,
    keys::{Keypair, PublicKey, Secret32},
    mac::MacKey,
    wrap::hkdf_key,
};

const XX: &str = "Noise_XX_25519_AESGCM_SHA256";
const IK: &str = "Noise_IK_25519_AESGCM_SHA256";
const PATTERN_XX: u8 = 1;
const PATTERN_IK: u8 = 2;
/// Label of the TLS exporter value used as the Noise prologue.
pub const EXPORTER_LABEL: &[u8] = b"p2pfs/2 noise prologue";
/// Largest handshake frame either side accepts. The messages of XX and IK
/// with empty payloads are at most 96 bytes.
const MAX_HANDSHAKE_MSG: usize = 256;
/// Plaintext of the initiator's key-confirmation message (the first
/// transport message, `docs/PROTOCOL.md`).
pub const CONFIRM: &[u8] = b"p2pfs/2 key confirmation";

/// Which way data flows, for the per-direction keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting node (initiator) to the serving node.
    InitiatorToResponder,
    /// From the serving node to the connecting node.
    ResponderToInitiator,
}

/// The outcome of a handshake: who the peer is and the session keys, one
/// per purpose and direction.
pub struct Session {
    /// The peer's static key (node id).
    pub peer: PublicKey,
    /// True on the connecting side.
    pub initiator: bool,
    /// The Noise handshake hash `h`: a public transcript identifier (the
    /// same on both ends), never a key.
    pub transcript_hash: [u8; 32],
    /// MAC key of chunks this side sends.
    pub mac_tx: std::sync::Arc<MacKey>,
    /// MAC key of chunks this side receives.
    pub mac_rx: std::sync::Arc<MacKey>,
    /// File-key transport key for keys this side sends.
    pub wrap_tx: AeadKey,
    /// File-key transport key for keys this side receives.
    pub wrap_rx: AeadKey,
}

/// The key schedule (`docs/PROTOCOL.md`, *Session keys*):
/// `HKDF-SHA256(salt = h || exporter, ikm = k_i2r || k_r2i, info = "p2pfs/2 " || purpose || " " || direction)`.
pub fn derive_key(
    split: &[u8; 64],
    h: &[u8; 32],
    exporter: &[u8],
    purpose: &str,
    dir: Direction,
) -> Secret32 {
    let mut salt = Vec::with_capacity(32 + exporter.len());
    salt.extend_from_slice(h);
    salt.extend_from_slice(exporter);
    let d = match dir {
        Direction::InitiatorToResponder => "i2r",
        Direction::ResponderToInitiator => "r2i",
    };
    hkdf_key(split, &salt, format!("p2pfs/2 {purpose} {d}").as_bytes())
}

fn hs_err(e: snow::Error) -> NetError {
    NetError::Handshake(e.to_string())
}

fn builder<'a>(
    pattern: &str,
    identity: &'a Secret32,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, NetError> {
    let params = pattern.parse().map_err(hs_err)?;
    snow::Builder::new(params)
        .local_private_key(identity.expose())
        .map_err(hs_err)?
        .prologue(prologue)
        .map_err(hs_err)
}

fn remote_static(hs: &snow::HandshakeState) -> Result<PublicKey, NetError> {
    let remote = hs
        .get_remote_static()
        .ok_or_else(|| NetError::Handshake("peer sent no static key".into()))?;
    Ok(PublicKey(remote.try_into().map_err(|_| {
        NetError::Handshake("bad static key length".into())
    })?))
}

/// Splits a finished handshake: the session keys, and the Noise transport
/// state that carries the key confirmation (then dropped).
fn finish(
    mut hs: snow::HandshakeState,
    prologue: &[u8],
) -> Result<(Session, snow::TransportState), NetError> {
    let peer = remote_static(&hs)?;
    let initiator = hs.is_initiator();
    let mut h = [0u8; 32];
    let hh = hs.get_handshake_hash();
    if hh.len() != 32 {
        return Err(NetError::Handshake(
            "unexpected handshake hash length".into(),
        ));
    }
    h.copy_from_slice(hh);
    // The raw split is Noise's Split(): (k_i2r, k_r2i). Only the two ends
    // know it; it is wiped once the session keys are derived.
    let (k1, k2) = hs.dangerously_get_raw_split();
    let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
    let mut split = Zeroizing::new([0u8; 64]);
    split[..32].copy_from_slice(&*k1);
    split[32..].copy_from_slice(&*k2);
    let key = |purpose: &str, dir| derive_key(&split, &h, prologue, purpose, dir);
    let (tx, rx) = if initiator {
        (
            Direction::InitiatorToResponder,
            Direction::ResponderToInitiator,
        )
    } else {
        (
            Direction::ResponderToInitiator,
            Direction::InitiatorToResponder,
        )
    };
    let session = Session {
        peer,
        initiator,
        transcript_hash: h,
        mac_tx: std::sync::Arc::new(MacKey::new(key("chunk-mac", tx))),
        mac_rx: std::sync::Arc::new(MacKey::new(key("chunk-mac", rx))),
        wrap_tx: AeadKey::new(&key("file-key", tx)),
        wrap_rx: AeadKey::new(&key("file-key", rx)),
    };
    let transport = hs.into_transport_mode().map_err(hs_err)?;
    Ok((session, transport))
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> Result<(), NetError> {
    let len = u16::try_from(msg.len())
        .map_err(|_| NetError::Handshake("handshake message too long".into()))?;
    let mut b = Vec::with_capacity(2 + msg.len());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(msg);
    w.write_all(&b).await.map_err(NetError::io)
}

async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, NetError> {
    let closed =
        |e: std::io::Error| NetError::Handshake(format!("peer closed during the handshake ({e})"));
    let mut l = [0u8; 2];
    r.read_exact(&mut l).await.map_err(closed)?;
    let n = usize::from(u16::from_be_bytes(l));
    if n > MAX_HANDSHAKE_MSG {
        return Err(NetError::Handshake(format!(
            "handshake message of {n} bytes (at most {MAX_HANDSHAKE_MSG})"
        )));
    }
    let mut m = vec![0u8; n];
    r.read_exact(&mut m).await.map_err(closed)?;
    Ok(m)
}

fn write(hs: &mut snow::HandshakeState) -> Result<Vec<u8>, NetError> {
    let mut buf = vec![0u8; MAX_HANDSHAKE_MSG];
    let n = hs.write_message(&[], &mut buf).map_err(hs_err)?;
    buf.truncate(n);
    Ok(buf)
}

fn read(hs: &mut snow::HandshakeState, msg: &[u8]) -> Result<(), NetError> {
    let mut buf = vec![0u8; MAX_HANDSHAKE_MSG];
    hs.read_message(msg, &mut buf).map_err(hs_err)?;
    Ok(())
}

/// Sends the key confirmation: the first Noise transport message,
/// initiator to responder.
async fn confirm<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut t: snow::TransportState,
) -> Result<(), NetError> {
    let mut buf = [0u8; MAX_HANDSHAKE_MSG];
    let n = t.write_message(CONFIRM, &mut buf).map_err(hs_err)?;
    send(w, &buf[..n]).await
}

/// How the initiator authenticates the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// IK: the responder must hold the expected key from the first message.
    Ik,
    /// XX: the responder's key is learnt from message 2 and checked
    /// against the expected key before ours is sent.
    Xx,
}

/// Runs the initiator side towards a responder that must prove `expected`,
/// then sends the key confirmation.
pub async fn initiate<R, W>(
    r: &mut R,
    w: &mut W,
    identity: &Keypair,
    prologue: &[u8],
    expected: PublicKey,
    mode: Mode,
    addr: &str,
) -> Result<Session, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let sk = identity.secret_bytes();
    let hs = match mode {
        Mode::Ik => {
            let mut hs = builder(IK, &sk, prologue)?
                .remote_public_key(expected.as_bytes())
                .map_err(hs_err)?
                .build_initiator()
                .map_err(hs_err)?;
            w.write_all(&[PATTERN_IK]).await.map_err(NetError::io)?;
            send(w, &write(&mut hs)?).await?;
            let m2 = recv(r).await?;
            read(&mut hs, &m2)?;
            hs
        }
        Mode::Xx => {
            let mut hs = xx_until_responder_key(r, w, &sk, prologue).await?;
            let got = remote_static(&hs)?;
            if got != expected {
                return Err(NetError::KeyChanged {
                    addr: addr.to_owned(),
                    expected,
                    actual: got,
                    hint: super::KeyHint::Address,
                });
            }
            send(w, &write(&mut hs)?).await?;
            hs
        }
    };
    let (session, transport) = finish(hs, prologue)?;
    confirm(w, transport).await?;
    Ok(session)
}

async fn xx_until_responder_key<R, W>(
    r: &mut R,
    w: &mut W,
    sk: &Secret32,
    prologue: &[u8],
) -> Result<snow::HandshakeState, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hs = builder(XX, sk, prologue)?
        .build_initiator()
        .map_err(hs_err)?;
    w.write_all(&[PATTERN_XX]).await.map_err(NetError::io)?;
    send(w, &write(&mut hs)?).await?;
    let m2 = recv(r).await?;
    read(&mut hs, &m2)?;
    Ok(hs)
}

/// Learns the responder's static key (XX message 2, which the responder
/// proves it holds) and stops there: our own static key is never sent.
/// First contact uses it to show the key before anything else happens.
pub async fn probe<R, W>(
    r: &mut R,
    w: &mut W,
    identity: &Keypair,
    prologue: &[u8],
) -> Result<PublicKey, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let sk = identity.secret_bytes();
    let hs = xx_until_responder_key(r, w, &sk, prologue).await?;
    remote_static(&hs)
}

/// Runs the responder side. The initiator counts as authenticated only
/// once its key confirmation (a transport message under the split keys)
/// has been read: in IK anyone holding *our* static key can forge message 1
/// in the name of any initiator, but cannot complete the split.
pub async fn respond<R, W>(
    r: &mut R,
    w: &mut W,
    identity: &Keypair,
    prologue: &[u8],
) -> Result<Session, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let sk = identity.secret_bytes();
    let mut p = [0u8; 1];
    r.read_exact(&mut p)
        .await
        .map_err(|e| NetError::Handshake(format!("peer closed before the handshake ({e})")))?;
    let hs = match p[0] {
        PATTERN_XX => {
            let mut hs = builder(XX, &sk, prologue)?
                .build_responder()
                .map_err(hs_err)?;
            read(&mut hs, &recv(r).await?)?;
            send(w, &write(&mut hs)?).await?;
            read(&mut hs, &recv(r).await?)?;
            hs
        }
        PATTERN_IK => {
            let mut hs = builder(IK, &sk, prologue)?
                .build_responder()
                .map_err(hs_err)?;
            read(&mut hs, &recv(r).await?)?;
            send(w, &write(&mut hs)?).await?;
            hs
        }
        other => {
            return Err(NetError::Handshake(format!(
                "unknown handshake pattern {other}"
            )))
        }
    };
    let (session, mut transport) = finish(hs, prologue)?;
    let msg = recv(r).await?;
    let mut buf = [0u8; MAX_HANDSHAKE_MSG];
    let n = transport
        .read_message(&msg, &mut buf)
        .map_err(|_| NetError::Handshake("key confirmation failed".into()))?;
    // AES-GCM authenticated the message; its content is fixed.
    if &buf[..n] != CONFIRM {
        return Err(NetError::Handshake("key confirmation failed".into()));
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        pin::Pin,
        sync::{Arc, Mutex},
        task::{Context, Poll},
    };

    /// A writer that records everything written (what an eavesdropper sees).
    struct Tap<W> {
        inner: W,
        seen: Arc<Mutex<Vec<u8>>>,
    }

    impl<W: AsyncWrite + Unpin> AsyncWrite for Tap<W> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let p = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = &p {
                self.seen.lock().unwrap().extend_from_slice(&buf[..*n]);
            }
            p
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    struct Run {
        client: Result<Session, NetError>,
        server: Result<Session, NetError>,
        /// Client → server bytes, then server → client bytes.
        transcript: (Vec<u8>, Vec<u8>),
    }

    async fn run(
        mode: Mode,
        expected: PublicKey,
        prologue_b: &[u8],
        server: &Keypair,
        client: &Keypair,
    ) -> Run {
        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, aw) = tokio::io::split(a);
        let (mut br, bw) = tokio::io::split(b);
        let c2s = Arc::new(Mutex::new(Vec::new()));
        let s2c = Arc::new(Mutex::new(Vec::new()));
        let mut aw = Tap {
            inner: aw,
            seen: c2s.clone(),
        };
        let mut bw = Tap {
            inner: bw,
            seen: s2c.clone(),
        };
        let s2 = server.clone();
        let pb = prologue_b.to_vec();
        let srv = tokio::spawn(async move { respond(&mut br, &mut bw, &s2, &pb).await });
        let c = initiate(&mut ar, &mut aw, client, b"same", expected, mode, "test").await;
        drop((ar, aw));
        let s = srv.await.unwrap();
        let t = (c2s.lock().unwrap().clone(), s2c.lock().unwrap().clone());
        Run {
            client: c,
            server: s,
            transcript: t,
        }
    }

    fn mac_pair_agrees(tx: &MacKey, rx: &MacKey) -> bool {
        let t = tx.tag(&[0; 16], 1, b"x");
        rx.verify(&[0; 16], 1, b"x", &t).is_ok()
    }

    #[tokio::test]
    async fn xx_and_ik_agree_on_keys_per_direction_and_purpose() {
        let server = Keypair::generate().unwrap();
        let client = Keypair::generate().unwrap();
        for mode in [Mode::Xx, Mode::Ik] {
            let r = run(mode, server.public(), b"same", &server, &client).await;
            let (c, s) = (r.client.unwrap(), r.server.unwrap());
            assert_eq!(c.peer, server.public());
            assert_eq!(s.peer, client.public());
            assert!(c.initiator && !s.initiator);
            assert!(mac_pair_agrees(&c.mac_tx, &s.mac_rx));
            assert!(mac_pair_agrees(&s.mac_tx, &c.mac_rx));
            // The two directions have different keys.
            assert!(!mac_pair_agrees(&c.mac_tx, &c.mac_rx));
            let ct = c.wrap_tx.seal([0; 12], b"ad", b"key").unwrap();
            assert_eq!(s.wrap_rx.open([0; 12], b"ad", &ct).unwrap(), b"key");
            assert!(s.wrap_tx.open([0; 12], b"ad", &ct).is_err());
            assert!(c.wrap_rx.open([0; 12], b"ad", &ct).is_err());
        }
    }

    /// Regression (issue 7, H2): the keys were HKDF(handshake hash), and the
    /// hash is computed from public data only. An eavesdropper who has the
    /// whole transcript and the prologue (the exporter value) recomputes
    /// `h`; the session keys must not follow from it.
    #[tokio::test]
    async fn keys_derived_from_the_transcript_alone_do_not_match() {
        let server = Keypair::generate().unwrap();
        let client = Keypair::generate().unwrap();
        for mode in [Mode::Xx, Mode::Ik] {
            let r = run(mode, server.public(), b"same", &server, &client).await;
            let (c, s) = (r.client.unwrap(), r.server.unwrap());
            // `h` is computed from public data only: the eavesdropper
            // recomputes it exactly from what crossed the wire.
            assert_eq!(c.transcript_hash, s.transcript_hash);
            let h = eavesdrop_h(mode, b"same", &server.public(), &r.transcript);
            assert_eq!(h, c.transcript_hash);
            // So the old schedule (keys = HKDF(h)) gave the eavesdropper
            // every key; the new one does not follow from h.
            let tag = c.mac_tx.tag(&[1; 16], 0, b"chunk");
            let old = MacKey::new(crate::crypto::wrap::hkdf32(
                &Secret32::from_bytes(h),
                b"p2pfs/1",
                b"chunk-mac",
            ));
            assert!(old.verify(&[1; 16], 0, b"chunk", &tag).is_err());
            let guess: [u8; 64] = [h, h].concat().try_into().unwrap();
            for split in [[0u8; 64], guess] {
                let k = MacKey::new(derive_key(
                    &split,
                    &h,
                    b"same",
                    "chunk-mac",
                    Direction::InitiatorToResponder,
                ));
                assert!(k.verify(&[1; 16], 0, b"chunk", &tag).is_err());
            }
            assert!(s.mac_rx.verify(&[1; 16], 0, b"chunk", &tag).is_ok());
        }
    }

    /// What an eavesdropper computes: the Noise handshake hash, from the
    /// protocol name, the prologue, the responder's public key (IK) and the
    /// handshake messages as they crossed the wire (Noise spec §5.2: every
    /// token and payload ciphertext is hashed in).
    fn eavesdrop_h(
        mode: Mode,
        prologue: &[u8],
        responder: &PublicKey,
        transcript: &(Vec<u8>, Vec<u8>),
    ) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        fn frames(mut b: &[u8]) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            while b.len() >= 2 {
                let n = u16::from_be_bytes([b[0], b[1]]) as usize;
                out.push(b[2..2 + n].to_vec());
                b = &b[2 + n..];
            }
            out
        }
        let name = match mode {
            Mode::Xx => XX,
            Mode::Ik => IK,
        };
        let mut h = [0u8; 32];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let mut mix = |d: &[u8]| {
            let mut s = Sha256::new();
            s.update(h);
            s.update(d);
            h = s.finalize().into();
        };
        mix(prologue);
        let c = frames(&transcript.0[1..]);
        let s = frames(&transcript.1);
        match mode {
            Mode::Xx => {
                for part in [&c[0][..32], &c[0][32..]] {
                    mix(part);
                }
                for part in [&s[0][..32], &s[0][32..80], &s[0][80..]] {
                    mix(part);
                }
                for part in [&c[1][..48], &c[1][48..]] {
                    mix(part);
                }
            }
            Mode::Ik => {
                mix(responder.as_bytes());
                for part in [&c[0][..32], &c[0][32..80], &c[0][80..]] {
                    mix(part);
                }
                for part in [&s[0][..32], &s[0][32..]] {
                    mix(part);
                }
            }
        }
        h
    }

    #[tokio::test]
    async fn different_prologue_fails() {
        let server = Keypair::generate().unwrap();
        let client = Keypair::generate().unwrap();
        for mode in [Mode::Xx, Mode::Ik] {
            let r = run(mode, server.public(), b"other", &server, &client).await;
            assert!(r.client.is_err() || r.server.is_err());
            assert!(r.server.is_err(), "the responder must not authenticate");
        }
    }

    #[tokio::test]
    async fn wrong_expected_key_is_refused_before_our_key_is_sent() {
        let server = Keypair::generate().unwrap();
        let other = Keypair::generate().unwrap();
        let client = Keypair::generate().unwrap();
        let r = run(Mode::Xx, other.public(), b"same", &server, &client).await;
        assert!(matches!(r.client, Err(NetError::KeyChanged { .. })));
        assert!(r.server.is_err());
        // Only XX message 1 (ephemeral key) went out: 1 + 2 + 32 bytes.
        assert_eq!(r.transcript.0.len(), 35);
        // IK towards a stale key fails too.
        let r = run(Mode::Ik, other.public(), b"same", &server, &client).await;
        assert!(matches!(r.client, Err(NetError::Handshake(_))));
        assert!(r.server.is_err());
    }

    #[tokio::test]
    async fn probe_learns_the_key_without_sending_ours() {
        let server = Keypair::generate().unwrap();
        let client = Keypair::generate().unwrap();
        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let s2 = server.clone();
        let srv = tokio::spawn(async move { respond(&mut br, &mut bw, &s2, b"p").await });
        let got = probe(&mut ar, &mut aw, &client, b"p").await.unwrap();
        assert_eq!(got, server.public());
        drop((ar, aw));
        assert!(srv.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_missing_or_forged_confirmation_is_refused() {
        let server = Keypair::generate().unwrap();
        let client = Keypair::generate().unwrap();
        for forged in [false, true] {
            let (a, b) = tokio::io::duplex(4096);
            let (mut ar, mut aw) = tokio::io::split(a);
            let (mut br, mut bw) = tokio::io::split(b);
            let s2 = server.clone();
            let srv = tokio::spawn(async move { respond(&mut br, &mut bw, &s2, b"p").await });
            // A complete IK handshake, but the confirmation is not the
            // transport message.
            let sk = client.secret_bytes();
            let mut hs = builder(IK, &sk, b"p")
                .unwrap()
                .remote_public_key(server.public().as_bytes())
                .unwrap()
                .build_initiator()
                .unwrap();
            aw.write_all(&[PATTERN_IK]).await.unwrap();
            send(&mut aw, &write(&mut hs).unwrap()).await.unwrap();
            read(&mut hs, &recv(&mut ar).await.unwrap()).unwrap();
            if forged {
                send(&mut aw, &[0u8; 40]).await.unwrap();
            }
            drop((ar, aw));
            assert!(matches!(srv.await.unwrap(), Err(NetError::Handshake(_))));
        }
    }
}
