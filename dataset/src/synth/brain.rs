//! One simulated subject: its anatomy ([`super::anatomy`]: vertices, ROI labels,
//! pRFs) and its readout, how each vertex responds to an image.

use std::sync::Arc;

use image::RgbImage;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use serde::Serialize;

use super::anatomy::*;
use super::early::{luminance, to_grid, Area, EarlyBank, EarlyModel, EnergyMaps, GRID};
use super::par;
use super::preset::{Preset, PresetParams};
use super::rng::{stream, TAG_CALIBRATION, TAG_LATENT, TAG_LATENT_SUBJECT, TAG_LAYOUT};
use super::stimuli::dead_leaves;
use super::teacher::{Teacher, FEATURE_DIM, LEFT_HALF, RIGHT_HALF};
use crate::algonauts::layout::Hemisphere;

/// How higher vertices read out the teacher.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HigherRule {
    pub family_latents: usize,
    pub roi_latents: usize,
    pub stream_latents: usize,
    pub generic_latents: usize,
    pub family_weight: f64,
    pub roi_weight: f64,
    pub stream_weight_in_roi: f64,
    pub generic_weight_in_stream: f64,
    /// Subject-specific share of an ROI's latent projections (individual differences).
    pub subject_perturbation: f64,
    /// A vertex's loading on its ROI's first latent is 1 + this * N(0, 1) ...
    pub primary_loading_sd: f64,
    /// ... and on the ROI's other latents this * N(0, 1), before normalizing.
    pub secondary_loading_sd: f64,
    /// Weight of ipsilateral-half teacher features (contralateral ones weigh 1).
    pub ipsilateral_weight: f64,
    pub gain_range: (f64, f64),
    pub bias_sd: f64,
}

pub const HIGHER_RULE: HigherRule = HigherRule {
    family_latents: 3,
    roi_latents: 2,
    stream_latents: 3,
    generic_latents: 3,
    family_weight: 0.7,
    roi_weight: 0.6,
    stream_weight_in_roi: 0.35,
    generic_weight_in_stream: 0.3,
    subject_perturbation: 0.3,
    primary_loading_sd: 0.3,
    secondary_loading_sd: 0.7,
    ipsilateral_weight: 0.5,
    gain_range: (1.0, 2.0),
    bias_sd: 0.5,
};

/// Dead-leaves images the shared model's normalizations are measured on, so that a
/// brain can be rebuilt from (preset, seed, subject) without any photo.
pub const CALIBRATION_IMAGES: usize = 24;

/// What every subject's brain computes: the early filter bank and the teacher.
pub struct SharedModel {
    pub early: EarlyBank,
    pub teacher: Teacher,
}

/// The shared maps and features of one image.
pub struct ImageFeatures {
    pub maps: EnergyMaps,
    pub teacher: Vec<f32>,
}

impl SharedModel {
    pub fn new(seed: u64) -> Self {
        let mut rng = stream(seed, &[TAG_CALIBRATION]);
        let imgs: Vec<RgbImage> = (0..CALIBRATION_IMAGES)
            .map(|_| dead_leaves(&mut rng, GRID as u32))
            .collect();
        let lums: Vec<Vec<f32>> = imgs.iter().map(luminance).collect();
        SharedModel {
            early: EarlyBank::new(&lums),
            teacher: Teacher::new(seed, &imgs),
        }
    }

    pub fn features(&self, img: &RgbImage) -> ImageFeatures {
        let g = to_grid(img);
        ImageFeatures {
            maps: self.early.maps(&luminance(&g)),
            teacher: self.teacher.features(&g),
        }
    }
}

enum Readout {
    Early(EarlyModel),
    Higher { row: usize, gain: f32, bias: f32 },
}

struct HemiModel {
    info: Vec<VertexInfo>,
    readout: Vec<Readout>,
    /// Teacher readout weights of the higher vertices, [higher vertex][FEATURE_DIM].
    weights: Vec<f32>,
}

/// A simulated subject, rebuilt identically from (preset, seed, subject).
pub struct SubjectBrain {
    pub subject: u32,
    shared: Arc<SharedModel>,
    hemis: [HemiModel; 2],
}

struct LatentBank {
    /// Projection rows (each FEATURE_DIM long) per latent group.
    groups: Vec<(Vec<u64>, Vec<Vec<f32>>)>,
}

impl LatentBank {
    /// ROI latent projections: shared by all subjects ("the brain's computation"),
    /// mixed with a subject-specific part (individual differences).
    fn new(seed: u64, subject: u32) -> Self {
        let r = &HIGHER_RULE;
        let mut keys: Vec<(Vec<u64>, usize)> = Vec::new();
        for f in 1..5u64 {
            keys.push((vec![1, f], r.family_latents));
        }
        for &(f, l, _, _) in FLOC_ROIS.iter() {
            keys.push((vec![2, f as u64, l as u64], r.roi_latents));
        }
        for s in 2..=7u64 {
            keys.push((vec![3, s], r.stream_latents));
        }
        keys.push((vec![4], r.generic_latents));
        let eps = r.subject_perturbation;
        let keep = (1.0 - eps * eps).sqrt();
        let scale = 1.0 / (FEATURE_DIM as f64).sqrt();
        let groups = keys
            .into_iter()
            .map(|(key, k)| {
                let mut a = stream(seed, &[&[TAG_LATENT][..], &key].concat());
                let mut b = stream(
                    seed,
                    &[&[TAG_LATENT_SUBJECT, subject as u64][..], &key].concat(),
                );
                let rows = (0..k)
                    .map(|_| {
                        (0..FEATURE_DIM)
                            .map(|_| {
                                let za: f64 = StandardNormal.sample(&mut a);
                                let zb: f64 = StandardNormal.sample(&mut b);
                                ((keep * za + eps * zb) * scale) as f32
                            })
                            .collect()
                    })
                    .collect();
                (key, rows)
            })
            .collect();
        LatentBank { groups }
    }

    fn rows(&self, key: &[u64]) -> &[Vec<f32>] {
        self.groups
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, r)| r.as_slice())
            .expect("every latent group is built")
    }
}

/// Adds weight * (random unit mix of the group's latents) to `w`. With `primary`, every
/// vertex loads positively on the group's first latent (the ROI's shared "category"
/// axis), which makes vertices of one ROI positively correlated, as on real data.
fn add_mix(w: &mut [f64], rows: &[Vec<f32>], weight: f64, primary: bool, rng: &mut ChaCha8Rng) {
    let r = &HIGHER_RULE;
    let mut a: Vec<f64> = rows
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let z: f64 = StandardNormal.sample(rng);
            match (primary, i) {
                (true, 0) => 1.0 + r.primary_loading_sd * z,
                (true, _) => r.secondary_loading_sd * z,
                (false, _) => z,
            }
        })
        .collect();
    let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    a.iter_mut().for_each(|v| *v /= norm);
    for (row, coef) in rows.iter().zip(&a) {
        for (wi, r) in w.iter_mut().zip(row) {
            *wi += weight * coef * *r as f64;
        }
    }
}

fn build_hemi(
    params: &PresetParams,
    seed: u64,
    subject: u32,
    h: Hemisphere,
    latents: &LatentBank,
) -> HemiModel {
    let n = params.n_vertices(subject, h);
    let mut rng = stream(seed, &[TAG_LAYOUT, subject as u64, hemi_index(h) as u64]);
    let (early, extra, streams, none) = group_counts(n, params, &mut rng);

    let mut info: Vec<VertexInfo> = Vec::with_capacity(n);
    let areas = [
        Area::V1,
        Area::V1,
        Area::V2,
        Area::V2,
        Area::V3,
        Area::V3,
        Area::HV4,
    ];
    for (r, &count) in early.iter().enumerate() {
        // hV4 holds a full contralateral hemifield map (Wandell & Winawer); the v/d
        // areas of V1-V3 hold quarter fields.
        let field = match r {
            6 => Field::Full,
            r if r % 2 == 0 => Field::Upper,
            _ => Field::Lower,
        };
        for _ in 0..count {
            let mut labels = [0u8; 6];
            labels[PRF] = r as u8 + 1;
            labels[STREAMS] = if r == 6 { S_MIDVENTRAL } else { S_EARLY };
            info.push(VertexInfo {
                labels,
                prf: Some(sample_prf(&mut rng, areas[r], h, field, (0.0, 1.0))),
                ncsnr: 0.0,
            });
        }
    }
    for _ in 0..extra {
        let area = [Area::V1, Area::V2, Area::V3][rng.random_range(0..3)];
        let field = if rng.random_bool(0.5) {
            Field::Upper
        } else {
            Field::Lower
        };
        let mut labels = [0u8; 6];
        labels[STREAMS] = S_EARLY;
        info.push(VertexInfo {
            labels,
            // The periphery, where pRF mapping labels thin out.
            prf: Some(sample_prf(&mut rng, area, h, field, (0.6, 1.0))),
            ncsnr: 0.0,
        });
    }
    for (&(label, _), &count) in STREAM_FRACTIONS.iter().zip(&streams) {
        for _ in 0..count {
            let mut labels = [0u8; 6];
            labels[STREAMS] = label;
            info.push(VertexInfo {
                labels,
                prf: None,
                ncsnr: 0.0,
            });
        }
    }
    for _ in 0..none {
        info.push(VertexInfo {
            labels: [0; 6],
            prf: None,
            ncsnr: 0.0,
        });
    }

    // Category ROIs, family by family: disjoint within a family, overlapping across
    // families by chance, as on real data.
    for &(family, label, host, frac) in FLOC_ROIS.iter() {
        let mut pool: Vec<usize> = (0..info.len())
            .filter(|&i| {
                info[i].prf.is_none()
                    && info[i].labels[STREAMS] == host
                    && info[i].labels[family] == 0
            })
            .collect();
        pool.shuffle(&mut rng);
        let want =
            ((frac * n as f64 * jitter(&mut rng)).round() as usize).max(params.min_higher_roi);
        for &i in pool.iter().take(want) {
            info[i].labels[family] = label;
        }
    }

    for v in info.iter_mut() {
        let rule = if v.labels[PRF] > 0 {
            &NCSNR_RULES[0]
        } else if v.prf.is_some() {
            &NCSNR_RULES[1]
        } else if v.labels[1..5].iter().any(|&l| l > 0) {
            &NCSNR_RULES[2]
        } else if v.labels[STREAMS] > 0 {
            &NCSNR_RULES[3]
        } else {
            &NCSNR_RULES[4]
        };
        v.ncsnr = lognormal(&mut rng, rule);
    }

    // Challenge-space order follows fsaverage indices, which interleave ROIs.
    info.shuffle(&mut rng);

    let r = &HIGHER_RULE;
    let mut col_scale = vec![1f64; FEATURE_DIM];
    let ipsi = match h {
        Hemisphere::Left => LEFT_HALF,
        Hemisphere::Right => RIGHT_HALF,
    };
    col_scale[ipsi]
        .iter_mut()
        .for_each(|c| *c = r.ipsilateral_weight);
    let bias_dist = Normal::new(0.0, r.bias_sd).expect("finite sd");

    let mut readout = Vec::with_capacity(n);
    let mut weights: Vec<f32> = Vec::new();
    for v in &info {
        if let Some(prf) = &v.prf {
            readout.push(Readout::Early(EarlyModel::new(prf)));
            continue;
        }
        let mut w = vec![0f64; FEATURE_DIM];
        let mut total = 0.0;
        let stream_label = v.labels[STREAMS] as u64;
        let in_floc = v.labels[1..5].iter().any(|&l| l > 0);
        if in_floc {
            for f in 1..5 {
                let l = v.labels[f];
                if l > 0 {
                    add_mix(
                        &mut w,
                        latents.rows(&[1, f as u64]),
                        r.family_weight,
                        true,
                        &mut rng,
                    );
                    add_mix(
                        &mut w,
                        latents.rows(&[2, f as u64, l as u64]),
                        r.roi_weight,
                        true,
                        &mut rng,
                    );
                    total += r.family_weight.powi(2) + r.roi_weight.powi(2);
                }
            }
            let key: Vec<u64> = if stream_label > 0 {
                vec![3, stream_label]
            } else {
                vec![4]
            };
            add_mix(
                &mut w,
                latents.rows(&key),
                r.stream_weight_in_roi,
                stream_label > 0,
                &mut rng,
            );
            total += r.stream_weight_in_roi.powi(2);
        } else if stream_label > 0 {
            add_mix(
                &mut w,
                latents.rows(&[3, stream_label]),
                1.0,
                true,
                &mut rng,
            );
            add_mix(
                &mut w,
                latents.rows(&[4]),
                r.generic_weight_in_stream,
                false,
                &mut rng,
            );
            total += 1.0 + r.generic_weight_in_stream.powi(2);
        } else {
            add_mix(&mut w, latents.rows(&[4]), 1.0, false, &mut rng);
            total += 1.0;
        }
        // Unit-variance drive on standardized features, whatever the mix.
        let norm = total.sqrt();
        let row = weights.len() / FEATURE_DIM;
        weights.extend(w.iter().zip(&col_scale).map(|(a, c)| (a * c / norm) as f32));
        readout.push(Readout::Higher {
            row,
            gain: rng.random_range(r.gain_range.0..r.gain_range.1) as f32,
            bias: bias_dist.sample(&mut rng) as f32,
        });
    }
    HemiModel {
        info,
        readout,
        weights,
    }
}

fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

impl SubjectBrain {
    /// The brain of `subject` (1-based) in `preset` for `seed`.
    pub fn new(preset: Preset, seed: u64, subject: u32) -> Self {
        Self::build(
            Arc::new(SharedModel::new(seed)),
            &preset.params(),
            seed,
            subject,
        )
    }

    /// The same, reusing the shared model (it depends on the seed only).
    pub fn build(shared: Arc<SharedModel>, params: &PresetParams, seed: u64, subject: u32) -> Self {
        let latents = LatentBank::new(seed, subject);
        let hemis = [
            build_hemi(params, seed, subject, Hemisphere::Left, &latents),
            build_hemi(params, seed, subject, Hemisphere::Right, &latents),
        ];
        SubjectBrain {
            subject,
            shared,
            hemis,
        }
    }

    pub fn shared(&self) -> &SharedModel {
        &self.shared
    }

    pub fn n_vertices(&self, h: Hemisphere) -> usize {
        self.hemis[hemi_index(h)].info.len()
    }

    /// Per-vertex metadata, in challenge-space order.
    pub fn vertices(&self, h: Hemisphere) -> &[VertexInfo] {
        &self.hemis[hemi_index(h)].info
    }

    /// Labels of one family (index into [`FAMILIES`]) per vertex.
    pub fn labels(&self, h: Hemisphere, family: usize) -> Vec<i32> {
        self.vertices(h)
            .iter()
            .map(|v| v.labels[family] as i32)
            .collect()
    }

    /// Noiseless responses of every vertex of `h` to one image's features.
    pub fn respond_into(&self, h: Hemisphere, feats: &ImageFeatures, out: &mut [f32]) {
        let hm = &self.hemis[hemi_index(h)];
        for (o, r) in out.iter_mut().zip(&hm.readout) {
            *o = match r {
                Readout::Early(m) => m.response(&feats.maps),
                Readout::Higher { row, gain, bias } => {
                    let w = &hm.weights[row * FEATURE_DIM..(row + 1) * FEATURE_DIM];
                    let u: f32 = w.iter().zip(&feats.teacher).map(|(a, b)| a * b).sum();
                    softplus(gain * u + bias)
                }
            };
        }
    }

    /// Noiseless responses [n_images, n_vertices] of hemisphere `h`.
    pub fn respond(&self, h: Hemisphere, images: &[RgbImage]) -> Array2<f32> {
        let v = self.n_vertices(h);
        let mut out = Array2::<f32>::zeros((images.len(), v));
        if let Some(data) = out.as_slice_mut() {
            let _ = par::for_rows::<std::convert::Infallible, _>(data, v, |i, row| {
                let f = self.shared.features(&images[i]);
                self.respond_into(h, &f, row);
                Ok(())
            });
        }
        out
    }
}
