//! Checkpoints: everything a killed run needs to continue as if it never stopped.
//!
//! One safetensors file per completed epoch, `RUN/checkpoints/epoch-NNNN.safetensors`,
//! holding `backbone.<torchvision name>`, `heads.<name>`, `adam.{m,v}.<trained name>`
//! and `meta`, a uint8 tensor of JSON ([`CheckpointMeta`]: epoch, optimizer step,
//! loss scale, history, config, dataset fingerprint). Keeping the metadata inside the
//! one file makes each checkpoint a single atomic rename (`.partial` then rename): a
//! reader sees a whole checkpoint or none. The newest two are kept, so a checkpoint
//! damaged after its rename still leaves a good one.
//!
//! No RNG state is stored: data order, dropout and augmentation are seeded from
//! (seed, epoch[, batch]) at the start of each epoch, so the epoch number is the state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{EpochRecord, FinetuneConfig, FinetuneError};

const FORMAT: u32 = 1;
const KEEP: usize = 2;
const META: &str = "meta";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    /// Epochs completed (1-based count).
    pub epoch: usize,
    pub adam_step: u64,
    /// Dynamic loss scale of mixed precision (and its count of good steps).
    pub loss_scale: Option<(f64, u64)>,
    pub history: Vec<EpochRecord>,
    pub config: FinetuneConfig,
    pub dataset_fingerprint: String,
    /// Names of the trained variables (optimizer state keys), sorted.
    pub trained: Vec<String>,
}

pub struct Loaded {
    pub path: PathBuf,
    pub meta: CheckpointMeta,
    pub tensors: BTreeMap<String, Tensor>,
}

pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn file_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}.safetensors")
}

/// Checkpoint files of `run`, newest first.
pub fn list(run: &Path) -> Result<Vec<(usize, PathBuf)>, FinetuneError> {
    let d = dir(run);
    if !d.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&d).map_err(|e| FinetuneError::io(&d, e))? {
        let entry = entry.map_err(|e| FinetuneError::io(&d, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let epoch = name
            .strip_prefix("epoch-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(e) = epoch {
            out.push((e, entry.path()));
        }
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.0));
    Ok(out)
}

/// Writes a checkpoint atomically and prunes all but the newest `KEEP`.
pub fn save(
    run: &Path,
    meta: &CheckpointMeta,
    tensors: Vec<(String, Tensor)>,
) -> Result<PathBuf, FinetuneError> {
    let d = dir(run);
    std::fs::create_dir_all(&d).map_err(|e| FinetuneError::io(&d, e))?;
    let path = d.join(file_name(meta.epoch));
    let fail = |reason: String| FinetuneError::Checkpoint {
        path: path.clone(),
        reason,
    };
    let json = serde_json::to_vec(meta).map_err(|e| fail(e.to_string()))?;
    let mut cpu: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    cpu.push((META.to_string(), Tensor::from_slice(&json)));
    let tmp = d.join(format!("{}.partial", file_name(meta.epoch)));
    Tensor::write_safetensors(&cpu, &tmp).map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| FinetuneError::io(&path, e))?;
    for (_, old) in list(run)?.into_iter().skip(KEEP) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(path = %old.display(), error = %e, "cannot remove an old checkpoint");
        }
    }
    Ok(path)
}

pub fn read(path: &Path) -> Result<Loaded, FinetuneError> {
    let fail = |reason: String| FinetuneError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| fail(e.to_string()))?
        .into_iter()
        .collect();
    let meta = tensors
        .get(META)
        .ok_or_else(|| fail("no `meta` entry: not a vcl fine-tuning checkpoint".into()))?;
    if meta.kind() != Kind::Uint8 {
        return Err(fail(format!(
            "`meta` is {:?}, expected uint8 JSON",
            meta.kind()
        )));
    }
    let bytes = Vec::<u8>::try_from(meta).map_err(|e| fail(e.to_string()))?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("`meta` JSON: {e}")))?;
    if meta.format != FORMAT {
        return Err(fail(format!(
            "checkpoint format {} (this vcl reads {FORMAT})",
            meta.format
        )));
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        meta,
        tensors,
    })
}

/// The newest checkpoint of `run` that reads, or None. An unreadable newer one (cut
/// short by a crash after its rename, or damaged) is skipped with a warning.
pub fn latest(run: &Path) -> Result<Option<Loaded>, FinetuneError> {
    for (_, path) in list(run)? {
        match read(&path) {
            Ok(l) => return Ok(Some(l)),
            Err(e) => tracing::warn!(error = %e, "skipping unreadable checkpoint"),
        }
    }
    Ok(None)
}

/// Copies `tensors[prefix + name]` into every variable of `vars`, checking shapes.
pub fn restore_vars(
    path: &Path,
    prefix: &str,
    vars: &BTreeMap<String, Tensor>,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<(), FinetuneError> {
    tch::no_grad(|| {
        for (name, dst) in vars {
            let key = format!("{prefix}{name}");
            let src = tensors.get(&key).ok_or_else(|| FinetuneError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("{key} is missing"),
            })?;
            if src.size() != dst.size() {
                return Err(FinetuneError::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{key} has shape {:?}, the model {:?}",
                        src.size(),
                        dst.size()
                    ),
                });
            }
            let mut dst = dst.shallow_clone();
            dst.f_copy_(src).map_err(|e| FinetuneError::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("{key}: {e}"),
            })?;
        }
        Ok(())
    })
}

/// Fields that may differ between a run and its resumption: they change neither
/// the arithmetic nor the data (more epochs extend the run).
const RESUMABLE_CHANGES: &[&str] = &["epochs", "eval_batch_size"];

// A trainer's own state, saved and restored with the format above.
impl super::train::Trainer<'_> {
    pub(super) fn save_checkpoint(
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
        save(self.opts.run, &meta, tensors)
    }

    /// Loads a checkpoint after checking it belongs to this config and data.
    pub(super) fn restore(&mut self, l: &Loaded, fingerprint: &str) -> Result<(), FinetuneError> {
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
        restore_vars(&l.path, "backbone.", &backbone_vars, &l.tensors)?;
        let head_vars: BTreeMap<String, Tensor> = self.heads_vs.variables().into_iter().collect();
        restore_vars(&l.path, "heads.", &head_vars, &l.tensors)?;
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
