//! Cross-subject transfer (METHOD.md): subject A's fine-tuned backbone used as a frozen
//! feature extractor for subject B's encoder, scored against B's untuned encoder as
//! the share of B's voxels it predicts better.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::model::encoding::error::EncodingError;
use crate::model::encoding::evaluate::Evaluation;
use crate::model::encoding::fit::FitRecord;
use crate::model::encoding::store::Method;
use crate::model::encoding::{self, store, FitConfig};
use crate::model::finetune::{FinetuneConfig, Objective};
use crate::report::plots;
use crate::Result;
use vcl_dataset::algonauts::Hemisphere;

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
        .map(|r| vcl_dataset::npy::read_f32_1d(&run.join(&r.voxel_r_file)).map(|a| a.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((eval, rs))
}

/// A tuned backbone to transfer: `LABEL=PATH` on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub label: String,
    /// `backbone.safetensors` of a `vcl finetune` run (its config.json beside it says
    /// how it was tuned).
    pub weights: PathBuf,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('=') {
            Some((label, path)) if !label.is_empty() && !path.is_empty() => Ok(Source {
                label: label.to_string(),
                weights: PathBuf::from(path),
            }),
            _ => Err(format!("'{s}': expected LABEL=PATH")),
        }
    }
}

/// What `vcl transfer` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct TransferConfig {
    /// The evaluated untuned run (its fit config gives data, taps, input size).
    #[arg(long)]
    pub untuned: PathBuf,
    /// Tuned backbones as LABEL=PATH (e.g. subj01=runs/cl-s1/backbone.safetensors).
    #[arg(long = "source", required = true)]
    pub sources: Vec<Source>,
    #[arg(long, default_value = "lh")]
    pub hemisphere: Hemisphere,
    #[arg(long)]
    pub roi: String,
    /// Target subjects (default: the untuned run's).
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<String>,
    /// Output folder: transfer.{json,csv,png} and one fit per (source, target).
    #[arg(long)]
    pub out: PathBuf,
}

/// How a source backbone was tuned, from the `vcl finetune` config beside it.
fn source_method(weights: &Path) -> Result<Method> {
    let config = weights.with_file_name("config.json");
    if !config.is_file() {
        return Err(EncodingError::file(
            weights,
            "has no config.json beside it: transfer reads `vcl finetune` run backbones",
        )
        .into());
    }
    let cfg: FinetuneConfig = store::read_json(&config)?;
    Ok(match cfg.method {
        Objective::Regression => Method::Regression,
        Objective::Cl if cfg.pooled() => Method::Pooled,
        Objective::Cl => Method::Cl,
    })
}

/// Each source backbone as a frozen extractor for the targets' encoders of one ROI of
/// one hemisphere, against the untuned run's encoders; writes into `cfg.out`.
pub fn transfer(cfg: &TransferConfig, cache_dir: &Path, device: Device) -> Result<TransferMatrix> {
    let untuned_run = cfg.untuned.as_path();
    let record: FitRecord = store::read_json(&untuned_run.join("fit.json"))?;
    let base = FitConfig {
        hemispheres: vec![cfg.hemisphere],
        rois: vec![cfg.roi.clone()],
        subjects: if cfg.subjects.is_empty() {
            record.config.subjects.clone()
        } else {
            cfg.subjects.clone()
        },
        ..record.config
    };
    let (base, sources, out) = (&base, &cfg.sources, cfg.out.as_path());
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
    for Source { label, weights } in sources {
        let method = source_method(weights)?;
        let (mut frow, mut mrow) = (Vec::new(), Vec::new());
        for target in &base.subjects {
            let Some(ui) = find(&untuned, target) else {
                return Err(EncodingError::file(
                    untuned_run,
                    format!("has no evaluated encoder for {target} {h} {roi}"),
                )
                .into());
            };
            let run = out.join(format!("{}_to_{target}", store::safe_name(label)));
            let cfg = FitConfig {
                subjects: vec![target.clone()],
                weights: Some(weights.clone()),
                method,
                label: Some(format!("transfer-{label}")),
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
                ))
                .into());
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
        sources: sources.iter().map(|s| s.label.clone()).collect(),
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
        &plots::Matrix {
            rows: &m.sources,
            cols: &m.targets,
            values: &m.frac_beating_untuned,
            range: (0.0, 1.0),
        },
    )?;
    Ok(m)
}
