//! What determines a fine-tuning run: every hyperparameter of METHOD.md, with the
//! paper's values as defaults, plus the options beyond the paper (all off by default).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FinetuneError;
use crate::algonauts::Hemisphere;
use crate::backbones::Arch;

/// How the backbone is tuned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
pub enum Method {
    /// The paper's contrastive (InfoNCE) objective between image and fMRI embeddings.
    #[value(name = "cl")]
    #[serde(rename = "cl")]
    Cl,
    /// The paper's baseline: regress the responses from the logits (MSE).
    #[value(name = "regression")]
    #[serde(rename = "regression")]
    Regression,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Cl => "cl",
            Method::Regression => "regression",
        }
    }

    /// METHOD.md: 30 epochs for CL, 75 for the regression baseline.
    pub fn default_epochs(self) -> usize {
        match self {
            Method::Cl => 30,
            Method::Regression => 75,
        }
    }

    /// METHOD.md: Adam lr 1e-4 for CL, 2.5e-5 for the regression baseline.
    pub fn default_lr(self) -> f64 {
        match self {
            Method::Cl => 1e-4,
            Method::Regression => 2.5e-5,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that determines a fine-tuning run; written to `RUN/config.json`.
///
/// Build one with [`FinetuneConfig::new`] (the paper's recipe for a method) and change
/// the fields you need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    /// Dataset folder (Algonauts 2023 layout).
    pub data_dir: PathBuf,
    /// Subjects (`subj01`, `1`, ...); more than one trains the pooled model.
    pub subjects: Vec<String>,
    pub hemisphere: Hemisphere,
    /// ROI name or `+` union (see `algonauts::rois`), e.g. `early` or `V1v+V1d`.
    pub roi: String,
    pub arch: Arch,
    /// Initial backbone weights (safetensors or torch.save, torchvision names).
    pub weights: PathBuf,
    /// Square input size in pixels (the paper: 224).
    pub input_size: u32,
    pub method: Method,
    /// Passes over each subject's training part (paper: 30 CL, 75 regression).
    pub epochs: usize,
    /// Images per step; the effective batch is min(batch_size, training images).
    pub batch_size: usize,
    /// Adam learning rate (paper: 1e-4 CL, 2.5e-5 regression); no weight decay.
    pub lr: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// InfoNCE temperature (paper: 0.3); the initial value when `learnable_tau`.
    pub tau: f64,
    /// h = int(h_ratio * V) for one subject (paper: 0.8).
    pub h_ratio: f64,
    /// z = int(z_ratio * V) for one subject (paper: 0.2).
    pub z_ratio: f64,
    /// Pooled subjects: h = mean V over subjects, z = int(pooled_z_ratio * h) (paper: 0.25).
    pub pooled_z_ratio: f64,
    /// Backbone variables to keep fixed: name prefixes (`features.0`) or inclusive
    /// index ranges (`features.0..features.3`). Empty (paper): everything trains.
    pub freeze: Vec<String>,
    /// Fraction of each subject's images held out for the encoders' final score;
    /// fine-tuning never sees them (same split as `vcl fit`).
    pub heldout_fraction: f64,
    pub split_seed: u64,
    /// Fraction of the training part kept aside for validation loss and the MI bound.
    pub val_fraction: f64,
    /// Seeds head initialization, data order, dropout and augmentation.
    pub seed: u64,
    /// Two-way InfoNCE (mean of image- and fMRI-anchored losses). Beyond the paper.
    pub symmetric: bool,
    /// Learn log(tau) with the other parameters. Beyond the paper.
    pub learnable_tau: bool,
    /// Random resized crops and colour jitter; never a horizontal flip, which would
    /// swap the visual hemifields a hemisphere responds to. Beyond the paper.
    pub augment: bool,
    /// float16 autocast with dynamic loss scaling (CUDA only; ignored on the CPU).
    pub mixed_precision: bool,
    /// Images per backbone forward/backward within a batch; None (the paper): the whole
    /// batch at once. Smaller values cap memory at one micro-batch's activations while
    /// the loss still sees the whole batch (every other image stays a negative); the
    /// backbone's batch-norm then normalizes with per-micro-batch statistics. A batch of
    /// 1024 at 224 px needs ~80 GB in one pass on the CPU (~35 MB per image at 128 px).
    pub micro_batch: Option<usize>,
    /// Images per forward pass when computing validation embeddings (memory only).
    pub eval_batch_size: usize,
    /// Backbone tap the heads read instead of the 1000 logits (conv taps averaged over
    /// space), e.g. `features.13`. None (the paper): the logits. Layers after the tap
    /// then get no gradient and stay as loaded. Beyond the paper.
    #[serde(default)]
    pub image_tap: Option<String>,
}

impl FinetuneConfig {
    /// The paper's recipe for `method` (METHOD.md), on torchvision's MobileNetV2 with
    /// the installed ImageNet weights (AlexNet weights are not installable here).
    pub fn new(
        method: Method,
        data_dir: PathBuf,
        subjects: Vec<String>,
        hemisphere: Hemisphere,
        roi: String,
    ) -> Self {
        let arch = Arch::MobileNetV2;
        FinetuneConfig {
            data_dir,
            subjects,
            hemisphere,
            roi,
            arch,
            weights: crate::paths::weights_dir().join(arch.weights_file()),
            input_size: 224,
            method,
            epochs: method.default_epochs(),
            batch_size: 1024,
            lr: method.default_lr(),
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            tau: 0.3,
            h_ratio: 0.8,
            z_ratio: 0.2,
            pooled_z_ratio: 0.25,
            freeze: Vec::new(),
            heldout_fraction: 0.15,
            split_seed: 0,
            val_fraction: 0.1,
            seed: 0,
            symmetric: false,
            learnable_tau: false,
            augment: false,
            mixed_precision: false,
            micro_batch: None,
            eval_batch_size: 128,
            image_tap: None,
        }
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
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
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
            ("lr", self.lr),
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
    method: Method,
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
            Method::Regression,
            "d".into(),
            vec!["1".into()],
            Hemisphere::Left,
            "early".into(),
        );
        assert_eq!((c.epochs, c.lr, c.batch_size), (75, 2.5e-5, 1024));
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

    /// Configs written before image_tap existed still load, as the paper's logits.
    #[test]
    fn image_tap_defaults_to_logits_and_is_checked() {
        let c = FinetuneConfig::new(
            Method::Cl,
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
