//! A fit's run directory: what `vcl fit` writes and `vcl evaluate` / `vcl export` read.
//!
//! ```text
//! RUN/fit.json                                   FitConfig + tap-selection table
//! RUN/encoders/<subject>/pca/<tap>.safetensors  mean [D], components [D, k]
//! RUN/encoders/<subject>/<hemi>/<roi>.safetensors  coef [k, V], intercept [V]
//! RUN/encoders/<subject>/<hemi>/<roi>.json      EncoderMeta
//! ```
//! A PCA belongs to (subject, tap): both hemispheres share the subject's split, so one
//! PCA serves every ROI encoder of that tap.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::error::{EncodingError, Result};
use crate::features::backbones::Arch;
use crate::features::Pooling;
use crate::model::ridge;
pub use vcl_contract::manifest::{Encoder, Method};
use vcl_dataset::algonauts::Hemisphere;

/// How alphas are chosen: per voxel (himalaya's local alpha) or one per ROI (the
/// paper's); the manifest's type.
pub use vcl_contract::manifest::AlphaMode;

/// Everything that determines a fit: `vcl fit`'s flags, defined once. Written to
/// `fit.json` [resolved](FitConfig::resolved) (absolute data folder, subjects and
/// weights filled in) so evaluation and export redo exactly the same extraction.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct FitConfig {
    /// Dataset folder (Algonauts 2023 layout).
    #[arg(long = "data")]
    pub data_dir: PathBuf,
    /// Subjects (comma-separated: 1,2 or subj01,subj02); default: all.
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<String>,
    /// Hemispheres (lh, rh).
    #[arg(long, value_delimiter = ',', default_value = "lh,rh")]
    pub hemispheres: Vec<Hemisphere>,
    /// ROIs (comma-separated; `+` joins a union; see `algonauts::rois`); default: every
    /// non-empty ROI of every family.
    #[arg(long, value_delimiter = ',')]
    pub rois: Vec<String>,
    #[arg(long = "backbone", default_value = "mobilenet_v2")]
    pub arch: Arch,
    /// Backbone weights (safetensors, torchvision names): pretrained or fine-tuned;
    /// default: the installed ImageNet weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Taps to choose from (default: all of the backbone's).
    #[arg(long, value_delimiter = ',')]
    pub taps: Vec<String>,
    /// Input size in pixels (224 as in the paper; smaller is faster on CPU).
    #[arg(long, default_value_t = 224)]
    pub input_size: u32,
    #[arg(long = "pca", default_value_t = 1000)]
    pub pca_components: usize,
    /// How PCA decomposes each tap's features: auto (exact below ~67M values or when k
    /// nears min(n, d), randomized above), randomized, or an exact route (svd,
    /// row-gram, feature-gram).
    #[arg(long, value_enum, default_value = "auto")]
    #[serde(default)]
    pub pca_solver: crate::model::ridge::PcaSolver,
    /// Ridge alphas (default: logspace(-1, 7, 9)).
    #[arg(long, value_delimiter = ',', default_values_t = ridge::default_alphas())]
    pub alphas: Vec<f64>,
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// One alpha per voxel (default) or one per ROI (the paper's).
    #[arg(long, value_enum, default_value = "voxel")]
    pub alpha_mode: AlphaMode,
    #[arg(long = "heldout", default_value_t = 0.15)]
    pub heldout_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Fit on only this many of the training images (a random subset by --split-seed,
    /// nested across sizes; the held-out part unchanged): a point of a data-size curve.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<usize>,
    /// Conv taps with more values per image are average-pooled to a coarser grid.
    #[arg(long, default_value = "16384")]
    pub max_feature_dim: Option<usize>,
    /// Pooling grids each conv tap is tried at (cap: the largest that fits
    /// --max-feature-dim; full: the whole map; g: average-pooled to g x g, e.g.
    /// 1,2,4,8,cap): every (tap, grid) is a candidate of the CV that picks the tap.
    #[arg(long, value_delimiter = ',', default_value = "cap")]
    #[serde(default = "default_pool_grids")]
    pub pool_grids: Vec<crate::features::GridChoice>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// What reads each ROI's voxels off a tap: PCA + ridge (the paper's), or a
    /// feature-weighted receptive field per voxel (fwrf: a Gaussian pooling field on a
    /// conv tap's maps, position and size chosen by CV, then ridge over the channels).
    #[arg(long, value_enum, default_value = "pca-ridge")]
    #[serde(default)]
    pub encoder: Encoder,
    /// fwrf: field centres on an n x n lattice over the image.
    #[arg(long, default_value_t = 12)]
    #[serde(default = "default_fwrf_positions")]
    pub fwrf_positions: usize,
    /// fwrf: field sizes (Gaussian sd as a fraction of the image side).
    #[arg(long, value_delimiter = ',', default_values_t = default_fwrf_sizes())]
    #[serde(default = "default_fwrf_sizes")]
    pub fwrf_sizes: Vec<f64>,
    /// How the backbone was trained (untuned, cl, regression, pooled): the manifest's
    /// provenance.
    #[arg(long, value_enum, default_value = "untuned")]
    pub method: Method,
    /// The run's name in reports and model names (default: the method's).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

fn default_fwrf_positions() -> usize {
    12
}

fn default_fwrf_sizes() -> Vec<f64> {
    vec![0.02, 0.04, 0.08, 0.16, 0.32]
}

fn default_pool_grids() -> Vec<crate::features::GridChoice> {
    vec![crate::features::GridChoice::Cap]
}

impl FitConfig {
    /// The weights the backbone loads: the given file, or the installed ImageNet ones.
    pub fn weights(&self) -> PathBuf {
        self.weights
            .clone()
            .unwrap_or_else(|| vcl_dataset::paths::weights_dir().join(self.arch.weights_file()))
    }

    /// The run's name in reports: the label, or the method's name.
    pub fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| self.method.name().to_string())
    }

    /// What `fit.json` records: the data folder absolute (evaluate and export work from
    /// any directory), every subject of the dataset when none was named, the weights
    /// file that was used.
    pub fn resolved(&self) -> Result<FitConfig> {
        let data_dir = std::fs::canonicalize(&self.data_dir)
            .map_err(|e| EncodingError::file(&self.data_dir, e))?;
        let subjects = if self.subjects.is_empty() {
            vcl_dataset::algonauts::Dataset::open(&data_dir)?.subjects
        } else {
            self.subjects.clone()
        };
        Ok(FitConfig {
            data_dir,
            subjects,
            weights: Some(self.weights()),
            ..self.clone()
        })
    }
}

/// One ROI encoder's description.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderMeta {
    pub subject: String,
    pub hemisphere: Hemisphere,
    pub roi: String,
    /// Challenge-space vertex indices of the ROI, the columns the encoder predicts.
    pub vertices: Vec<usize>,
    /// fsaverage indices of those vertices, where the dataset maps them.
    pub fsaverage: Option<Vec<usize>>,
    pub arch: Arch,
    pub weights: PathBuf,
    pub weights_hash: String,
    pub tap: String,
    pub pooling: Pooling,
    pub feature_dim: usize,
    pub input_size: u32,
    /// Relative to the run directory (empty for an fwRF encoder).
    pub pca_file: PathBuf,
    /// 0 for an fwRF encoder.
    pub pca_components: usize,
    /// An fwRF encoder's maps and per-voxel fields; its `coef` is then the channel
    /// weights [C, V]. Absent: PCA + ridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<crate::model::fwrf::FieldLayout>,
    pub alpha_mode: AlphaMode,
    /// The alpha of each voxel.
    pub alphas: Vec<f64>,
    /// Mean CV score (R^2) inside the training split of each tap tried, and of the chosen.
    pub tap_cv_scores: Vec<(String, f32)>,
    pub cv_score: f32,
    pub split_seed: u64,
    pub heldout_fraction: f64,
    pub n_train_images: usize,
    pub method: String,
}

impl EncoderMeta {
    /// What reads the voxels off the tap.
    pub fn encoder(&self) -> Encoder {
        if self.fields.is_some() {
            Encoder::Fwrf
        } else {
            Encoder::PcaRidge
        }
    }
}

/// A stored PCA.
pub struct StoredPca {
    /// [D]
    pub mean: Tensor,
    /// [D, k]
    pub components: Tensor,
}

pub fn safe_name(roi: &str) -> String {
    roi.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '+' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn pca_rel_path(subject: &str, tap: &str) -> PathBuf {
    PathBuf::from("encoders")
        .join(subject)
        .join("pca")
        .join(format!("{}.safetensors", safe_name(tap)))
}

pub fn encoder_rel_path(subject: &str, h: Hemisphere, roi: &str) -> PathBuf {
    PathBuf::from("encoders")
        .join(subject)
        .join(h.prefix())
        .join(safe_name(roi))
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| EncodingError::file(p, e))?;
    }
    Ok(())
}

/// Writes tensors atomically (tmp + rename) so a killed run never leaves a half file.
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    ensure_parent(path)?;
    let tmp = path.with_extension("safetensors.partial");
    let cpu: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                *n,
                t.to_device(Device::Cpu)
                    .to_kind(tch::Kind::Float)
                    .contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&cpu, &tmp).map_err(|e| EncodingError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EncodingError::file(path, e))
}

pub fn read_tensors(path: &Path, names: &[&str]) -> Result<Vec<Tensor>> {
    if !path.exists() {
        return Err(EncodingError::file(path, "does not exist"));
    }
    let all = Tensor::read_safetensors(path).map_err(|e| EncodingError::file(path, e))?;
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|(k, _)| k == n)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| EncodingError::file(path, format!("tensor '{n}' is missing")))
        })
        .collect()
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    ensure_parent(path)?;
    let text = serde_json::to_string_pretty(value).map_err(|e| EncodingError::file(path, e))?;
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, text).map_err(|e| EncodingError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EncodingError::file(path, e))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EncodingError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| EncodingError::file(path, format!("invalid JSON: {e}")))
}

pub fn save_pca(
    run: &Path,
    subject: &str,
    tap: &str,
    mean: &Tensor,
    components: &Tensor,
) -> Result<PathBuf> {
    let rel = pca_rel_path(subject, tap);
    write_tensors(
        &run.join(&rel),
        &[("mean", mean), ("components", components)],
    )?;
    Ok(rel)
}

pub fn load_pca(run: &Path, rel: &Path) -> Result<StoredPca> {
    let mut t = read_tensors(&run.join(rel), &["mean", "components"])?;
    let components = t
        .pop()
        .ok_or_else(|| EncodingError::Invalid("pca components".into()))?;
    let mean = t
        .pop()
        .ok_or_else(|| EncodingError::Invalid("pca mean".into()))?;
    Ok(StoredPca { mean, components })
}

/// A stored ROI encoder: its description and its ridge weights.
pub struct StoredEncoder {
    pub meta: EncoderMeta,
    /// [k, V]
    pub coef: Tensor,
    /// [V]
    pub intercept: Tensor,
}

pub fn save_encoder(
    run: &Path,
    meta: &EncoderMeta,
    coef: &Tensor,
    intercept: &Tensor,
) -> Result<()> {
    let base = run.join(encoder_rel_path(&meta.subject, meta.hemisphere, &meta.roi));
    write_tensors(
        &base.with_extension("safetensors"),
        &[("coef", coef), ("intercept", intercept)],
    )?;
    write_json(&base.with_extension("json"), meta)
}

/// Every encoder of a run directory, in a stable order (subject, hemisphere, ROI file).
pub fn load_encoders(run: &Path) -> Result<Vec<StoredEncoder>> {
    let root = run.join("encoders");
    if !root.is_dir() {
        return Err(EncodingError::file(
            &root,
            "no encoders here: is this a `vcl fit` run directory?",
        ));
    }
    let mut metas = Vec::new();
    for subject in sorted_dirs(&root)? {
        for h in Hemisphere::BOTH {
            let dir = subject.join(h.prefix());
            if !dir.is_dir() {
                continue;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| EncodingError::file(&dir, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            metas.extend(files);
        }
    }
    let mut out = Vec::with_capacity(metas.len());
    for path in metas {
        let meta: EncoderMeta = read_json(&path)?;
        let mut t = read_tensors(&path.with_extension("safetensors"), &["coef", "intercept"])?;
        let intercept = t
            .pop()
            .ok_or_else(|| EncodingError::Invalid("intercept".into()))?;
        let coef = t
            .pop()
            .ok_or_else(|| EncodingError::Invalid("coef".into()))?;
        // Ridge coefficients per PCA component, or fwRF channel weights per channel.
        let rows = match &meta.fields {
            Some(layout) => {
                if layout.fields.len() != meta.vertices.len() {
                    return Err(EncodingError::file(
                        &path,
                        format!(
                            "{} fields for {} vertices",
                            layout.fields.len(),
                            meta.vertices.len()
                        ),
                    ));
                }
                layout.map[0]
            }
            None => meta.pca_components as i64,
        };
        if coef.size() != [rows, meta.vertices.len() as i64] {
            return Err(EncodingError::file(
                &path,
                format!(
                    "coef has shape {:?}, expected [{rows}, {}]",
                    coef.size(),
                    meta.vertices.len()
                ),
            ));
        }
        out.push(StoredEncoder {
            meta,
            coef,
            intercept,
        });
    }
    Ok(out)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EncodingError::file(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}
