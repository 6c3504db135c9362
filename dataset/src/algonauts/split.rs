//! The deterministic train / held-out split of a subject's training images.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Indices into the training images; both lists sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub heldout: Vec<usize>,
}

/// Holds out `heldout_fraction` (0.15 in METHOD.md) of `n` images, chosen by `seed`.
/// The held-out part is touched once, for the final score; all tuning happens in `train`.
pub fn holdout(n: usize, heldout_fraction: f64, seed: u64) -> Split {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_held = ((n as f64) * heldout_fraction.clamp(0.0, 1.0)).round() as usize;
    let mut heldout = idx[..n_held].to_vec();
    let mut train = idx[n_held..].to_vec();
    heldout.sort_unstable();
    train.sort_unstable();
    Split { train, heldout }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_a_deterministic_partition() {
        let a = holdout(1000, 0.15, 7);
        assert_eq!(a, holdout(1000, 0.15, 7));
        assert_ne!(a, holdout(1000, 0.15, 8));
        assert_eq!(a.heldout.len(), 150);
        let mut all: Vec<usize> = a.train.iter().chain(&a.heldout).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }
}
