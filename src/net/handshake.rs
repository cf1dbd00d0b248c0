//! The Noise handshake (snow) that authenticates both node identities and
//! binds them to the QUIC/TLS session through the exporter prologue, and the
//! per-session keys derived from its handshake hash (`docs/PROTOCOL.md`,
//! *Authentication*). Generic over async streams so it runs in memory in tests.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::NetError;
use crate::crypto::{
    aead::AeadKey,
    keys::{Keypair, PublicKey, Secret32},
    mac::MacKey,
    wrap::hkdf32,
};

const XX: &str = "Noise_XX_25519_AESGCM_SHA256";
const IK: &str = "Noise_IK_25519_AESGCM_SHA256";
const PATTERN_XX: u8 = 1;
const PATTERN_IK: u8 = 2;
/// Label of the TLS exporter value used as the Noise prologue.
pub const EXPORTER_LABEL: &[u8] = b"p2pfs/1 noise prologue";

/// The outcome of a handshake: who the peer is and the session keys.
pub struct Session {
    /// The peer's static key (node id).
    pub peer: PublicKey,
    /// Chunk MAC key.
    pub mac: std::sync::Arc<MacKey>,
    /// File-key transport key.
    pub wrap: AeadKey,
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

fn finish(hs: snow::HandshakeState) -> Result<Session, NetError> {
    let remote = hs
        .get_remote_static()
        .ok_or_else(|| NetError::Handshake("peer sent no static key".into()))?;
    let peer = PublicKey(
        remote
            .try_into()
            .map_err(|_| NetError::Handshake("bad static key length".into()))?,
    );
    let mut h = [0u8; 32];
    h.copy_from_slice(hs.get_handshake_hash().get(..32).unwrap_or(&[0; 32]));
    let hh = Secret32::from_bytes(h);
    Ok(Session {
        peer,
        mac: std::sync::Arc::new(MacKey::new(hkdf32(&hh, b"p2pfs/1", b"chunk-mac"))),
        wrap: AeadKey::new(&hkdf32(&hh, b"p2pfs/1", b"file-key transport")),
    })
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> Result<(), NetError> {
    let mut b = Vec::with_capacity(2 + msg.len());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg);
    w.write_all(&b).await.map_err(NetError::io)
}

async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, NetError> {
    let mut l = [0u8; 2];
    r.read_exact(&mut l)
        .await
        .map_err(|e| NetError::Handshake(format!("peer closed during the handshake ({e})")))?;
    let mut m = vec![0u8; u16::from_be_bytes(l) as usize];
    r.read_exact(&mut m)
        .await
        .map_err(|e| NetError::Handshake(format!("peer closed during the handshake ({e})")))?;
    Ok(m)
}

fn write(hs: &mut snow::HandshakeState) -> Result<Vec<u8>, NetError> {
    let mut buf = vec![0u8; 1024];
    let n = hs.write_message(&[], &mut buf).map_err(hs_err)?;
    buf.truncate(n);
    Ok(buf)
}

fn read(hs: &mut snow::HandshakeState, msg: &[u8]) -> Result<(), NetError> {
    let mut buf = vec![0u8; 1024];
    hs.read_message(msg, &mut buf).map_err(hs_err)?;
    Ok(())
}

/// Runs the initiator side. With `known` the IK pattern is used (the
/// responder must hold that key); otherwise XX, and `expected` (if any) is
/// checked as soon as the responder's key is learnt, before ours is sent.
pub async fn initiate<R, W>(
    r: &mut R,
    w: &mut W,
    identity: &Keypair,
    prologue: &[u8],
    known: Option<PublicKey>,
    expected: Option<PublicKey>,
    addr: &str,
) -> Result<Session, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let sk = identity.secret_bytes();
    if let Some(rs) = known {
        let mut hs = builder(IK, &sk, prologue)?
            .remote_public_key(rs.as_bytes())
            .map_err(hs_err)?
            .build_initiator()
            .map_err(hs_err)?;
        w.write_all(&[PATTERN_IK]).await.map_err(NetError::io)?;
        send(w, &write(&mut hs)?).await?;
        let m2 = recv(r).await?;
        read(&mut hs, &m2)?;
        return finish(hs);
    }
    let mut hs = builder(XX, &sk, prologue)?
        .build_initiator()
        .map_err(hs_err)?;
    w.write_all(&[PATTERN_XX]).await.map_err(NetError::io)?;
    send(w, &write(&mut hs)?).await?;
    let m2 = recv(r).await?;
    read(&mut hs, &m2)?;
    if let Some(exp) = expected {
        let got = hs
            .get_remote_static()
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .map(PublicKey);
        if got != Some(exp) {
            return Err(NetError::KeyChanged {
                addr: addr.to_owned(),
                expected: exp,
                actual: got.unwrap_or(PublicKey([0; 32])),
            });
        }
    }
    send(w, &write(&mut hs)?).await?;
    finish(hs)
}

/// Runs the responder side.
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
    match p[0] {
        PATTERN_XX => {
            let mut hs = builder(XX, &sk, prologue)?
                .build_responder()
                .map_err(hs_err)?;
            read(&mut hs, &recv(r).await?)?;
            send(w, &write(&mut hs)?).await?;
            read(&mut hs, &recv(r).await?)?;
            finish(hs)
        }
        PATTERN_IK => {
            let mut hs = builder(IK, &sk, prologue)?
                .build_responder()
                .map_err(hs_err)?;
            read(&mut hs, &recv(r).await?)?;
            send(w, &write(&mut hs)?).await?;
            finish(hs)
        }
        other => Err(NetError::Handshake(format!(
            "unknown handshake pattern {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        known: Option<PublicKey>,
        expected: Option<PublicKey>,
        prologue_b: &[u8],
        server: &Keypair,
    ) -> (Result<Session, NetError>, Result<Session, NetError>) {
        let client = Keypair::generate().unwrap();
        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let s2 = server.clone();
        let pb = prologue_b.to_vec();
        let srv = tokio::spawn(async move { respond(&mut br, &mut bw, &s2, &pb).await });
        let c = initiate(&mut ar, &mut aw, &client, b"same", known, expected, "test").await;
        drop((ar, aw));
        (c, srv.await.unwrap())
    }

    #[tokio::test]
    async fn xx_and_ik_agree_on_keys() {
        let server = Keypair::generate().unwrap();
        for known in [None, Some(server.public())] {
            let (c, s) = run(known, None, b"same", &server).await;
            let (c, s) = (c.unwrap(), s.unwrap());
            assert_eq!(c.peer, server.public());
            let t = c.mac.tag(&[0; 16], 1, b"x");
            s.mac.verify(&[0; 16], 1, b"x", &t).unwrap();
        }
    }

    #[tokio::test]
    async fn different_prologue_fails() {
        let server = Keypair::generate().unwrap();
        for known in [None, Some(server.public())] {
            let (c, s) = run(known, None, b"other", &server).await;
            assert!(c.is_err() || s.is_err());
        }
    }

    #[tokio::test]
    async fn wrong_expected_key_is_refused_before_our_key_is_sent() {
        let server = Keypair::generate().unwrap();
        let other = Keypair::generate().unwrap();
        let (c, s) = run(None, Some(other.public()), b"same", &server).await;
        assert!(matches!(c, Err(NetError::KeyChanged { .. })));
        assert!(s.is_err());
        // IK towards a stale key fails too.
        let (c, _) = run(Some(other.public()), None, b"same", &server).await;
        assert!(matches!(c, Err(NetError::Handshake(_))));
    }
}
