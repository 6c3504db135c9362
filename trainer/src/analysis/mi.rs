//! `vcl mi`: the contrastive objective's lower bound on the mutual information between
//! images and responses (METHOD.md), for fine-tuning runs, on each subject's held-out
//! images (never read by fine-tuning), in nats:
//! mean_i log( exp(c_ii) / ((1/K) sum_j exp(c_ij)) ), c = cosine / tau, K images.
//! Its ceiling is log K. The untuned backbone's bound comes from a run whose backbone
//! was frozen (`vcl finetune --freeze features,classifier`): the same heads, trained on
//! the same images, reading features nobody tuned.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::features::backbones::Backbone;
use crate::model::finetune::{
    checkpoint, data, image_features, image_width, mi_lower_bound, ClDims, ContrastiveHeads,
    FinetuneError, ImageInput, Objective,
};
use crate::report::plots;
use vcl_dataset::algonauts::split;

/// What `vcl mi` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct MiConfig {
    /// `vcl finetune --method cl` run directories (repeatable); a run with a frozen
    /// backbone (--freeze features,classifier) gives the untuned backbone's bound.
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder: mi.{json,csv,md,png}.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MiResult {
    /// The run directory and how tables name it (its folder name).
    pub run: PathBuf,
    pub label: String,
    pub subject: String,
    pub hemisphere: String,
    pub roi: String,
    /// True when no backbone variable was trained: the untuned backbone's bound.
    pub frozen_backbone: bool,
    /// What the heads read: "logits" or a tap.
    pub image: String,
    pub epochs: usize,
    /// Held-out images (the K of the bound).
    pub k: usize,
    pub tau: f64,
    pub bound_nats: f64,
    pub log_k: f64,
}

/// The bound of every subject of every run (contrastive runs only), written to
/// `out/mi.{json,csv,md,png}`.
pub fn mi(cfg: &MiConfig, cache_dir: &Path, device: Device) -> crate::Result<Vec<MiResult>> {
    let mut results = Vec::new();
    for run in &cfg.runs {
        results.extend(run_bound(run, cache_dir, device)?);
    }
    write(&cfg.out, &results)?;
    Ok(results)
}

fn run_bound(run: &Path, cache_dir: &Path, device: Device) -> crate::Result<Vec<MiResult>> {
    let loaded = checkpoint::latest(run)?.ok_or_else(|| {
        FinetuneError::Config(format!(
            "{}: no checkpoint (is this a `vcl finetune` run that finished an epoch?)",
            run.display()
        ))
    })?;
    let cfg = &loaded.meta.config;
    if cfg.method != Objective::Cl {
        return Err(FinetuneError::Config(format!(
            "{}: a {} run has no contrastive heads, so no MI bound",
            run.display(),
            cfg.method
        ))
        .into());
    }
    let mut subjects = data::load(cfg)?;
    let backbone = Backbone::load(cfg.arch, &cfg.weights(), device)?;
    let vars: BTreeMap<String, Tensor> = backbone.var_store().variables().into_iter().collect();
    checkpoint::restore_vars(&loaded.path, "backbone.", &vars, &loaded.tensors)?;
    let frozen_backbone = !loaded.meta.trained.iter().any(|n| !n.starts_with("heads."));
    let width = image_width(&backbone, ImageInput::of(cfg), cfg.input_size, device)?;
    let voxels: Vec<usize> = subjects.iter().map(|d| d.info.voxels).collect();
    let names: Vec<String> = subjects.iter().map(|d| d.info.subject.clone()).collect();
    let dims = ClDims::paper(&voxels, cfg.h_ratio, cfg.z_ratio, cfg.pooled_z_ratio)?;
    let heads_vs = nn::VarStore::new(device);
    let heads = ContrastiveHeads::new(&heads_vs.root(), &dims, width, &names, cfg);
    let head_vars: BTreeMap<String, Tensor> = heads_vs.variables().into_iter().collect();
    checkpoint::restore_vars(&loaded.path, "heads.", &head_vars, &loaded.tensors)?;
    let label = run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string());
    let mut out = Vec::new();
    for (si, sd) in subjects.iter_mut().enumerate() {
        let n = sd.fmri.size()[0] as usize;
        let heldout = split::holdout(n, cfg.heldout_fraction, cfg.split_seed).heldout;
        if heldout.len() < 2 {
            tracing::warn!(run = %run.display(), subject = %sd.info.subject, "fewer than 2 held-out images: no bound");
            continue;
        }
        sd.pixels(cfg.input_size, cache_dir)?;
        let seen: &data::SubjectData = sd;
        let px = seen
            .loaded_pixels()
            .ok_or_else(|| FinetuneError::Config("pixels not loaded".into()))?;
        let bound = tch::no_grad(|| -> Result<f64, FinetuneError> {
            let feats: Vec<Tensor> = heldout
                .chunks(cfg.eval_batch_size.max(1))
                .map(|rows| {
                    image_features(
                        &backbone,
                        &px.batch(rows, device)?,
                        ImageInput::of(cfg),
                        false,
                    )
                    .map(|f| f.to_kind(Kind::Float))
                })
                .collect::<Result<_, _>>()?;
            let z_img = heads.embed_images(&Tensor::cat(&feats, 0), false);
            let z_fmri = heads.embed_fmri(si, &seen.responses(&heldout, device), false);
            Ok(mi_lower_bound(&z_fmri, &z_img, heads.tau_value()))
        })?;
        let r = MiResult {
            run: run.to_path_buf(),
            label: label.clone(),
            subject: sd.info.subject.clone(),
            hemisphere: cfg.hemisphere.prefix().to_string(),
            roi: cfg.roi.clone(),
            frozen_backbone,
            image: cfg.image_tap.clone().unwrap_or_else(|| "logits".into()),
            epochs: loaded.meta.epoch,
            k: heldout.len(),
            tau: heads.tau_value(),
            bound_nats: bound,
            log_k: (heldout.len() as f64).ln(),
        };
        sd.release_pixels();
        tracing::info!(run = %label, subject = %r.subject, k = r.k, bound = format!("{:.3}", r.bound_nats), log_k = format!("{:.3}", r.log_k), "MI lower bound");
        out.push(r);
    }
    Ok(out)
}

fn write(out: &Path, results: &[MiResult]) -> Result<(), FinetuneError> {
    std::fs::create_dir_all(out).map_err(|e| FinetuneError::io(out, e))?;
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| FinetuneError::Config(format!("MI results as JSON: {e}")))?;
    let path = out.join("mi.json");
    std::fs::write(&path, json).map_err(|e| FinetuneError::io(&path, e))?;
    let mut csv = String::from(
        "run,subject,hemisphere,roi,frozen_backbone,image,epochs,k,tau,bound_nats,log_k\n",
    );
    let mut md = String::from("Contrastive MI lower bound on held-out images (nats; the ceiling is log K). A frozen backbone gives the untuned features' bound.\n\n| run | subject | ROI | backbone | image | K | tau | bound | log K |\n|---|---|---|---|---|---:|---:|---:|---:|\n");
    for r in results {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{:.4},{:.5},{:.5}",
            r.label,
            r.subject,
            r.hemisphere,
            r.roi,
            r.frozen_backbone,
            r.image,
            r.epochs,
            r.k,
            r.tau,
            r.bound_nats,
            r.log_k
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
            r.label,
            r.subject,
            r.hemisphere,
            r.roi,
            if r.frozen_backbone {
                "frozen (untuned)"
            } else {
                "tuned"
            },
            r.image,
            r.k,
            r.tau,
            r.bound_nats,
            r.log_k
        );
    }
    let path = out.join("mi.csv");
    std::fs::write(&path, csv).map_err(|e| FinetuneError::io(&path, e))?;
    let path = out.join("mi.md");
    std::fs::write(&path, md).map_err(|e| FinetuneError::io(&path, e))?;
    let labels: Vec<String> = results
        .iter()
        .map(|r| format!("{} {}", r.label, r.subject))
        .collect();
    plots::grouped_bars(
        &out.join("mi.png"),
        "Contrastive MI lower bound, held-out images",
        "nats",
        &labels,
        &[
            (
                "bound".into(),
                results.iter().map(|r| r.bound_nats).collect(),
            ),
            (
                "log K (ceiling)".into(),
                results.iter().map(|r| r.log_k).collect(),
            ),
        ],
    )?;
    Ok(())
}
