//! Training-time augmentation that respects retinotopy: random resized crops (mild,
//! so that an image region stays roughly where it was in the visual field) and colour
//! jitter. No horizontal flip: mirroring swaps the left and right visual hemifields,
//! and each hemisphere responds to the opposite one, so a flipped image no longer
//! matches the recorded response.
//!
//! The random draws come from a Rust RNG the caller seeds per (epoch, batch), so a
//! resumed run repeats them exactly.

use rand::Rng;
use tch::{Kind, Tensor};

/// Crop area as a fraction of the image, and aspect-ratio range (torchvision's
/// `RandomResizedCrop` uses (0.08, 1) for ImageNet; far too strong for retinotopy).
const CROP_SCALE: (f64, f64) = (0.64, 1.0);
const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// Multiplicative jitter ranges [1 - j, 1 + j] (torchvision `ColorJitter(0.2, 0.2, 0.2)`).
const JITTER: f64 = 0.2;

/// Augments unit-range images x [B, 3, S, S] (values in [0, 1]) and returns the same shape.
pub fn augment<R: Rng>(x: &Tensor, rng: &mut R) -> Tensor {
    let size = x.size();
    let (b, s_h, s_w) = (size[0], size[2], size[3]);
    let mut out = Vec::with_capacity(b as usize);
    for i in 0..b {
        let img = x.get(i).unsqueeze(0);
        let img = random_resized_crop(&img, s_h, s_w, rng);
        out.push(color_jitter(&img, rng));
    }
    Tensor::cat(&out, 0)
}

fn random_resized_crop<R: Rng>(img: &Tensor, s_h: i64, s_w: i64, rng: &mut R) -> Tensor {
    let area = (s_h * s_w) as f64;
    let (mut h, mut w) = (s_h, s_w);
    // torchvision's rejection sampling: up to 10 tries, else the whole image.
    for _ in 0..10 {
        let target = area * rng.random_range(CROP_SCALE.0..=CROP_SCALE.1);
        let log_ratio = rng.random_range(CROP_RATIO.0.ln()..=CROP_RATIO.1.ln());
        let ratio = log_ratio.exp();
        let cw = (target * ratio).sqrt().round() as i64;
        let ch = (target / ratio).sqrt().round() as i64;
        if cw > 0 && ch > 0 && cw <= s_w && ch <= s_h {
            (h, w) = (ch, cw);
            break;
        }
    }
    let top = rng.random_range(0..=(s_h - h));
    let left = rng.random_range(0..=(s_w - w));
    img.narrow(2, top, h)
        .narrow(3, left, w)
        .upsample_bilinear2d([s_h, s_w], false, None, None)
}

fn color_jitter<R: Rng>(img: &Tensor, rng: &mut R) -> Tensor {
    let mut factor = || rng.random_range((1.0 - JITTER)..=(1.0 + JITTER));
    let (brightness, contrast, saturation) = (factor(), factor(), factor());
    let gray = |x: &Tensor| {
        // ITU-R 601 luma, as torchvision's rgb_to_grayscale.
        let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
            .view([1, 3, 1, 1])
            .to_device(x.device());
        (x * w).sum_dim_intlist(1, true, Kind::Float)
    };
    let x = (img * brightness).clamp(0.0, 1.0);
    let mean = gray(&x).mean(Kind::Float);
    let x = ((&x - &mean) * contrast + &mean).clamp(0.0, 1.0);
    let g = gray(&x);
    ((&x - &g) * saturation + &g).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keeps_shape_range_and_is_reproducible() {
        let x = Tensor::rand([3, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
        let a = augment(&x, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let b = augment(&x, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a.size(), x.size());
        assert!(a.equal(&b));
        assert!(a.min().double_value(&[]) >= 0.0 && a.max().double_value(&[]) <= 1.0);
    }
}
