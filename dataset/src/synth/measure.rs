//! The measurement: NSD-like repeats, Gaussian trial noise, per-session z-scoring,
//! averaging over repeats, and the noise ceiling that follows.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use super::par;
use super::rng::stream;

/// Vertices handled together, so that signal columns are read a row-slice at a time.
const BLOCK: usize = 32;

/// Which image each trial shows, in presentation order, and how trials fall into
/// scan sessions.
#[derive(Clone, Debug)]
pub struct TrialDesign {
    /// Repeats of each training image (1, 2 or 3).
    pub repeats: Vec<u8>,
    /// Image index of each trial, in presentation order.
    pub trial_image: Vec<u32>,
    /// Start of each session in `trial_image`, plus its end.
    pub session_bounds: Vec<usize>,
}

/// A, B, C of the Algonauts noise-ceiling formula.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct RepeatCounts {
    /// Images shown three times.
    #[serde(rename = "A")]
    pub three: usize,
    /// Images shown twice.
    #[serde(rename = "B")]
    pub two: usize,
    /// Images shown once.
    #[serde(rename = "C")]
    pub one: usize,
}

impl RepeatCounts {
    /// (A/3 + B/2 + C) / (A + B + C): the mean over images of 1 / repeats, i.e. the
    /// noise variance of an averaged response relative to a single trial's.
    pub fn noise_factor(&self) -> f64 {
        let (a, b, c) = (self.three as f64, self.two as f64, self.one as f64);
        (a / 3.0 + b / 2.0 + c) / (a + b + c)
    }
}

/// NC = ncsnr^2 / (ncsnr^2 + (A/3 + B/2 + C) / (A + B + C)), as a fraction.
pub fn noise_ceiling(ncsnr: f32, counts: &RepeatCounts) -> f32 {
    let s2 = (ncsnr as f64).powi(2);
    (s2 / (s2 + counts.noise_factor())) as f32
}

impl TrialDesign {
    /// `fractions` of images are shown 3, 2 and 1 times; all trials are shuffled and
    /// cut into sessions of about `session_trials`.
    pub fn new<R: Rng>(
        n_images: usize,
        fractions: [f64; 3],
        session_trials: usize,
        rng: &mut R,
    ) -> Self {
        let n3 = (fractions[0] * n_images as f64).round() as usize;
        let n2 =
            ((fractions[1] * n_images as f64).round() as usize).min(n_images - n3.min(n_images));
        let n3 = n3.min(n_images);
        let mut repeats: Vec<u8> = (0..n_images)
            .map(|i| {
                if i < n3 {
                    3
                } else if i < n3 + n2 {
                    2
                } else {
                    1
                }
            })
            .collect();
        repeats.shuffle(rng);
        let mut trial_image: Vec<u32> = repeats
            .iter()
            .enumerate()
            .flat_map(|(i, &r)| std::iter::repeat_n(i as u32, r as usize))
            .collect();
        trial_image.shuffle(rng);
        let n = trial_image.len();
        let sessions =
            ((n as f64 / session_trials.max(1) as f64).round() as usize).clamp(1, n.max(1));
        let session_bounds = (0..=sessions).map(|k| k * n / sessions).collect();
        TrialDesign {
            repeats,
            trial_image,
            session_bounds,
        }
    }

    pub fn n_trials(&self) -> usize {
        self.trial_image.len()
    }

    pub fn n_sessions(&self) -> usize {
        self.session_bounds.len() - 1
    }

    pub fn counts(&self) -> RepeatCounts {
        let count = |k: u8| self.repeats.iter().filter(|&&r| r == k).count();
        RepeatCounts {
            three: count(3),
            two: count(2),
            one: count(1),
        }
    }
}

/// Measured responses and the per-vertex transform that z-scoring applied.
pub struct Measured {
    /// Session-z-scored betas averaged over repeats, [images, vertices].
    pub averaged: Array2<f32>,
    /// Trial-weighted mean over sessions of the session means and sds, per vertex:
    /// (x - offset) / scale puts a noiseless response on the measured scale.
    pub offset: Vec<f32>,
    pub scale: Vec<f32>,
    /// Single-trial z-scored betas [trials, vertices], when asked for.
    pub trials: Option<Array2<f32>>,
}

/// Simulates every trial of `design` for every vertex: beta = ncsnr * signal + N(0, 1)
/// with `signal` standardized to unit sd over images, so ncsnr is exactly the ratio of
/// signal sd to noise sd. Each vertex draws its noise from its own stream keyed by
/// (noise_key, vertex), so results do not depend on blocking or threads.
pub fn measure(
    signal: ArrayView2<f32>,
    ncsnr: &[f32],
    design: &TrialDesign,
    noise_seed: u64,
    keep_trials: bool,
) -> Measured {
    let (n_img, n_vert) = signal.dim();
    assert_eq!(ncsnr.len(), n_vert, "one ncsnr per vertex");
    assert_eq!(design.repeats.len(), n_img, "one repeat count per image");
    let n_trials = design.n_trials();

    let mut averaged = Array2::<f32>::zeros((n_img, n_vert));
    let mut trials = keep_trials.then(|| Array2::<f32>::zeros((n_trials, n_vert)));
    let mut offset = vec![0f32; n_vert];
    let mut scale = vec![0f32; n_vert];
    {
        // Each job owns a disjoint block of output columns, so threads write in place.
        let mut trial_blocks: Vec<Option<ArrayViewMut2<f32>>> = match trials.as_mut() {
            Some(t) => t.axis_chunks_iter_mut(Axis(1), BLOCK).map(Some).collect(),
            None => Vec::new(),
        };
        trial_blocks.resize_with(n_vert.div_ceil(BLOCK), || None);
        let jobs: Vec<_> = averaged
            .axis_chunks_iter_mut(Axis(1), BLOCK)
            .zip(trial_blocks)
            .zip(offset.chunks_mut(BLOCK).zip(scale.chunks_mut(BLOCK)))
            .enumerate()
            .map(|(b, ((avg, tr), (off, sc)))| (b * BLOCK, avg, tr, off, sc))
            .collect();
        par::run_jobs(jobs, |(v0, mut avg, mut tr, off, sc)| {
            let width = avg.ncols();
            let mut y = vec![0f64; n_trials];
            // Column-major copy of the block's signal: rows are read whole once.
            let mut cols = vec![0f32; width * n_img];
            for (i, row) in signal
                .slice(ndarray::s![.., v0..v0 + width])
                .rows()
                .into_iter()
                .enumerate()
            {
                for (j, &val) in row.iter().enumerate() {
                    cols[j * n_img + i] = val;
                }
            }
            let mut sum = vec![0f64; n_img];
            for j in 0..width {
                let v = v0 + j;
                let col = &cols[j * n_img..(j + 1) * n_img];
                let snr = ncsnr[v] as f64;
                let mut rng = stream(noise_seed, &[v as u64]);
                for (t, &img) in design.trial_image.iter().enumerate() {
                    let noise: f64 = StandardNormal.sample(&mut rng);
                    y[t] = snr * col[img as usize] as f64 + noise;
                }
                let (mut o, mut s) = (0f64, 0f64);
                for w in design.session_bounds.windows(2) {
                    let ys = &mut y[w[0]..w[1]];
                    let k = ys.len() as f64;
                    let mean = ys.iter().sum::<f64>() / k;
                    let var = ys.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / k;
                    let sd = var.sqrt().max(1e-12);
                    ys.iter_mut().for_each(|x| *x = (*x - mean) / sd);
                    o += mean * k;
                    s += sd * k;
                }
                off[j] = (o / n_trials as f64) as f32;
                sc[j] = (s / n_trials as f64) as f32;
                sum.iter_mut().for_each(|x| *x = 0.0);
                for (t, &img) in design.trial_image.iter().enumerate() {
                    sum[img as usize] += y[t];
                }
                for (i, s) in sum.iter().enumerate() {
                    avg[[i, j]] = (s / design.repeats[i] as f64) as f32;
                }
                if let Some(tr) = tr.as_mut() {
                    for (t, &val) in y.iter().enumerate() {
                        tr[[t, j]] = val as f32;
                    }
                }
            }
        });
    }
    Measured {
        averaged,
        offset,
        scale,
        trials,
    }
}

/// Per-vertex mean and sd over rows (images); a constant vertex gets sd 0.
pub fn column_stats(x: ArrayView2<f32>) -> (Vec<f64>, Vec<f64>) {
    let (n, v) = x.dim();
    let mut sum = vec![0f64; v];
    let mut sq = vec![0f64; v];
    for row in x.rows() {
        for ((s, q), &val) in sum.iter_mut().zip(sq.iter_mut()).zip(row) {
            *s += val as f64;
            *q += (val as f64).powi(2);
        }
    }
    let k = n.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / k).collect();
    let sd = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / k - m * m).max(0.0).sqrt())
        .collect();
    (mean, sd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn design_counts_and_sessions() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let d = TrialDesign::new(100, [0.8, 0.15, 0.05], 60, &mut rng);
        let c = d.counts();
        assert_eq!((c.three, c.two, c.one), (80, 15, 5));
        assert_eq!(d.n_trials(), 80 * 3 + 15 * 2 + 5);
        assert_eq!(d.n_sessions(), 5);
        assert_eq!(*d.session_bounds.last().unwrap(), d.n_trials());
        let nf = c.noise_factor();
        assert!((nf - (80.0 / 3.0 + 7.5 + 5.0) / 100.0).abs() < 1e-12);
        assert!((noise_ceiling(1.0, &c) as f64 - 1.0 / (1.0 + nf)).abs() < 1e-6);
    }
}
