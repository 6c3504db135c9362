//! `vcl finetune`: tune an ImageNet backbone so that its features share more
//! information with an ROI's fMRI responses (METHOD.md), by the paper's contrastive
//! objective or its regression baseline, for one subject or pooled subjects.
//!
//! ```text
//! RUN/config.json            FinetuneConfig (the recipe)
//! RUN/provenance.json        git commit, dataset fingerprint, device, vcl version
//! RUN/history.csv            epoch, train_loss, val_loss, val_mi_bound, images_per_s, ...
//! RUN/steps.csv              epoch, batch, subject, images, loss: every optimizer step
//! RUN/loss.png, RUN/mi.png   training curves
//! RUN/checkpoints/epoch-NNNN.safetensors   model + heads + Adam state + metadata
//! RUN/backbone.safetensors   the tuned backbone, torchvision names (`vcl fit --weights`)
//! RUN/best-backbone.safetensors   `--select best`: the best validation epoch's, so far
//! RUN/summary.json           FinetuneSummary
//! ```
//! Only the training part of each subject's split is read (the same
//! `split::holdout(n, heldout_fraction, split_seed)` as `vcl fit`), and a validation
//! part of it (`val_fraction`) gives the validation loss and the MI lower bound.

pub mod adam;
pub mod alloc;
pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod contrastive;
pub mod data;
pub mod readout;
pub mod regression;
mod run_dir;
mod train;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use adam::{Adam, AdamConfig};
pub use alloc::{tune_allocator, AllocatorTuning};
pub use config::{
    auto_batch, default_config, FinetuneConfig, ImageReadout, LrSchedule, Objective, Recipe,
    Selection,
};
pub use contrastive::{info_nce, mi_lower_bound, similarity, ClDims, ClLoss, ContrastiveHeads};
pub use data::SubjectInfo;
pub use readout::{ImageMap, ImageShape};
pub use regression::RegressionHeads;
pub use train::{finetune, finetune_with, Hooks, RunOptions};
pub(crate) use train::{image_features, image_width, ImageInput};

use crate::features::backbones::BackboneError;
use crate::report::plots::PlotError;
use vcl_dataset::DataError;

/// What went wrong in a fine-tuning run; each variant names the file, value or
/// place (epoch, batch) at fault.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("invalid fine-tuning config: {0}")]
    Config(String),

    #[error(transparent)]
    Data(#[from] DataError),

    #[error(transparent)]
    Contract(#[from] vcl_contract::ContractError),

    #[error(transparent)]
    Backbone(#[from] BackboneError),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },

    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    #[error("cannot resume the run in {run}: {reason}")]
    Resume { run: PathBuf, reason: String },

    #[error(
        "the {what} loss became {value} at epoch {epoch}, {place}: training stopped. {}",
        match .last_good {
            Some(p) => format!("The last good checkpoint is {} (resume from it with a lower learning rate, or fix the data).", p.display()),
            None => "No epoch had completed, so there is no checkpoint.".to_string(),
        }
    )]
    NonFinite {
        /// "training" or "validation".
        what: &'static str,
        value: f64,
        /// 1-based epoch.
        epoch: usize,
        /// e.g. "batch 3 of 5 (subj01)".
        place: String,
        /// 1-based batch within the subject's epoch, for training losses.
        batch: Option<usize>,
        last_good: Option<PathBuf>,
    },

    #[error(transparent)]
    Plot(#[from] PlotError),
}

impl FinetuneError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        FinetuneError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One line of `history.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (all subjects).
    pub train_loss: f64,
    /// Loss on the validation part (CL: InfoNCE with all K validation images as one
    /// batch; regression: MSE), mean over subjects; None without a validation part.
    pub val_loss: Option<f64>,
    /// CL only: the MI lower bound on the validation part (nats; at most log K).
    pub val_mi_bound: Option<f64>,
    /// Training images per second (forward + backward + update), this epoch.
    pub images_per_s: f64,
    /// Wall time of the epoch: training and validation.
    pub seconds: f64,
    /// The temperature at the epoch's end (CL).
    pub tau: Option<f64>,
}

fn default_image() -> String {
    "logits".into()
}

/// What a run did; also `RUN/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneSummary {
    pub run_dir: PathBuf,
    pub method: Objective,
    /// The tuned backbone, written when the run reached its last epoch.
    pub backbone: Option<PathBuf>,
    /// `Backbone::weights_hash` of the tuned backbone.
    pub backbone_hash: String,
    /// `--select best`: the epoch whose weights `backbone` holds (None: the last).
    #[serde(default)]
    pub selected_epoch: Option<usize>,
    pub epochs_completed: usize,
    pub epochs: usize,
    pub completed: bool,
    /// The checkpoint epoch a resumed run started from.
    pub resumed_from_epoch: Option<usize>,
    /// What the heads read: "logits" (the paper) or the `image_tap`.
    #[serde(default = "default_image")]
    pub image: String,
    pub subjects: Vec<SubjectInfo>,
    /// Contrastive model sizes (None for regression).
    pub dims: Option<ClDims>,
    /// Effective batch size per subject: min(batch_size, training images).
    pub batch_sizes: Vec<usize>,
    pub history: Vec<EpochRecord>,
    /// Wall time of this invocation.
    pub wall_seconds: f64,
    /// Training images per second over this invocation's epochs.
    pub images_per_s: f64,
    pub device: String,
    pub git_commit: String,
    pub dataset_fingerprint: String,
    pub trained_variables: usize,
    pub frozen_variables: usize,
}
