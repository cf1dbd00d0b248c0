//! Sealing to a public key (the vault's): an ephemeral X25519 key agrees a
//! one-time AES-256-GCM key with the recipient through HKDF-SHA256, so anyone
//! can seal and only the holder of the vault secret key can open
//! (`docs/VAULT.md`, *Envelope*). The authenticated variant adds the
//! sender's static key, so only a holder of one of the two secret keys can
//! make a sealing that opens (`docs/VAULT.md`, *Old vault keys*).

use hkdf::Hkdf;
use sha2::Sha256;

use super::{
    aead::AeadKey,
    keys::{Keypair, PublicKey, Secret32},
    CryptoError,
};

/// HKDF info of the wrap keys of format-1 envelopes (`docs/VAULT.md`,
/// *Envelope*), one ephemeral key each; still opened, no longer written.
/// Every other use of sealing to a public key has its own label.
pub const ENVELOPE_INFO: &[u8] = b"p2pfs/envelope/v1";

/// HKDF info prefix of the wrap keys of format-2 envelopes: the object id
/// follows, so one ephemeral key may seal the envelopes of a whole group
/// commit, each under its own key ([`Agreement`]).
pub const ENVELOPE_INFO_V2: &[u8] = b"p2pfs/envelope/v2";

fn derive(shared: &Secret32, ephemeral: &PublicKey, recipient: &PublicKey, info: &[u8]) -> AeadKey {
    derive_from(shared.expose(), ephemeral, recipient, info)
}

fn derive_from(ikm: &[u8], ephemeral: &PublicKey, recipient: &PublicKey, info: &[u8]) -> AeadKey {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral.as_bytes());
    salt[32..].copy_from_slice(recipient.as_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&salt), ikm);
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output limit.
    #[allow(clippy::expect_used)]
    hk.expand(info, &mut okm).expect("HKDF output length");
    let key = Secret32::from_bytes(okm);
    zeroize::Zeroize::zeroize(&mut okm);
    AeadKey::new(&key)
}

/// Creates a one-time wrapping key for `recipient` under the HKDF `info`
/// of its purpose; returns the ephemeral public key to store beside the
/// ciphertext.
pub fn wrap_key_for(
    recipient: &PublicKey,
    info: &[u8],
) -> Result<(PublicKey, AeadKey), CryptoError> {
    // x25519-dalek (a base-point table for the ephemeral key). ring's
    // X25519 was tried (slightly faster alone here, 81 vs 97 us per key and
    // agreement, but not in the receiver's profile); since format-2
    // envelopes share one agreement per group commit, X25519 is no longer
    // a per-file cost.
    let a = Agreement::seal_to(recipient)?;
    Ok((a.ephemeral(), a.key(info)))
}

/// Recovers the wrapping key from the recipient's key pair, the stored
/// ephemeral public key and the `info` it was made with.
pub fn unwrap_key(
    recipient: &Keypair,
    ephemeral: &PublicKey,
    info: &[u8],
) -> Result<AeadKey, CryptoError> {
    Ok(Agreement::open_with(recipient, ephemeral)?.key(info))
}

/// One X25519 agreement between an ephemeral key and a recipient, from
/// which any number of one-time wrapping keys are derived, each under its
/// own HKDF `info` (HPKE's one encapsulation with several exports). Each
/// label must be used once: keys under distinct labels are independent,
/// so each may seal once with [`WRAP_NONCE`]. The shared secret is
/// zeroized on drop.
pub struct Agreement {
    ephemeral: PublicKey,
    recipient: PublicKey,
    shared: Secret32,
}

impl Agreement {
    /// A fresh ephemeral key agreed with `recipient` (the sealing side).
    pub fn seal_to(recipient: &PublicKey) -> Result<Self, CryptoError> {
        let eph = Keypair::generate()?;
        Ok(Self {
            shared: eph.diffie_hellman(recipient)?,
            ephemeral: eph.public(),
            recipient: *recipient,
        })
    }

    /// The agreement a stored `ephemeral` key made with `recipient` (the
    /// opening side).
    pub fn open_with(recipient: &Keypair, ephemeral: &PublicKey) -> Result<Self, CryptoError> {
        Ok(Self {
            shared: recipient.diffie_hellman(ephemeral)?,
            ephemeral: *ephemeral,
            recipient: recipient.public(),
        })
    }

    /// The ephemeral public key to store beside what was sealed.
    pub fn ephemeral(&self) -> PublicKey {
        self.ephemeral
    }

    /// The recipient's public key.
    pub fn recipient(&self) -> PublicKey {
        self.recipient
    }

    /// The wrapping key of `info`.
    pub fn key(&self, info: &[u8]) -> AeadKey {
        derive(&self.shared, &self.ephemeral, &self.recipient, info)
    }
}

/// `X25519(a, b) || X25519(c, d)`, zeroized on drop.
fn two_secrets(first: Secret32, second: Secret32) -> zeroize::Zeroizing<[u8; 64]> {
    let mut ikm = zeroize::Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(first.expose());
    ikm[32..].copy_from_slice(second.expose());
    ikm
}

/// As [`wrap_key_for`], authenticated by `sender`'s static key: the key
/// comes from `X25519(e, recipient) || X25519(sender, recipient)`, so a
/// sealing opens only if a holder of the sender's or the recipient's
/// secret key made it (plain [`wrap_key_for`] can be made by anyone).
pub fn wrap_key_from(
    sender: &Keypair,
    recipient: &PublicKey,
    info: &[u8],
) -> Result<(PublicKey, AeadKey), CryptoError> {
    let eph = Keypair::generate()?;
    let ikm = two_secrets(
        eph.diffie_hellman(recipient)?,
        sender.diffie_hellman(recipient)?,
    );
    Ok((
        eph.public(),
        derive_from(&*ikm, &eph.public(), recipient, info),
    ))
}

/// Recovers the key of [`wrap_key_from`] with the recipient's key pair,
/// the sender's public key and the stored ephemeral public key.
pub fn unwrap_key_from(
    recipient: &Keypair,
    sender: &PublicKey,
    ephemeral: &PublicKey,
    info: &[u8],
) -> Result<AeadKey, CryptoError> {
    let ikm = two_secrets(
        recipient.diffie_hellman(ephemeral)?,
        recipient.diffie_hellman(sender)?,
    );
    Ok(derive_from(&*ikm, ephemeral, &recipient.public(), info))
}

/// The nonce used with a one-time wrapping key (each key seals once).
pub const WRAP_NONCE: [u8; 12] = [0; 12];

/// Derives a 32-byte subkey with HKDF-SHA256.
pub fn hkdf32(ikm: &Secret32, salt: &[u8], info: &[u8]) -> Secret32 {
    hkdf_key(ikm.expose(), salt, info)
}

/// Derives a 32-byte subkey with HKDF-SHA256 from input key material of any
/// length (for example the two keys of a Noise split).
pub fn hkdf_key(ikm: &[u8], salt: &[u8], info: &[u8]) -> Secret32 {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = [0u8; 32];
    #[allow(clippy::expect_used)]
    hk.expand(info, &mut okm).expect("HKDF output length");
    let s = Secret32::from_bytes(okm);
    zeroize::Zeroize::zeroize(&mut okm);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap() {
        let vault = Keypair::generate().unwrap();
        let (eph, k) = wrap_key_for(&vault.public(), ENVELOPE_INFO).unwrap();
        let ct = k.seal(WRAP_NONCE, b"ad", b"file key").unwrap();
        let k2 = unwrap_key(&vault, &eph, ENVELOPE_INFO).unwrap();
        assert_eq!(k2.open(WRAP_NONCE, b"ad", &ct).unwrap(), b"file key");
        // Another purpose's label gives another key.
        let k4 = unwrap_key(&vault, &eph, b"p2pfs/other/v1").unwrap();
        assert!(k4.open(WRAP_NONCE, b"ad", &ct).is_err());
        let other = Keypair::generate().unwrap();
        let k3 = unwrap_key(&other, &eph, ENVELOPE_INFO).unwrap();
        assert_eq!(
            k3.open(WRAP_NONCE, b"ad", &ct),
            Err(CryptoError::AuthFailed)
        );
    }

    /// One agreement gives one key per label, the same on both sides, and
    /// no two labels' keys open each other's sealing (format-2 envelopes
    /// of one group commit share the ephemeral key, never a wrap key).
    #[test]
    fn one_agreement_many_independent_keys() {
        let vault = Keypair::generate().unwrap();
        let a = Agreement::seal_to(&vault.public()).unwrap();
        let b = Agreement::open_with(&vault, &a.ephemeral()).unwrap();
        let sealed: Vec<Vec<u8>> = (0..4u8)
            .map(|i| {
                a.key(&[ENVELOPE_INFO_V2, &[i; 16]].concat())
                    .seal(WRAP_NONCE, b"ad", b"file key")
                    .unwrap()
            })
            .collect();
        for (i, ct) in sealed.iter().enumerate() {
            for j in 0..4u8 {
                let k = b.key(&[ENVELOPE_INFO_V2, &[j; 16]].concat());
                assert_eq!(k.open(WRAP_NONCE, b"ad", ct).is_ok(), i == j as usize);
            }
        }
        assert!(Agreement::seal_to(&PublicKey([0; 32])).is_err());
    }

    /// A low-order recipient key is refused, never sealed to; every
    /// other wrap opens with the recipient's key.
    #[test]
    fn a_wrap_to_a_low_order_key_is_refused() {
        // The all-zero point and the order-8 point of RFC 7748's list.
        let mut order8 = [0u8; 32];
        order8[0] = 1;
        for bad in [[0u8; 32], order8] {
            assert!(matches!(
                wrap_key_for(&PublicKey(bad), ENVELOPE_INFO),
                Err(CryptoError::WeakPublicKey)
            ));
        }
        for _ in 0..16 {
            let vault = Keypair::generate().unwrap();
            let (eph, k) = wrap_key_for(&vault.public(), ENVELOPE_INFO).unwrap();
            let ct = k.seal(WRAP_NONCE, b"", b"k").unwrap();
            let k2 = unwrap_key(&vault, &eph, ENVELOPE_INFO).unwrap();
            assert_eq!(k2.open(WRAP_NONCE, b"", &ct).unwrap(), b"k");
        }
    }

    #[test]
    fn an_authenticated_wrap_opens_only_from_its_sender() {
        let (sender, vault) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
        let (eph, k) = wrap_key_from(&sender, &vault.public(), b"p2pfs/x/v1").unwrap();
        let ct = k.seal(WRAP_NONCE, b"ad", b"secret").unwrap();
        let k2 = unwrap_key_from(&vault, &sender.public(), &eph, b"p2pfs/x/v1").unwrap();
        assert_eq!(k2.open(WRAP_NONCE, b"ad", &ct).unwrap(), b"secret");
        // Anyone else's sealing to the vault key, claiming the sender.
        let forger = Keypair::generate().unwrap();
        let (eph, k) = wrap_key_from(&forger, &vault.public(), b"p2pfs/x/v1").unwrap();
        let ct = k.seal(WRAP_NONCE, b"ad", b"secret").unwrap();
        let k3 = unwrap_key_from(&vault, &sender.public(), &eph, b"p2pfs/x/v1").unwrap();
        assert!(k3.open(WRAP_NONCE, b"ad", &ct).is_err());
    }
}
