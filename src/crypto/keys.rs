//! Key types: 32-byte symmetric secrets, X25519 key pairs, node ids and
//! fingerprints.
//!
//! A node id is an X25519 public key written in RFC 4648 base32, lower case,
//! without padding (52 characters); the fingerprint is a short hash of it for
//! humans to compare (see `docs/VAULT.md`).

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{random, CryptoError};

/// A 32-byte secret (symmetric key or private scalar) that zeroizes on drop
/// and never prints.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Wraps raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// A fresh random secret.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(random()?))
    }

    /// The raw bytes; keep the borrow short.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(<redacted>)")
    }
}

/// An X25519 key pair (node identity or vault key). The secret half zeroizes
/// on drop.
#[derive(Clone)]
pub struct Keypair {
    secret: x25519_dalek::StaticSecret,
    public: PublicKey,
}

impl Keypair {
    /// A fresh random key pair.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::from_secret(Secret32::from_bytes(random()?)))
    }

    /// Rebuilds a key pair from its secret half.
    pub fn from_secret(secret: Secret32) -> Self {
        let secret = x25519_dalek::StaticSecret::from(*secret.expose());
        let public = PublicKey(*x25519_dalek::PublicKey::from(&secret).as_bytes());
        Self { secret, public }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret half as bytes (for sealing it to disk).
    pub fn secret_bytes(&self) -> Secret32 {
        Secret32::from_bytes(self.secret.to_bytes())
    }

    /// X25519 with a peer public key; refuses the all-zero result.
    pub fn diffie_hellman(&self, peer: &PublicKey) -> Result<Secret32, CryptoError> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        if !shared.was_contributory() {
            return Err(CryptoError::WeakPublicKey);
        }
        Ok(Secret32::from_bytes(*shared.as_bytes()))
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.public)
    }
}

const BASE32: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

/// An X25519 public key; displayed as the node id text form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 52-character node id text.
    pub fn to_id(&self) -> String {
        BASE32.encode(&self.0).to_ascii_lowercase()
    }

    /// Parses a node id (case-insensitive, surrounding blanks ignored).
    pub fn parse_id(s: &str) -> Option<Self> {
        let up = s.trim().to_ascii_uppercase();
        let v = BASE32.decode(up.as_bytes()).ok()?;
        Some(Self(v.try_into().ok()?))
    }

    /// The human-comparable fingerprint, `xxxx-xxxx-xxxx-xxxx`.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"p2pfs/fingerprint/v1");
        h.update(self.0);
        let d = h.finalize();
        let s = BASE32.encode(&d[..10]).to_ascii_lowercase();
        s.as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_id())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trip_and_fingerprint_shape() {
        let kp = Keypair::generate().unwrap();
        let id = kp.public().to_id();
        assert_eq!(id.len(), 52);
        assert_eq!(PublicKey::parse_id(&id.to_uppercase()), Some(kp.public()));
        assert_eq!(PublicKey::parse_id("not an id"), None);
        let fp = kp.public().fingerprint();
        assert_eq!(fp.len(), 19);
        assert_eq!(fp.matches('-').count(), 3);
    }

    #[test]
    fn dh_agrees_and_refuses_low_order() {
        let a = Keypair::generate().unwrap();
        let b = Keypair::generate().unwrap();
        let ab = a.diffie_hellman(&b.public()).unwrap();
        let ba = b.diffie_hellman(&a.public()).unwrap();
        assert_eq!(ab.expose(), ba.expose());
        assert_eq!(
            a.diffie_hellman(&PublicKey([0; 32])).unwrap_err(),
            CryptoError::WeakPublicKey
        );
    }
}
