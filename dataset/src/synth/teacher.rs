//! The teacher: a small random-weight conv net whose deep features drive the higher
//! ROIs. It stands for "what the brain computes" beyond V4 and is shared by all
//! subjects (their differences are in how vertices read it out).
//!
//! Deliberately unlike the networks later trained on this data (ImageNet AlexNet /
//! MobileNetV2): a fixed retina/V1-like first stage (Gabor, difference-of-Gaussians,
//! colour-opponent), then two random 3x3 conv stages with ReLU, 2x2 average pooling
//! and divisive normalization across channels, no learned weights, no batch norm, no
//! max pooling, no depthwise or inverted-residual blocks.

use image::RgbImage;
use rand_distr::{Distribution, Normal};

use super::early::GRID;
use super::rng::{stream, TAG_TEACHER};

/// The teacher reads the same GRID x GRID image as the early model.
pub const TEACHER_INPUT: usize = GRID;
const S1: usize = 16;
const S2: usize = 32;
const S3: usize = 128;
/// Feature vector: stage-2 global means, then stage-3 means over the left and right
/// image halves (so higher ROIs can keep a contralateral bias).
pub const FEATURE_DIM: usize = S2 + 2 * S3;
/// Index range of the stage-3 left-half and right-half features.
pub const LEFT_HALF: std::ops::Range<usize> = S2..S2 + S3;
pub const RIGHT_HALF: std::ops::Range<usize> = S2 + S3..S2 + 2 * S3;
const S1_RADIUS: usize = 3;
/// Divisive normalization constant (Carandini & Heeger): small against typical
/// channel magnitudes, so it only matters in blank regions.
const NORM_EPS: f32 = 0.05;

pub struct Teacher {
    /// Stage-1 filters: (input plane: 0 luminance, 1 red-green, 2 blue-yellow, kernel).
    s1: Vec<(usize, Vec<f32>)>,
    w2: Vec<f32>,
    w3: Vec<f32>,
    mean: Vec<f32>,
    inv_sd: Vec<f32>,
}

fn gaussian(sigma: f64, radius: usize) -> Vec<f64> {
    let k = 2 * radius + 1;
    let mut g = vec![0f64; k * k];
    for y in 0..k {
        for x in 0..k {
            let (dx, dy) = (x as f64 - radius as f64, y as f64 - radius as f64);
            g[y * k + x] = (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
        }
    }
    let s: f64 = g.iter().sum();
    g.iter().map(|v| v / s).collect()
}

fn stage1_filters() -> Vec<(usize, Vec<f32>)> {
    let r = S1_RADIUS;
    let k = 2 * r + 1;
    let mut out = Vec::new();
    let env = gaussian(1.5, r);
    for o in 0..4 {
        let th = o as f64 * std::f64::consts::PI / 4.0;
        let (c, s) = (th.cos(), th.sin());
        let mut even = vec![0f64; k * k];
        let mut odd = vec![0f64; k * k];
        for y in 0..k {
            for x in 0..k {
                let (dx, dy) = (x as f64 - r as f64, y as f64 - r as f64);
                let arg = 2.0 * std::f64::consts::PI / 4.0 * (dx * c + dy * s);
                even[y * k + x] = env[y * k + x] * arg.cos();
                odd[y * k + x] = env[y * k + x] * arg.sin();
            }
        }
        let dc: f64 = even.iter().sum();
        let even: Vec<f32> = even
            .iter()
            .zip(&env)
            .map(|(e, g)| (2.0 * (e - dc * g)) as f32)
            .collect();
        out.push((0, even));
        out.push((0, odd.iter().map(|v| (2.0 * v) as f32).collect()));
    }
    let centre = gaussian(0.8, r);
    let surround = gaussian(2.0, r);
    let dog: Vec<f32> = centre
        .iter()
        .zip(&surround)
        .map(|(c, s)| (2.0 * (c - s)) as f32)
        .collect();
    // Colour-opponent edges at half the luminance gain: colour is one cue among
    // many, not the axis that separates grey from colour photos.
    for (plane, gain) in [(0usize, 1.0f32), (1, 0.5), (2, 0.5)] {
        out.push((plane, dog.iter().map(|v| gain * v).collect()));
        out.push((plane, dog.iter().map(|v| -gain * v).collect()));
    }
    // Coarse luminance Gabors (twice the wavelength), even phase, two orientations.
    let env = gaussian(2.0, r);
    for o in [0usize, 2] {
        let th = o as f64 * std::f64::consts::PI / 4.0;
        let (c, s) = (th.cos(), th.sin());
        let mut even = vec![0f64; k * k];
        for y in 0..k {
            for x in 0..k {
                let (dx, dy) = (x as f64 - r as f64, y as f64 - r as f64);
                let arg = 2.0 * std::f64::consts::PI / 8.0 * (dx * c + dy * s);
                even[y * k + x] = env[y * k + x] * arg.cos();
            }
        }
        let dc: f64 = even.iter().sum();
        out.push((
            0,
            even.iter()
                .zip(&env)
                .map(|(e, g)| (2.0 * (e - dc * g)) as f32)
                .collect(),
        ));
    }
    debug_assert_eq!(out.len(), S1);
    out
}

fn he_weights(seed: u64, stage: u64, cout: usize, cin: usize) -> Vec<f32> {
    let mut rng = stream(seed, &[TAG_TEACHER, stage]);
    let sd = (2.0 / (cin * 9) as f64).sqrt();
    let normal = Normal::new(0.0, sd).expect("finite sd");
    (0..cout * cin * 9)
        .map(|_| normal.sample(&mut rng) as f32)
        .collect()
}

/// 3x3 convolution, zero padding, stride 1, on [channel][row][column] maps.
fn conv3x3(input: &[f32], cin: usize, n: usize, w: &[f32], cout: usize) -> Vec<f32> {
    let hw = n * n;
    let mut out = vec![0f32; cout * hw];
    for co in 0..cout {
        let o = &mut out[co * hw..(co + 1) * hw];
        for ci in 0..cin {
            let inp = &input[ci * hw..(ci + 1) * hw];
            for ky in 0..3usize {
                for kx in 0..3usize {
                    let wv = w[((co * cin + ci) * 3 + ky) * 3 + kx];
                    let (dy, dx) = (ky as isize - 1, kx as isize - 1);
                    let x0 = (-dx).max(0) as usize;
                    let x1 = (n as isize - dx).min(n as isize) as usize;
                    let y0 = (-dy).max(0) as usize;
                    let y1 = (n as isize - dy).min(n as isize) as usize;
                    for y in y0..y1 {
                        let sy = (y as isize + dy) as usize;
                        let sx0 = (x0 as isize + dx) as usize;
                        let src = &inp[sy * n + sx0..sy * n + sx0 + (x1 - x0)];
                        let dst = &mut o[y * n + x0..y * n + x1];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d += wv * s;
                        }
                    }
                }
            }
        }
    }
    out
}

/// ReLU, 2x2 average pooling, then divisive normalization by the root-mean-square
/// over channels at each position.
fn relu_pool_normalize(x: &[f32], c: usize, n: usize) -> Vec<f32> {
    let h = n / 2;
    let mut out = vec![0f32; c * h * h];
    for ch in 0..c {
        for y in 0..h {
            for xx in 0..h {
                let at = |yy: usize, xq: usize| x[ch * n * n + yy * n + xq].max(0.0);
                out[ch * h * h + y * h + xx] = 0.25
                    * (at(2 * y, 2 * xx)
                        + at(2 * y, 2 * xx + 1)
                        + at(2 * y + 1, 2 * xx)
                        + at(2 * y + 1, 2 * xx + 1));
            }
        }
    }
    for p in 0..h * h {
        let ss: f32 = (0..c).map(|ch| out[ch * h * h + p].powi(2)).sum();
        let k = 1.0 / (NORM_EPS + (ss / c as f32).sqrt());
        for ch in 0..c {
            out[ch * h * h + p] *= k;
        }
    }
    out
}

impl Teacher {
    /// The network for `seed`, its features standardized on `calibration` images.
    pub fn new(seed: u64, calibration: &[RgbImage]) -> Self {
        let mut t = Teacher {
            s1: stage1_filters(),
            w2: he_weights(seed, 2, S2, S1),
            w3: he_weights(seed, 3, S3, S2),
            mean: vec![0.0; FEATURE_DIM],
            inv_sd: vec![1.0; FEATURE_DIM],
        };
        if calibration.len() >= 2 {
            let feats: Vec<Vec<f32>> = calibration.iter().map(|im| t.raw(im)).collect();
            let k = feats.len() as f64;
            let mut sds = vec![0f64; FEATURE_DIM];
            for d in 0..FEATURE_DIM {
                let m = feats.iter().map(|f| f[d] as f64).sum::<f64>() / k;
                let v = feats.iter().map(|f| (f[d] as f64 - m).powi(2)).sum::<f64>() / (k - 1.0);
                t.mean[d] = m as f32;
                sds[d] = v.sqrt();
            }
            // A dead channel must not be blown up into a noise generator.
            let typical = sds.iter().sum::<f64>() / FEATURE_DIM as f64;
            for (inv, sd) in t.inv_sd.iter_mut().zip(&sds) {
                *inv = (1.0 / sd.max(0.05 * typical + 1e-9)) as f32;
            }
        }
        t
    }

    fn raw(&self, img: &RgbImage) -> Vec<f32> {
        let n = TEACHER_INPUT;
        debug_assert_eq!(img.dimensions(), (n as u32, n as u32));
        let mut planes = vec![vec![0f32; n * n]; 3];
        for (i, p) in img.pixels().enumerate() {
            let (r, g, b) = (
                p[0] as f32 / 255.0,
                p[1] as f32 / 255.0,
                p[2] as f32 / 255.0,
            );
            planes[0][i] = 0.299 * r + 0.587 * g + 0.114 * b - 0.5;
            planes[1][i] = r - g;
            planes[2][i] = b - 0.5 * (r + g);
        }
        let r = S1_RADIUS;
        let k = 2 * r + 1;
        let m = n + 2 * r;
        let padded: Vec<Vec<f32>> = planes
            .iter()
            .map(|p| {
                let mut out = vec![0f32; m * m];
                for y in 0..m {
                    let sy = (y as isize - r as isize).clamp(0, n as isize - 1) as usize;
                    for x in 0..m {
                        let sx = (x as isize - r as isize).clamp(0, n as isize - 1) as usize;
                        out[y * m + x] = p[sy * n + sx];
                    }
                }
                out
            })
            .collect();
        let mut s1 = vec![0f32; S1 * n * n];
        for (c, (plane, kern)) in self.s1.iter().enumerate() {
            let o = &mut s1[c * n * n..(c + 1) * n * n];
            let p = &padded[*plane];
            for ky in 0..k {
                for kx in 0..k {
                    let w = kern[ky * k + kx];
                    for y in 0..n {
                        let src = &p[(y + ky) * m + kx..(y + ky) * m + kx + n];
                        for (d, s) in o[y * n..(y + 1) * n].iter_mut().zip(src) {
                            *d += w * s;
                        }
                    }
                }
            }
        }
        let a1 = relu_pool_normalize(&s1, S1, n);
        let n1 = n / 2;
        let a2 = relu_pool_normalize(&conv3x3(&a1, S1, n1, &self.w2, S2), S2, n1);
        let n2 = n1 / 2;
        let a3 = relu_pool_normalize(&conv3x3(&a2, S2, n2, &self.w3, S3), S3, n2);
        let n3 = n2 / 2;

        let mut f = vec![0f32; FEATURE_DIM];
        for c in 0..S2 {
            f[c] = a2[c * n2 * n2..(c + 1) * n2 * n2].iter().sum::<f32>() / (n2 * n2) as f32;
        }
        let half = n3 / 2;
        for c in 0..S3 {
            let (mut l, mut rr) = (0f32, 0f32);
            for y in 0..n3 {
                for x in 0..n3 {
                    let v = a3[c * n3 * n3 + y * n3 + x];
                    if x < half {
                        l += v;
                    } else {
                        rr += v;
                    }
                }
            }
            let cnt = (n3 * half) as f32;
            f[LEFT_HALF.start + c] = l / cnt;
            f[RIGHT_HALF.start + c] = rr / cnt;
        }
        f
    }

    /// Standardized deep features of a TEACHER_INPUT-sized image.
    pub fn features(&self, img: &RgbImage) -> Vec<f32> {
        let mut f = self.raw(img);
        for ((v, m), s) in f.iter_mut().zip(&self.mean).zip(&self.inv_sd) {
            *v = (*v - m) * s;
        }
        f
    }
}
