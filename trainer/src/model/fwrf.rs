//! Feature-weighted receptive-field encoders (fwRF; St-Yves & Naselaris 2018, and the
//! NSD data paper's early-visual models): each voxel pools a tap's feature maps through
//! its own 2-D Gaussian field, and ridge maps the C pooled channels to the voxel:
//!
//! ```text
//! y_v = sum_c W[c, v] * sum_{h,w} F[c, h, w] G_v(h, w) + b_v
//! ```
//!
//! Each voxel's field (centre and size) and alpha are chosen by the CV inside the
//! training split, from a grid of candidate fields ([`FieldGrid`]). A field is stored as
//! its centre and size only; [`field_matrix`] turns fields into the Gaussian weights of
//! a map, and is the one definition that fit, evaluation, export and the analyses use.

use std::collections::BTreeMap;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::ridge::{self, CvGrid, RidgeCvConfig, RidgeError};

/// What can go wrong fitting fields; each names the array or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum FwrfError {
    #[error(transparent)]
    Ridge(#[from] RidgeError),
    #[error("fwRF: {0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, FwrfError>;

/// A voxel's pooling field: a 2-D Gaussian on the image. Centre (`x` rightwards, `y`
/// downwards from the top-left corner) and standard deviation `size` are fractions of
/// the image side.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub x: f32,
    pub y: f32,
    pub size: f32,
}

/// The candidate fields: centres on a `positions` x `positions` lattice of cell centres
/// over the image, each at every size of `sizes`.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldGrid {
    pub positions: usize,
    pub sizes: Vec<f64>,
}

impl FieldGrid {
    pub fn candidates(&self) -> Vec<Field> {
        let n = self.positions.max(1);
        let mut out = Vec::with_capacity(n * n * self.sizes.len());
        for &size in &self.sizes {
            for r in 0..n {
                for c in 0..n {
                    out.push(Field {
                        x: ((c as f64 + 0.5) / n as f64) as f32,
                        y: ((r as f64 + 0.5) / n as f64) as f32,
                        size: size as f32,
                    });
                }
            }
        }
        out
    }
}

/// What an fwRF encoder stores beside its weights: the shape [C, H, W] of the (pooled)
/// maps its fields read, and each voxel's field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldLayout {
    pub map: [i64; 3],
    pub fields: Vec<Field>,
}

impl FieldLayout {
    /// float32 [H*W, V]: the fields' weights on the map.
    pub fn matrix(&self, device: Device) -> Tensor {
        field_matrix(&self.fields, self.map[1], self.map[2], device)
    }
}

/// float32 [h*w, fields]: each field's Gaussian at the centres of an h x w map's cells
/// (row-major, as a flattened map), each column summing to 1. Computed in f64 relative
/// to the nearest cell, so that a field narrower than a cell still weights that cell.
pub fn field_matrix(fields: &[Field], h: i64, w: i64, device: Device) -> Tensor {
    let (hu, wu) = (h.max(1) as usize, w.max(1) as usize);
    let mut out = vec![0f32; hu * wu * fields.len()];
    let k = fields.len();
    let mut d2 = vec![0f64; hu * wu];
    for (j, f) in fields.iter().enumerate() {
        let (fx, fy) = (f.x as f64, f.y as f64);
        let s2 = 2.0 * (f.size as f64).max(1e-6).powi(2);
        for r in 0..hu {
            let dy = (r as f64 + 0.5) / hu as f64 - fy;
            for c in 0..wu {
                let dx = (c as f64 + 0.5) / wu as f64 - fx;
                d2[r * wu + c] = dx * dx + dy * dy;
            }
        }
        let nearest = d2.iter().copied().fold(f64::INFINITY, f64::min);
        let g: Vec<f64> = d2.iter().map(|&d| (-(d - nearest) / s2).exp()).collect();
        let total: f64 = g.iter().sum();
        for (i, v) in g.iter().enumerate() {
            out[i * k + j] = (v / total) as f32;
        }
    }
    Tensor::from_slice(&out)
        .view([h.max(1) * w.max(1), k as i64])
        .to_device(device)
}

/// Elements of the [rows, C, V] intermediate one block of [`predict`] makes (128 MB).
const PREDICT_BLOCK_ELEMS: i64 = 1 << 25;

/// Predictions [N, V] from flattened (pooled) maps `flat` [N, C*H*W], the fields'
/// matrix `field` [H*W, V], channel weights `weights` [C, V] and `intercept` [V]; rows in
/// blocks, so that memory stays bounded whatever N (autograd flows through).
pub fn predict(flat: &Tensor, field: &Tensor, weights: &Tensor, intercept: &Tensor) -> Tensor {
    let n = flat.size()[0];
    let (c, v) = (weights.size()[0], weights.size()[1]);
    let block = (PREDICT_BLOCK_ELEMS / (c * v).max(1)).clamp(1, n.max(1));
    let mut parts = Vec::new();
    let mut r0 = 0;
    while r0 < n {
        let m = block.min(n - r0);
        let maps = flat.narrow(0, r0, m).view([m, c, -1]);
        let pooled = maps.matmul(field);
        parts.push((pooled * weights).sum_dim_intlist(1, false, Kind::Float) + intercept);
        r0 += m;
    }
    if parts.len() == 1 {
        parts
            .pop()
            .unwrap_or_else(|| Tensor::zeros([0, v], (Kind::Float, flat.device())))
    } else {
        Tensor::cat(&parts, 0)
    }
}

/// One tap's search: the training rows' maps and responses, the candidates and how
/// ridge is cross-validated.
pub struct FieldSearch<'a> {
    /// float32 [N, C, H, W], pooled as the encoder will pool them.
    pub maps: &'a Tensor,
    /// [N, V]
    pub y: &'a Tensor,
    pub candidates: &'a [Field],
    pub ridge: &'a RidgeCvConfig,
    /// Progress bar prefix.
    pub label: &'a str,
}

/// Every voxel's chosen field, alpha and weights on one tap.
pub struct FieldFit {
    pub fields: Vec<Field>,
    /// [V] mean CV score (over folds) at the chosen field and alpha, f64.
    pub scores: Tensor,
    pub alphas: Vec<f64>,
    /// float32 [C, V] channel weights on the raw pooled maps (standardization folded in).
    pub weights: Tensor,
    /// float32 [V]
    pub intercept: Tensor,
}

/// Pooled channels [N, C] standardized over the rows, with their means and sds [C]:
/// ridge's one penalty then weighs every channel alike.
fn standardize(x: &Tensor) -> (Tensor, Tensor, Tensor) {
    let mean = x.mean_dim(0, false, Kind::Float);
    let sd = x
        .std_dim(0, false, false)
        .clamp_min(1e-6 * (mean.abs().max().double_value(&[]) + 1e-12));
    ((x - &mean) / &sd, mean, sd)
}

/// Pooled channels [N, C] of one candidate column of `fields` [H*W, K].
fn pooled(maps: &Tensor, fields: &Tensor, k: i64) -> Tensor {
    maps.matmul(&fields.narrow(1, k, 1)).squeeze_dim(2)
}

/// Chooses, per voxel, the candidate field and alpha with the best mean CV score (the
/// first candidate on a tie), then refits each voxel's ridge on all rows.
pub fn fit_fields(s: &FieldSearch, device: Device) -> Result<FieldFit> {
    let size = s.maps.size();
    let [n, c, h, w] = size[..] else {
        return Err(FwrfError::Invalid(format!(
            "fwRF needs [N, C, H, W] maps, got {size:?}"
        )));
    };
    if s.candidates.is_empty() {
        return Err(FwrfError::Invalid(
            "fwRF needs at least one candidate field".into(),
        ));
    }
    let v = s.y.size()[1];
    let maps = s
        .maps
        .to_device(device)
        .to_kind(Kind::Float)
        .view([n, c, h * w]);
    let fields = field_matrix(s.candidates, h, w, device);
    let folds = ridge::kfold(n as usize, s.ridge.folds, s.ridge.shuffle_seed)?;
    let grid = CvGrid {
        folds: &folds,
        alphas: &s.ridge.alphas,
        scorer: s.ridge.scorer,
        voxel_batch: s.ridge.voxel_batch,
    };
    let opts = (Kind::Double, device);
    let mut best = Tensor::full([v], f64::NEG_INFINITY, opts);
    let mut best_field = Tensor::zeros([v], (Kind::Int64, device));
    let mut best_alpha = Tensor::zeros([v], (Kind::Int64, device));
    let bar = ProgressBar::new(s.candidates.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} fwRF fields {pos}/{len} {wide_bar} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(s.label.to_string());
    for k in 0..s.candidates.len() as i64 {
        let (x, _, _) = standardize(&pooled(&maps, &fields, k));
        let mean = ridge::mean_over_folds(&ridge::cross_validate(&x, s.y, &grid, device)?)
            .nan_to_num(f64::NEG_INFINITY, None, None);
        let (score, alpha) = mean.max_dim(0, false);
        let better = score.gt_tensor(&best);
        best = best.where_self(&better.logical_not(), &score);
        best_field = best_field.where_self(
            &better.logical_not(),
            &Tensor::full([v], k, (Kind::Int64, device)),
        );
        best_alpha = best_alpha.where_self(&better.logical_not(), &alpha);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let chosen = Vec::<i64>::try_from(&best_field.to_device(Device::Cpu))
        .map_err(|e| FwrfError::Invalid(format!("fwRF field choice: {e}")))?;
    let alpha_idx = Vec::<i64>::try_from(&best_alpha.to_device(Device::Cpu))
        .map_err(|e| FwrfError::Invalid(format!("fwRF alpha choice: {e}")))?;
    let alphas: Vec<f64> = alpha_idx
        .iter()
        .map(|&a| s.ridge.alphas[a as usize])
        .collect();
    let mut groups: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (voxel, &k) in chosen.iter().enumerate() {
        groups.entry(k).or_default().push(voxel as i64);
    }
    let mut weights = Tensor::zeros([c, v], (Kind::Float, device));
    let mut intercept = Tensor::zeros([v], (Kind::Float, device));
    for (k, voxels) in groups {
        let (x, mean, sd) = standardize(&pooled(&maps, &fields, k));
        let cols = Tensor::from_slice(&voxels).to_device(device);
        let group_alphas: Vec<f64> = voxels.iter().map(|&j| alphas[j as usize]).collect();
        let y = s.y.index_select(1, &cols.to_device(s.y.device()));
        let fit =
            ridge::solve_ridge_svd_per_voxel(&x, &y, &group_alphas, s.ridge.voxel_batch, device)?;
        let coef = fit.coef.to_kind(Kind::Float);
        let w_raw = &coef / sd.unsqueeze(1);
        let b_raw = fit.intercept.to_kind(Kind::Float)
            - (mean / &sd).unsqueeze(0).matmul(&coef).squeeze_dim(0);
        let _ = weights.index_copy_(1, &cols, &w_raw);
        let _ = intercept.index_copy_(0, &cols, &b_raw);
    }
    Ok(FieldFit {
        fields: chosen.iter().map(|&k| s.candidates[k as usize]).collect(),
        scores: best,
        alphas,
        weights,
        intercept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_normalized_gaussians_on_cell_centres() {
        let f = [
            Field {
                x: 0.3,
                y: 0.8,
                size: 0.1,
            },
            Field {
                x: 0.9,
                y: 0.1,
                size: 0.001,
            },
        ];
        let g = field_matrix(&f, 4, 4, Device::Cpu);
        assert_eq!(g.size(), [16, 2]);
        let sums = g.sum_dim_intlist(0, false, Kind::Double);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-6);
        // The peak is the cell holding the centre: row 3 (y 0.8), column 1 (x 0.3).
        assert_eq!(g.select(1, 0).argmax(0, false).int64_value(&[]), 3 * 4 + 1);
        // A field far narrower than a cell still weights its nearest cell (row 0,
        // column 3), wholly.
        assert!((g.double_value(&[3, 1]) - 1.0).abs() < 1e-6);
        let grid = FieldGrid {
            positions: 3,
            sizes: vec![0.1, 0.2],
        };
        let c = grid.candidates();
        assert_eq!(c.len(), 18);
        assert_eq!((c[0].x, c[0].y, c[0].size), (1.0 / 6.0, 1.0 / 6.0, 0.1));
        assert_eq!(c[17].size, 0.2);
    }

    /// Voxels that each pool one known place of a random map: the search finds the
    /// place, and the refit predicts them.
    #[test]
    fn the_search_recovers_known_fields() {
        tch::manual_seed(5);
        let (n, c, h, w) = (300, 3, 8, 8);
        let maps = Tensor::randn([n, c, h, w], (Kind::Float, Device::Cpu));
        let truth = [
            Field {
                x: 0.1875,
                y: 0.3125,
                size: 0.1,
            },
            Field {
                x: 0.8125,
                y: 0.6875,
                size: 0.2,
            },
        ];
        let g = field_matrix(&truth, h, w, Device::Cpu);
        let wts = Tensor::from_slice(&[1.0f32, -0.5, 0.2, 0.3, 0.8, -1.0]).view([c, 2]);
        let flat = maps.view([n, -1]);
        let clean = predict(
            &flat,
            &g,
            &wts,
            &Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        );
        let y =
            &clean + 0.05 * clean.std(false) * Tensor::randn([n, 2], (Kind::Float, Device::Cpu));
        let grid = FieldGrid {
            positions: 8,
            sizes: vec![0.1, 0.2, 0.4],
        };
        let candidates = grid.candidates();
        let cfg = RidgeCvConfig::default();
        let fit = fit_fields(
            &FieldSearch {
                maps: &maps,
                y: &y,
                candidates: &candidates,
                ridge: &cfg,
                label: "test",
            },
            Device::Cpu,
        )
        .unwrap();
        for (got, want) in fit.fields.iter().zip(&truth) {
            assert!(
                (got.x - want.x).abs() < 1e-6 && (got.y - want.y).abs() < 1e-6,
                "{got:?} vs {want:?}"
            );
            assert_eq!(got.size, want.size);
        }
        let layout = FieldLayout {
            map: [c, h, w],
            fields: fit.fields.clone(),
        };
        let pred = predict(
            &flat,
            &layout.matrix(Device::Cpu),
            &fit.weights,
            &fit.intercept,
        );
        let r = ridge::pearson_columns(&pred, &clean);
        assert!(r.min().double_value(&[]) > 0.99, "{r:?}");
    }
}
