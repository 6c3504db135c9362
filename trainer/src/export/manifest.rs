//! The manifest of a model: what the bundle, the built graph, the check against
//! libtorch and the run's provenance say, in the contract's schema.

use std::time::{SystemTime, UNIX_EPOCH};

use super::error::ExportError;
use super::graph::{IR_VERSION, OPSET};
use super::model::{BuiltModel, Comparison};
use super::run::{encoder_json, Bundle, RunContents};
use crate::features::backbones::Arch;
use crate::model::encoding::evaluate::RoiResult;
use vcl_contract::manifest::{
    self as contract, AlphaSummary, BackboneSpec, Dim, InputSpec, Manifest, ModelInfo, OutputsSpec,
    Provenance, RoiEvaluation, RoiSpec, TensorSpec, TrainingSpec, Verification, VoxelSlice,
};

fn to_u32(v: &[usize], what: &str) -> Result<Vec<u32>, ExportError> {
    v.iter()
        .map(|&i| {
            u32::try_from(i)
                .map_err(|_| ExportError::Invalid(format!("{what} index {i} exceeds u32")))
        })
        .collect()
}

/// Held-out scores of an ROI, if the run was evaluated and they are all finite (a
/// manifest stores numbers, and JSON has no NaN).
fn roi_evaluation(r: &RoiResult) -> Option<RoiEvaluation> {
    let s = &r.scores;
    let finite = |v: Option<f32>| v.filter(|x| x.is_finite());
    (s.mean_r.is_finite() && s.median_r.is_finite() && s.frac_significant.is_finite()).then(|| {
        RoiEvaluation {
            heldout_images: r.heldout_images,
            mean_r: s.mean_r,
            median_r: s.median_r,
            frac_significant: s.frac_significant,
            algonauts_mean: finite(s.algonauts_mean),
            algonauts_median: finite(s.algonauts_median),
            mean_noise_ceiling: finite(s.mean_noise_ceiling),
            mean_r_truth: finite(s.mean_r_truth),
        }
    })
}

/// What the manifest needs beyond the bundle and the built model.
pub(super) struct ManifestParts<'a> {
    pub(super) contents: &'a RunContents,
    pub(super) bundle: &'a Bundle,
    pub(super) built: &'a BuiltModel,
    pub(super) comparison: &'a Comparison,
    pub(super) images: usize,
    pub(super) fingerprint: String,
    pub(super) git_commit: Option<String>,
    pub(super) model_sha256: String,
    pub(super) tolerance: f64,
    pub(super) runtime: String,
}

pub(super) fn manifest(p: &ManifestParts) -> Result<Manifest, ExportError> {
    let cfg = &p.contents.record.config;
    let float = TensorSpec::float32;
    let mut rois = Vec::with_capacity(p.bundle.encoders.len());
    for (j, &i) in p.bundle.encoders.iter().enumerate() {
        let e = &p.contents.encoders[i];
        let m = &e.meta;
        let sl = &p.built.slices[j];
        let alpha = AlphaSummary::of(m.alpha_mode, &m.alphas).ok_or_else(|| {
            ExportError::file(&encoder_json(&p.contents.run, e), "alphas is empty")
        })?;
        let evaluation = p.contents.evaluation.as_ref().and_then(|ev| {
            ev.results
                .iter()
                .find(|r| r.subject == m.subject && r.hemisphere == m.hemisphere && r.roi == m.roi)
                .and_then(roi_evaluation)
        });
        rois.push(RoiSpec {
            name: m.roi.clone(),
            slice: VoxelSlice {
                start: sl.start,
                end: sl.end,
            },
            vertices: to_u32(&m.vertices, "vertex")?,
            fsaverage: m
                .fsaverage
                .as_deref()
                .map(|f| to_u32(f, "fsaverage"))
                .transpose()?,
            tap: m.tap.clone(),
            encoder: m.encoder(),
            pooling: m.pooling,
            feature_dim: p.built.feature_dims[j],
            pca_components: m.pca_components,
            alpha,
            cv_score: m.cv_score,
            evaluation,
        });
    }
    let size = cfg.input_size;
    let first = &p.contents.encoders[p.bundle.encoders[0]].meta;
    Ok(Manifest {
        schema_version: contract::SCHEMA_VERSION,
        model: ModelInfo {
            name: p.bundle.name.clone(),
            // Set when the folder is published.
            version: 1,
            opset: OPSET,
            ir_version: IR_VERSION,
        },
        subject: p.bundle.subject.clone(),
        hemisphere: p.bundle.hemisphere,
        input: InputSpec::rgb_square(size),
        outputs: OutputsSpec {
            voxels: float(
                contract::VOXELS_OUTPUT,
                vec![Dim::batch(), Dim::Fixed(p.built.n_voxels() as u64)],
            ),
            roi_means: float(
                contract::ROI_MEANS_OUTPUT,
                vec![Dim::batch(), Dim::Fixed(rois.len() as u64)],
            ),
        },
        rois,
        backbone: BackboneSpec {
            arch: cfg.arch.name().into(),
            weights_hash: first.weights_hash.clone(),
            weights_file: cfg.weights().display().to_string(),
            batchnorm_folded: cfg.arch != Arch::AlexNet,
        },
        training: TrainingSpec {
            method: p.contents.method,
            method_label: cfg.label(),
            heldout_fraction: cfg.heldout_fraction,
            split_seed: cfg.split_seed,
            n_train_images: first.n_train_images,
            config: serde_json::to_value(cfg).map_err(|e| ExportError::Invalid(e.to_string()))?,
        },
        provenance: Provenance {
            git_commit: p.git_commit.clone(),
            dataset_fingerprint: p.fingerprint.clone(),
            seed: cfg.split_seed,
            run: p.contents.run.display().to_string(),
            exporter: format!("vcl {}", env!("CARGO_PKG_VERSION")),
            exported_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
        verification: Verification {
            images: p.images,
            max_abs_diff: p.comparison.max_abs,
            max_rel_diff: p.comparison.max_rel,
            tolerance: p.tolerance,
            runtime: p.runtime.clone(),
        },
        model_sha256: p.model_sha256.clone(),
    })
}
