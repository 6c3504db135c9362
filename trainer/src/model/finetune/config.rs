//! What determines a fine-tuning run: every hyperparameter of METHOD.md, with the
//! paper's values as defaults, plus the options beyond the paper (all off by default).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FinetuneError;
use crate::device::Precision;
use crate::features::backbones::Arch;
use vcl_dataset::algonauts::Hemisphere;

/// What fine-tuning optimizes: the paper's contrastive objective or its regression
/// baseline. Not the manifest's `Method`, which says how a fitted backbone came to be
/// (untuned, regression, cl, pooled): a CL run on several subjects is `pooled` there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
pub enum Objective {
    /// The paper's contrastive (InfoNCE) objective between image and fMRI embeddings.
    #[value(name = "cl")]
    #[serde(rename = "cl")]
    Cl,
    /// The paper's baseline: regress the responses from the logits (MSE).
    #[value(name = "regression")]
    #[serde(rename = "regression")]
    Regression,
}

impl Objective {
    pub fn name(self) -> &'static str {
        match self {
            Objective::Cl => "cl",
            Objective::Regression => "regression",
        }
    }

    /// METHOD.md: 30 epochs for CL, 75 for the regression baseline.
    pub fn default_epochs(self) -> usize {
        match self {
            Objective::Cl => 30,
            Objective::Regression => 75,
        }
    }

    /// METHOD.md: Adam lr 1e-4 for CL, 2.5e-5 for the regression baseline.
    pub fn default_lr(self) -> f64 {
        match self {
            Objective::Cl => 1e-4,
            Objective::Regression => 2.5e-5,
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A preset of the batch size, epochs, learning-rate schedule and weight selection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// METHOD.md as written: the flags as given (batch 1024, 30 / 75 epochs, constant
    /// learning rate, the last epoch's weights).
    #[default]
    Paper,
    /// Scaled to the data: batch = n/16 rounded down to a power of two in [32, 256],
    /// `steps` optimizer steps (epochs follow), linear warm-up then cosine decay, and
    /// the weights of the epoch with the best validation score. With a few hundred
    /// images the paper's "batch 1024, 30 epochs" is 30 optimizer steps; this is
    /// hundreds. Overrides --batch-size, --epochs, --lr-schedule and --select.
    Auto,
}

/// How the learning rate moves over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The paper's: `lr` throughout.
    #[default]
    Constant,
    /// Linear warm-up from 0 over `warmup_fraction` of the steps, then cosine decay to 0.
    Cosine,
}

impl LrSchedule {
    /// The learning rate of step `step` (0-based) of `total`, peaking at `peak`.
    pub fn lr_at(self, peak: f64, step: usize, total: usize, warmup_fraction: f64) -> f64 {
        match self {
            LrSchedule::Constant => peak,
            LrSchedule::Cosine => {
                let total = total.max(1) as f64;
                let warmup = (warmup_fraction * total).round().max(1.0);
                let s = step as f64;
                if s < warmup {
                    peak * (s + 1.0) / warmup
                } else {
                    let progress = ((s - warmup) / (total - warmup).max(1.0)).min(1.0);
                    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        }
    }
}

/// Which epoch's weights become the run's `backbone.safetensors`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The last epoch's (the paper's).
    #[default]
    Last,
    /// The epoch with the best validation score: the highest MI bound (CL) or the
    /// lowest validation loss (regression), on the validation part of the training
    /// split (never the held-out images).
    Best,
}

/// Everything that determines a fine-tuning run: `vcl finetune`'s flags, defined once;
/// written to `RUN/config.json` [resolved](FinetuneConfig::resolved).
///
/// Build one with [`FinetuneConfig::new`] (the paper's recipe for a method) and change
/// the fields you need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct FinetuneConfig {
    /// Dataset folder (Algonauts 2023 layout).
    #[arg(long = "data")]
    pub data_dir: PathBuf,
    /// Subjects (`subj01`, `1`, ...); more than one trains the pooled model (one fMRI
    /// map per subject).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub subjects: Vec<String>,
    #[arg(long, default_value = "lh")]
    pub hemisphere: Hemisphere,
    /// ROI name or `+` union (see `algonauts::rois`), e.g. `early` or `V1v+V1d`.
    #[arg(long)]
    pub roi: String,
    #[arg(long = "backbone", default_value = "mobilenet_v2")]
    pub arch: Arch,
    /// Initial backbone weights (safetensors or torch.save, torchvision names);
    /// default: the installed ImageNet weights.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Square input size in pixels (the paper: 224).
    #[arg(long, default_value_t = 224)]
    pub input_size: u32,
    #[arg(long, value_enum, default_value = "cl")]
    pub method: Objective,
    /// Passes over each subject's training part (default, as METHOD.md: 30 cl, 75
    /// regression).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per step; the effective batch is min(batch_size, training images).
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    /// `paper` (METHOD.md, the default) or `auto` (batch, epochs, schedule and weight
    /// selection from the number of training images). Beyond the paper.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub recipe: Recipe,
    /// Optimizer steps of `--recipe auto` (epochs follow from them and the batch).
    #[arg(long, default_value_t = 500)]
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Warm-up of the cosine schedule, as a fraction of all steps.
    #[arg(long, default_value_t = 0.05)]
    #[serde(default = "default_warmup")]
    pub warmup_fraction: f64,
    /// Which epoch's weights the run keeps: `last` (the paper) or `best` (validation).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub select: Selection,
    /// Adam learning rate (default, as METHOD.md: 1e-4 cl, 2.5e-5 regression); no
    /// weight decay.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// InfoNCE temperature (paper: 0.3); the initial value when `learnable_tau`.
    #[arg(long, default_value_t = 0.3)]
    pub tau: f64,
    /// h = int(h_ratio * V) for one subject (paper: 0.8).
    #[arg(long, default_value_t = 0.8)]
    pub h_ratio: f64,
    /// z = int(z_ratio * V) for one subject (paper: 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub z_ratio: f64,
    /// Pooled subjects: h = mean V over subjects, z = int(pooled_z_ratio * h) (paper: 0.25).
    #[arg(long, default_value_t = 0.25)]
    pub pooled_z_ratio: f64,
    /// Backbone variables to keep fixed: name prefixes (`features.0`) or inclusive
    /// index ranges (`features.0..features.3`). Empty (paper): everything trains.
    #[arg(long, value_delimiter = ',')]
    pub freeze: Vec<String>,
    /// Fraction of each subject's images held out for the encoders' final score;
    /// fine-tuning never sees them (same split as `vcl fit`).
    #[arg(long = "heldout", default_value_t = 0.15)]
    pub heldout_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Tune on only this many of the training images (validation included; a random
    /// subset by --split-seed, nested across sizes, as `vcl fit --train-images`).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<usize>,
    /// Fraction of the training part kept aside for validation loss and the MI bound.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Seeds head initialization, data order, dropout and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Two-way InfoNCE (mean of image- and fMRI-anchored losses). Beyond the paper.
    #[arg(long)]
    pub symmetric: bool,
    /// Learn log(tau) with the other parameters. Beyond the paper.
    #[arg(long)]
    pub learnable_tau: bool,
    /// Random resized crops and colour jitter; never a horizontal flip, which would
    /// swap the visual hemifields a hemisphere responds to. Beyond the paper.
    #[arg(long)]
    pub augment: bool,
    /// Training precision: fp32 (the paper), bf16 autocast, or fp16 autocast with
    /// dynamic loss scaling. Autocast is CUDA's: on the CPU a run trains in fp32 (and
    /// says so).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub precision: Precision,
    /// Images per backbone forward/backward within a batch; None (the paper): the whole
    /// batch at once. Smaller values cap memory at one micro-batch's activations while
    /// the loss still sees the whole batch (every other image stays a negative); the
    /// backbone's batch-norm then normalizes with per-micro-batch statistics. A batch of
    /// 1024 at 224 px needs ~80 GB in one pass on the CPU (~35 MB per image at 128 px).
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Images per forward pass when computing validation embeddings (memory only).
    #[arg(long, default_value_t = 128)]
    pub eval_batch_size: usize,
    /// Backbone tap the heads read instead of the 1000 logits (conv taps averaged over
    /// space), e.g. `features.13`. None (the paper): the logits. Layers after the tap
    /// then get no gradient and stay as loaded. Beyond the paper.
    #[arg(long, value_name = "TAP")]
    #[serde(default)]
    pub image_tap: Option<String>,
    /// How the heads read a conv --image-tap: averaged over space (mean), or through a
    /// learned spatial mask per head unit (spatial: a factorized readout). Beyond the
    /// paper.
    #[arg(long, value_enum, default_value = "mean")]
    #[serde(default)]
    pub image_readout: ImageReadout,
}

/// How the heads read a conv tap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageReadout {
    /// The tap averaged over space.
    #[default]
    Mean,
    /// A softmax spatial mask and channel weights per head unit.
    Spatial,
}

fn default_steps() -> usize {
    500
}

fn default_warmup() -> f64 {
    0.05
}

/// `--recipe auto`'s batch for `n` training images: n/16 rounded down to a power of
/// two, within [32, 256] (and never above n).
pub fn auto_batch(n: usize) -> usize {
    let target = (n / 16).max(1);
    let pow2 = 1usize << (usize::BITS - 1 - target.leading_zeros());
    pow2.clamp(32, 256).min(n.max(2))
}

impl FinetuneConfig {
    /// The config with `recipe` applied for `n_train` training images (the smallest
    /// subject's, when pooling): what the run trains with and `config.json` records.
    pub fn for_data(&self, n_train: usize) -> FinetuneConfig {
        match self.recipe {
            Recipe::Paper => self.clone(),
            Recipe::Auto => {
                let batch = auto_batch(n_train);
                // An epoch's batches: the full ones and a last one of 2 or more images.
                let per_epoch = (n_train / batch + usize::from(n_train % batch >= 2)).max(1);
                FinetuneConfig {
                    batch_size: batch,
                    epochs: Some(self.steps.div_ceil(per_epoch).max(1)),
                    lr_schedule: LrSchedule::Cosine,
                    select: Selection::Best,
                    ..self.clone()
                }
            }
        }
    }

    /// The paper's recipe for `method` (METHOD.md): the flags' defaults, on
    /// torchvision's MobileNetV2 with the installed ImageNet weights (AlexNet weights
    /// are not installable here).
    pub fn new(
        method: Objective,
        data_dir: PathBuf,
        subjects: Vec<String>,
        hemisphere: Hemisphere,
        roi: String,
    ) -> Self {
        let defaults: FinetuneConfig = crate::config::from_flags(["--data=.", "--roi=."])
            .expect("the flags' own defaults parse");
        FinetuneConfig {
            data_dir,
            subjects,
            hemisphere,
            roi,
            method,
            ..defaults
        }
        .filled()
    }

    /// The defaults that depend on the method and the architecture, written in.
    fn filled(self) -> Self {
        FinetuneConfig {
            epochs: Some(self.epochs()),
            lr: Some(self.lr()),
            weights: Some(self.weights()),
            ..self
        }
    }

    /// Epochs: as given, or METHOD.md's for the method.
    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(self.method.default_epochs())
    }

    /// Learning rate: as given, or METHOD.md's for the method.
    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or(self.method.default_lr())
    }

    /// Initial weights: as given, or the installed ImageNet ones.
    pub fn weights(&self) -> PathBuf {
        self.weights
            .clone()
            .unwrap_or_else(|| vcl_dataset::paths::weights_dir().join(self.arch.weights_file()))
    }

    /// What `config.json` records: the data folder absolute (a run can be resumed and
    /// read from any directory) and every default that depends on the method filled in.
    pub fn resolved(&self) -> Result<FinetuneConfig, FinetuneError> {
        let data_dir = std::fs::canonicalize(&self.data_dir)
            .map_err(|e| FinetuneError::io(&self.data_dir, e))?;
        Ok(FinetuneConfig {
            data_dir,
            ..self.clone()
        }
        .filled())
    }

    pub fn pooled(&self) -> bool {
        self.subjects.len() > 1
    }

    /// Rejects values that would fail later or silently train nothing.
    pub fn validate(&self) -> Result<(), FinetuneError> {
        let bad = |field: &str, why: String| Err(FinetuneError::Config(format!("{field}: {why}")));
        if self.subjects.is_empty() {
            return bad("subjects", "name at least one subject".into());
        }
        let mut seen = self.subjects.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.subjects.len() {
            return bad(
                "subjects",
                format!("{:?} lists a subject twice", self.subjects),
            );
        }
        if self.roi.trim().is_empty() {
            return bad("roi", "name an ROI (e.g. early, V1v+V1d)".into());
        }
        if self.input_size < 32 {
            return bad(
                "input_size",
                format!(
                    "{} px is too small for the backbone's strides (>= 32)",
                    self.input_size
                ),
            );
        }
        if self.epochs() == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.steps == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return bad(
                "warmup_fraction",
                format!("{} must be in [0, 1)", self.warmup_fraction),
            );
        }
        if self.batch_size < 2 {
            return bad(
                "batch_size",
                format!(
                    "{} < 2: batch-norm and InfoNCE need two images per batch",
                    self.batch_size
                ),
            );
        }
        if self.micro_batch == Some(0) {
            return bad("micro_batch", "must be at least 1 (or unset)".into());
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size", "must be at least 1".into());
        }
        if self.image_readout == ImageReadout::Spatial && self.image_tap.is_none() {
            return bad(
                "image_readout",
                "spatial reads a conv tap's maps: give --image-tap (the logits have no space)"
                    .into(),
            );
        }
        if let Some(tap) = &self.image_tap {
            let valid = self.arch.taps();
            if !valid.contains(&tap.as_str()) {
                return bad(
                    "image_tap",
                    format!(
                        "'{tap}' is not a tap of {}; valid taps: {}",
                        self.arch,
                        valid.join(", ")
                    ),
                );
            }
        }
        let positive = [
            ("lr", self.lr()),
            ("tau", self.tau),
            ("h_ratio", self.h_ratio),
            ("z_ratio", self.z_ratio),
            ("pooled_z_ratio", self.pooled_z_ratio),
            ("adam_eps", self.adam_eps),
        ];
        for (field, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, format!("{v} must be a positive number"));
            }
        }
        for (field, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(field, format!("{v} must be in [0, 1)"));
            }
        }
        for (field, v) in [
            ("heldout_fraction", self.heldout_fraction),
            ("val_fraction", self.val_fraction),
        ] {
            if !(0.0..1.0).contains(&v) {
                return bad(field, format!("{v} must be in [0, 1)"));
            }
        }
        Ok(())
    }
}

/// The paper's recipe for `method`: shorthand for [`FinetuneConfig::new`].
pub fn default_config(
    method: Objective,
    data_dir: PathBuf,
    subjects: Vec<String>,
    hemisphere: Hemisphere,
    roi: String,
) -> FinetuneConfig {
    FinetuneConfig::new(method, data_dir, subjects, hemisphere, roi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_defaults_and_json_names() {
        let c = FinetuneConfig::new(
            Objective::Regression,
            "d".into(),
            vec!["1".into()],
            Hemisphere::Left,
            "early".into(),
        );
        assert_eq!(
            (c.epochs, c.lr, c.batch_size),
            (Some(75), Some(2.5e-5), 1024)
        );
        c.validate().unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["method"], "regression");
        assert_eq!(v["hemisphere"], "lh");
        let back: FinetuneConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
        let mut bad = c.clone();
        bad.batch_size = 1;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
    }

    #[test]
    fn auto_recipe_scales_batch_and_epochs_with_the_data() {
        assert_eq!(auto_batch(612), 32);
        assert_eq!(auto_batch(8365), 256);
        assert_eq!(auto_batch(2000), 64);
        assert_eq!(auto_batch(20), 20);
        let mut c = FinetuneConfig::new(
            Objective::Cl,
            "d".into(),
            vec!["1".into()],
            Hemisphere::Left,
            "early".into(),
        );
        assert_eq!(
            c.for_data(612),
            c,
            "the paper's recipe ignores the data size"
        );
        c.recipe = Recipe::Auto;
        let a = c.for_data(612);
        // 612 = 19 x 32 + 4: 20 steps an epoch, so 500 steps are 25 epochs.
        assert_eq!((a.batch_size, a.epochs), (32, Some(25)));
        assert_eq!(
            (a.lr_schedule, a.select),
            (LrSchedule::Cosine, Selection::Best)
        );
        // Old configs (no recipe fields) load as the paper's.
        let mut v = serde_json::to_value(&c).unwrap();
        for k in [
            "recipe",
            "steps",
            "lr_schedule",
            "warmup_fraction",
            "select",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        let old: FinetuneConfig = serde_json::from_value(v).unwrap();
        assert_eq!(
            (old.recipe, old.steps, old.select),
            (Recipe::Paper, 500, Selection::Last)
        );
    }

    #[test]
    fn cosine_schedule_warms_up_then_decays_to_zero() {
        let s = LrSchedule::Cosine;
        let lr = |step| s.lr_at(1e-4, step, 100, 0.05);
        assert!((lr(0) - 2e-5).abs() < 1e-12, "{}", lr(0));
        assert!((lr(4) - 1e-4).abs() < 1e-12);
        assert!((lr(5) - 1e-4).abs() < 1e-12);
        assert!(lr(50) < 1e-4 && lr(50) > 0.0);
        assert!(lr(99) < 1e-6);
        assert!((1..100).all(|t| t < 5 || lr(t) <= lr(t - 1)));
        assert_eq!(LrSchedule::Constant.lr_at(1e-4, 7, 100, 0.05), 1e-4);
    }

    /// Configs written before image_tap existed still load, as the paper's logits.
    #[test]
    fn image_tap_defaults_to_logits_and_is_checked() {
        let c = FinetuneConfig::new(
            Objective::Cl,
            "d".into(),
            vec!["1".into()],
            Hemisphere::Left,
            "early".into(),
        );
        let mut v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["image_tap"], serde_json::Value::Null);
        v.as_object_mut().unwrap().remove("image_tap");
        let old: FinetuneConfig = serde_json::from_value(v).unwrap();
        assert_eq!(old.image_tap, None);

        let mut tap = c.clone();
        tap.image_tap = Some("features.13".into());
        tap.validate().unwrap();
        tap.image_tap = Some("features.99".into());
        let e = tap.validate().unwrap_err().to_string();
        assert!(
            e.contains("image_tap") && e.contains("features.99") && e.contains("features.13"),
            "{e}"
        );
    }
}
