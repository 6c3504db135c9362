//! A simulated subject's anatomy: how many vertices each ROI gets, their labels in
//! every family, pRF placement, and each vertex's noise-ceiling SNR. The tables are
//! the generator's parameters (written to in_silico.json).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use super::early::{Area, Prf, FIELD_DEG, GRID};
use super::preset::PresetParams;
use crate::algonauts::layout::{family_index, Hemisphere, ROI_NAMES};

pub(super) const PRF: usize = 0;
pub(super) const STREAMS: usize = 5;
// Stream labels.
pub(super) const S_EARLY: u8 = 1;
pub(super) const S_MIDVENTRAL: u8 = 2;
pub(super) const S_LATERAL: u8 = 6;
pub(super) const S_VENTRAL: u8 = 5;
pub(super) const S_PARIETAL: u8 = 7;

/// Share of a hemisphere's vertices in each early ROI (V1v..hV4): together about a
/// third, as in NSD's nsdgeneral.
pub const EARLY_FRACTIONS: [f64; 7] = [0.055, 0.055, 0.045, 0.045, 0.040, 0.040, 0.040];
/// Early-stream vertices outside the pRF-mapped ROIs (peripheral V1-V3).
pub const EXTRA_EARLY_FRACTION: f64 = 0.05;
/// Higher vertices per stream (midventral..parietal); the rest have no stream label.
pub const STREAM_FRACTIONS: [(u8, f64); 6] = [
    (2, 0.05),
    (3, 0.05),
    (4, 0.05),
    (5, 0.16),
    (6, 0.13),
    (7, 0.11),
];
/// Vertices outside every stream ROI.
pub const NO_STREAM_FRACTION: f64 = 0.08;
/// Per-subject size jitter of every ROI: a log-normal factor with this sd.
pub const ROI_SIZE_JITTER: f64 = 0.15;

/// Category-selective ROIs: (family, label, host stream, share of vertices).
/// mTL-faces and aTL-faces are absent: empty in all NSD subjects.
pub const FLOC_ROIS: [(usize, u8, u8, f64); 15] = [
    (1, 1, S_LATERAL, 0.030),  // EBA
    (1, 2, S_LATERAL, 0.006),  // FBA-1
    (1, 3, S_VENTRAL, 0.006),  // FBA-2
    (1, 4, S_VENTRAL, 0.003),  // mTL-bodies
    (2, 1, S_LATERAL, 0.008),  // OFA
    (2, 2, S_VENTRAL, 0.010),  // FFA-1
    (2, 3, S_VENTRAL, 0.008),  // FFA-2
    (3, 1, S_PARIETAL, 0.015), // OPA
    (3, 2, S_VENTRAL, 0.018),  // PPA
    (3, 3, S_PARIETAL, 0.008), // RSC
    (4, 1, S_LATERAL, 0.006),  // OWFA
    (4, 2, S_VENTRAL, 0.010),  // VWFA-1
    (4, 3, S_VENTRAL, 0.007),  // VWFA-2
    (4, 4, S_VENTRAL, 0.005),  // mfs-words
    (4, 5, S_VENTRAL, 0.003),  // mTL-words
];

/// Eccentricity sampling: uniform in cortical distance under a magnification
/// M(E) ~ 1/(E + E2), so the fovea is over-represented.
pub const ECC_E2_DEG: f64 = 0.75;
/// The image's corner eccentricity: pRF centres stay inside the image.
pub fn max_eccentricity() -> f64 {
    FIELD_DEG / 2.0 * std::f64::consts::SQRT_2
}

/// Log-normal ncsnr distribution of a vertex category.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct NcsnrRule {
    pub category: &'static str,
    pub median: f64,
    pub log_sd: f64,
}

pub const NCSNR_RULES: [NcsnrRule; 5] = [
    NcsnrRule {
        category: "early ROI (prf-visualrois)",
        median: 0.65,
        log_sd: 0.35,
    },
    NcsnrRule {
        category: "early stream, no pRF label",
        median: 0.40,
        log_sd: 0.40,
    },
    NcsnrRule {
        category: "floc ROI",
        median: 0.45,
        log_sd: 0.40,
    },
    NcsnrRule {
        category: "stream only",
        median: 0.35,
        log_sd: 0.45,
    },
    NcsnrRule {
        category: "unlabeled",
        median: 0.05,
        log_sd: 0.50,
    },
];
pub const NCSNR_RANGE: (f64, f64) = (0.01, 2.5);

/// A vertex: its labels in every family, its pRF (early vertices) and its SNR.
#[derive(Clone, Debug, Serialize)]
pub struct VertexInfo {
    /// Label per family, in [`FAMILIES`] order (0 = none).
    pub labels: [u8; 6],
    pub prf: Option<Prf>,
    /// Noise-ceiling SNR: signal sd over images / single-trial noise sd.
    pub ncsnr: f32,
}

impl VertexInfo {
    /// The vertex's ROI name in `family`, if it has one.
    pub fn roi(&self, family: &str) -> Option<&'static str> {
        let f = family_index(family)?;
        let l = self.labels[f] as usize;
        (l > 0).then(|| ROI_NAMES[f][l - 1])
    }
}

pub(super) fn hemi_index(h: Hemisphere) -> usize {
    match h {
        Hemisphere::Left => 0,
        Hemisphere::Right => 1,
    }
}

pub(super) fn jitter(rng: &mut ChaCha8Rng) -> f64 {
    let z: f64 = StandardNormal.sample(rng);
    (ROI_SIZE_JITTER * z).exp()
}

pub(super) fn lognormal(rng: &mut ChaCha8Rng, rule: &NcsnrRule) -> f32 {
    let z: f64 = StandardNormal.sample(rng);
    (rule.median * (rule.log_sd * z).exp()).clamp(NCSNR_RANGE.0, NCSNR_RANGE.1) as f32
}

#[derive(Clone, Copy)]
pub(super) enum Field {
    Upper,
    Lower,
    Full,
}

/// A pRF in the hemisphere's contralateral field.
pub(super) fn sample_prf(
    rng: &mut ChaCha8Rng,
    area: Area,
    h: Hemisphere,
    field: Field,
    u: (f64, f64),
) -> Prf {
    let rule = area.rule();
    let half = FIELD_DEG / 2.0;
    let (e2, emax) = (ECC_E2_DEG, max_eccentricity());
    let (x, y, ecc) = loop {
        let t: f64 = rng.random_range(u.0..u.1);
        let ecc = e2 * ((emax + e2) / e2).powf(t) - e2;
        let q = std::f64::consts::FRAC_PI_2;
        let phi: f64 = match field {
            Field::Upper => rng.random_range(0.0..q),
            Field::Lower => rng.random_range(-q..0.0),
            Field::Full => rng.random_range(-q..q),
        };
        let x = ecc * phi.cos();
        let y = ecc * phi.sin();
        if x <= half && y.abs() <= half {
            break (x, y, ecc);
        }
    };
    let x = match h {
        Hemisphere::Left => x,
        Hemisphere::Right => -x,
    };
    let z: f64 = StandardNormal.sample(rng);
    let sigma = (rule.sigma_intercept + rule.sigma_slope * ecc) * (0.1 * z).exp();
    let sigma_px = sigma * GRID as f64 / FIELD_DEG;
    let z: f64 = StandardNormal.sample(rng);
    // Preferred carrier wavelength about 2.7 pRF sd's: spatial frequency falls with
    // eccentricity as pRF size grows.
    let sf_level = ((sigma_px / 1.5).log2() + 0.25 * z).clamp(0.0, 3.0);
    let z: f64 = StandardNormal.sample(rng);
    Prf {
        area,
        x_deg: x as f32,
        y_deg: y as f32,
        sigma_deg: sigma as f32,
        orientation: rng.random_range(0.0..std::f64::consts::PI) as f32,
        sf_level: sf_level as f32,
        orientation2: rng.random_range(0.0..std::f64::consts::PI) as f32,
        exponent: (rule.exponent + 0.03 * z).clamp(0.15, 0.7) as f32,
    }
}

/// Vertex counts: each group's share of `n`, jittered per subject, with minimums;
/// the unlabeled remainder absorbs rounding.
pub(super) fn group_counts(
    n: usize,
    params: &PresetParams,
    rng: &mut ChaCha8Rng,
) -> (Vec<usize>, usize, Vec<usize>, usize) {
    let round = |f: f64, min: usize, rng: &mut ChaCha8Rng| -> usize {
        ((f * n as f64 * jitter(rng)).round() as usize).max(min)
    };
    let early: Vec<usize> = EARLY_FRACTIONS
        .iter()
        .map(|&f| round(f, params.min_early_roi, rng))
        .collect();
    let extra = round(EXTRA_EARLY_FRACTION, params.min_higher_roi, rng);
    let mut streams: Vec<usize> = STREAM_FRACTIONS
        .iter()
        .map(|&(_, f)| round(f, 4 * params.min_higher_roi, rng))
        .collect();
    let min_none = ((NO_STREAM_FRACTION * n as f64 * 0.5).round() as usize).max(1);
    // Trim the largest stream until the unlabeled remainder keeps its minimum.
    loop {
        let used: usize = early.iter().sum::<usize>() + extra + streams.iter().sum::<usize>();
        if used + min_none <= n {
            return (early, extra, streams, n - used);
        }
        let (i, _) = streams
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
            .expect("six streams");
        assert!(
            streams[i] > params.min_higher_roi,
            "{n} vertices are too few for this preset's ROI minimums"
        );
        streams[i] -= 1;
    }
}
