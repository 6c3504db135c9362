//! One ONNX model for a set of ROI encoders that share a backbone: the graph
//! (`build_model`), the same computation in libtorch (`predict_libtorch`), and the
//! comparison of the two (`compare`).
//!
//! ```text
//! images [N,3,S,S] in [0,1] -> Sub mean, Div std -> backbone, computed once
//!   -> at each tap used: pool -> flatten -> Sub PCA mean -> MatMul components   (per tap)
//!      -> MatMul [k, V_tap] ridge coefs of that tap's ROIs -> Add intercepts
//!   -> Concat the taps' columns (-> Gather back into ROI order if taps interleave)
//!   -> fwRF ROIs: pool -> Reshape [N, C, H*W] -> MatMul fields [H*W, V] -> Mul channel
//!      weights [C, V] -> ReduceSum over C -> Add intercepts                (per ROI)
//!   -> voxels [N,V];  voxels MatMul [V,R] averaging matrix -> roi_means [N,R]
//! ```

use std::ops::Range;

use prost::Message;
use tch::{Device, Kind, Tensor};

use super::backbone::{self, Value};
use super::error::ExportError;
use super::graph::{GraphBuilder, GraphDim};
use crate::features::backbones::Backbone;
use crate::features::images::{self, IMAGENET_MEAN, IMAGENET_STD};
use crate::features::Pooling;
use crate::model::fwrf;
use vcl_contract::manifest::{BATCH_DIM, INPUT_NAME, ROI_MEANS_OUTPUT, VOXELS_OUTPUT};

/// A tap's PCA: what every ROI encoder reading that tap projects onto.
#[derive(Debug)]
pub struct TapProjection {
    pub tap: String,
    /// Pooling applied to the tap's map before flattening (as at fit time).
    pub pooling: Pooling,
    /// float32 [D]
    pub mean: Tensor,
    /// float32 [D, k]
    pub components: Tensor,
}

/// What an ROI encoder reads its voxels from.
#[derive(Debug)]
pub enum Readout {
    /// Ridge on the components of `EncoderSet::projections[projection]`; `coef` [k, V].
    Ridge { projection: usize },
    /// fwRF on a tap's pooled maps [C, H, W]: `field` [H*W, V] (the voxels' Gaussian
    /// fields), `coef` [C, V] the channel weights.
    Field {
        tap: String,
        pooling: Pooling,
        map: [i64; 3],
        field: Tensor,
    },
}

/// One ROI encoder: a linear map from its readout's features to the ROI's voxels.
#[derive(Debug)]
pub struct RoiHead {
    pub roi: String,
    pub readout: Readout,
    /// float32 [k, V] (ridge) or [C, V] (fwRF)
    pub coef: Tensor,
    /// float32 [V]
    pub intercept: Tensor,
}

impl RoiHead {
    /// The ridge projection this head reads, if it reads one.
    fn projection(&self) -> Option<usize> {
        match self.readout {
            Readout::Ridge { projection } => Some(projection),
            Readout::Field { .. } => None,
        }
    }
}

/// The encoders one model computes, ROIs in output order.
#[derive(Debug, Default)]
pub struct EncoderSet {
    pub projections: Vec<TapProjection>,
    pub heads: Vec<RoiHead>,
}

/// A serialized model and what it computes.
#[derive(Debug, Clone)]
pub struct BuiltModel {
    /// The ModelProto's bytes (model.onnx).
    pub bytes: Vec<u8>,
    /// Columns of `voxels` per head, in head order.
    pub slices: Vec<Range<usize>>,
    /// Operator types the graph uses, sorted.
    pub op_types: Vec<String>,
    /// Per-image feature dimension each head reads (after pooling), in head order.
    pub feature_dims: Vec<usize>,
}

impl BuiltModel {
    pub fn n_voxels(&self) -> usize {
        self.slices.last().map_or(0, |s| s.end)
    }
}

/// Row-major f32 copy of a tensor, with its shape.
fn values(t: &Tensor, what: &str) -> Result<(Vec<i64>, Vec<f32>), ExportError> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let shape = t.size();
    let v = Vec::<f32>::try_from(&t.view([-1])).map_err(|e| ExportError::Tch {
        what: what.to_string(),
        source: e,
    })?;
    Ok((shape, v))
}

impl EncoderSet {
    /// Checks shapes and references; returns k of each projection and V of each head.
    fn check(&self) -> Result<(Vec<i64>, Vec<i64>), ExportError> {
        if self.heads.is_empty() {
            return Err(ExportError::Invalid(
                "a model needs at least one ROI encoder".into(),
            ));
        }
        let mut ks = Vec::new();
        for p in &self.projections {
            let (m, c) = (p.mean.size(), p.components.size());
            match (&m[..], &c[..]) {
                (&[d], &[d2, k]) if d == d2 && k > 0 => ks.push(k),
                _ => {
                    return Err(ExportError::Invalid(format!(
                        "PCA of tap {}: mean {m:?} and components {c:?} should be [D] and [D, k]",
                        p.tap
                    )))
                }
            }
        }
        let mut vs = Vec::new();
        for h in &self.heads {
            let (k, what) = match &h.readout {
                Readout::Ridge { projection } => {
                    let k = *ks.get(*projection).ok_or_else(|| {
                        ExportError::Invalid(format!(
                            "ROI {} refers to projection {projection} of {}",
                            h.roi,
                            ks.len()
                        ))
                    })?;
                    (
                        k,
                        format!(
                            "k = components of tap {}",
                            self.projections[*projection].tap
                        ),
                    )
                }
                Readout::Field {
                    tap, map, field, ..
                } => {
                    let f = field.size();
                    let v = h.intercept.size().first().copied().unwrap_or(0);
                    if f != [map[1] * map[2], v] {
                        return Err(ExportError::Invalid(format!(
                            "ROI {}: fields {f:?} should be [{}, {v}] for tap {tap}'s {map:?} maps",
                            h.roi,
                            map[1] * map[2]
                        )));
                    }
                    (map[0], format!("channels of tap {tap}"))
                }
            };
            let (c, b) = (h.coef.size(), h.intercept.size());
            match (&c[..], &b[..]) {
                (&[k2, v], &[v2]) if k2 == k && v == v2 && v > 0 => vs.push(v),
                _ => {
                    return Err(ExportError::Invalid(format!(
                        "ROI {}: coef {c:?} and intercept {b:?} should be [{k}, V] and [V] \
                         ({what})",
                        h.roi
                    )))
                }
            }
        }
        Ok((ks, vs))
    }

    /// Projections some head uses, in order.
    fn used_projections(&self) -> Vec<usize> {
        (0..self.projections.len())
            .filter(|p| self.heads.iter().any(|h| h.projection() == Some(*p)))
            .collect()
    }

    /// Every tap the model reads, sorted, once each.
    fn taps(&self) -> Vec<&str> {
        let mut taps: Vec<&str> = self
            .used_projections()
            .iter()
            .map(|&p| self.projections[p].tap.as_str())
            .chain(self.heads.iter().filter_map(|h| match &h.readout {
                Readout::Field { tap, .. } => Some(tap.as_str()),
                Readout::Ridge { .. } => None,
            }))
            .collect();
        taps.sort_unstable();
        taps.dedup();
        taps
    }
}

/// Writes the ONNX model computing `set` on `backbone` for `size` x `size` inputs.
pub fn build_model(
    backbone: &Backbone,
    size: u32,
    set: &EncoderSet,
) -> Result<BuiltModel, ExportError> {
    let (ks, vs) = set.check()?;
    let s = size as i64;
    let mut g = GraphBuilder::new();
    let batch = GraphDim::Named(BATCH_DIM);
    let x = g.input(
        INPUT_NAME,
        &[
            batch.clone(),
            GraphDim::Fixed(3),
            GraphDim::Fixed(s),
            GraphDim::Fixed(s),
        ],
    );
    let mean = g.constant("imagenet_mean", &[1, 3, 1, 1], &IMAGENET_MEAN);
    let std = g.constant("imagenet_std", &[1, 3, 1, 1], &IMAGENET_STD);
    let centered = g.sub(&x, &mean, "normalize/sub");
    let normalized = g.div(&centered, &std, "normalize/div");

    let used = set.used_projections();
    let taps = set.taps();
    let input = Value {
        name: normalized,
        shape: vec![3, s, s],
    };
    let tap_values = backbone::emit(&mut g, backbone, input, &taps)?;

    // Each head's columns in the order the per-tap branches produce them.
    let mut branch_outputs = Vec::new();
    let mut produced: Vec<usize> = Vec::new();
    let mut feature_dims = vec![0usize; set.heads.len()];
    for &p in &used {
        let proj = &set.projections[p];
        let stem = format!("encoder/{}", proj.tap);
        let tap = tap_values
            .get(&proj.tap)
            .ok_or_else(|| ExportError::Invalid(format!("tap {} was not emitted", proj.tap)))?;
        let flat = backbone::pool_and_flatten(&mut g, tap, proj.pooling, &stem)?;
        let (_, mean_v) = values(&proj.mean, "PCA mean")?;
        let (cshape, comps) = values(&proj.components, "PCA components")?;
        let d = flat.numel();
        if d != cshape[0] {
            return Err(ExportError::Invalid(format!(
                "tap {} with pooling {:?} gives {d} features per image at {size} px \
                 (map {:?}), but its PCA expects {}: was the run fitted at another input size?",
                proj.tap, proj.pooling, tap.shape, cshape[0]
            )));
        }
        for (i, h) in set.heads.iter().enumerate() {
            if h.projection() == Some(p) {
                feature_dims[i] = d as usize;
            }
        }
        let mean_c = g.constant(&format!("{stem}/pca_mean"), &[d], &mean_v);
        let comps_c = g.constant(&format!("{stem}/pca_components"), &cshape, &comps);
        let xc = g.sub(&flat.name, &mean_c, &format!("{stem}/pca_center"));
        let z = g.matmul(&xc, &comps_c, &format!("{stem}/pca_project"));

        // The ridge maps of every ROI on this tap, side by side: one MatMul + Add.
        let k = ks[p];
        let heads: Vec<usize> = (0..set.heads.len())
            .filter(|&i| set.heads[i].projection() == Some(p))
            .collect();
        let v_tap: i64 = heads.iter().map(|&i| vs[i]).sum();
        let mut coef = vec![0f32; (k * v_tap) as usize];
        let mut icpt = Vec::with_capacity(v_tap as usize);
        let mut col0 = 0usize;
        for &i in &heads {
            let (_, c) = values(&set.heads[i].coef, "ridge coef")?;
            let (_, b) = values(&set.heads[i].intercept, "ridge intercept")?;
            let v = vs[i] as usize;
            for r in 0..k as usize {
                let dst = r * v_tap as usize + col0;
                coef[dst..dst + v].copy_from_slice(&c[r * v..(r + 1) * v]);
            }
            icpt.extend_from_slice(&b);
            col0 += v;
            produced.push(i);
        }
        let coef_c = g.constant(&format!("{stem}/ridge_coef"), &[k, v_tap], &coef);
        let icpt_c = g.constant(&format!("{stem}/ridge_intercept"), &[v_tap], &icpt);
        let y = g.matmul(&z, &coef_c, &format!("{stem}/ridge"));
        branch_outputs.push(g.add(&y, &icpt_c, &format!("{stem}/ridge_bias")));
    }
    for (i, h) in set.heads.iter().enumerate() {
        let Readout::Field {
            tap,
            pooling,
            map,
            field,
        } = &h.readout
        else {
            continue;
        };
        let stem = format!("encoder/{}/fwrf", h.roi);
        let value = tap_values
            .get(tap)
            .ok_or_else(|| ExportError::Invalid(format!("tap {tap} was not emitted")))?;
        let flat = backbone::pool_and_flatten(&mut g, value, *pooling, &stem)?;
        if flat.numel() != map.iter().product::<i64>() {
            return Err(ExportError::Invalid(format!(
                "ROI {}: tap {tap} with pooling {pooling:?} gives {} features per image at \
                 {size} px, but its fields read {map:?} maps: was the run fitted at another \
                 input size?",
                h.roi,
                flat.numel()
            )));
        }
        feature_dims[i] = flat.numel() as usize;
        let v = vs[i];
        let shape = g.constant_i64(
            &format!("{stem}/maps_shape"),
            &[3],
            &[0, map[0], map[1] * map[2]],
        );
        let maps = g.reshape(&flat.name, &shape, &format!("{stem}/maps"));
        let (fshape, fvals) = values(field, "fwRF fields")?;
        let field_c = g.constant(&format!("{stem}/fields"), &fshape, &fvals);
        let pooled = g.matmul(&maps, &field_c, &format!("{stem}/pool"));
        let (wshape, wvals) = values(&h.coef, "fwRF channel weights")?;
        let w_c = g.constant(&format!("{stem}/weights"), &wshape, &wvals);
        let weighted = g.mul(&pooled, &w_c, &format!("{stem}/weigh"));
        let y = g.reduce_sum(&weighted, 1, &format!("{stem}/channels"));
        let (_, b) = values(&h.intercept, "fwRF intercept")?;
        let icpt_c = g.constant(&format!("{stem}/intercept"), &[v], &b);
        branch_outputs.push(g.add(&y, &icpt_c, &format!("{stem}/bias")));
        produced.push(i);
    }

    // Output slices in head order, and where each head's columns sit in the branches.
    let mut slices = Vec::with_capacity(set.heads.len());
    let mut start = 0usize;
    for &v in &vs {
        slices.push(start..start + v as usize);
        start += v as usize;
    }
    let n_voxels = start;
    let mut branch_start = vec![0usize; set.heads.len()];
    let mut pos = 0usize;
    for &i in &produced {
        branch_start[i] = pos;
        pos += vs[i] as usize;
    }
    let refs: Vec<&str> = branch_outputs.iter().map(String::as_str).collect();
    let mut voxels = if refs.len() == 1 {
        refs[0].to_string()
    } else {
        g.concat(&refs, 1, "voxels/concat")
    };
    let order: Vec<i64> = (0..set.heads.len())
        .flat_map(|i| (branch_start[i]..branch_start[i] + vs[i] as usize).map(|c| c as i64))
        .collect();
    if order.iter().enumerate().any(|(j, &c)| j as i64 != c) {
        voxels = g.gather_columns(&voxels, &order, "voxels/roi_order");
    }
    let voxels = g.output(
        &voxels,
        VOXELS_OUTPUT,
        &[batch.clone(), GraphDim::Fixed(n_voxels as i64)],
    );

    let r = set.heads.len();
    let mut avg = vec![0f32; n_voxels * r];
    for (j, sl) in slices.iter().enumerate() {
        for v in sl.clone() {
            avg[v * r + j] = 1.0 / sl.len() as f32;
        }
    }
    let avg_c = g.constant("roi_mean_weights", &[n_voxels as i64, r as i64], &avg);
    let means = g.matmul(&voxels, &avg_c, "roi_means/matmul");
    g.output(
        &means,
        ROI_MEANS_OUTPUT,
        &[batch, GraphDim::Fixed(r as i64)],
    );

    let op_types = g.op_types();
    let doc = format!(
        "vcl voxel encoder: {} backbone -> taps {} -> PCA -> ridge or fwRF; {} ROIs, {} voxels",
        backbone.arch(),
        taps.join(", "),
        r,
        n_voxels
    );
    let bytes = g.finish(&doc).encode_to_vec();
    Ok(BuiltModel {
        bytes,
        slices,
        op_types,
        feature_dims,
    })
}

/// What libtorch predicts for `images` (float32 [N, 3, S, S] in [0, 1]): the fit's own
/// arithmetic (`features.rs` pooling and flattening, then PCA and ridge as
/// `encoding/evaluate.rs`), ROI after ROI.
pub struct Prediction {
    /// float32 [N, V]
    pub voxels: Tensor,
    /// float32 [N, R]: the mean of each ROI's columns.
    pub roi_means: Tensor,
}

pub fn predict_libtorch(
    backbone: &Backbone,
    set: &EncoderSet,
    images: &Tensor,
) -> Result<Prediction, ExportError> {
    set.check()?;
    let device = backbone.device();
    let taps = set.taps();
    let pool = |out: &Tensor, pooling: Pooling| match pooling {
        Pooling::None => out.flatten(1, -1),
        Pooling::AdaptiveAvg { grid } => out.adaptive_avg_pool2d([grid, grid]).flatten(1, -1),
    };
    tch::no_grad(|| {
        let x = images::normalize(&images.to_device(device).to_kind(Kind::Float));
        let outs = backbone.taps(&x, &taps, false)?;
        let out_of = |tap: &str| {
            taps.iter()
                .position(|t| *t == tap)
                .map(|i| &outs[i])
                .ok_or_else(|| ExportError::Invalid(format!("tap {tap} was not computed")))
        };
        let mut z = Vec::with_capacity(set.projections.len());
        z.resize_with(set.projections.len(), || None);
        for p in set.used_projections() {
            let proj = &set.projections[p];
            let flat = pool(out_of(&proj.tap)?, proj.pooling);
            let zp =
                (flat - proj.mean.to_device(device)).matmul(&proj.components.to_device(device));
            z[p] = Some(zp);
        }
        let mut cols = Vec::with_capacity(set.heads.len());
        let mut means = Vec::with_capacity(set.heads.len());
        for h in &set.heads {
            let (coef, icpt) = (h.coef.to_device(device), h.intercept.to_device(device));
            let y = match &h.readout {
                Readout::Ridge { projection } => {
                    z[*projection]
                        .as_ref()
                        .ok_or_else(|| {
                            ExportError::Invalid(format!("no features for ROI {}", h.roi))
                        })?
                        .matmul(&coef)
                        + icpt
                }
                Readout::Field {
                    tap,
                    pooling,
                    field,
                    ..
                } => fwrf::predict(
                    &pool(out_of(tap)?, *pooling),
                    &field.to_device(device),
                    &coef,
                    &icpt,
                ),
            };
            means.push(y.mean_dim(1, true, Kind::Float));
            cols.push(y);
        }
        Ok(Prediction {
            voxels: Tensor::cat(&cols, 1).to_device(Device::Cpu),
            roi_means: Tensor::cat(&means, 1).to_device(Device::Cpu),
        })
    })
}

/// The largest disagreement between two runs of a model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Worst {
    /// 0 = voxels, 1 = roi_means.
    pub output: usize,
    pub row: usize,
    pub col: usize,
    pub ort: f32,
    pub torch: f32,
    pub rel: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Comparison {
    pub max_abs: f64,
    pub max_rel: f64,
    pub worst: Option<Worst>,
}

/// Compares outputs (row-major [N, cols] each) of ONNX Runtime with libtorch's.
/// Relative difference = |ort - torch| / max(|torch|, RMS of that libtorch output): a
/// plain |a-b|/|b| explodes on values near zero, which a prediction has plenty of, so
/// each output's typical magnitude is the floor of the denominator.
pub fn compare(outputs: &[(&[f32], &[f32], usize)]) -> Comparison {
    let mut c = Comparison {
        max_abs: 0.0,
        max_rel: 0.0,
        worst: None,
    };
    for (o, &(ort, torch, cols)) in outputs.iter().enumerate() {
        let n = torch.len().max(1) as f64;
        let rms = (torch.iter().map(|&b| (b as f64).powi(2)).sum::<f64>() / n).sqrt();
        let floor = rms.max(f64::MIN_POSITIVE);
        for (i, (&a, &b)) in ort.iter().zip(torch).enumerate() {
            let abs = (a as f64 - b as f64).abs();
            // A NaN on either side is the worst possible disagreement.
            let rel = if abs.is_nan() {
                f64::INFINITY
            } else {
                abs / (b as f64).abs().max(floor)
            };
            c.max_abs = c
                .max_abs
                .max(if abs.is_nan() { f64::INFINITY } else { abs });
            if c.worst.is_none() || rel > c.max_rel {
                c.max_rel = rel;
                c.worst = Some(Worst {
                    output: o,
                    row: i / cols.max(1),
                    col: i % cols.max(1),
                    ort: a,
                    torch: b,
                    rel,
                });
            }
        }
        if ort.len() != torch.len() {
            c.max_rel = f64::INFINITY;
            c.max_abs = f64::INFINITY;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_names_the_worst_element() {
        let ort = [1.0f32, 2.0, 3.0, 4.0];
        let torch = [1.0f32, 2.0, 3.0, 4.1];
        let means_ort = [5.0f32, 5.0];
        let means_torch = [5.0f32, 5.0];
        let c = compare(&[(&ort, &torch, 2), (&means_ort, &means_torch, 1)]);
        let w = c.worst.unwrap();
        assert_eq!((w.output, w.row, w.col), (0, 1, 1));
        assert!((c.max_abs - 0.1).abs() < 1e-5 && (c.max_rel - 0.1 / 4.1).abs() < 1e-5);
        // Near-zero references are judged against the output's RMS, not themselves.
        let c = compare(&[(&[1e-6f32, 1.0], &[2e-6f32, 1.0], 2)]);
        assert!(c.max_rel < 2e-6, "{c:?}");
        let c = compare(&[(&[f32::NAN], &[1.0f32], 1)]);
        assert!(c.max_rel.is_infinite());
    }
}
