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

impl Split {
    /// The split with only `n` of its training images, a random subset chosen by
    /// `seed` and nested across sizes (the 200 of a seed are among its 400), the held-out
    /// part unchanged: what a data-size curve fits on. None keeps every image.
    pub fn limit_train(self, n: Option<usize>, seed: u64) -> Result<Split, String> {
        let Some(n) = n else {
            return Ok(self);
        };
        if n == 0 || n > self.train.len() {
            return Err(format!(
                "--train-images {n}: there are {} training images after the held-out part",
                self.train.len()
            ));
        }
        let mut train = self.train;
        train.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x7261_696e));
        train.truncate(n);
        train.sort_unstable();
        Ok(Split {
            train,
            heldout: self.heldout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_training_parts_are_nested_and_keep_the_heldout() {
        let full = holdout(500, 0.2, 3);
        let small = full.clone().limit_train(Some(100), 3).unwrap();
        let large = full.clone().limit_train(Some(300), 3).unwrap();
        assert_eq!((small.train.len(), large.train.len()), (100, 300));
        assert!(small.train.iter().all(|i| large.train.contains(i)));
        assert!(large.train.iter().all(|i| full.train.contains(i)));
        assert_eq!(small.heldout, full.heldout);
        assert_eq!(full.clone().limit_train(None, 3).unwrap(), full);
        let e = full.clone().limit_train(Some(401), 3).unwrap_err();
        assert!(e.contains("401") && e.contains("400"), "{e}");
    }

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
