//! One epoch of optimizer steps: each batch's backbone passes in micro-batches with
//! the gradient cache, the loss scale under mixed precision, Adam's update.

use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::validate::{image_features, ImageInput};
use super::{Trainer, SCALE_GROWTH_INTERVAL};
use crate::features::images;
use crate::model::finetune::data::derive_seed;
use crate::model::finetune::{augment, FinetuneError};

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

pub(super) struct EpochStats {
    pub(super) mean_loss: f64,
    pub(super) images: usize,
    /// Training time: from each subject's first batch to its last loss read back.
    pub(super) seconds: f64,
    pub(super) steps: Vec<StepRecord>,
}

/// Steps between host reads of the loss on a GPU. A read waits for the GPU to finish
/// every queued step; reading each step would leave the GPU idle while the host
/// prepares the next batch, and the host idle while the GPU computes.
const CUDA_LOSS_READ_EVERY: usize = 16;

/// One line of `RUN/steps.csv`: an optimizer step's training loss.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct StepRecord {
    pub(crate) epoch: usize,
    /// 1-based, counted across the subjects of the epoch.
    pub(crate) batch: usize,
    /// 0-based index of the subject in the run.
    pub(crate) subject: usize,
    pub(crate) images: usize,
    pub(crate) loss: f64,
}

/// A step whose loss is still on the device.
struct PendingLoss {
    batch: usize,
    place: String,
    subject: usize,
    images: usize,
    loss: Tensor,
}

/// The epoch's losses: read back from the device in groups, each checked for a
/// non-finite value in step order, so that the first bad step is named exactly.
struct LossLog<'a> {
    epoch: usize,
    total_batches: usize,
    last_good: Option<&'a Path>,
    read_every: usize,
    pending: Vec<PendingLoss>,
    steps: Vec<StepRecord>,
    images: usize,
}

impl LossLog<'_> {
    fn read(&mut self, bar: &ProgressBar) -> Result<(), FinetuneError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let stacked: Vec<Tensor> = self.pending.iter().map(|p| p.loss.view([1])).collect();
        let values = Vec::<f64>::try_from(
            Tensor::cat(&stacked, 0)
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu),
        )
        .map_err(|e| FinetuneError::Config(format!("reading the training losses: {e}")))?;
        for (p, value) in std::mem::take(&mut self.pending).into_iter().zip(values) {
            if !value.is_finite() {
                bar.abandon();
                return Err(FinetuneError::NonFinite {
                    what: "training",
                    value,
                    epoch: self.epoch,
                    place: p.place,
                    batch: Some(p.batch),
                    last_good: self.last_good.map(Path::to_path_buf),
                });
            }
            self.images += p.images;
            bar.inc(p.images as u64);
            self.steps.push(StepRecord {
                epoch: self.epoch,
                batch: p.batch,
                subject: p.subject,
                images: p.images,
                loss: value,
            });
        }
        debug_assert!(self.steps.len() <= self.total_batches);
        Ok(())
    }
}

impl Trainer<'_> {
    /// One epoch (0-based `e`): every batch of subject 1, then subject 2, ...
    pub(super) fn train_epoch(
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
        let mut log = LossLog {
            epoch,
            total_batches,
            last_good,
            read_every: if device.is_cuda() {
                CUDA_LOSS_READ_EVERY
            } else {
                1
            },
            pending: Vec::new(),
            steps: Vec::new(),
            images: 0,
        };
        let mut seconds = 0.0f64;
        let mut global_batch = 0usize;
        for (si, batches) in plans.iter().enumerate() {
            self.data[si].pixels(cfg.input_size, self.opts.cache_dir)?;
            let subject_start = Instant::now();
            for (bi, rows) in batches.iter().enumerate() {
                global_batch += 1;
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
                    images::normalize(&augment::augment(&px.batch_unit(rows, device)?, &mut rng))
                } else {
                    px.batch(rows, device)?
                };
                let y = sd.responses(rows, device);
                let poison = self.opts.hooks.nan_loss_at == Some((epoch, global_batch));
                let step = StepId {
                    epoch: e,
                    subject: si,
                    batch: bi,
                };
                // Every epoch has the same batches, so the run's step is its position.
                let run_step = e * total_batches + global_batch - 1;
                self.adam.set_lr(cfg.lr_schedule.lr_at(
                    cfg.lr(),
                    run_step,
                    cfg.epochs() * total_batches,
                    cfg.warmup_fraction,
                ));
                let loss = self.step(&x, &y, step, poison)?;
                log.pending.push(PendingLoss {
                    batch: global_batch,
                    place: format!(
                        "batch {global_batch} of {total_batches} ({}, batch {} of its {})",
                        self.data[si].info.subject,
                        bi + 1,
                        batches.len()
                    ),
                    subject: si,
                    images: rows.len(),
                    loss,
                });
                if log.pending.len() >= log.read_every {
                    log.read(&bar)?;
                }
            }
            // Reading the last losses waits for the GPU: the subject's time is its own.
            log.read(&bar)?;
            seconds += subject_start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4}, {:.1} images/s",
                log.steps.last().map_or(f64::NAN, |s| s.loss),
                log.images as f64 / seconds.max(1e-9)
            ));
            if !self.resident_pixels {
                self.data[si].release_pixels();
            }
        }
        bar.finish_and_clear();
        let n = log.steps.len();
        Ok(EpochStats {
            mean_loss: if n > 0 {
                log.steps.iter().map(|s| s.loss).sum::<f64>() / n as f64
            } else {
                f64::NAN
            },
            images: log.images,
            seconds,
            steps: log.steps,
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
    /// loss, backward, Adam. Returns the loss, detached and still on the device: the
    /// caller reads losses back in groups ([`LossLog`]) and stops the run at the first
    /// non-finite one.
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
    ) -> Result<Tensor, FinetuneError> {
        let b = x.size()[0];
        let tap = ImageInput::of(self.cfg);
        // A backbone with nothing to train runs as at inference (running batch-norm
        // statistics, no dropout): heads on a frozen backbone read the features a fit
        // of that backbone reads, and the backbone stays exactly the one loaded.
        let train = self.backbone_learns;
        let micro = self
            .cfg
            .micro_batch
            .map_or(b, |m| (m as i64).clamp(1, b.max(1)));
        let precision = self.precision;
        let scale = self.scaler.map_or(1.0, |s| s.scale);
        let si = step.subject;
        self.adam.zero_grad();
        if micro >= b {
            self.seed_pass(step, 0);
            let (backbone, heads) = (&self.backbone, &self.heads);
            let loss = precision.autocast(|| {
                let features = image_features(backbone, x, tap, train)?.to_kind(Kind::Float);
                Ok::<_, FinetuneError>(heads.loss(&features, si, y, true))
            })?;
            let value = backward(loss, poison, scale);
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
                    precision.autocast(|| {
                        image_features(backbone, &x.narrow(0, start, len), tap, train)
                            .map(|f| f.to_kind(Kind::Float))
                    })
                })
            })
            .collect::<Result<Vec<Tensor>, FinetuneError>>();
        restore_buffers(&buffers);
        let leaf = Tensor::cat(&features?, 0).detach().set_requires_grad(true);
        let heads = &self.heads;
        let loss = precision.autocast(|| heads.loss(&leaf, si, y, true));
        let value = backward(loss, poison, scale);
        let d_features = leaf.grad();
        for (ci, &(start, len)) in chunks.iter().enumerate() {
            // A frozen backbone (or one frozen up to the tap) has nothing to receive
            // the cached gradient: pass 2 would only move batch-norm statistics.
            if !self.backbone_learns {
                break;
            }
            self.seed_pass(step, ci);
            let backbone = &self.backbone;
            let part = precision.autocast(|| {
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
}

/// Back-propagates `loss * scale` and returns the loss, detached. A non-finite loss is
/// propagated like any other (its step's update is then garbage, and the run stops when
/// the loss is read back, before any checkpoint). `poison` makes it NaN: the tests' way
/// to hit that path.
fn backward(mut loss: Tensor, poison: bool, scale: f64) -> Tensor {
    if poison {
        loss *= f64::NAN;
    }
    let value = loss.detach();
    (loss * scale).backward();
    value
}
