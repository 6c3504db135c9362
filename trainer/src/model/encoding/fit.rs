//! `vcl fit`: tap features -> PCA -> ridge for subjects x hemispheres x ROIs, with the
//! tap and the alphas chosen by cross-validation inside the training split. The
//! held-out split is not touched here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::error::{EncodingError, Result};
use super::store::{self, AlphaMode, Encoder, EncoderMeta, FitConfig};
use crate::features::backbones::Backbone;
use crate::features::images::PixelCache;
use crate::features::{self, ExtractOptions, FeatureSpec, GridChoice, Pooling, TapFeatures};
use crate::model::fwrf::{self, FieldFit, FieldGrid, FieldLayout, FieldSearch};
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

/// Every (tap, grid) the config asks the CV to weigh.
pub fn candidates_of(cfg: &FitConfig) -> Vec<FeatureSpec> {
    let grids = if cfg.pool_grids.is_empty() {
        vec![GridChoice::Cap]
    } else {
        cfg.pool_grids.clone()
    };
    taps_of(cfg)
        .iter()
        .flat_map(|t| grids.iter().map(move |&g| FeatureSpec::new(t, g)))
        .collect()
}

/// A candidate's name in tables: the tap, followed by its grid when grids were a
/// choice (`features.6@4x4`, `features.6@full`).
pub fn candidate_label(cfg: &FitConfig, info: &features::TapInfo) -> String {
    if cfg.pool_grids.iter().all(|&g| g == GridChoice::Cap) {
        return info.tap.clone();
    }
    match info.pooling {
        Pooling::None => format!("{}@full", info.tap),
        Pooling::AdaptiveAvg { grid } => format!("{}@{grid}x{grid}", info.tap),
    }
}

/// Loads the backbone a config names.
pub fn load_backbone(cfg: &FitConfig, device: Device) -> Result<Backbone> {
    Ok(Backbone::load(cfg.arch, &cfg.weights(), device)?)
}

/// Which features of which images: `specs` for training-image `rows` of `subject`.
pub struct FeatureRequest<'a> {
    pub subject: &'a Subject,
    pub rows: &'a [usize],
    pub specs: &'a [FeatureSpec],
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
        specs,
    } = *request;
    let pixels = stages.time("decode", || {
        PixelCache::build_or_load(
            &subject.train_images,
            cfg.input_size,
            &cache_dir.join("pixels"),
        )
    })?;
    let opts = ExtractOptions {
        batch_size: cfg.batch_size,
        max_dim: cfg.max_feature_dim,
        cache_dir: Some(cache_dir.join("features")),
    };
    let extraction = stages.time("features", || {
        features::extract(backbone, &pixels, rows, specs, &opts)
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
    check_encoder_flags(cfg)?;
    let ds = Dataset::open(&cfg.data_dir)?;
    std::fs::create_dir_all(run).map_err(|e| EncodingError::file(run, e))?;
    let specs = candidates_of(cfg);
    let backbone = load_backbone(cfg, device)?;
    let weights_hash = backbone.weights_hash();
    let mut selections = Vec::new();
    let mut stages = Stages::default();

    for subject_name in &cfg.subjects {
        let subject = ds.subject(subject_name)?;
        let n = subject.train_images.len();
        let sp = split::holdout(n, cfg.heldout_fraction, cfg.split_seed)
            .limit_train(cfg.train_images, cfg.split_seed)
            .map_err(|e| EncodingError::Invalid(format!("{}: {e}", subject.name)))?;
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
            specs: &specs,
        };
        let feats = subject_features(cfg, &backbone, &request, cache_dir, &mut stages)?;
        let job = SubjectFit {
            cfg,
            run,
            subject: &subject,
            train: &sp.train,
            weights_hash: &weights_hash,
            device,
        };
        if cfg.encoder == Encoder::Fwrf {
            // Every listed tap must be a conv tap; of the backbone's defaults, the
            // vector taps are left out.
            let maps: Vec<TapFeatures> = feats
                .into_iter()
                .filter(|tf| !cfg.taps.is_empty() || tf.info.map_shape.len() == 3)
                .collect();
            for &h in &cfg.hemispheres {
                let fitted = stages.time("fwrf", || job.fwrf_hemisphere(h, &maps))?;
                selections.extend(fitted);
            }
            continue;
        }
        let mut projected: BTreeMap<String, Projected> = BTreeMap::new();
        // Candidates in the order asked; grids that pool a map alike (a vector tap at
        // every grid, a grid the cap already makes) are one candidate.
        let mut candidates: Vec<String> = Vec::new();
        for tf in &feats {
            let label = candidate_label(cfg, &tf.info);
            if candidates.contains(&label) {
                continue;
            }
            let p = stages.time("pca", || -> Result<Projected> {
                let x = tf.tensor()?.to_device(device);
                let k = cfg.pca_components.min(sp.train.len() - 1);
                let pca = ridge::fit_pca_with(&x, k, cfg.pca_solver, device)?;
                let z = pca.transform(&x)?;
                let pca_file =
                    store::save_pca(run, &subject.name, &label, &pca.mean, &pca.components)?;
                tracing::info!(subject = %subject.name, candidate = %label, dim = tf.info.dim, components = pca.n_components(), "PCA fitted on the training split");
                Ok(Projected {
                    z,
                    info: tf.info.clone(),
                    pca_file,
                })
            })?;
            projected.insert(label.clone(), p);
            candidates.push(label);
        }
        for &h in &cfg.hemispheres {
            let fitted = stages.time("ridge", || job.hemisphere(h, &candidates, &projected))?;
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

/// One subject's training split, ready for each hemisphere's encoders.
struct SubjectFit<'a> {
    cfg: &'a FitConfig,
    run: &'a Path,
    subject: &'a Subject,
    train: &'a [usize],
    weights_hash: &'a str,
    device: Device,
}

/// Flags that only one encoder reads are refused with the other, so that a run never
/// records a choice it did not make.
fn check_encoder_flags(cfg: &FitConfig) -> Result<()> {
    if cfg.encoder != Encoder::Fwrf {
        return Ok(());
    }
    if cfg.alpha_mode != AlphaMode::Voxel {
        return Err(EncodingError::Invalid(
            "--encoder fwrf chooses one alpha per voxel, with its field: drop --alpha-mode roi"
                .into(),
        ));
    }
    if cfg.pool_grids.iter().any(|&g| g != GridChoice::Cap) {
        return Err(EncodingError::Invalid(
            "--encoder fwrf pools each voxel's own field on the tap's map (capped by \
             --max-feature-dim): --pool-grids is for --encoder pca-ridge"
                .into(),
        ));
    }
    if cfg.fwrf_positions == 0 || cfg.fwrf_sizes.is_empty() {
        return Err(EncodingError::Invalid(
            "--fwrf-positions must be at least 1 and --fwrf-sizes name at least one size".into(),
        ));
    }
    if let Some(bad) = cfg
        .fwrf_sizes
        .iter()
        .find(|s| !(s.is_finite() && **s > 0.0))
    {
        return Err(EncodingError::Invalid(format!(
            "--fwrf-sizes: {bad} is not a positive size (a fraction of the image side)"
        )));
    }
    Ok(())
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
    /// The hemisphere's ROIs, their vertices and the training rows' responses over the
    /// union of those vertices.
    fn targets(&self, h: Hemisphere) -> Result<Targets> {
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
        Ok(Targets {
            atlas,
            rois,
            roi_vertices,
            pos,
            y,
            cols,
        })
    }

    /// What every encoder of an ROI records, whatever reads its voxels.
    fn meta(&self, targets: &Targets, ri: usize, info: &features::TapInfo) -> EncoderMeta {
        let (cfg, verts) = (self.cfg, &targets.roi_vertices[ri]);
        EncoderMeta {
            subject: self.subject.name.clone(),
            hemisphere: targets.atlas.hemisphere,
            roi: targets.rois[ri].clone(),
            vertices: verts.clone(),
            fsaverage: targets
                .atlas
                .fsaverage
                .as_ref()
                .map(|f| verts.iter().map(|&v| f[v]).collect()),
            arch: cfg.arch,
            weights: cfg.weights(),
            weights_hash: self.weights_hash.to_string(),
            tap: info.tap.clone(),
            pooling: info.pooling,
            feature_dim: info.dim,
            input_size: cfg.input_size,
            pca_file: PathBuf::new(),
            pca_components: 0,
            fields: None,
            alpha_mode: cfg.alpha_mode,
            alphas: Vec::new(),
            tap_cv_scores: Vec::new(),
            cv_score: f32::NAN,
            split_seed: cfg.split_seed,
            heldout_fraction: cfg.heldout_fraction,
            n_train_images: self.train.len(),
            method: cfg.label(),
        }
    }

    /// Writes an ROI's encoder and returns its line of the selection table.
    fn save(
        &self,
        meta: &EncoderMeta,
        label: &str,
        weights: (&Tensor, &Tensor),
    ) -> Result<Selection> {
        store::save_encoder(self.run, meta, weights.0, weights.1)?;
        tracing::info!(subject = %meta.subject, hemisphere = %meta.hemisphere, roi = %meta.roi, voxels = meta.vertices.len(), candidate = %label, encoder = %meta.encoder(), cv_r2 = meta.cv_score, "encoder fitted");
        Ok(Selection {
            subject: meta.subject.clone(),
            hemisphere: meta.hemisphere,
            roi: meta.roi.clone(),
            voxels: meta.vertices.len(),
            tap: label.to_string(),
            cv_score: meta.cv_score,
        })
    }

    /// fwRF: per conv tap, every voxel's field and alpha by CV; per ROI the tap whose
    /// mean CV score over the ROI's voxels is best; each ROI's encoder written.
    fn fwrf_hemisphere(&self, h: Hemisphere, feats: &[TapFeatures]) -> Result<Vec<Selection>> {
        let (cfg, device) = (self.cfg, self.device);
        let t = self.targets(h)?;
        let ridge_cfg = RidgeCvConfig {
            alphas: cfg.alphas.clone(),
            folds: cfg.folds,
            per_voxel: true,
            ..RidgeCvConfig::default()
        };
        let candidates = FieldGrid {
            positions: cfg.fwrf_positions,
            sizes: cfg.fwrf_sizes.clone(),
        }
        .candidates();
        let mut tap_scores: Vec<Vec<(String, f32)>> = vec![Vec::new(); t.rois.len()];
        let mut best: Vec<Option<(f32, usize, FieldFit)>> =
            (0..t.rois.len()).map(|_| None).collect();
        for (fi, tf) in feats.iter().enumerate() {
            let map = pooled_map(&tf.info)?;
            let maps = tf
                .tensor()?
                .view([self.train.len() as i64, map[0], map[1], map[2]]);
            let label = format!("{} {h} {}", self.subject.name, tf.info.tap);
            let search = FieldSearch {
                maps: &maps,
                y: &t.y,
                candidates: &candidates,
                ridge: &ridge_cfg,
                label: &label,
            };
            let fit = fwrf::fit_fields(&search, device)?;
            for (ri, c) in t.cols.iter().enumerate() {
                let score = fit
                    .scores
                    .index_select(0, c)
                    .mean(Kind::Double)
                    .double_value(&[]) as f32;
                tap_scores[ri].push((tf.info.tap.clone(), score));
                if best[ri].as_ref().is_some_and(|b| score < b.0) {
                    continue;
                }
                let idx = Vec::<i64>::try_from(&c.to_device(Device::Cpu)).map_err(|e| {
                    EncodingError::Tch {
                        what: "ROI columns".into(),
                        source: e,
                    }
                })?;
                best[ri] = Some((
                    score,
                    fi,
                    FieldFit {
                        fields: idx.iter().map(|&j| fit.fields[j as usize]).collect(),
                        scores: fit.scores.index_select(0, c),
                        alphas: idx.iter().map(|&j| fit.alphas[j as usize]).collect(),
                        weights: fit.weights.index_select(1, c),
                        intercept: fit.intercept.index_select(0, c),
                    },
                ));
            }
        }
        let mut selections = Vec::new();
        for ri in 0..t.rois.len() {
            let (score, fi, fit) = best[ri]
                .take()
                .ok_or_else(|| EncodingError::Invalid("no conv taps to choose from".into()))?;
            let info = &feats[fi].info;
            let mut meta = self.meta(&t, ri, info);
            meta.fields = Some(FieldLayout {
                map: pooled_map(info)?,
                fields: fit.fields,
            });
            meta.alphas = fit.alphas;
            meta.tap_cv_scores = tap_scores[ri].clone();
            meta.cv_score = score;
            selections.push(self.save(&meta, &info.tap, (&fit.weights, &fit.intercept))?);
        }
        Ok(selections)
    }

    /// Ridge CV of every candidate (tap and grid) over the union of the ROIs' vertices,
    /// the best chosen per ROI by its mean CV score, and each ROI's encoder written.
    fn hemisphere(
        &self,
        h: Hemisphere,
        taps: &[String],
        projected: &BTreeMap<String, Projected>,
    ) -> Result<Vec<Selection>> {
        let (cfg, subject, device) = (self.cfg, self.subject, self.device);
        let targets = &self.targets(h)?;
        let Targets {
            rois,
            roi_vertices,
            pos,
            y,
            cols,
            ..
        } = targets;
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
            let fit = ridge::ridge_cv(&projected[tap].z, y, &ridge_cfg, device)?;
            for (ri, (verts, c)) in roi_vertices.iter().zip(cols).enumerate() {
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
        for (ri, verts) in roi_vertices.iter().enumerate() {
            let chosen = best[ri]
                .take()
                .ok_or_else(|| EncodingError::Invalid("no taps to choose from".into()))?;
            let tap = &taps[chosen.tap];
            let p = &projected[tap];
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
                pca_file: p.pca_file.clone(),
                pca_components: p.z.size()[1] as usize,
                alphas,
                tap_cv_scores: tap_scores[ri].clone(),
                cv_score: chosen.score,
                ..self.meta(targets, ri, &p.info)
            };
            selections.push(self.save(&meta, tap, (&coef, &intercept))?);
        }
        Ok(selections)
    }
}

/// An ROI family's vertices and responses on one hemisphere (see [`SubjectFit::targets`]).
struct Targets {
    atlas: RoiAtlas,
    rois: Vec<String>,
    roi_vertices: Vec<Vec<usize>>,
    /// Vertex -> column of `y`.
    pos: BTreeMap<usize, i64>,
    /// [train rows, union of the ROIs' vertices]
    y: Tensor,
    /// Each ROI's columns of `y`.
    cols: Vec<Tensor>,
}

/// The [C, H, W] map a conv tap's features hold once pooled, which fwRF fields read.
fn pooled_map(info: &features::TapInfo) -> Result<[i64; 3]> {
    match (&info.map_shape[..], info.pooling) {
        (&[c, h, w], Pooling::None) => Ok([c, h, w]),
        (&[c, _, _], Pooling::AdaptiveAvg { grid }) => Ok([c, grid, grid]),
        (shape, _) => Err(EncodingError::Invalid(format!(
            "fwrf pools feature maps, but tap {} gives a vector {shape:?} per image: \
             choose conv taps (--taps)",
            info.tap
        ))),
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
