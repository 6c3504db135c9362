//! `vcl fit`: tap features -> PCA -> ridge for subjects x hemispheres x ROIs, with the
//! tap and the alphas chosen by cross-validation inside the training split. The
//! held-out split is not touched here.

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::error::{EncodingError, Result};
use super::store::{self, AlphaMode, EncoderMeta, FitConfig};
use crate::features::backbones::Backbone;
use crate::features::images::PixelCache;
use crate::features::{self, ExtractOptions, TapFeatures};
use crate::model::ridge::{self, RidgeCvConfig};
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

/// The features `request` names (cached on disk under `cache_dir`).
pub fn subject_features(
    cfg: &FitConfig,
    backbone: &Backbone,
    request: &FeatureRequest,
    cache_dir: &Path,
) -> Result<Vec<TapFeatures>> {
    let FeatureRequest {
        subject,
        rows,
        taps,
    } = *request;
    let pixels = PixelCache::build_or_load(
        &subject.train_images,
        cfg.input_size,
        &cache_dir.join("pixels"),
    )?;
    let tap_refs: Vec<&str> = taps.iter().map(String::as_str).collect();
    let opts = ExtractOptions {
        batch_size: cfg.batch_size,
        max_dim: cfg.max_feature_dim,
        cache_dir: Some(cache_dir.join("features")),
    };
    Ok(features::extract(backbone, &pixels, rows, &tap_refs, &opts)?.taps)
}

struct TapFit {
    tap: String,
    fit: ridge::RidgeFit,
}

/// Fits every requested encoder and writes the run directory.
pub fn fit(cfg: &FitConfig, run: &Path, cache_dir: &Path, device: Device) -> Result<FitRecord> {
    let cfg = &cfg.resolved()?;
    let ds = Dataset::open(&cfg.data_dir)?;
    std::fs::create_dir_all(run).map_err(|e| EncodingError::file(run, e))?;
    let taps = taps_of(cfg);
    let backbone = load_backbone(cfg, device)?;
    let weights_hash = backbone.weights_hash();
    let mut selections = Vec::new();

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
        // Features of the training part only: the held-out images stay unseen until
        // `vcl evaluate`.
        let request = FeatureRequest {
            subject: &subject,
            rows: &sp.train,
            taps: &taps,
        };
        let feats = subject_features(cfg, &backbone, &request, cache_dir)?;
        let mut pcs: BTreeMap<String, (Tensor, features::TapInfo, std::path::PathBuf)> =
            BTreeMap::new();
        for tf in &feats {
            let x = ridge::matrix_to_tensor(tf.features.view()).to_device(device);
            let k = cfg.pca_components.min(sp.train.len() - 1);
            let pca = ridge::fit_pca_with(&x, k, cfg.pca_solver, device)?;
            let z = pca.transform(&x)?;
            let rel =
                store::save_pca(run, &subject.name, &tf.info.tap, &pca.mean, &pca.components)?;
            tracing::info!(subject = %subject.name, tap = %tf.info.tap, dim = tf.info.dim, components = pca.n_components(), "PCA fitted on the training split");
            pcs.insert(tf.info.tap.clone(), (z, tf.info.clone(), rel));
        }
        let train_idx = index_tensor(&sp.train, Device::Cpu);

        for &h in &cfg.hemispheres {
            let fmri = subject.fmri(h)?;
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
            let y_all = ridge::matrix_to_tensor(fmri.view());
            let y = y_all
                .index_select(0, &train_idx)
                .index_select(1, &index_tensor(&union, Device::Cpu))
                .to_device(device);

            let ridge_cfg = RidgeCvConfig {
                alphas: cfg.alphas.clone(),
                folds: cfg.folds,
                per_voxel: true,
                ..RidgeCvConfig::default()
            };
            let bar = ProgressBar::new(taps.len() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} ridge CV {pos}/{len} taps {wide_bar} {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("{} {h}", subject.name));
            let mut fits = Vec::new();
            for tap in &taps {
                let (z, _, _) = &pcs[tap];
                fits.push(TapFit {
                    tap: tap.clone(),
                    fit: ridge::ridge_cv(z, &y, &ridge_cfg, device)?,
                });
                bar.inc(1);
            }
            bar.finish_and_clear();

            for (roi, verts) in rois.iter().zip(&roi_vertices) {
                let cols = Tensor::from_slice(&verts.iter().map(|v| pos[v]).collect::<Vec<_>>())
                    .to_device(device);
                // Tap score: mean over the ROI's voxels of the CV score at the alpha
                // each would be fitted with (per voxel, or the ROI's shared alpha).
                let mut tap_scores = Vec::new();
                for tf in &fits {
                    let cv = tf
                        .fit
                        .cv_scores
                        .index_select(1, &cols)
                        .to_kind(Kind::Double);
                    let score = match cfg.alpha_mode {
                        AlphaMode::Voxel => {
                            cv.max_dim(0, false).0.mean(Kind::Double).double_value(&[])
                        }
                        AlphaMode::Roi => {
                            cv.mean_dim(1, false, Kind::Double).max().double_value(&[])
                        }
                    };
                    tap_scores.push((tf.tap.clone(), score as f32));
                }
                let best = tap_scores
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                    .map(|(i, _)| i)
                    .ok_or_else(|| EncodingError::Invalid("no taps to choose from".into()))?;
                let chosen = &fits[best];
                let (z, info, pca_rel) = &pcs[&chosen.tap];
                let (coef, intercept, alphas) = match cfg.alpha_mode {
                    AlphaMode::Voxel => {
                        let alphas: Vec<f64> = verts
                            .iter()
                            .map(|v| chosen.fit.alphas[pos[v] as usize])
                            .collect();
                        (
                            chosen.fit.coef.index_select(1, &cols),
                            chosen.fit.intercept.index_select(0, &cols),
                            alphas,
                        )
                    }
                    AlphaMode::Roi => {
                        // The same selection (and tie rule) as everywhere else, on this
                        // ROI's columns only.
                        let roi_scores = chosen.fit.cv_scores.index_select(1, &cols);
                        let alphas: Vec<f64> =
                            ridge::select_alphas(&roi_scores, &cfg.alphas, false)?
                                .into_iter()
                                .take(1)
                                .cycle()
                                .take(verts.len())
                                .collect();
                        let y_roi = y.index_select(1, &cols);
                        let w = ridge::solve_ridge_svd_per_voxel(
                            z,
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
                    weights_hash: weights_hash.clone(),
                    tap: chosen.tap.clone(),
                    pooling: info.pooling,
                    feature_dim: info.dim,
                    input_size: cfg.input_size,
                    pca_file: pca_rel.clone(),
                    pca_components: z.size()[1] as usize,
                    alpha_mode: cfg.alpha_mode,
                    alphas,
                    tap_cv_scores: tap_scores.clone(),
                    cv_score: tap_scores[best].1,
                    split_seed: cfg.split_seed,
                    heldout_fraction: cfg.heldout_fraction,
                    n_train_images: sp.train.len(),
                    method: cfg.label(),
                };
                store::save_encoder(run, &meta, &coef, &intercept)?;
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
        }
    }
    let record = FitRecord {
        config: cfg.clone(),
        selections,
    };
    store::write_json(&run.join("fit.json"), &record)?;
    Ok(record)
}
