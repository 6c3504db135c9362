//! The training loop: epochs of shuffled batches per subject, Adam over every
//! trainable backbone and head variable, validation, checkpoints, resume.
//!
//! Reproducibility: head initialization, data order and augmentation come from Rust
//! streams keyed by (seed, purpose, epoch[, batch]); libtorch's generator (dropout) is
//! re-seeded from (seed, epoch, subject, batch, micro-batch) before each backbone pass.
//! A checkpoint therefore needs no RNG state, and on the CPU a resumed run ends
//! bit-identical to an uninterrupted one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::adam::{Adam, AdamConfig};
use super::checkpoint::{self, CheckpointMeta};
use super::contrastive::{info_nce, mi_lower_bound, ClDims, ContrastiveHeads};
use super::data::{self, derive_seed, SubjectData};
use super::regression::RegressionHeads;
use super::run_dir;
use super::{augment, EpochRecord, FinetuneConfig, FinetuneError, FinetuneSummary, Objective};
use crate::features::backbones::{Backbone, IMAGENET_CLASSES};
use crate::features::images;

/// Pooled runs keep every subject's decoded pixels in memory up to this size; above
/// it, a subject's pixels are loaded for its turn and dropped after.
const PIXEL_BUDGET_BYTES: usize = 4 << 30;

/// Fields that may differ between a run and its resumption: they change neither
/// the arithmetic nor the data (more epochs extend the run).
const RESUMABLE_CHANGES: &[&str] = &["epochs", "eval_batch_size"];

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

enum Heads {
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
struct LossScale {
    scale: f64,
    good_steps: u64,
}

const SCALE_GROWTH_INTERVAL: u64 = 2000;

struct Trainer<'a> {
    cfg: &'a FinetuneConfig,
    opts: &'a RunOptions<'a>,
    backbone: Backbone,
    heads_vs: nn::VarStore,
    heads: Heads,
    adam: Adam,
    scaler: Option<LossScale>,
    data: Vec<SubjectData>,
    resident_pixels: bool,
    /// Some backbone variable trains (not everything frozen).
    backbone_learns: bool,
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
    let fingerprint = data::fingerprint(&data)?;
    let names: Vec<String> = data.iter().map(|d| d.info.subject.clone()).collect();
    let voxels: Vec<usize> = data.iter().map(|d| d.info.voxels).collect();

    let backbone = Backbone::load(cfg.arch, &cfg.weights(), opts.device)?;
    let frozen = freeze(&backbone, &cfg.freeze)?;
    let image = cfg.image_tap.as_deref().unwrap_or("logits");
    let width = image_width(
        &backbone,
        cfg.image_tap.as_deref(),
        cfg.input_size,
        opts.device,
    )?;
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
    let scaler = match (cfg.mixed_precision, opts.device.is_cuda()) {
        (true, true) => Some(LossScale {
            scale: 65536.0,
            good_steps: 0,
        }),
        (true, false) => {
            tracing::warn!(
                "mixed precision needs CUDA: training in float32 on {:?}",
                opts.device
            );
            None
        }
        _ => None,
    };
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
        scaler,
        data,
        resident_pixels: names.len() == 1 || pixel_bytes <= PIXEL_BUDGET_BYTES,
        backbone_learns,
    };
    tracing::info!(method = %cfg.method, subjects = ?names, roi = %cfg.roi, hemisphere = %cfg.hemisphere, arch = %cfg.arch, input_size = cfg.input_size, image = %image, image_width = width, trained = t.adam.len(), frozen = frozen.len(), dims = ?dims, device = ?opts.device, "fine-tuning");

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
    let (mut images, mut train_seconds) = (0usize, 0.0f64);
    let mut completed = start_epoch >= cfg.epochs();
    for e in start_epoch..cfg.epochs() {
        let epoch = e + 1;
        let epoch_start = Instant::now();
        let stats = t.train_epoch(e, last_good.as_deref())?;
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
        last_good = Some(t.save_checkpoint(epoch, history.clone(), &fingerprint)?);
        run_dir::write_history(run, &history)?;
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
    let backbone_out = if completed {
        t.backbone.save(&backbone_path)?;
        Some(backbone_path)
    } else {
        None
    };
    let summary = FinetuneSummary {
        run_dir: run.to_path_buf(),
        method: cfg.method,
        backbone: backbone_out,
        backbone_hash: t.backbone.weights_hash(),
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

/// Every variable Adam updates, by checkpoint name: the backbone's (not frozen) and
/// the heads'. Batch-norm running statistics are buffers, not trained.
fn trained_variables(backbone: &Backbone, heads: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in backbone.var_store().variables() {
        if t.requires_grad() {
            out.push((format!("backbone.{name}"), t));
        }
    }
    for (name, t) in heads.variables() {
        if t.requires_grad() {
            out.push((format!("heads.{name}"), t));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Parses one `--freeze` spec into the variable-name prefixes it covers:
/// `features.0` -> [`features.0`]; `features.0..features.3` (or `features.0..3`) ->
/// `features.0` ... `features.3`, inclusive.
fn freeze_prefixes(spec: &str) -> Result<Vec<String>, FinetuneError> {
    let spec = spec.trim();
    let Some((lo, hi)) = spec.split_once("..") else {
        return Ok(vec![spec.to_string()]);
    };
    let bad = || {
        FinetuneError::Config(format!(
            "freeze: '{spec}' is not a range like features.0..features.3"
        ))
    };
    let (base, lo_i) = lo.rsplit_once('.').ok_or_else(bad)?;
    let lo_i: usize = lo_i.parse().map_err(|_| bad())?;
    let hi_i: usize = match hi.rsplit_once('.') {
        Some((hb, hi_i)) if hb == base => hi_i.parse().map_err(|_| bad())?,
        Some(_) => return Err(bad()),
        None => hi.parse().map_err(|_| bad())?,
    };
    if hi_i < lo_i {
        return Err(bad());
    }
    Ok((lo_i..=hi_i).map(|i| format!("{base}.{i}")).collect())
}

/// Stops gradients of the backbone variables named by `specs`; returns their names.
/// A spec that names no variable is an error (a typo would otherwise train everything).
fn freeze(backbone: &Backbone, specs: &[String]) -> Result<Vec<String>, FinetuneError> {
    let vars: BTreeMap<String, Tensor> = backbone.var_store().variables().into_iter().collect();
    let mut frozen = Vec::new();
    for spec in specs {
        let prefixes = freeze_prefixes(spec)?;
        let mut hit = false;
        for (name, t) in &vars {
            if prefixes
                .iter()
                .any(|p| name == p || name.starts_with(&format!("{p}.")))
            {
                hit = true;
                if t.requires_grad() {
                    let _ = t.set_requires_grad(false);
                    frozen.push(name.clone());
                }
            }
        }
        if !hit {
            return Err(FinetuneError::Config(format!(
                "freeze: '{spec}' matches no variable of {} (names look like features.0.0.weight)",
                backbone.arch()
            )));
        }
    }
    Ok(frozen)
}

/// What the heads read of ImageNet-normalized images x [B, 3, S, S]: the logits (the
/// paper), or the output of `tap` with conv maps [B, C, H, W] averaged over space to
/// [B, C], so that the heads' width does not depend on the input size. The one place
/// every pass (training, GradCache, validation) gets its features, so that they agree.
pub(crate) fn image_features(
    backbone: &Backbone,
    x: &Tensor,
    tap: Option<&str>,
    train: bool,
) -> Result<Tensor, FinetuneError> {
    let Some(tap) = tap else {
        return Ok(backbone.logits(x, train));
    };
    let out = backbone
        .taps(x, &[tap], train)?
        .pop()
        .ok_or_else(|| FinetuneError::Config(format!("image_tap: {tap} gave no output")))?;
    Ok(match out.dim() {
        4 => out.mean_dim([2i64, 3].as_slice(), false, None),
        2 => out,
        _ => out.flatten(1, -1),
    })
}

/// F, the width of [`image_features`]: the heads' input. A tap's width is read off one
/// blank image in evaluation mode, which leaves batch-norm statistics untouched.
pub(crate) fn image_width(
    backbone: &Backbone,
    tap: Option<&str>,
    input_size: u32,
    device: Device,
) -> Result<i64, FinetuneError> {
    if tap.is_none() {
        return Ok(IMAGENET_CLASSES);
    }
    let s = i64::from(input_size);
    let x = Tensor::zeros([1, 3, s, s], (Kind::Float, device));
    let f = tch::no_grad(|| image_features(backbone, &x, tap, false))?;
    f.size().get(1).copied().ok_or_else(|| {
        FinetuneError::Config(format!(
            "image_tap: {} gave features of shape {:?}",
            tap.unwrap_or("logits"),
            f.size()
        ))
    })
}

/// Where a training step sits: seeds its dropout masks.
#[derive(Debug, Clone, Copy)]
struct StepId {
    epoch: usize,
    subject: usize,
    batch: usize,
}

fn restore_buffers(saved: &[(Tensor, Tensor)]) {
    tch::no_grad(|| {
        for (dst, src) in saved {
            let mut dst = dst.shallow_clone();
            dst.copy_(src);
        }
    });
}

struct EpochStats {
    mean_loss: f64,
    images: usize,
    seconds: f64,
}

impl Trainer<'_> {
    /// One epoch (0-based `e`): every batch of subject 1, then subject 2, ...
    fn train_epoch(
        &mut self,
        e: usize,
        last_good: Option<&Path>,
    ) -> Result<EpochStats, FinetuneError> {
        let cfg = self.cfg;
        let device = self.opts.device;
        let epoch = e + 1;
        let plans: Vec<Vec<Vec<usize>>> = self
            .data
            .iter()
            .enumerate()
            .map(|(si, d)| d.epoch_batches(cfg.batch_size, cfg.seed, si, e))
            .collect();
        let total_images: usize = plans.iter().flatten().map(Vec::len).sum();
        let total_batches: usize = plans.iter().map(Vec::len).sum();
        let bar = ProgressBar::new(total_images as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {wide_bar} {pos}/{len} images {msg} [{elapsed} < {eta}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("epoch {epoch}/{}", cfg.epochs()));
        let (mut sum, mut n_batches, mut images, mut seconds) = (0.0f64, 0usize, 0usize, 0.0f64);
        let mut global_batch = 0usize;
        for (si, batches) in plans.iter().enumerate() {
            self.data[si].pixels(cfg.input_size, self.opts.cache_dir)?;
            for (bi, rows) in batches.iter().enumerate() {
                global_batch += 1;
                let step_start = Instant::now();
                let sd = &self.data[si];
                let px = sd
                    .loaded_pixels()
                    .ok_or_else(|| FinetuneError::Config("pixels not loaded".into()))?;
                let x = if cfg.augment {
                    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(
                        cfg.seed,
                        "augment",
                        &[si as u64, e as u64, bi as u64],
                    ));
                    images::normalize(&augment::augment(&px.batch_unit(rows, device), &mut rng))
                } else {
                    px.batch(rows, device)
                };
                let y = sd.responses(rows, device);
                let poison = self.opts.hooks.nan_loss_at == Some((epoch, global_batch));
                let step = StepId {
                    epoch: e,
                    subject: si,
                    batch: bi,
                };
                let value = self.step(&x, &y, step, poison)?;
                if !value.is_finite() {
                    bar.abandon();
                    let place = format!(
                        "batch {global_batch} of {total_batches} ({}, batch {} of its {})",
                        self.data[si].info.subject,
                        bi + 1,
                        batches.len()
                    );
                    return Err(FinetuneError::NonFinite {
                        what: "training",
                        value,
                        epoch,
                        place,
                        batch: Some(global_batch),
                        last_good: last_good.map(Path::to_path_buf),
                    });
                }
                sum += value;
                n_batches += 1;
                images += rows.len();
                seconds += step_start.elapsed().as_secs_f64();
                bar.inc(rows.len() as u64);
                bar.set_message(format!(
                    "loss {value:.4}, {:.1} images/s",
                    images as f64 / seconds.max(1e-9)
                ));
            }
            if !self.resident_pixels {
                self.data[si].release_pixels();
            }
        }
        bar.finish_and_clear();
        Ok(EpochStats {
            mean_loss: if n_batches > 0 {
                sum / n_batches as f64
            } else {
                f64::NAN
            },
            images,
            seconds,
        })
    }

    /// Seeds libtorch's generator (dropout) for one forward pass of the backbone, from
    /// (seed, epoch, subject, batch, micro-batch): each pass is reproducible from its
    /// position alone, and the two passes over a micro-batch draw the same masks.
    fn seed_pass(&self, step: StepId, chunk: usize) {
        let s = derive_seed(
            self.cfg.seed,
            "dropout",
            &[
                step.epoch as u64,
                step.subject as u64,
                step.batch as u64,
                chunk as u64,
            ],
        );
        tch::manual_seed((s >> 1) as i64);
    }

    /// One training step on images x [B, 3, S, S] and responses y [B, V]: forward,
    /// loss, backward, Adam. Returns the loss; a non-finite loss is returned before any
    /// update, so the weights stay those of the last good step.
    ///
    /// With `micro_batch` smaller than B, the backbone runs in micro-batches twice: a
    /// forward pass without a graph gives all B image features, the loss over the whole
    /// batch (every other image a negative, as with one pass) gives d loss / d features,
    /// and a second forward with the graph, one micro-batch at a time, back-propagates that
    /// gradient (GradCache, Gao et al. 2021). Gradients equal the one-pass ones except
    /// that backbone batch-norm uses per-micro-batch statistics; memory is that of one
    /// micro-batch.
    fn step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        step: StepId,
        poison: bool,
    ) -> Result<f64, FinetuneError> {
        let b = x.size()[0];
        let tap = self.cfg.image_tap.as_deref();
        // A backbone with nothing to train runs as at inference (running batch-norm
        // statistics, no dropout): heads on a frozen backbone read the features a fit
        // of that backbone reads, and the backbone stays exactly the one loaded.
        let train = self.backbone_learns;
        let micro = self
            .cfg
            .micro_batch
            .map_or(b, |m| (m as i64).clamp(1, b.max(1)));
        let mixed = self.scaler.is_some();
        let scale = self.scaler.map_or(1.0, |s| s.scale);
        let si = step.subject;
        self.adam.zero_grad();
        if micro >= b {
            self.seed_pass(step, 0);
            let (backbone, heads) = (&self.backbone, &self.heads);
            let mut loss = tch::autocast(mixed, || {
                let features = image_features(backbone, x, tap, train)?.to_kind(Kind::Float);
                Ok::<_, FinetuneError>(heads.loss(&features, si, y, true))
            })?;
            if poison {
                loss *= f64::NAN;
            }
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Ok(value);
            }
            (loss * scale).backward();
            self.apply_update();
            return Ok(value);
        }

        let chunks: Vec<(i64, i64)> = (0..b)
            .step_by(micro as usize)
            .map(|start| (start, micro.min(b - start)))
            .collect();
        // Pass 1 must not move batch-norm running statistics: pass 2 does, once.
        let buffers = self.backbone_buffers();
        let backbone = &self.backbone;
        let features = chunks
            .iter()
            .enumerate()
            .map(|(ci, &(start, len))| {
                self.seed_pass(step, ci);
                tch::no_grad(|| {
                    tch::autocast(mixed, || {
                        image_features(backbone, &x.narrow(0, start, len), tap, train)
                            .map(|f| f.to_kind(Kind::Float))
                    })
                })
            })
            .collect::<Result<Vec<Tensor>, FinetuneError>>();
        restore_buffers(&buffers);
        let leaf = Tensor::cat(&features?, 0).detach().set_requires_grad(true);
        let heads = &self.heads;
        let mut loss = tch::autocast(mixed, || heads.loss(&leaf, si, y, true));
        if poison {
            loss *= f64::NAN;
        }
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Ok(value);
        }
        (loss * scale).backward();
        let d_features = leaf.grad();
        for (ci, &(start, len)) in chunks.iter().enumerate() {
            // A frozen backbone (or one frozen up to the tap) has nothing to receive
            // the cached gradient: pass 2 would only move batch-norm statistics.
            if !self.backbone_learns {
                break;
            }
            self.seed_pass(step, ci);
            let backbone = &self.backbone;
            let part = tch::autocast(mixed, || {
                image_features(backbone, &x.narrow(0, start, len), tap, train)
                    .map(|f| f.to_kind(Kind::Float))
            })?;
            if !part.requires_grad() {
                break;
            }
            // d/dθ sum(features * g) = J^T g: back-propagates the cached gradient.
            (part * d_features.narrow(0, start, len))
                .sum(Kind::Float)
                .backward();
        }
        self.apply_update();
        Ok(value)
    }

    /// Copies of the backbone's non-trained variables (batch-norm running statistics).
    fn backbone_buffers(&self) -> Vec<(Tensor, Tensor)> {
        self.backbone
            .var_store()
            .variables()
            .into_values()
            .filter(|t| !t.requires_grad())
            .map(|t| {
                let saved = t.detach().copy();
                (t, saved)
            })
            .collect()
    }

    /// The Adam update from the gradients in place (scaled by the loss scale under
    /// mixed precision: a step whose gradients overflowed is skipped and the scale
    /// halved, as PyTorch's GradScaler does).
    fn apply_update(&mut self) {
        match self.scaler.as_mut() {
            None => self.adam.step(),
            Some(sc) => {
                if self.adam.grads_finite() {
                    self.adam.scale_grads(1.0 / sc.scale);
                    self.adam.step();
                    sc.good_steps += 1;
                    if sc.good_steps % SCALE_GROWTH_INTERVAL == 0 {
                        sc.scale *= 2.0;
                    }
                } else {
                    sc.scale /= 2.0;
                    sc.good_steps = 0;
                    tracing::debug!(scale = sc.scale, "gradients overflowed: step skipped");
                }
            }
        }
    }

    /// Validation loss and (CL) MI lower bound, mean over subjects with a validation
    /// part; the model in evaluation mode (running batch-norm statistics, no dropout).
    fn validate(
        &mut self,
        epoch: usize,
        last_good: Option<&Path>,
    ) -> Result<(Option<f64>, Option<f64>), FinetuneError> {
        let cfg = self.cfg;
        let device = self.opts.device;
        let mixed = self.scaler.is_some();
        let tap = cfg.image_tap.as_deref();
        let (mut losses, mut mis) = (Vec::new(), Vec::new());
        for si in 0..self.data.len() {
            if self.data[si].val.is_empty() {
                continue;
            }
            self.data[si].pixels(cfg.input_size, self.opts.cache_dir)?;
            let sd = &self.data[si];
            let px = sd
                .loaded_pixels()
                .ok_or_else(|| FinetuneError::Config("pixels not loaded".into()))?;
            let (backbone, heads) = (&self.backbone, &self.heads);
            let (loss, mi) = tch::no_grad(|| {
                tch::autocast(mixed, || {
                    let features = sd
                        .val
                        .chunks(cfg.eval_batch_size)
                        .map(|rows| {
                            image_features(backbone, &px.batch(rows, device), tap, false)
                                .map(|f| f.to_kind(Kind::Float))
                        })
                        .collect::<Result<Vec<Tensor>, FinetuneError>>()?;
                    let features = Tensor::cat(&features, 0);
                    let y = sd.responses(&sd.val, device);
                    Ok::<_, FinetuneError>(match heads {
                        Heads::Cl(h) => {
                            let z_img = h.embed_images(&features, false);
                            let z_fmri = h.embed_fmri(si, &y, false);
                            let tau = h.tau();
                            let loss =
                                info_nce(&z_fmri, &z_img, &tau.to_device(device), h.symmetric())
                                    .double_value(&[]);
                            (loss, Some(mi_lower_bound(&z_fmri, &z_img, h.tau_value())))
                        }
                        Heads::Regression(h) => (h.loss(&features, si, &y).double_value(&[]), None),
                    })
                })
            })?;
            if !loss.is_finite() {
                let place = format!("validation of {}", sd.info.subject);
                return Err(FinetuneError::NonFinite {
                    what: "validation",
                    value: loss,
                    epoch,
                    place,
                    batch: None,
                    last_good: last_good.map(Path::to_path_buf),
                });
            }
            losses.push(loss);
            mis.extend(mi);
            if !self.resident_pixels {
                self.data[si].release_pixels();
            }
        }
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Ok((mean(&losses), mean(&mis)))
    }

    fn save_checkpoint(
        &self,
        epoch: usize,
        history: Vec<EpochRecord>,
        fingerprint: &str,
    ) -> Result<std::path::PathBuf, FinetuneError> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (k, v) in self.backbone.var_store().variables() {
            tensors.push((format!("backbone.{k}"), v));
        }
        for (k, v) in self.heads_vs.variables() {
            tensors.push((format!("heads.{k}"), v));
        }
        for (k, v) in self.adam.state_tensors() {
            tensors.push((format!("adam.{k}"), v));
        }
        let meta = CheckpointMeta {
            format: 1,
            epoch,
            adam_step: self.adam.steps(),
            loss_scale: self.scaler.map(|s| (s.scale, s.good_steps)),
            history,
            config: self.cfg.clone(),
            dataset_fingerprint: fingerprint.to_string(),
            trained: self.adam.names().map(str::to_string).collect(),
        };
        checkpoint::save(self.opts.run, &meta, tensors)
    }

    /// Loads a checkpoint after checking it belongs to this config and data.
    fn restore(&mut self, l: &checkpoint::Loaded, fingerprint: &str) -> Result<(), FinetuneError> {
        let run = self.opts.run;
        let refuse = |reason: String| FinetuneError::Resume {
            run: run.to_path_buf(),
            reason,
        };
        let diffs = config_differences(&l.meta.config, self.cfg);
        if !diffs.is_empty() {
            return Err(refuse(format!(
                "{} was made with a different config ({}); only {} may change",
                l.path.display(),
                diffs.join("; "),
                RESUMABLE_CHANGES.join(", ")
            )));
        }
        if l.meta.dataset_fingerprint != fingerprint {
            return Err(refuse(format!(
                "the data changed since {} was written (dataset fingerprint {} then, {} now)",
                l.path.display(),
                l.meta.dataset_fingerprint,
                fingerprint
            )));
        }
        let ours: Vec<String> = self.adam.names().map(str::to_string).collect();
        if ours != l.meta.trained {
            return Err(refuse(format!(
                "{} trained {} variables, this model {}",
                l.path.display(),
                l.meta.trained.len(),
                ours.len()
            )));
        }
        let backbone_vars: BTreeMap<String, Tensor> =
            self.backbone.var_store().variables().into_iter().collect();
        checkpoint::restore_vars(&l.path, "backbone.", &backbone_vars, &l.tensors)?;
        let head_vars: BTreeMap<String, Tensor> = self.heads_vs.variables().into_iter().collect();
        checkpoint::restore_vars(&l.path, "heads.", &head_vars, &l.tensors)?;
        let adam_state: BTreeMap<String, Tensor> = l
            .tensors
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("adam.")
                    .map(|k| (k.to_string(), v.shallow_clone()))
            })
            .collect();
        self.adam
            .load_state(l.meta.adam_step, &adam_state)
            .map_err(|reason| FinetuneError::Checkpoint {
                path: l.path.clone(),
                reason,
            })?;
        if let (Some(sc), Some((scale, good))) = (self.scaler.as_mut(), l.meta.loss_scale) {
            sc.scale = scale;
            sc.good_steps = good;
        }
        Ok(())
    }
}

/// `field: then -> now` for every config field that differs, except those a resume may change.
fn config_differences(then: &FinetuneConfig, now: &FinetuneConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(then), serde_json::to_value(now))
    else {
        return vec!["config not serializable".into()];
    };
    let mut out = Vec::new();
    for (k, va) in &a {
        if RESUMABLE_CHANGES.contains(&k.as_str()) {
            continue;
        }
        let vb = b.get(k).unwrap_or(&serde_json::Value::Null);
        if va != vb {
            out.push(format!("{k}: {va} -> {vb}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_specs_expand() {
        assert_eq!(freeze_prefixes("features.0").unwrap(), vec!["features.0"]);
        assert_eq!(
            freeze_prefixes("features.1..features.3").unwrap(),
            vec!["features.1", "features.2", "features.3"]
        );
        assert_eq!(freeze_prefixes("features.2..3").unwrap().len(), 2);
        assert!(freeze_prefixes("features.3..features.1").is_err());
        assert!(freeze_prefixes("features.1..layer.2").is_err());
    }
}
