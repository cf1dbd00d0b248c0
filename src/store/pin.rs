//! The vault key pin (`HOME/vault.pin`, `docs/VAULT.md`, *Vault key pin*):
//! which vault public keys the owner set, authenticated with a key derived
//! from this node's identity secret and numbered by a generation. Storing
//! (the daemon, `vault import`) seals new files only to a pinned key, so a
//! `vault/header` swapped for another vault's cannot redirect new files to
//! someone else's passphrase (issue 7, M5). The pin lives beside the
//! identity, outside `vault/`, so a replaced or restored vault folder does
//! not bring its own. A legitimate `vault rekey` writes the pin for the new
//! key (a higher generation) before the header names it, so a running daemon
//! follows the rotation, and only forward. Only an unlock with the
//! passphrase creates or repairs a pin.

use std::path::Path;

use subtle::ConstantTimeEq;

use super::{
    error::{Result, StoreError},
    format::{begin, checked, with_checksum, FormatError},
    fsutil,
    home::format_error,
};
use crate::{
    codec::{DecodeError, Reader},
    crypto::{
        keys::{Keypair, PublicKey, Secret32},
        mac::hmac_sha256,
        wrap::hkdf32,
    },
};

const MAGIC: &[u8; 8] = b"P2PFSKP\0";

/// The key that authenticates the pin, derived from the identity secret.
pub struct PinKey(Secret32);

impl PinKey {
    /// Derives the pin key of a node.
    pub fn from_identity(identity: &Keypair) -> Self {
        Self(hkdf32(
            &identity.secret_bytes(),
            b"p2pfs/vault-pin/v1",
            b"vault key pin",
        ))
    }
}

/// The pinned vault keys: the current one, and during a rekey the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// Rewrite counter: a running daemon follows only to a higher one.
    pub generation: u64,
    /// The vault key the owner set.
    pub current: PublicKey,
    /// The key a rekey in progress moves to.
    pub next: Option<PublicKey>,
}

impl Pin {
    /// True when `key` is one the owner set.
    pub fn allows(&self, key: &PublicKey) -> bool {
        &self.current == key || self.next.as_ref() == Some(key)
    }

    fn body(&self) -> Vec<u8> {
        let mut w = begin(MAGIC);
        w.u64(self.generation).bytes(self.current.as_bytes());
        match &self.next {
            Some(n) => w.u8(1).bytes(n.as_bytes()),
            None => w.u8(0),
        };
        w.into_vec()
    }

    /// Encodes and authenticates the pin.
    pub fn encode(&self, key: &PinKey) -> Vec<u8> {
        let body = self.body();
        let mac = hmac_sha256(&key.0, &body);
        let mut w = crate::codec::Writer::new();
        w.bytes(&body).bytes(&mac);
        with_checksum(w)
    }

    /// Decodes a pin and checks that it was made with this node's key.
    pub fn decode(bytes: &[u8], key: &PinKey) -> Result<Self, FormatError> {
        let body = checked(bytes, MAGIC)?;
        let mut r = Reader::new(&body[10..]);
        let generation = r.u64("generation")?;
        let current = PublicKey(r.array("current key")?);
        let next = match r.u8("next flag")? {
            0 => None,
            1 => Some(PublicKey(r.array("next key")?)),
            _ => return Err(DecodeError::Invalid("next flag").into()),
        };
        let mac: [u8; 32] = r.array("pin MAC")?;
        r.finish()?;
        let pin = Pin {
            generation,
            current,
            next,
        };
        let want = hmac_sha256(&key.0, &pin.body());
        if !bool::from(want.ct_eq(&mac)) {
            return Err(DecodeError::Invalid("pin MAC (not made by this node)").into());
        }
        Ok(pin)
    }

    /// Reads the pin at `path`; `None` when there is none.
    pub fn load(path: &Path, key: &PinKey) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let bytes = fsutil::read_limited(path, 256)?;
        Pin::decode(&bytes, key)
            .map(Some)
            .map_err(|e| format_error(path, e))
    }

    /// Replaces the pin at `path` atomically.
    pub fn save(&self, path: &Path, key: &PinKey) -> Result<()> {
        fsutil::write_atomic(path, &self.encode(key))
    }
}

/// The error for a header that names a key the owner did not set.
pub fn changed(found: &PublicKey, pinned: Option<&PublicKey>) -> StoreError {
    StoreError::VaultKeyChanged {
        found: found.fingerprint(),
        pinned: pinned.map_or_else(|| "no key (no valid pin)".into(), |k| k.fingerprint()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_opens_only_with_the_node_key_that_made_it() {
        let node = Keypair::generate().unwrap();
        let k = PinKey::from_identity(&node);
        let p = Pin {
            generation: 7,
            current: PublicKey([1; 32]),
            next: Some(PublicKey([2; 32])),
        };
        let enc = p.encode(&k);
        assert_eq!(Pin::decode(&enc, &k).unwrap(), p);
        assert!(p.allows(&PublicKey([2; 32])) && !p.allows(&PublicKey([3; 32])));
        let other = PinKey::from_identity(&Keypair::generate().unwrap());
        assert!(Pin::decode(&enc, &other).is_err());
        // Someone who rewrites the key and fixes the checksum still fails the MAC.
        let mut forged = enc.clone();
        forged[18] ^= 1;
        let n = forged.len() - 32;
        let sum = blake3::hash(&forged[..n]);
        forged[n..].copy_from_slice(sum.as_bytes());
        assert!(Pin::decode(&forged, &k).is_err());
    }
}
