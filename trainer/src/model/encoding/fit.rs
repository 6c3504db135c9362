//! `vcl fit`: tap features -> PCA -> ridge for subjects x hemispheres x ROIs, with the
//! tap and the alphas chosen by cross-validation inside the training split. The
//! held-out split is not touched here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::error::{EncodingError, Result};
use super::store::{self, AlphaMode, EncoderMeta, FitConfig};
use crate::features::backbones::Backbone;
use crate::features::images::PixelCache;
use crate::features::{self, ExtractOptions, TapFeatures};
use crate::model::ridge::{self, RidgeCvConfig};
use crate::stages::Stages;
use vcl_dataset::algonauts::{split, Dataset, Hemisphere, RoiAtlas, Subject};

/// One line of the tap-selection table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Selection {
    pub subject: String,
    pub hemisphere: Hemisphere,
    pub roi: String,
    pub voxels: usize,
    pub tap: String,
    pub cv_score: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitRecord {
    pub config: FitConfig,
    pub selections: Vec<Selection>,
    /// Time and peak memory per stage (absent in runs written before it was recorded).
    #[serde(default)]
    pub stages: Stages,
}

pub fn index_tensor(rows: &[usize], device: Device) -> Tensor {
    let v: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_slice(&v).to_device(device)
}

/// Every ROI with vertices in this hemisphere, each family in order; streams' "early"
/// is qualified because plain `early` means the prf-visualrois union.
pub fn all_rois(atlas: &RoiAtlas) -> Vec<String> {
    let mut out = Vec::new();
    for f in &atlas.families {
        for (&label, name) in &f.names {
            if f.labels.iter().any(|&l| l == label) {
                let spec = if name == "early" {
                    format!("{}:{name}", f.family)
                } else {
                    name.clone()
                };
                if !out.contains(&spec) {
                    out.push(spec);
                }
            }
        }
    }
    out
}

/// Taps asked for, or all of the backbone's.
pub fn taps_of(cfg: &FitConfig) -> Vec<String> {
    if cfg.taps.is_empty() {
        cfg.arch.taps().iter().map(|s| s.to_string()).collect()
    } else {
        cfg.taps.clone()
    }
}

/// Loads the backbone a config names.
pub fn load_backbone(cfg: &FitConfig, device: Device) -> Result<Backbone> {
    Ok(Backbone::load(cfg.arch, &cfg.weights(), device)?)
}

/// Which features of which images: `taps` for training-image `rows` of `subject`.
pub struct FeatureRequest<'a> {
    pub subject: &'a Subject,
    pub rows: &'a [usize],
    pub taps: &'a [String],
}

/// The features `request` names (cached on disk under `cache_dir`), the decoding and
/// the network's pass timed as the `decode` and `features` stages.
pub fn subject_features(
    cfg: &FitConfig,
    backbone: &Backbone,
    request: &FeatureRequest,
    cache_dir: &Path,
    stages: &mut Stages,
) -> Result<Vec<TapFeatures>> {
    let FeatureRequest {
        subject,
        rows,
        taps,
    } = *request;
    let pixels = stages.time("decode", || {
        PixelCache::build_or_load(
            &subject.train_images,
            cfg.input_size,
            &cache_dir.join("pixels"),
        )
    })?;
    let tap_refs: Vec<&str> = taps.iter().map(String::as_str).collect();
    let opts = ExtractOptions {
        batch_size: cfg.batch_size,
        max_dim: cfg.max_feature_dim,
        cache_dir: Some(cache_dir.join("features")),
    };
    let extraction = stages.time("features", || {
        features::extract(backbone, &pixels, rows, &tap_refs, &opts)
    })?;
    Ok(extraction.taps)
}

/// One tap's training-split projection.
struct Projected {
    /// [n_train, k] PCA scores.
    z: Tensor,
    info: features::TapInfo,
    /// The PCA file, relative to the run.
    pca_file: PathBuf,
}

/// Fits every requested encoder and writes the run directory.
///
/// Memory is bounded by one tap, not all of them: each tap's features are loaded from
/// the cache, reduced by PCA and freed before the next, and the ridge keeps, per ROI,
/// only the best tap so far rather than every tap's fit.
pub fn fit(cfg: &FitConfig, run: &Path, cache_dir: &Path, device: Device) -> Result<FitRecord> {
    let cfg = &cfg.resolved()?;
    let ds = Dataset::open(&cfg.data_dir)?;
    std::fs::create_dir_all(run).map_err(|e| EncodingError::file(run, e))?;
    let taps = taps_of(cfg);
    let backbone = load_backbone(cfg, device)?;
    let weights_hash = backbone.weights_hash();
    let mut selections = Vec::new();
    let mut stages = Stages::default();

    for subject_name in &cfg.subjects {
        let subject = ds.subject(subject_name)?;
        let n = subject.train_images.len();
        let sp = split::holdout(n, cfg.heldout_fraction, cfg.split_seed);
        if sp.train.len() < cfg.folds {
            return Err(ridge::RidgeError::TooFewRows {
                rows: sp.train.len(),
                folds: cfg.folds,
            }
            .into());
        }
        // The rows each part holds, for anyone who wants to fit or score the same ones
        // with other tools.
        store::write_json(
            &run.join("splits").join(format!("{}.json", subject.name)),
            &sp,
        )?;
        // Features of the training part only: the held-out images stay unseen until
        // `vcl evaluate`.
        let request = FeatureRequest {
            subject: &subject,
            rows: &sp.train,
            taps: &taps,
        };
        let feats = subject_features(cfg, &backbone, &request, cache_dir, &mut stages)?;
        let mut projected: BTreeMap<String, Projected> = BTreeMap::new();
        for tf in &feats {
            let p = stages.time("pca", || -> Result<Projected> {
                let x = tf.tensor()?.to_device(device);
                let k = cfg.pca_components.min(sp.train.len() - 1);
                let pca = ridge::fit_pca_with(&x, k, cfg.pca_solver, device)?;
                let z = pca.transform(&x)?;
                let pca_file =
                    store::save_pca(run, &subject.name, &tf.info.tap, &pca.mean, &pca.components)?;
                tracing::info!(subject = %subject.name, tap = %tf.info.tap, dim = tf.info.dim, components = pca.n_components(), "PCA fitted on the training split");
                Ok(Projected {
                    z,
                    info: tf.info.clone(),
                    pca_file,
                })
            })?;
            projected.insert(tf.info.tap.clone(), p);
        }
        let job = SubjectFit {
            cfg,
            run,
            subject: &subject,
            train: &sp.train,
            projected: &projected,
            weights_hash: &weights_hash,
            device,
        };
        for &h in &cfg.hemispheres {
            let fitted = stages.time("ridge", || job.hemisphere(h, &taps))?;
            selections.extend(fitted);
        }
    }
    tracing::info!(seconds = stages.total_seconds(), peak_rss_mb = ?stages.peak_rss_mb(), "fit done");
    let record = FitRecord {
        config: cfg.clone(),
        selections,
        stages,
    };
    store::write_json(&run.join("fit.json"), &record)?;
    Ok(record)
}

/// One subject's projected taps, ready for each hemisphere's ridge.
struct SubjectFit<'a> {
    cfg: &'a FitConfig,
    run: &'a Path,
    subject: &'a Subject,
    train: &'a [usize],
    projected: &'a BTreeMap<String, Projected>,
    weights_hash: &'a str,
    device: Device,
}

/// What an ROI keeps of the best tap so far.
struct Best {
    tap: usize,
    score: f32,
    weights: BestWeights,
}

enum BestWeights {
    /// Per-voxel alphas: the ROI's columns of the tap's fit.
    Voxel {
        coef: Tensor,
        intercept: Tensor,
        alphas: Vec<f64>,
    },
    /// One alpha for the ROI: its CV scores, refit once the tap is final.
    Roi { cv_scores: Tensor },
}

impl SubjectFit<'_> {
    /// Ridge CV of every tap over the union of the ROIs' vertices, the best tap chosen
    /// per ROI by its mean CV score, and each ROI's encoder written.
    fn hemisphere(&self, h: Hemisphere, taps: &[String]) -> Result<Vec<Selection>> {
        let (cfg, subject, device) = (self.cfg, self.subject, self.device);
        let atlas = subject.rois(h)?;
        let rois = if cfg.rois.is_empty() {
            all_rois(&atlas)
        } else {
            cfg.rois.clone()
        };
        let mut roi_vertices = Vec::new();
        for roi in &rois {
            roi_vertices.push(atlas.select(roi, &subject.name)?);
        }
        let mut union: Vec<usize> = roi_vertices.iter().flatten().copied().collect();
        union.sort_unstable();
        union.dedup();
        let pos: BTreeMap<usize, i64> = union
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i as i64))
            .collect();
        // The whole hemisphere's betas are freed as soon as the rows and columns the
        // fit needs are copied out.
        let y = {
            let y_all = ridge::matrix_to_tensor(subject.fmri(h)?.view());
            y_all
                .index_select(0, &index_tensor(self.train, Device::Cpu))
                .index_select(1, &index_tensor(&union, Device::Cpu))
                .to_device(device)
        };
        let cols: Vec<Tensor> = roi_vertices
            .iter()
            .map(|verts| {
                Tensor::from_slice(&verts.iter().map(|v| pos[v]).collect::<Vec<_>>())
                    .to_device(device)
            })
            .collect();

        let ridge_cfg = RidgeCvConfig {
            alphas: cfg.alphas.clone(),
            folds: cfg.folds,
            per_voxel: true,
            ..RidgeCvConfig::default()
        };
        let bar = ProgressBar::new(taps.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} ridge CV {pos}/{len} taps {wide_bar} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{} {h}", subject.name));
        let mut tap_scores: Vec<Vec<(String, f32)>> = vec![Vec::new(); rois.len()];
        let mut best: Vec<Option<Best>> = (0..rois.len()).map(|_| None).collect();
        for (ti, tap) in taps.iter().enumerate() {
            let fit = ridge::ridge_cv(&self.projected[tap].z, &y, &ridge_cfg, device)?;
            for (ri, (verts, c)) in roi_vertices.iter().zip(&cols).enumerate() {
                let score = roi_score(&fit.cv_scores, c, cfg.alpha_mode);
                tap_scores[ri].push((tap.clone(), score));
                // `>=`: on a tie the later tap wins, as Iterator::max_by decides.
                if best[ri].as_ref().is_some_and(|b| score < b.score) {
                    continue;
                }
                let weights = match cfg.alpha_mode {
                    AlphaMode::Voxel => BestWeights::Voxel {
                        coef: fit.coef.index_select(1, c),
                        intercept: fit.intercept.index_select(0, c),
                        alphas: verts.iter().map(|v| fit.alphas[pos[v] as usize]).collect(),
                    },
                    AlphaMode::Roi => BestWeights::Roi {
                        cv_scores: fit.cv_scores.index_select(1, c),
                    },
                };
                best[ri] = Some(Best {
                    tap: ti,
                    score,
                    weights,
                });
            }
            bar.inc(1);
        }
        bar.finish_and_clear();

        let mut selections = Vec::new();
        for (ri, (roi, verts)) in rois.iter().zip(&roi_vertices).enumerate() {
            let chosen = best[ri]
                .take()
                .ok_or_else(|| EncodingError::Invalid("no taps to choose from".into()))?;
            let tap = &taps[chosen.tap];
            let p = &self.projected[tap];
            let (coef, intercept, alphas) = match chosen.weights {
                BestWeights::Voxel {
                    coef,
                    intercept,
                    alphas,
                } => (coef, intercept, alphas),
                BestWeights::Roi { cv_scores } => {
                    // The same selection (and tie rule) as everywhere else, on this
                    // ROI's columns only.
                    let alphas: Vec<f64> = ridge::select_alphas(&cv_scores, &cfg.alphas, false)?
                        .into_iter()
                        .take(1)
                        .cycle()
                        .take(verts.len())
                        .collect();
                    let y_roi = y.index_select(1, &cols[ri]);
                    let w = ridge::solve_ridge_svd_per_voxel(
                        &p.z,
                        &y_roi,
                        &alphas,
                        ridge::DEFAULT_VOXEL_BATCH,
                        device,
                    )?;
                    (w.coef, w.intercept, alphas)
                }
            };
            let meta = EncoderMeta {
                subject: subject.name.clone(),
                hemisphere: h,
                roi: roi.clone(),
                vertices: verts.clone(),
                fsaverage: atlas
                    .fsaverage
                    .as_ref()
                    .map(|f| verts.iter().map(|&v| f[v]).collect()),
                arch: cfg.arch,
                weights: cfg.weights(),
                weights_hash: self.weights_hash.to_string(),
                tap: tap.clone(),
                pooling: p.info.pooling,
                feature_dim: p.info.dim,
                input_size: cfg.input_size,
                pca_file: p.pca_file.clone(),
                pca_components: p.z.size()[1] as usize,
                alpha_mode: cfg.alpha_mode,
                alphas,
                tap_cv_scores: tap_scores[ri].clone(),
                cv_score: chosen.score,
                split_seed: cfg.split_seed,
                heldout_fraction: cfg.heldout_fraction,
                n_train_images: self.train.len(),
                method: cfg.label(),
            };
            store::save_encoder(self.run, &meta, &coef, &intercept)?;
            tracing::info!(subject = %subject.name, hemisphere = %h, roi = %roi, voxels = verts.len(), tap = %meta.tap, cv_r2 = meta.cv_score, "encoder fitted");
            selections.push(Selection {
                subject: subject.name.clone(),
                hemisphere: h,
                roi: roi.clone(),
                voxels: verts.len(),
                tap: meta.tap.clone(),
                cv_score: meta.cv_score,
            });
        }
        Ok(selections)
    }
}

/// Tap score: mean over the ROI's voxels of the CV score at the alpha each would be
/// fitted with (per voxel, or the ROI's shared alpha).
fn roi_score(cv_scores: &Tensor, cols: &Tensor, mode: AlphaMode) -> f32 {
    let cv = cv_scores.index_select(1, cols).to_kind(Kind::Double);
    let score = match mode {
        AlphaMode::Voxel => cv.max_dim(0, false).0.mean(Kind::Double).double_value(&[]),
        AlphaMode::Roi => cv.mean_dim(1, false, Kind::Double).max().double_value(&[]),
    };
    score as f32
}
