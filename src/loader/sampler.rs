//! In which order the stored images are seen: one full random permutation per epoch,
//! derived from (seed, epoch) alone, so any (epoch, position) can be resumed exactly.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::seed::mix_seed;

/// Domain tags so that the permutation and the per-sample draws never share a stream.
const PERMUTATION: u64 = 1;
const SAMPLE: u64 = 2;

/// The random stream of one sample's augmentation in one epoch: independent of the thread that
/// draws it, the batch it lands in and the rank that owns it.
pub fn sample_rng(seed: u64, epoch: u64, index: u32) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix_seed(&[SAMPLE, seed, epoch, index as u64]))
}

/// An epoch's order: the same on every rank of a data-parallel job (each takes its slice of
/// every batch; see `LoaderOptions::rank`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampler {
    len: usize,
    seed: u64,
}

impl Sampler {
    /// Every index of `0..len` once per epoch.
    pub fn new(len: usize, seed: u64) -> Self {
        Self { len, seed }
    }

    /// Samples per epoch.
    pub fn epoch_len(&self) -> usize {
        self.len
    }

    /// The indices of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> Vec<u32> {
        permutation(self.len, self.seed, epoch)
    }
}

/// A uniformly random permutation of `0..len` (Fisher–Yates).
fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[PERMUTATION, seed, epoch]));
    let mut perm: Vec<u32> = (0..len as u32).collect();
    for i in (1..len).rev() {
        let j = rng.random_range(0..=i);
        perm.swap(i, j);
    }
    perm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_index_once_per_epoch() {
        let s = Sampler::new(1000, 7);
        for epoch in 0..3 {
            let mut order = s.epoch(epoch);
            order.sort_unstable();
            assert_eq!(order, (0..1000).collect::<Vec<u32>>());
        }
    }

    #[test]
    fn permutations_differ_across_epochs_and_seeds_and_repeat_for_equal_seeds() {
        let a = Sampler::new(500, 1);
        assert_ne!(a.epoch(0), a.epoch(1));
        assert_ne!(a.epoch(0), Sampler::new(500, 2).epoch(0));
        assert_eq!(a.epoch(3), Sampler::new(500, 1).epoch(3));
        // Not the identity, and not merely a rotation of it.
        let e = a.epoch(0);
        assert!(e.windows(2).filter(|w| w[1] == w[0] + 1).count() < 20);
    }

    #[test]
    fn sample_streams_are_independent() {
        let mut a = sample_rng(0, 0, 1);
        let mut b = sample_rng(0, 0, 2);
        let mut c = sample_rng(0, 1, 1);
        let (x, y, z): (u64, u64, u64) = (a.random(), b.random(), c.random());
        assert!(x != y && x != z && y != z);
        assert_eq!(sample_rng(0, 0, 1).random::<u64>(), x);
    }
}
