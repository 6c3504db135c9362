//! Cross-subject transfer (METHOD.md): subject A's fine-tuned backbone used as a frozen
//! feature extractor for subject B's encoder, scored against B's untuned encoder as
//! the share of B's voxels it predicts better.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::encoding::error::{EncodingError, Result};
use crate::encoding::evaluate::Evaluation;
use crate::encoding::{self, store, FitConfig};
use crate::plots;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferMatrix {
    /// Row labels: the backbones' sources.
    pub sources: Vec<String>,
    /// Column labels: the subjects whose encoders were fitted.
    pub targets: Vec<String>,
    /// [source][target] share of the target's ROI voxels beating its untuned encoder.
    pub frac_beating_untuned: Vec<Vec<f64>>,
    /// [source][target] mean held-out r of the target's ROI.
    pub mean_r: Vec<Vec<f64>>,
    pub untuned_mean_r: Vec<f64>,
}

fn voxel_r(run: &Path) -> Result<(Evaluation, Vec<Vec<f32>>)> {
    let eval: Evaluation = store::read_json(&run.join("evaluation/results.json"))?;
    let rs = eval
        .results
        .iter()
        .map(|r| crate::npy::read_f32_1d(&run.join(&r.voxel_r_file)).map(|a| a.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((eval, rs))
}

/// `base` is the untuned fit's config restricted to one hemisphere and ROI (its
/// subjects are the targets); `untuned_run` its evaluated run; `sources` are
/// (label, tuned backbone weights).
pub fn transfer(
    base: &FitConfig,
    untuned_run: &Path,
    sources: &[(String, PathBuf)],
    out: &Path,
    cache_dir: &Path,
    device: Device,
) -> Result<TransferMatrix> {
    if base.rois.len() != 1 || base.hemispheres.len() != 1 {
        return Err(EncodingError::Invalid(
            "transfer compares one ROI of one hemisphere: give exactly one of each".into(),
        ));
    }
    let (untuned, untuned_r) = voxel_r(untuned_run)?;
    let roi = &base.rois[0];
    let h = base.hemispheres[0];
    let find = |eval: &Evaluation, subject: &str| {
        eval.results
            .iter()
            .position(|r| r.subject == subject && r.hemisphere == h && &r.roi == roi)
    };
    let mut frac = Vec::new();
    let mut mean_r = Vec::new();
    for (label, weights) in sources {
        let (mut frow, mut mrow) = (Vec::new(), Vec::new());
        for target in &base.subjects {
            let Some(ui) = find(&untuned, target) else {
                return Err(EncodingError::file(
                    untuned_run,
                    format!("has no evaluated encoder for {target} {h} {roi}"),
                ));
            };
            let run = out.join(format!("{}_to_{target}", store::safe_name(label)));
            let cfg = FitConfig {
                subjects: vec![target.clone()],
                weights: weights.clone(),
                method: format!("transfer-{label}"),
                ..base.clone()
            };
            encoding::fit(&cfg, &run, cache_dir, device)?;
            let eval = encoding::evaluate(&run, cache_dir, device)?;
            let (_, rs) = voxel_r(&run)?;
            let i = find(&eval, target)
                .ok_or_else(|| EncodingError::Invalid("transfer result missing".into()))?;
            let (a, b) = (&rs[i], &untuned_r[ui]);
            if a.len() != b.len() {
                return Err(EncodingError::Invalid(format!(
                    "{target} {h} {roi}: {} voxels vs {} in the untuned run",
                    a.len(),
                    b.len()
                )));
            }
            let better = a.iter().zip(b).filter(|(x, y)| x > y).count();
            frow.push(better as f64 / a.len().max(1) as f64);
            mrow.push(eval.results[i].scores.mean_r as f64);
            tracing::info!(source = %label, target = %target, frac = frow[frow.len() - 1], "transfer scored");
        }
        frac.push(frow);
        mean_r.push(mrow);
    }
    let untuned_mean_r = base
        .subjects
        .iter()
        .map(|t| {
            find(&untuned, t)
                .map(|i| untuned.results[i].scores.mean_r as f64)
                .unwrap_or(f64::NAN)
        })
        .collect();
    let m = TransferMatrix {
        sources: sources.iter().map(|(l, _)| l.clone()).collect(),
        targets: base.subjects.clone(),
        frac_beating_untuned: frac,
        mean_r,
        untuned_mean_r,
    };
    store::write_json(&out.join("transfer.json"), &m)?;
    let mut csv = String::from("source,target,frac_voxels_beating_untuned,mean_r,untuned_mean_r\n");
    for (i, s) in m.sources.iter().enumerate() {
        for (j, t) in m.targets.iter().enumerate() {
            let _ = writeln!(
                csv,
                "{s},{t},{},{},{}",
                m.frac_beating_untuned[i][j], m.mean_r[i][j], m.untuned_mean_r[j]
            );
        }
    }
    std::fs::write(out.join("transfer.csv"), csv)
        .map_err(|e| EncodingError::file(&out.join("transfer.csv"), e))?;
    plots::heatmap(
        &out.join("transfer.png"),
        &format!("{h} {roi}: share of voxels beating untuned"),
        ("encoder fitted for subject", "backbone tuned on"),
        &m.sources,
        &m.targets,
        &m.frac_beating_untuned,
        (0.0, 1.0),
    )?;
    Ok(m)
}
