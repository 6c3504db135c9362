//! Scores of an encoder on held-out images, per ROI (METHOD.md), from per-voxel
//! Pearson r (`ridge::pearson_columns`): significance against chance, the Algonauts 2023 challenge score, and on
//! in-silico data the correlation with the noiseless truth.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// One-sided p-value of r > 0 with n samples (t test with n - 2 degrees of freedom).
pub fn p_value(r: f32, n: usize) -> f64 {
    if n < 3 {
        return 1.0;
    }
    let r = (r as f64).clamp(-0.999_999, 0.999_999);
    let df = (n - 2) as f64;
    let t = r * (df / (1.0 - r * r)).sqrt();
    match StudentsT::new(0.0, 1.0, df) {
        Ok(dist) => 1.0 - dist.cdf(t),
        Err(_) => 1.0,
    }
}

/// Which p-values survive Benjamini-Hochberg false-discovery-rate control at `q`:
/// with thousands of voxels per ROI, an uncorrected 0.05 would call 5% of pure-noise
/// voxels significant.
pub fn fdr_significant(p: &[f64], q: f64) -> Vec<bool> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut cutoff = 0;
    for (rank, &i) in order.iter().enumerate() {
        if p[i] <= q * (rank + 1) as f64 / m as f64 {
            cutoff = rank + 1;
        }
    }
    let mut out = vec![false; m];
    for &i in &order[..cutoff] {
        out[i] = true;
    }
    out
}

/// The Algonauts 2023 score of one vertex: 100 r^2 / NC with r clipped at 0, capped at
/// 100; None where the noise ceiling is 0 (the vertex carries no signal to explain).
pub fn algonauts_score(r: f32, nc: f32) -> Option<f32> {
    if nc <= 0.0 || !nc.is_finite() {
        return None;
    }
    let r = r.max(0.0);
    Some((100.0 * r * r / nc).min(100.0))
}

/// Per-ROI summary of per-voxel scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoiScores {
    pub voxels: usize,
    pub mean_r: f32,
    pub median_r: f32,
    /// Fraction of voxels with r significantly above 0 (one-sided t test, BH-FDR q = 0.05).
    pub frac_significant: f32,
    /// Mean and median Algonauts score where the noise ceiling is known.
    pub algonauts_mean: Option<f32>,
    pub algonauts_median: Option<f32>,
    /// Mean noise ceiling of the ROI, where known.
    pub mean_noise_ceiling: Option<f32>,
    /// Mean r between predictions and the noiseless truth (in-silico data only).
    pub mean_r_truth: Option<f32>,
}

pub fn mean(v: &[f32]) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
}

pub fn median(v: &[f32]) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

/// Summarizes per-voxel r of one ROI scored on `n` held-out images.
pub fn summarize(r: &[f32], n: usize, nc: Option<&[f32]>, r_truth: Option<&[f32]>) -> RoiScores {
    let p: Vec<f64> = r.iter().map(|&x| p_value(x, n)).collect();
    let sig = fdr_significant(&p, 0.05);
    let scores: Option<Vec<f32>> = nc.map(|nc| {
        r.iter()
            .zip(nc)
            .filter_map(|(&r, &c)| algonauts_score(r, c))
            .collect()
    });
    let scores = scores.filter(|s| !s.is_empty());
    RoiScores {
        voxels: r.len(),
        mean_r: mean(r),
        median_r: median(r),
        frac_significant: sig.iter().filter(|&&s| s).count() as f32 / r.len().max(1) as f32,
        algonauts_mean: scores.as_deref().map(mean),
        algonauts_median: scores.as_deref().map(median),
        mean_noise_ceiling: nc.map(mean),
        mean_r_truth: r_truth.map(mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_and_fdr() {
        // r = 0.3 with n = 100: t = 3.11, one-sided p ~ 0.0012.
        let p = p_value(0.3, 100);
        assert!((p - 0.00122).abs() < 1e-4, "{p}");
        assert!(p_value(-0.5, 100) > 0.99);
        let sig = fdr_significant(&[0.001, 0.04, 0.5, 0.012], 0.05);
        assert_eq!(sig, vec![true, false, false, true]);
    }

    #[test]
    fn algonauts_score_clips_and_caps() {
        assert_eq!(algonauts_score(-0.2, 0.5), Some(0.0));
        assert!((algonauts_score(0.5, 0.5).unwrap() - 50.0).abs() < 1e-4);
        assert_eq!(algonauts_score(0.9, 0.5), Some(100.0));
        assert_eq!(algonauts_score(0.5, 0.0), None);
    }
}
