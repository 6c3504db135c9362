//! `manifest.json`: what a model in the repository computes, for whom, from what, and
//! how well: the typed, versioned contract between `vcl export` (writer) and
//! `vcl-serve` (reader).
//!
//! ```text
//! exports/<model-name>/<version>/model.onnx     images [N,3,H,W] -> voxels [N,V], roi_means [N,R]
//! exports/<model-name>/<version>/manifest.json  this schema
//! ```
//! Readers refuse a manifest whose `schema_version` they do not know, whose fields do
//! not parse or contradict each other, and whose `model_sha256` differs from the
//! model file next to it. Any change of meaning or layout bumps [`SCHEMA_VERSION`];
//! unknown fields are refused, so a typo cannot pass silently as "absent".

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ContractError;

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const MODEL_FILE: &str = "model.onnx";
/// The model's one input.
pub const INPUT_NAME: &str = "images";
/// Predicted responses, ROI after ROI: [N, V].
pub const VOXELS_OUTPUT: &str = "voxels";
/// Mean predicted response of each ROI: [N, R].
pub const ROI_MEANS_OUTPUT: &str = "roi_means";
/// The symbolic batch dimension's name in the model and in shapes here.
pub const BATCH_DIM: &str = "N";

/// ImageNet channel statistics the graph normalizes with (torchvision's).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub model: ModelInfo,
    /// Dataset subject folder name, e.g. `subj01`.
    pub subject: String,
    pub hemisphere: Hemisphere,
    /// In output order: ROI i owns `voxels[:, rois[i].slice.start..rois[i].slice.end]`
    /// and `roi_means[:, i]`. ROIs may overlap on the cortex (e.g. V1v and `early`),
    /// so a vertex can appear in several slices.
    pub rois: Vec<RoiSpec>,
    pub input: InputSpec,
    pub outputs: OutputsSpec,
    pub backbone: BackboneSpec,
    pub training: TrainingSpec,
    pub provenance: Provenance,
    /// How the export checked the written model against libtorch.
    pub verification: Verification,
    /// SHA-256 (lowercase hex) of `model.onnx`.
    pub model_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// e.g. `subj01-lh-untuned-mobilenet_v2`.
    pub name: String,
    /// The integer folder under `exports/<name>/`; the server serves the highest.
    pub version: u32,
    /// ONNX opset of the default domain the graph uses.
    pub opset: i64,
    /// ONNX IR version of the file.
    pub ir_version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Hemisphere {
    #[serde(rename = "lh")]
    Left,
    #[serde(rename = "rh")]
    Right,
}

impl Hemisphere {
    pub const BOTH: [Hemisphere; 2] = [Hemisphere::Left, Hemisphere::Right];

    /// `lh` / `rh`, as in the Algonauts file names.
    pub fn prefix(self) -> &'static str {
        match self {
            Hemisphere::Left => "lh",
            Hemisphere::Right => "rh",
        }
    }
}

impl std::fmt::Display for Hemisphere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.prefix())
    }
}

impl std::str::FromStr for Hemisphere {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lh" | "left" | "l" => Ok(Hemisphere::Left),
            "rh" | "right" | "r" => Ok(Hemisphere::Right),
            other => Err(format!("unknown hemisphere '{other}' (expected lh or rh)")),
        }
    }
}

/// A half-open range [start, end) of columns of the `voxels` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoxelSlice {
    pub start: usize,
    pub end: usize,
}

impl VoxelSlice {
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What was done to a tap's output before flattening (as the trainer's features).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pooling {
    /// Flattened as is.
    None,
    /// `adaptive_avg_pool2d(map, (grid, grid))`, then flattened.
    AdaptiveAvg { grid: i64 },
}

/// What reads an ROI's voxels off the backbone's tap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Encoder {
    /// The pooled, flattened tap -> PCA -> ridge (the paper's).
    #[default]
    PcaRidge,
    /// Feature-weighted receptive field: per voxel a 2-D Gaussian pooling field on the
    /// tap's maps (position and size chosen by CV), then ridge over the channels.
    Fwrf,
}

impl Encoder {
    pub fn name(self) -> &'static str {
        match self {
            Encoder::PcaRidge => "pca-ridge",
            Encoder::Fwrf => "fwrf",
        }
    }
}

impl std::fmt::Display for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AlphaMode {
    /// One ridge alpha per voxel, chosen by CV (himalaya's local alpha).
    Voxel,
    /// One alpha for the whole ROI (the paper's).
    Roi,
}

/// The ridge penalties of an ROI's voxels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlphaSummary {
    pub mode: AlphaMode,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl AlphaSummary {
    /// Summary of per-voxel alphas; None for an empty list.
    pub fn of(mode: AlphaMode, alphas: &[f64]) -> Option<Self> {
        let mut s: Vec<f64> = alphas.to_vec();
        s.sort_by(f64::total_cmp);
        let (&min, &max) = (s.first()?, s.last()?);
        let m = s.len() / 2;
        let median = if s.len().is_multiple_of(2) {
            (s[m - 1] + s[m]) / 2.0
        } else {
            s[m]
        };
        Some(AlphaSummary {
            mode,
            min,
            median,
            max,
        })
    }
}

/// Held-out scores of an ROI encoder (`vcl evaluate`'s evaluation/results.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiEvaluation {
    pub heldout_images: usize,
    pub mean_r: f32,
    pub median_r: f32,
    /// Share of voxels with r significantly above 0 (BH-FDR q = 0.05).
    pub frac_significant: f32,
    pub algonauts_mean: Option<f32>,
    pub algonauts_median: Option<f32>,
    pub mean_noise_ceiling: Option<f32>,
    /// r against the noiseless truth (in-silico data only).
    pub mean_r_truth: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoiSpec {
    /// As the trainer names it: `V1v`, `early`, `floc-faces`, `V2v+V2d`, `streams:early`.
    pub name: String,
    /// This ROI's columns of `voxels`.
    pub slice: VoxelSlice,
    /// Challenge-space vertex index of each column of the slice (the fMRI file's columns).
    pub vertices: Vec<u32>,
    /// fsaverage vertex index of each column, where the dataset maps them.
    pub fsaverage: Option<Vec<u32>>,
    /// Backbone tap the encoder reads (torchvision module name).
    pub tap: String,
    /// What reads the voxels off the tap (absent in manifests written before fwRF).
    #[serde(default)]
    pub encoder: Encoder,
    pub pooling: Pooling,
    /// Features per image after pooling and flattening (PCA input, or the maps the
    /// fields pool).
    pub feature_dim: usize,
    /// 0 for an fwRF encoder.
    pub pca_components: usize,
    pub alpha: AlphaSummary,
    /// Mean CV R^2 inside the training split at the chosen tap.
    pub cv_score: f32,
    /// Held-out scores, when the run was evaluated.
    pub evaluation: Option<RoiEvaluation>,
}

/// A dimension: fixed, or symbolic (the batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Symbolic(String),
}

impl Dim {
    pub fn batch() -> Self {
        Dim::Symbolic(BATCH_DIM.to_string())
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    /// ONNX element type name; always `float32` here.
    pub dtype: String,
    pub shape: Vec<Dim>,
}

/// How a client turns an image into the model's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeSpec {
    /// Square side the image is resized to (= height = width).
    pub size: u32,
    /// Resampling filter: `triangle` (bilinear with antialiasing, the image crate's
    /// Triangle filter, as the trainer resized every training image).
    pub filter: String,
    /// false: the whole image is resized, aspect ratio not kept (METHOD.md, what
    /// `vcl export` writes); true: the largest centred square is cut out first.
    pub crop: bool,
}

/// The resampling filters a manifest may name, as the image crate implements them
/// (the trainer resizes with the same crate, so a server resizes identically).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeFilter {
    Nearest,
    /// Bilinear with antialiasing: what `vcl export` writes.
    Triangle,
    CatmullRom,
    Gaussian,
    Lanczos3,
}

impl ResizeFilter {
    pub const NAMES: [&'static str; 5] =
        ["nearest", "triangle", "catmull_rom", "gaussian", "lanczos3"];

    pub fn parse(name: &str) -> Option<Self> {
        use ResizeFilter::*;
        Some(match name {
            "nearest" => Nearest,
            "triangle" => Triangle,
            "catmull_rom" => CatmullRom,
            "gaussian" => Gaussian,
            "lanczos3" => Lanczos3,
            _ => return None,
        })
    }
}

impl ResizeSpec {
    /// The filter (validated manifests always name a known one).
    pub fn filter(&self) -> ResizeFilter {
        ResizeFilter::parse(&self.filter).unwrap_or(ResizeFilter::Triangle)
    }
}

/// Normalization the graph applies itself: clients send [0, 1] RGB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizationSpec {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Always true: the first nodes compute (x - mean) / std.
    pub in_graph: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `images`, float32 [N, 3, H, W].
    pub tensor: TensorSpec,
    /// `NCHW`.
    pub layout: String,
    /// `RGB`.
    pub channels: String,
    /// Pixel values are 8-bit values / 255: [0, 1].
    pub value_range: [f32; 2],
    pub height: u32,
    pub width: u32,
    pub resize: ResizeSpec,
    pub normalization: NormalizationSpec,
}

impl TensorSpec {
    /// A float32 tensor (the only element type vcl's models use).
    pub fn float32(name: &str, shape: Vec<Dim>) -> Self {
        TensorSpec {
            name: name.to_string(),
            dtype: "float32".into(),
            shape,
        }
    }
}

impl InputSpec {
    /// What `vcl export` writes: float32 RGB [N, 3, size, size] in [0, 1], images
    /// resized to size x size without crop (bilinear with antialiasing), ImageNet
    /// normalization inside the graph.
    pub fn rgb_square(size: u32) -> Self {
        InputSpec {
            tensor: TensorSpec::float32(
                INPUT_NAME,
                vec![
                    Dim::batch(),
                    Dim::Fixed(3),
                    Dim::Fixed(size as u64),
                    Dim::Fixed(size as u64),
                ],
            ),
            layout: "NCHW".into(),
            channels: "RGB".into(),
            value_range: [0.0, 1.0],
            height: size,
            width: size,
            resize: ResizeSpec {
                size,
                filter: "triangle".into(),
                crop: false,
            },
            normalization: NormalizationSpec {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
                in_graph: true,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSpec {
    /// `voxels`, float32 [N, V].
    pub voxels: TensorSpec,
    /// `roi_means`, float32 [N, R].
    pub roi_means: TensorSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    /// torchvision name: alexnet, mobilenet_v2, resnet18, resnet50.
    pub arch: String,
    /// The trainer's weights hash (SHA-256 over sorted names, kinds, shapes, bytes).
    pub weights_hash: String,
    /// The weights file the encoders were fitted with, as the run recorded it.
    pub weights_file: String,
    /// Batch-norm folded into the preceding convolutions (eval statistics).
    pub batchnorm_folded: bool,
}

/// How the backbone was obtained before the encoders were fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// ImageNet weights as they are.
    Untuned,
    /// Fine-tuned by regressing the ROI's responses (the paper's baseline).
    Regression,
    /// Fine-tuned contrastively on one subject's ROI.
    Cl,
    /// Fine-tuned contrastively on several subjects pooled.
    Pooled,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::Untuned,
        Method::Regression,
        Method::Cl,
        Method::Pooled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Untuned => "untuned",
            Method::Regression => "regression",
            Method::Cl => "cl",
            Method::Pooled => "pooled",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    pub method: Method,
    /// The run's own name for it (`FitConfig.label`; the method's name by default).
    pub method_label: String,
    /// Share of the subject's training images held out for scoring.
    pub heldout_fraction: f64,
    /// Seed of the train / held-out split.
    pub split_seed: u64,
    /// Training-split images the PCA and ridge were fitted on.
    pub n_train_images: usize,
    /// The run's whole fit configuration (`fit.json`'s `config`), as written.
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `git rev-parse HEAD` of the exporting checkout, `+dirty` when it had changes.
    pub git_commit: Option<String>,
    /// SHA-256 over what of the dataset the model depends on (see the exporter).
    pub dataset_fingerprint: String,
    /// The seed that fixed the split (and so which images trained the model).
    pub seed: u64,
    /// The fit's run directory.
    pub run: String,
    /// vcl's version.
    pub exporter: String,
    /// Seconds since the Unix epoch.
    pub exported_at_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Held-out images run through ONNX Runtime and libtorch.
    pub images: usize,
    /// The largest |ort - libtorch| over both outputs.
    pub max_abs_diff: f64,
    /// The largest |ort - libtorch| / max(|libtorch|, output scale).
    pub max_rel_diff: f64,
    /// The export fails above this.
    pub tolerance: f64,
    /// The ONNX Runtime library that ran the model.
    pub runtime: String,
}

/// SHA-256 (lowercase hex) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, ContractError> {
    let mut h = Sha256::new();
    hash_file(&mut h, path)?;
    Ok(hex::encode(h.finalize()))
}

/// Feeds a file's bytes into `h`, 1 MiB at a time (the one streamed read of every
/// checksum and fingerprint: models, fMRI files).
pub fn hash_file(h: &mut Sha256, path: &Path) -> Result<(), ContractError> {
    let mut f = std::fs::File::open(path).map_err(|e| ContractError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ContractError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

impl Manifest {
    /// Total columns of the `voxels` output.
    pub fn n_voxels(&self) -> usize {
        self.rois.iter().map(|r| r.slice.len()).sum()
    }

    /// Reads, version-checks, parses and validates `dir/manifest.json`, then checks
    /// `dir/model.onnx` against `model_sha256`: what a server calls before serving.
    pub fn load(dir: &Path) -> Result<Self, ContractError> {
        let path = dir.join(MANIFEST_FILE);
        let manifest = Manifest::read(&path)?;
        manifest.verify_model(&dir.join(MODEL_FILE), &path)?;
        Ok(manifest)
    }

    /// Reads and validates a manifest file without looking at the model.
    pub fn read(path: &Path) -> Result<Self, ContractError> {
        let text = std::fs::read_to_string(path).map_err(|e| ContractError::io(path, e))?;
        Manifest::parse(&text, path)
    }

    /// Parses manifest text (`path` only names it in errors). The version is checked
    /// before the fields, so a newer schema is reported as such rather than as
    /// whatever field it renamed.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ContractError> {
        let parse_err = |field: String, reason: String| ContractError::ManifestParse {
            path: path.to_path_buf(),
            field,
            reason,
        };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| parse_err("(document)".into(), format!("not valid JSON: {e}")))?;
        match value.get("schema_version") {
            None => {
                return Err(parse_err(
                    "schema_version".into(),
                    "missing: is this a vcl manifest?".into(),
                ))
            }
            Some(v) if v.as_u64() == Some(SCHEMA_VERSION as u64) => {}
            Some(v) => {
                return Err(ContractError::UnknownSchemaVersion {
                    path: path.to_path_buf(),
                    found: v.to_string(),
                    supported: SCHEMA_VERSION,
                })
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let manifest: Manifest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            parse_err(field, e.into_inner().to_string())
        })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// Checks that the fields agree with each other and with the model contract
    /// (input `images` float32 [N,3,H,W], outputs `voxels` [N,V] and `roi_means` [N,R],
    /// ROI slices tiling [0, V) in order). `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ContractError> {
        let bad = |field: &str, reason: String| ContractError::ManifestInvalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        // serde_json writes NaN and infinities as null, which no reader takes back: a
        // non-finite number is refused here, before it is written.
        let finite = |field: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(bad(field, format!("{v} is not a finite number")))
            }
        };
        if self.schema_version != SCHEMA_VERSION {
            return Err(ContractError::UnknownSchemaVersion {
                path: path.to_path_buf(),
                found: self.schema_version.to_string(),
                supported: SCHEMA_VERSION,
            });
        }
        if self.model.name.is_empty()
            || self.model.name.contains(['/', '\\'])
            || self.model.name.starts_with('.')
        {
            return Err(bad(
                "model.name",
                format!("'{}' is not a folder name", self.model.name),
            ));
        }
        if self.model.version == 0 {
            return Err(bad("model.version", "versions start at 1".into()));
        }
        if self.rois.is_empty() {
            return Err(bad("rois", "a model covers at least one ROI".into()));
        }
        let mut next = 0;
        for (i, r) in self.rois.iter().enumerate() {
            let field = |f: &str| format!("rois[{i}].{f}");
            if r.slice.start != next || r.slice.end <= r.slice.start {
                return Err(bad(
                    &field("slice"),
                    format!(
                        "ROI '{}' has [{}, {}); slices must tile the voxels output in order, \
                         this one starting at {next} and non-empty",
                        r.name, r.slice.start, r.slice.end
                    ),
                ));
            }
            next = r.slice.end;
            if r.vertices.len() != r.slice.len() {
                return Err(bad(
                    &field("vertices"),
                    format!(
                        "{} vertices for a slice of {} voxels",
                        r.vertices.len(),
                        r.slice.len()
                    ),
                ));
            }
            if let Some(fs) = &r.fsaverage {
                if fs.len() != r.vertices.len() {
                    return Err(bad(
                        &field("fsaverage"),
                        format!(
                            "{} fsaverage indices for {} vertices",
                            fs.len(),
                            r.vertices.len()
                        ),
                    ));
                }
            }
            let a = &r.alpha;
            if !(a.min <= a.median && a.median <= a.max) {
                return Err(bad(
                    &field("alpha"),
                    format!(
                        "min {} <= median {} <= max {} does not hold",
                        a.min, a.median, a.max
                    ),
                ));
            }
            match (r.encoder, r.pca_components) {
                (Encoder::PcaRidge, 0) => {
                    return Err(bad(&field("pca_components"), "is 0".into()));
                }
                (Encoder::Fwrf, k) if k != 0 => {
                    return Err(bad(
                        &field("pca_components"),
                        format!("is {k}, but an fwrf encoder has no PCA"),
                    ));
                }
                _ => {}
            }
            let mut numbers = vec![
                ("alpha.min", a.min),
                ("alpha.median", a.median),
                ("alpha.max", a.max),
                ("cv_score", r.cv_score as f64),
            ];
            if let Some(e) = &r.evaluation {
                numbers.extend([
                    ("evaluation.mean_r", e.mean_r as f64),
                    ("evaluation.median_r", e.median_r as f64),
                    ("evaluation.frac_significant", e.frac_significant as f64),
                ]);
                for (name, v) in [
                    ("evaluation.algonauts_mean", e.algonauts_mean),
                    ("evaluation.algonauts_median", e.algonauts_median),
                    ("evaluation.mean_noise_ceiling", e.mean_noise_ceiling),
                    ("evaluation.mean_r_truth", e.mean_r_truth),
                ] {
                    numbers.extend(v.map(|v| (name, v as f64)));
                }
            }
            for (name, v) in numbers {
                finite(&field(name), v)?;
            }
        }
        let v = next as u64;
        let n_rois = self.rois.len() as u64;
        let ver = &self.verification;
        finite("verification.max_abs_diff", ver.max_abs_diff)?;
        finite("verification.max_rel_diff", ver.max_rel_diff)?;
        finite("verification.tolerance", ver.tolerance)?;
        finite("training.heldout_fraction", self.training.heldout_fraction)?;

        let inp = &self.input;
        let expect_input = TensorSpec {
            name: INPUT_NAME.into(),
            dtype: "float32".into(),
            shape: vec![
                Dim::batch(),
                Dim::Fixed(3),
                Dim::Fixed(inp.height as u64),
                Dim::Fixed(inp.width as u64),
            ],
        };
        if inp.tensor != expect_input {
            return Err(bad(
                "input.tensor",
                format!(
                    "expected {} {} [{}], found {} {} [{}]",
                    expect_input.name,
                    expect_input.dtype,
                    join(&expect_input.shape),
                    inp.tensor.name,
                    inp.tensor.dtype,
                    join(&inp.tensor.shape)
                ),
            ));
        }
        if inp.height == 0 || inp.width == 0 || inp.resize.size != inp.height {
            return Err(bad(
                "input.resize.size",
                format!(
                    "resize to {} for an input of {}x{}",
                    inp.resize.size, inp.height, inp.width
                ),
            ));
        }
        if inp.layout != "NCHW" {
            return Err(bad(
                "input.layout",
                format!("'{}': schema 1 models take NCHW", inp.layout),
            ));
        }
        if inp.channels != "RGB" {
            return Err(bad(
                "input.channels",
                format!("'{}': schema 1 models take RGB", inp.channels),
            ));
        }
        ResizeFilter::parse(&inp.resize.filter).ok_or_else(|| {
            bad(
                "input.resize.filter",
                format!(
                    "'{}' is not one of {}",
                    inp.resize.filter,
                    ResizeFilter::NAMES.join(", ")
                ),
            )
        })?;
        let [lo, hi] = inp.value_range;
        finite("input.value_range[0]", lo as f64)?;
        finite("input.value_range[1]", hi as f64)?;
        if lo >= hi {
            return Err(bad("input.value_range", format!("[{lo}, {hi}] is empty")));
        }
        for (i, (m, s)) in inp
            .normalization
            .mean
            .iter()
            .zip(&inp.normalization.std)
            .enumerate()
        {
            finite(&format!("input.normalization.mean[{i}]"), *m as f64)?;
            finite(&format!("input.normalization.std[{i}]"), *s as f64)?;
        }
        if !inp.normalization.in_graph {
            return Err(bad(
                "input.normalization.in_graph",
                "schema 1 models normalize inside the graph".into(),
            ));
        }
        if inp.normalization.std.iter().any(|&s| s <= 0.0) {
            return Err(bad(
                "input.normalization.std",
                format!("{:?} has a non-positive entry", inp.normalization.std),
            ));
        }
        for (field, spec, name, cols) in [
            ("outputs.voxels", &self.outputs.voxels, VOXELS_OUTPUT, v),
            (
                "outputs.roi_means",
                &self.outputs.roi_means,
                ROI_MEANS_OUTPUT,
                n_rois,
            ),
        ] {
            let expect = TensorSpec {
                name: name.into(),
                dtype: "float32".into(),
                shape: vec![Dim::batch(), Dim::Fixed(cols)],
            };
            if spec != &expect {
                return Err(bad(
                    field,
                    format!(
                        "expected {} {} [{}] (from the ROI slices), found {} {} [{}]",
                        expect.name,
                        expect.dtype,
                        join(&expect.shape),
                        spec.name,
                        spec.dtype,
                        join(&spec.shape)
                    ),
                ));
            }
        }
        let hex_ok = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok(&self.model_sha256) {
            return Err(bad(
                "model_sha256",
                format!("'{}' is not a SHA-256 hex digest", self.model_sha256),
            ));
        }
        Ok(())
    }

    /// Refuses a model file whose SHA-256 is not `model_sha256`, naming both.
    pub fn verify_model(&self, model: &Path, manifest_path: &Path) -> Result<(), ContractError> {
        if !model.is_file() {
            return Err(ContractError::io(
                model,
                format!(
                    "model file missing (the manifest {} describes it)",
                    manifest_path.display()
                ),
            ));
        }
        let actual = sha256_file(model)?;
        if !actual.eq_ignore_ascii_case(&self.model_sha256) {
            return Err(ContractError::ChecksumMismatch {
                model: model.to_path_buf(),
                manifest: manifest_path.to_path_buf(),
                expected: self.model_sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail; a NaN score
        // becomes null rather than an error (serde_json writes non-finite floats so).
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Writes `dir/manifest.json` (the caller publishes the folder atomically).
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ContractError> {
        let path = dir.join(MANIFEST_FILE);
        self.validate(&path)?;
        std::fs::write(&path, self.to_json()).map_err(|e| ContractError::io(&path, e))?;
        Ok(path)
    }
}

fn join(shape: &[Dim]) -> String {
    shape
        .iter()
        .map(Dim::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid two-ROI manifest for a model file with `sha`.
    pub(crate) fn sample(sha: &str) -> Manifest {
        let tensor = TensorSpec::float32;
        let roi = |name: &str, start: usize, end: usize| RoiSpec {
            name: name.into(),
            slice: VoxelSlice { start, end },
            vertices: (start as u32..end as u32).collect(),
            fsaverage: Some((start as u32 + 100..end as u32 + 100).collect()),
            tap: "features.6".into(),
            pooling: Pooling::AdaptiveAvg { grid: 4 },
            feature_dim: 512,
            encoder: Encoder::PcaRidge,
            pca_components: 10,
            alpha: AlphaSummary::of(AlphaMode::Voxel, &[1.0, 10.0, 100.0]).unwrap(),
            cv_score: 0.2,
            evaluation: None,
        };
        Manifest {
            schema_version: SCHEMA_VERSION,
            model: ModelInfo {
                name: "subj01-lh-untuned-mobilenet_v2".into(),
                version: 1,
                opset: 17,
                ir_version: 8,
            },
            subject: "subj01".into(),
            hemisphere: Hemisphere::Left,
            rois: vec![roi("V1v", 0, 3), roi("V1d", 3, 5)],
            input: InputSpec::rgb_square(64),
            outputs: OutputsSpec {
                voxels: tensor(VOXELS_OUTPUT, vec![Dim::batch(), Dim::Fixed(5)]),
                roi_means: tensor(ROI_MEANS_OUTPUT, vec![Dim::batch(), Dim::Fixed(2)]),
            },
            backbone: BackboneSpec {
                arch: "mobilenet_v2".into(),
                weights_hash: "ab".repeat(32),
                weights_file: "w.safetensors".into(),
                batchnorm_folded: true,
            },
            training: TrainingSpec {
                method: Method::Untuned,
                method_label: "untuned".into(),
                heldout_fraction: 0.15,
                split_seed: 0,
                n_train_images: 40,
                config: serde_json::json!({"input_size": 64}),
            },
            provenance: Provenance {
                git_commit: Some("0123abc".into()),
                dataset_fingerprint: "cd".repeat(32),
                seed: 0,
                run: "runs/x".into(),
                exporter: "vcl 0.1.0".into(),
                exported_at_unix: 0,
            },
            verification: Verification {
                images: 4,
                max_abs_diff: 1e-6,
                max_rel_diff: 1e-6,
                tolerance: 1e-4,
                runtime: "libonnxruntime.so.1.31.1".into(),
            },
            model_sha256: sha.into(),
        }
    }

    fn write_pair(dir: &Path, model: &[u8]) -> Manifest {
        std::fs::write(dir.join(MODEL_FILE), model).unwrap();
        let m = sample(&sha256_file(&dir.join(MODEL_FILE)).unwrap());
        m.write(dir).unwrap();
        m
    }

    #[test]
    fn round_trips_and_verifies_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let m = write_pair(dir.path(), b"onnx bytes");
        assert_eq!(Manifest::load(dir.path()).unwrap(), m);
        assert_eq!(m.n_voxels(), 5);
    }

    #[test]
    fn refuses_a_changed_model_naming_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let m = write_pair(dir.path(), b"onnx bytes");
        std::fs::write(dir.path().join(MODEL_FILE), b"onnx bytes, edited").unwrap();
        let e = Manifest::load(dir.path()).unwrap_err().to_string();
        let actual = sha256_file(&dir.path().join(MODEL_FILE)).unwrap();
        assert!(
            e.contains(&m.model_sha256) && e.contains(&actual) && e.contains("model.onnx"),
            "{e}"
        );
    }

    #[test]
    fn refuses_unknown_versions_and_bad_fields_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), b"x");
        let path = dir.path().join(MANIFEST_FILE);
        let good = std::fs::read_to_string(&path).unwrap();

        let v2 = good.replacen("\"schema_version\": 1", "\"schema_version\": 2", 1);
        let e = Manifest::parse(&v2, &path).unwrap_err().to_string();
        assert!(
            e.contains("schema_version 2") && e.contains("manifest.json"),
            "{e}"
        );

        let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
        doc["rois"][1]["slice"]["end"] = serde_json::json!("five");
        let e = Manifest::parse(&doc.to_string(), &path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rois[1].slice.end") && e.contains("manifest.json"),
            "{e}"
        );

        let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
        doc["rois"][1]["slice"]["start"] = serde_json::json!(2);
        let e = Manifest::parse(&doc.to_string(), &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rois[1].slice"), "{e}");

        let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
        doc["outputs"]["voxels"]["shape"][1] = serde_json::json!(6);
        let e = Manifest::parse(&doc.to_string(), &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outputs.voxels"), "{e}");

        let e = Manifest::parse("{\"schema_version\": 1, \"modle\": 3}", &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("modle"), "{e}");
        let e = Manifest::parse("not json", &path).unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    /// A NaN score once made a manifest that no reader took back (serde_json writes it
    /// as null): writing refuses it, naming the field, and so do unknown preprocessing.
    #[test]
    fn refuses_non_finite_numbers_and_unknown_preprocessing() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_pair(dir.path(), b"x");
        let path = dir.path().join(MANIFEST_FILE);
        type Spoil = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Spoil)> = vec![
            (
                "rois[0].cv_score",
                Box::new(|m| m.rois[0].cv_score = f32::NAN),
            ),
            (
                "rois[1].alpha.max",
                Box::new(|m| m.rois[1].alpha.max = f64::INFINITY),
            ),
            (
                "verification.max_abs_diff",
                Box::new(|m| m.verification.max_abs_diff = f64::NAN),
            ),
            (
                "input.value_range[1]",
                Box::new(|m| m.input.value_range[1] = f32::INFINITY),
            ),
            (
                "input.value_range",
                Box::new(|m| m.input.value_range = [1.0, 0.0]),
            ),
            ("input.layout", Box::new(|m| m.input.layout = "NHWC".into())),
            (
                "input.channels",
                Box::new(|m| m.input.channels = "BGR".into()),
            ),
            (
                "input.resize.filter",
                Box::new(|m| m.input.resize.filter = "bicubic".into()),
            ),
        ];
        for (field, spoil) in cases {
            let mut m = good.clone();
            spoil(&mut m);
            let e = m.write(dir.path()).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        // What was on disk before the refused writes is intact.
        assert_eq!(Manifest::load(dir.path()).unwrap(), good);
        let mut doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        doc["rois"][0]["cv_score"] = serde_json::Value::Null;
        let e = Manifest::parse(&doc.to_string(), &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rois[0].cv_score"), "{e}");
        for f in ResizeFilter::NAMES {
            assert!(ResizeFilter::parse(f).is_some());
        }
    }

    #[test]
    fn alpha_summary() {
        let a = AlphaSummary::of(AlphaMode::Roi, &[10.0, 1.0, 100.0, 1000.0]).unwrap();
        assert_eq!((a.min, a.median, a.max), (1.0, 55.0, 1000.0));
        assert!(AlphaSummary::of(AlphaMode::Roi, &[]).is_none());
    }
}
