//! AES-256-GCM through ring (≈5× the RustCrypto implementation on this
//! hardware, see DESIGN.md); the format is plain AES-256-GCM, and the
//! known-answer tests cross-check it against RustCrypto's `aes-gcm`.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::{keys::Secret32, random, CryptoError};

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key ready for use. ring keeps the expanded key schedule;
/// it is dropped with this value.
pub struct AeadKey(LessSafeKey);

impl AeadKey {
    /// Builds a key from 32 secret bytes.
    pub fn new(key: &Secret32) -> Self {
        // ring only rejects keys of the wrong length, and ours is always 32.
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose()).expect("32-byte AES key");
        Self(LessSafeKey::new(unbound))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_detached(
        &self,
        nonce: [u8; NONCE_LEN],
        ad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(ad), buf)
            .map_err(|_| CryptoError::TooLong("AES-GCM"))?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        Ok(t)
    }

    /// Encrypts `plaintext` and returns ciphertext || tag.
    pub fn seal(
        &self,
        nonce: [u8; NONCE_LEN],
        ad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal_detached(nonce, ad, &mut out)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts ciphertext || tag in place; returns the plaintext part.
    pub fn open_in_place<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        ad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        self.0
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(ad), buf)
            .map_err(|_| CryptoError::AuthFailed)
    }

    /// Decrypts ciphertext || tag into a new buffer.
    pub fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        ad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut buf = sealed.to_vec();
        let n = self.open_in_place(nonce, ad, &mut buf)?.len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// A fresh random nonce.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    random()
}
