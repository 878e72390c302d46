//! Which stored images a rank sees, in which order: one full random permutation per epoch,
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

/// An epoch's order for one rank of a data-parallel job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampler {
    len: usize,
    seed: u64,
    rank: usize,
    world_size: usize,
}

impl Sampler {
    /// Every index of `0..len` once per epoch, for a single process.
    pub fn new(len: usize, seed: u64) -> Self {
        Self {
            len,
            seed,
            rank: 0,
            world_size: 1,
        }
    }

    /// This rank's share: the epoch's permutation, padded by wrapping around to a multiple of
    /// `world_size` (as PyTorch's `DistributedSampler` does), dealt out round-robin. Ranks get
    /// equal lengths and together cover the epoch; only the `world_size - len % world_size`
    /// padding samples (if any) appear twice.
    pub fn partition(self, rank: usize, world_size: usize) -> Result<Self, String> {
        if world_size == 0 || rank >= world_size {
            return Err(format!("rank {rank} is not in 0..{world_size}"));
        }
        Ok(Self {
            rank,
            world_size,
            ..self
        })
    }

    /// Samples per epoch for this rank.
    pub fn epoch_len(&self) -> usize {
        self.len.div_ceil(self.world_size)
    }

    /// This rank's indices for `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> Vec<u32> {
        let perm = permutation(self.len, self.seed, epoch);
        if self.world_size == 1 {
            return perm;
        }
        (0..self.epoch_len())
            .map(|k| perm[(self.rank + k * self.world_size) % self.len])
            .collect()
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
    use std::collections::BTreeSet;

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
    fn ranks_are_equal_disjoint_and_covering() {
        for (len, world) in [(1000usize, 4usize), (1001, 4), (7, 3), (5, 5)] {
            let parts: Vec<Vec<u32>> = (0..world)
                .map(|r| Sampler::new(len, 9).partition(r, world).unwrap().epoch(2))
                .collect();
            let per = len.div_ceil(world);
            assert!(parts.iter().all(|p| p.len() == per));
            let all: Vec<u32> = parts.concat();
            let distinct: BTreeSet<u32> = all.iter().copied().collect();
            assert_eq!(distinct.len(), len, "covering");
            // Disjoint except for the wrap-around padding.
            assert_eq!(all.len() - distinct.len(), per * world - len);
        }
        assert!(Sampler::new(10, 0).partition(3, 3).is_err());
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
