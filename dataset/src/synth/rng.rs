//! Seeds for every random draw of the generator.
//!
//! Each draw gets its own stream, keyed by what it is for (a tag) and which thing it
//! belongs to (subject, hemisphere, vertex, NSD id). Output bytes then depend only on
//! the seed and the keys, never on the order in which threads or loops reach them.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub(crate) const TAG_IMAGE: u64 = 1;
pub(crate) const TAG_IDS: u64 = 2;
pub(crate) const TAG_SUBJECT_IDS: u64 = 3;
pub(crate) const TAG_TEACHER: u64 = 4;
pub(crate) const TAG_CALIBRATION: u64 = 5;
pub(crate) const TAG_LAYOUT: u64 = 6;
pub(crate) const TAG_LATENT: u64 = 7;
pub(crate) const TAG_LATENT_SUBJECT: u64 = 8;
pub(crate) const TAG_DESIGN: u64 = 9;
pub(crate) const TAG_NOISE: u64 = 10;
pub(crate) const TAG_FSAVERAGE: u64 = 11;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit key for (seed, parts...).
pub(crate) fn key(seed: u64, parts: &[u64]) -> u64 {
    let mut h = splitmix(seed ^ 0x5EED_0FB4_A120_2023);
    for &p in parts {
        h = splitmix(h ^ splitmix(p));
    }
    h
}

pub(crate) fn stream(seed: u64, parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(key(seed, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_part_and_order() {
        assert_ne!(key(1, &[2, 3]), key(1, &[3, 2]));
        assert_ne!(key(1, &[2]), key(2, &[2]));
        assert_eq!(key(7, &[1, 2]), key(7, &[1, 2]));
    }
}
