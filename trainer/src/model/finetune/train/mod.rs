//! The training loop: epochs of shuffled batches per subject, Adam over every
//! trainable backbone and head variable, validation, checkpoints, resume.
//!
//! Reproducibility: head initialization, data order and augmentation come from Rust
//! streams keyed by (seed, purpose, epoch[, batch]); libtorch's generator (dropout) is
//! re-seeded from (seed, epoch, subject, batch, micro-batch) before each backbone pass.
//! A checkpoint therefore needs no RNG state, and on the CPU a resumed run ends
//! bit-identical to an uninterrupted one.
//!
//! Here the orchestration (a run from its config to its summary); `step` is one
//! optimizer step (GradCache micro-batches, the loss scale), `validate` the held-out
//! loss and MI bound, `freeze` which variables train; saving and restoring a trainer
//! is in `checkpoint` with the checkpoint format.

mod freeze;
mod step;
mod validate;

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tch::nn;
use tch::{Device, Tensor};

use super::adam::{Adam, AdamConfig};
use super::checkpoint;
use super::config::{Recipe, Selection};
use super::contrastive::{ClDims, ContrastiveHeads};
use super::data::{self, SubjectData};
use super::regression::RegressionHeads;
use super::run_dir;
use super::{EpochRecord, FinetuneConfig, FinetuneError, FinetuneSummary, Objective};
use crate::device::Precision;
use crate::features::backbones::Backbone;
use freeze::{freeze, trained_variables};
pub(crate) use step::StepRecord;
pub(crate) use validate::{image_features, image_width, ImageInput};

/// Pooled runs keep every subject's decoded pixels in memory up to this size; above
/// it, a subject's pixels are loaded for its turn and dropped after.
const PIXEL_BUDGET_BYTES: usize = 4 << 30;

/// libtorch's random generator is global to the process: two runs at once in one
/// process would interleave their dropout draws and lose reproducibility, so runs
/// take turns.
static RUN_LOCK: Mutex<()> = Mutex::new(());

/// Test and debugging hooks; the default does nothing.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Return after this many epochs are complete and checkpointed, as if the process
    /// had been killed there (no backbone.safetensors).
    pub stop_after_epoch: Option<usize>,
    /// Make the training loss of (epoch, batch) NaN (both 1-based; batches counted
    /// across the subjects of the epoch), to exercise the non-finite stop.
    pub nan_loss_at: Option<(usize, usize)>,
}

/// Where and how to run (the config says what to train).
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    pub run: &'a Path,
    /// Continue from the newest checkpoint in `run` (fresh start if there is none).
    pub resume: bool,
    /// Where decoded pixels are cached (`cache_dir/pixels`).
    pub cache_dir: &'a Path,
    pub device: Device,
    pub hooks: Hooks,
}

/// Fine-tunes the backbone `cfg` describes and writes the run directory `run`
/// (see the module docs); `resume` continues a killed run from its last checkpoint.
pub fn finetune(
    cfg: &FinetuneConfig,
    run: &Path,
    resume: bool,
    cache_dir: &Path,
    device: Device,
) -> Result<FinetuneSummary, FinetuneError> {
    finetune_with(
        cfg,
        &RunOptions {
            run,
            resume,
            cache_dir,
            device,
            hooks: Hooks::default(),
        },
    )
}

pub(super) enum Heads {
    // Boxed: the contrastive heads are many tensors, the regression heads one list.
    Cl(Box<ContrastiveHeads>),
    Regression(RegressionHeads),
}

impl Heads {
    /// Training loss of a batch of subject `s`: image features [B, F] (see
    /// [`image_features`]), responses [B, V_s].
    fn loss(&self, features: &Tensor, s: usize, fmri: &Tensor, train: bool) -> Tensor {
        match self {
            Heads::Cl(h) => h.loss(features, s, fmri, train),
            Heads::Regression(h) => h.loss(features, s, fmri),
        }
    }

    fn tau(&self) -> Option<f64> {
        match self {
            Heads::Cl(h) => Some(h.tau_value()),
            Heads::Regression(_) => None,
        }
    }
}

/// float16 autocast's dynamic loss scale (PyTorch's GradScaler defaults).
#[derive(Debug, Clone, Copy)]
pub(super) struct LossScale {
    pub(super) scale: f64,
    pub(super) good_steps: u64,
}

const SCALE_GROWTH_INTERVAL: u64 = 2000;

pub(super) struct Trainer<'a> {
    pub(super) cfg: &'a FinetuneConfig,
    pub(super) opts: &'a RunOptions<'a>,
    pub(super) backbone: Backbone,
    pub(super) heads_vs: nn::VarStore,
    pub(super) heads: Heads,
    pub(super) adam: Adam,
    /// The precision training runs in on this device.
    pub(super) precision: Precision,
    /// fp16's loss scale (None in fp32 and bf16).
    pub(super) scaler: Option<LossScale>,
    pub(super) data: Vec<SubjectData>,
    pub(super) resident_pixels: bool,
    /// Some backbone variable trains (not everything frozen).
    pub(super) backbone_learns: bool,
}

/// [`finetune`] with test hooks.
pub fn finetune_with(
    cfg: &FinetuneConfig,
    opts: &RunOptions<'_>,
) -> Result<FinetuneSummary, FinetuneError> {
    let _turn = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    cfg.validate()?;
    let cfg = &cfg.resolved()?;
    let run = opts.run;
    std::fs::create_dir_all(run).map_err(|e| FinetuneError::io(run, e))?;

    let data = data::load(cfg)?;
    // The recipe needs the data's size: batch and epochs of `--recipe auto`.
    let smallest = data.iter().map(|d| d.train.len()).min().unwrap_or(0);
    let cfg = &cfg.for_data(smallest);
    if cfg.recipe == Recipe::Auto {
        tracing::info!(
            batch = cfg.batch_size,
            epochs = cfg.epochs(),
            steps = cfg.steps,
            training_images = smallest,
            "recipe auto"
        );
    }
    let fingerprint = data::fingerprint(&data)?;
    let names: Vec<String> = data.iter().map(|d| d.info.subject.clone()).collect();
    let voxels: Vec<usize> = data.iter().map(|d| d.info.voxels).collect();

    let backbone = Backbone::load(cfg.arch, &cfg.weights(), opts.device)?;
    let frozen = freeze(&backbone, &cfg.freeze)?;
    let image = cfg.image_tap.as_deref().unwrap_or("logits");
    let width = image_width(&backbone, ImageInput::of(cfg), cfg.input_size, opts.device)?;
    let heads_vs = nn::VarStore::new(opts.device);
    let (heads, dims) = match cfg.method {
        Objective::Cl => {
            let dims = ClDims::paper(&voxels, cfg.h_ratio, cfg.z_ratio, cfg.pooled_z_ratio)?;
            let h = ContrastiveHeads::new(&heads_vs.root(), &dims, width, &names, cfg);
            (Heads::Cl(Box::new(h)), Some(dims))
        }
        Objective::Regression => {
            let v: Vec<i64> = voxels.iter().map(|&v| v as i64).collect();
            let h = RegressionHeads::new(&heads_vs.root(), width, &names, &v, cfg.seed);
            (Heads::Regression(h), None)
        }
    };
    let adam = Adam::new(
        AdamConfig {
            lr: cfg.lr(),
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_eps,
        },
        trained_variables(&backbone, &heads_vs),
    );
    let precision = cfg.precision.on(opts.device);
    if precision != cfg.precision {
        tracing::warn!(
            asked = %cfg.precision,
            device = ?opts.device,
            "autocast needs CUDA: training in fp32"
        );
    }
    let scaler = (precision == Precision::Fp16).then_some(LossScale {
        scale: 65536.0,
        good_steps: 0,
    });
    let pixel_bytes: usize = data
        .iter()
        .map(|d| d.fmri.size()[0] as usize * 3 * (cfg.input_size as usize).pow(2))
        .sum();
    let backbone_learns = backbone
        .var_store()
        .variables()
        .values()
        .any(|t| t.requires_grad());
    let mut t = Trainer {
        cfg,
        opts,
        backbone,
        heads_vs,
        heads,
        adam,
        precision,
        scaler,
        data,
        resident_pixels: names.len() == 1 || pixel_bytes <= PIXEL_BUDGET_BYTES,
        backbone_learns,
    };
    tracing::info!(method = %cfg.method, subjects = ?names, roi = %cfg.roi, hemisphere = %cfg.hemisphere, arch = %cfg.arch, input_size = cfg.input_size, image = %image, image_width = width.width, spatial = width.spatial_channels.is_some(), trained = t.adam.len(), frozen = frozen.len(), dims = ?dims, device = ?opts.device, "fine-tuning");

    // Resume, or refuse to overwrite a run that has checkpoints.
    let mut history: Vec<EpochRecord> = Vec::new();
    let mut resumed_from = None;
    let mut start_epoch = 0;
    let existing = checkpoint::list(run)?;
    if opts.resume {
        match checkpoint::latest(run)? {
            Some(l) => {
                t.restore(&l, &fingerprint)?;
                tracing::info!(path = %l.path.display(), epoch = l.meta.epoch, "resuming");
                resumed_from = Some(l.meta.epoch);
                start_epoch = l.meta.epoch;
                history = l.meta.history;
                history.truncate(start_epoch);
            }
            None => {
                tracing::info!(run = %run.display(), "no checkpoint to resume from: starting fresh")
            }
        }
    } else if !existing.is_empty() {
        return Err(FinetuneError::Resume {
            run: run.to_path_buf(),
            reason: format!(
                "it already holds {} checkpoint(s) ({}); resume it (--resume) or choose a new run directory",
                existing.len(),
                existing[0].1.display()
            ),
        });
    }
    let git_commit = crate::provenance::git_commit().unwrap_or_else(|| "unknown".into());
    run_dir::write_json(&run.join("config.json"), cfg)?;
    run_dir::write_json(
        &run.join("provenance.json"),
        &serde_json::json!({
            "git_commit": git_commit,
            "dataset_fingerprint": fingerprint,
            "vcl_version": env!("CARGO_PKG_VERSION"),
            "device": format!("{:?}", opts.device),
            "torch_threads": tch::get_num_threads(),
            "resumed_from_epoch": resumed_from,
        }),
    )?;

    if start_epoch > cfg.epochs() {
        tracing::warn!(
            checkpoint_epochs = start_epoch,
            epochs = cfg.epochs(),
            "the checkpoint is past the requested epochs: keeping its weights as they are"
        );
    }
    let mut last_good = existing_checkpoint(run, start_epoch)?;
    let mut steps = run_dir::read_steps(run, start_epoch)?;
    let (mut images, mut train_seconds) = (0usize, 0.0f64);
    let mut completed = start_epoch >= cfg.epochs();
    for e in start_epoch..cfg.epochs() {
        let epoch = e + 1;
        let epoch_start = Instant::now();
        let mut stats = t.train_epoch(e, last_good.as_deref())?;
        let (val_loss, val_mi) = t.validate(epoch, last_good.as_deref())?;
        images += stats.images;
        train_seconds += stats.seconds;
        history.push(EpochRecord {
            epoch,
            train_loss: stats.mean_loss,
            val_loss,
            val_mi_bound: val_mi,
            images_per_s: stats.images as f64 / stats.seconds.max(1e-9),
            seconds: epoch_start.elapsed().as_secs_f64(),
            tau: t.heads.tau(),
        });
        if cfg.select == Selection::Best && best_epoch(&history, cfg.method) == Some(epoch) {
            save_backbone(&t.backbone, &run.join(BEST_BACKBONE))?;
        }
        last_good = Some(t.save_checkpoint(epoch, history.clone(), &fingerprint)?);
        run_dir::write_history(run, &history)?;
        steps.append(&mut stats.steps);
        run_dir::write_steps(run, &steps)?;
        if let Some(r) = history.last() {
            tracing::info!(epoch, epochs = cfg.epochs(), train_loss = r.train_loss, val_loss = ?r.val_loss, val_mi_bound = ?r.val_mi_bound, images_per_s = format!("{:.1}", r.images_per_s), seconds = format!("{:.1}", r.seconds), "epoch done");
        }
        if epoch == cfg.epochs() {
            completed = true;
        } else if opts.hooks.stop_after_epoch == Some(epoch) {
            tracing::warn!(epoch, "stopping early (hook)");
            break;
        }
    }

    let backbone_path = run.join("backbone.safetensors");
    let best = run.join(BEST_BACKBONE);
    let selected_epoch = match cfg.select {
        Selection::Best if best.is_file() => best_epoch(&history, cfg.method),
        Selection::Best => {
            tracing::warn!("no validation part to select by: keeping the last epoch's weights");
            None
        }
        Selection::Last => None,
    };
    let mut backbone_hash = t.backbone.weights_hash();
    let backbone_out = if completed {
        match selected_epoch {
            Some(e) => {
                std::fs::copy(&best, &backbone_path)
                    .map_err(|err| FinetuneError::io(&backbone_path, err))?;
                backbone_hash =
                    Backbone::load(cfg.arch, &backbone_path, opts.device)?.weights_hash();
                tracing::info!(epoch = e, "kept the weights of the best validation epoch");
            }
            None => t.backbone.save(&backbone_path)?,
        }
        Some(backbone_path)
    } else {
        None
    };
    let summary = FinetuneSummary {
        run_dir: run.to_path_buf(),
        method: cfg.method,
        backbone: backbone_out,
        backbone_hash,
        selected_epoch,
        epochs_completed: history.len(),
        epochs: cfg.epochs(),
        completed,
        resumed_from_epoch: resumed_from,
        image: image.to_string(),
        subjects: t.data.iter().map(|d| d.info.clone()).collect(),
        dims,
        batch_sizes: t
            .data
            .iter()
            .map(|d| cfg.batch_size.min(d.train.len()))
            .collect(),
        history,
        wall_seconds: started.elapsed().as_secs_f64(),
        images_per_s: if train_seconds > 0.0 {
            images as f64 / train_seconds
        } else {
            0.0
        },
        device: format!("{:?}", opts.device),
        git_commit,
        dataset_fingerprint: fingerprint,
        trained_variables: t.adam.len(),
        frozen_variables: frozen.len(),
    };
    run_dir::write_json(&run.join("summary.json"), &summary)?;
    Ok(summary)
}

/// Where `--select best` keeps the best epoch's backbone until the run completes.
const BEST_BACKBONE: &str = "best-backbone.safetensors";

/// The epoch (1-based) with the best validation score so far: the highest MI bound for
/// CL, the lowest validation loss for regression; the earliest on ties. None without a
/// validation part.
fn best_epoch(history: &[EpochRecord], method: Objective) -> Option<usize> {
    let score = |r: &EpochRecord| match method {
        Objective::Cl => r.val_mi_bound,
        Objective::Regression => r.val_loss.map(|l| -l),
    };
    history
        .iter()
        .filter_map(|r| score(r).filter(|v| v.is_finite()).map(|v| (r.epoch, v)))
        .fold(None, |best: Option<(usize, f64)>, (e, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((e, v)),
        })
        .map(|(e, _)| e)
}

/// Saves the backbone through a temporary file and a rename: a killed run leaves the
/// previous best whole.
fn save_backbone(backbone: &Backbone, path: &Path) -> Result<(), FinetuneError> {
    let tmp = path.with_extension("safetensors.partial");
    backbone.save(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| FinetuneError::io(path, e))
}

/// The checkpoint file of `epoch` if one exists (the last good one on resume).
fn existing_checkpoint(
    run: &Path,
    epoch: usize,
) -> Result<Option<std::path::PathBuf>, FinetuneError> {
    Ok(checkpoint::list(run)?
        .into_iter()
        .find(|(e, _)| *e == epoch && epoch > 0)
        .map(|(_, p)| p))
}
