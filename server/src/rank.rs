//! Stimulus selection: scores each candidate image's predictions by an objective and
//! keeps the best k.

use serde::{Deserialize, Serialize};
use vcl_contract::manifest::Manifest;

use crate::backend::Outputs;
use crate::error::ServerError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Objective {
    /// Highest mean predicted response of the ROI first.
    MaximizeRoi(String),
    /// Lowest first (score = the ROI mean, ascending).
    MinimizeRoi(String),
    /// Highest Pearson correlation with a target pattern over all V voxels first.
    MatchPattern(Vec<f32>),
    /// Highest mean(high) - mean(low) first.
    Contrast { high: String, low: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    /// Position of the image in the request.
    pub index: usize,
    pub score: f32,
    /// Mean prediction of each ROI, in the manifest's order.
    pub roi_means: Vec<f32>,
}

fn roi_index(manifest: &Manifest, name: &str) -> Result<usize, ServerError> {
    manifest
        .rois
        .iter()
        .position(|r| r.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = manifest.rois.iter().map(|r| r.name.as_str()).collect();
            ServerError::Invalid(format!("unknown ROI '{name}': this model has {names:?}"))
        })
}

/// Checks the objective against the model before any inference.
pub fn check(manifest: &Manifest, objective: &Objective, top_k: usize) -> Result<(), ServerError> {
    if top_k == 0 {
        return Err(ServerError::Invalid("top_k must be at least 1".into()));
    }
    match objective {
        Objective::MaximizeRoi(r) | Objective::MinimizeRoi(r) => roi_index(manifest, r).map(|_| ()),
        Objective::Contrast { high, low } => {
            roi_index(manifest, high)?;
            roi_index(manifest, low).map(|_| ())
        }
        Objective::MatchPattern(p) if p.len() != manifest.n_voxels() => {
            Err(ServerError::Invalid(format!(
                "match_pattern has {} values; the model has {} voxels",
                p.len(),
                manifest.n_voxels()
            )))
        }
        Objective::MatchPattern(_) => Ok(()),
    }
}

fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        (sab / (saa * sbb).sqrt()) as f32
    }
}

/// The best `top_k` of `n` images, best first.
pub fn rank(
    manifest: &Manifest,
    out: &Outputs,
    n: usize,
    objective: &Objective,
    top_k: usize,
) -> Result<Vec<Ranked>, ServerError> {
    check(manifest, objective, top_k)?;
    let (v, r) = (manifest.n_voxels(), manifest.rois.len());
    let mut ranked: Vec<Ranked> = (0..n)
        .map(|i| {
            let means = &out.roi_means[i * r..(i + 1) * r];
            let score = match objective {
                Objective::MaximizeRoi(name) | Objective::MinimizeRoi(name) => {
                    means[roi_index(manifest, name).unwrap_or(0)]
                }
                Objective::Contrast { high, low } => {
                    means[roi_index(manifest, high).unwrap_or(0)]
                        - means[roi_index(manifest, low).unwrap_or(0)]
                }
                Objective::MatchPattern(p) => pearson(&out.voxels[i * v..(i + 1) * v], p),
            };
            Ranked {
                index: i,
                score,
                roi_means: means.to_vec(),
            }
        })
        .collect();
    let ascending = matches!(objective, Objective::MinimizeRoi(_));
    ranked.sort_by(|a, b| {
        let o = a.score.total_cmp(&b.score);
        if ascending {
            o
        } else {
            o.reverse()
        }
    });
    ranked.truncate(top_k);
    Ok(ranked)
}
