//! Which chunks of an object in staging are written, with each chunk's
//! BLAKE3 (the leaf of the ciphertext digest, `docs/VAULT.md`).
//!
//! The record grows with the chunks that have *arrived*, never with what a
//! peer declared: an offer of 2^40 chunks costs nothing until chunks come,
//! and each one that comes costs a few dozen bytes.

use std::collections::BTreeMap;

/// The written chunks of an object of `count` chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkHashes {
    count: u64,
    present: BTreeMap<u64, [u8; 32]>,
}

impl ChunkHashes {
    /// Nothing written yet, of `count` chunks.
    pub fn new(count: u64) -> Self {
        Self {
            count,
            present: BTreeMap::new(),
        }
    }

    /// The object's number of chunks.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hash of chunk `i`, when written.
    pub fn get(&self, i: u64) -> Option<&[u8; 32]> {
        self.present.get(&i)
    }

    /// True when chunk `i` is written.
    pub fn has(&self, i: u64) -> bool {
        self.present.contains_key(&i)
    }

    /// Records chunk `i` (ignored beyond the last chunk).
    pub fn insert(&mut self, i: u64, hash: [u8; 32]) {
        if i < self.count {
            self.present.insert(i, hash);
        }
    }

    /// Forgets chunk `i`.
    pub fn remove(&mut self, i: u64) {
        self.present.remove(&i);
    }

    /// Forgets every chunk.
    pub fn clear(&mut self) {
        self.present.clear();
    }

    /// Number of chunks written.
    pub fn held(&self) -> u64 {
        self.present.len() as u64
    }

    /// True when every chunk is written (constant time).
    pub fn is_complete(&self) -> bool {
        self.held() == self.count
    }

    /// The written chunks in index order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8; 32])> {
        self.present.iter().map(|(i, h)| (*i, h))
    }

    /// Every chunk's hash in order, when complete.
    pub fn complete(&self) -> Option<Vec<[u8; 32]>> {
        self.is_complete()
            .then(|| self.present.values().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_arrivals_not_declarations() {
        let mut c = ChunkHashes::new(1 << 40);
        assert_eq!(c.held(), 0);
        c.insert((1 << 40) - 1, [1; 32]);
        c.insert(1 << 40, [2; 32]);
        assert_eq!(c.held(), 1);
        assert!(!c.is_complete() && c.complete().is_none());
        let mut d = ChunkHashes::new(3);
        for i in [2, 0, 1] {
            d.insert(i, [i as u8; 32]);
        }
        assert_eq!(d.complete().unwrap(), vec![[0; 32], [1; 32], [2; 32]]);
    }
}
