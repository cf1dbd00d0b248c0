//! Passphrase → key-encryption key with Argon2id (v1.3). Parameters read
//! from disk are bounded before Argon2 runs, each on its own and their
//! product (memory × passes) against a total budget, so a hostile header can
//! neither make p2pfs allocate gigabytes nor keep it busy for a minute
//! before "wrong passphrase" (`docs/VAULT.md`, *Vault header*).

use zeroize::Zeroizing;

use super::{keys::Secret32, CryptoError};

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Number of passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// Smallest accepted memory cost (KiB).
    pub const MIN_M_KIB: u32 = 8 * 1024;
    /// Largest accepted memory cost (KiB).
    pub const MAX_M_KIB: u32 = 1024 * 1024;
    /// Largest accepted pass count.
    pub const MAX_T: u32 = 64;
    /// Largest accepted lane count.
    pub const MAX_P: u32 = 16;
    /// Largest accepted total cost, memory (KiB) × passes: 2 GiB·passes,
    /// about 3 s on a 2-core machine. Argon2's work grows with this
    /// product, not with the lanes (they only split it), so the bounds per
    /// parameter alone would allow 1 GiB × 64 passes (52.7 s measured).
    pub const MAX_COST_KIB_PASSES: u64 = 2 * 1024 * 1024;

    /// The defaults for new vaults: 46 MiB, 2 passes, 1 lane.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 47104,
        t: 2,
        p: 1,
    };

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), CryptoError> {
        if !(Self::MIN_M_KIB..=Self::MAX_M_KIB).contains(&self.m_kib) {
            return Err(CryptoError::KdfParams("memory"));
        }
        if !(1..=Self::MAX_T).contains(&self.t) {
            return Err(CryptoError::KdfParams("passes"));
        }
        if !(1..=Self::MAX_P).contains(&self.p) {
            return Err(CryptoError::KdfParams("lanes"));
        }
        if u64::from(self.m_kib) * u64::from(self.t) > Self::MAX_COST_KIB_PASSES {
            return Err(CryptoError::KdfParams("total cost (memory × passes)"));
        }
        Ok(())
    }
}

/// A passphrase held in memory that zeroizes on drop.
pub type Passphrase = Zeroizing<Vec<u8>>;

/// Derives the 32-byte key-encryption key.
pub fn derive_kek(
    passphrase: &[u8],
    salt: &[u8; 16],
    params: KdfParams,
) -> Result<Secret32, CryptoError> {
    params.validate()?;
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|_| CryptoError::KdfParams("argon2"))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|_| CryptoError::KdfParams("argon2"))?;
    Ok(Secret32::from_bytes(*out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(KdfParams::DEFAULT.validate().is_ok());
        let mut p = KdfParams::DEFAULT;
        p.m_kib = 4 * 1024 * 1024;
        assert_eq!(p.validate(), Err(CryptoError::KdfParams("memory")));
        p = KdfParams::DEFAULT;
        p.t = 0;
        assert!(p.validate().is_err());
        p = KdfParams::DEFAULT;
        p.p = 1000;
        assert!(p.validate().is_err());
    }

    #[test]
    fn total_cost_is_bounded_and_the_default_is_far_below() {
        let cost = |p: KdfParams| u64::from(p.m_kib) * u64::from(p.t);
        assert!(cost(KdfParams::DEFAULT) * 20 < KdfParams::MAX_COST_KIB_PASSES);
        let at = |m_kib, t, p| KdfParams { m_kib, t, p }.validate();
        // Exactly at the budget: accepted; one KiB or one pass more: refused.
        assert!(at(KdfParams::MAX_M_KIB, 2, 1).is_ok());
        assert!(at(1024 * 1024 / 2, 4, 16).is_ok());
        let over = Err(CryptoError::KdfParams("total cost (memory × passes)"));
        assert_eq!(at(KdfParams::MAX_M_KIB, 3, 1), over);
        assert_eq!(at(KdfParams::MAX_M_KIB / 2 + 1, 4, 1), over);
        // The header the review forged: each parameter within its bounds.
        assert_eq!(
            at(KdfParams::MAX_M_KIB, KdfParams::MAX_T, KdfParams::MAX_P),
            over
        );
    }

    #[test]
    fn deterministic() {
        let p = KdfParams {
            m_kib: 8192,
            t: 1,
            p: 1,
        };
        let a = derive_kek(b"pw", &[1; 16], p).unwrap();
        let b = derive_kek(b"pw", &[1; 16], p).unwrap();
        let c = derive_kek(b"pw2", &[1; 16], p).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
    }
}
