//! Reading, checking, saving and hashing torchvision state_dicts.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::{Arch, BackboneError};

/// How many names of each kind a mismatch message lists before counting the rest.
const LISTED: usize = 10;

/// A key both sides have, with different shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub key: String,
    pub expected: Vec<i64>,
    pub found: Vec<i64>,
}

/// Named tensors of a weights file, on the CPU.
pub(super) fn read(path: &Path) -> Result<Vec<(String, Tensor)>, BackboneError> {
    if !path.is_file() {
        return Err(BackboneError::WeightsMissing {
            path: path.to_path_buf(),
        });
    }
    let unreadable = |reason: String| BackboneError::WeightsUnreadable {
        path: path.to_path_buf(),
        reason,
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("safetensors") => {
            Tensor::read_safetensors(path).map_err(|e| unreadable(e.to_string()))
        }
        // libtorch's pickle reader understands torch.save's zip container (torch >= 1.6),
        // not the legacy tar/pickle stream older checkpoints use.
        Some("pth") | Some("pt") | Some("bin") => {
            Tensor::loadz_multi_with_device(path, Device::Cpu).map_err(|e| {
                unreadable(format!(
                    "{}; if this is a legacy (pre-zip) torch.save file, convert it to \
                     safetensors with torch + safetensors in Python",
                    e.to_string().trim_end()
                ))
            })
        }
        _ => Tensor::read_safetensors(path).map_err(|e| {
            unreadable(format!(
                "not a safetensors file ({e}); name torch.save files *.pth"
            ))
        }),
    }
}

/// Copies `tensors` into the var store after checking that names and shapes agree
/// exactly, so that a wrong file fails loudly instead of half-loading.
pub(super) fn assign(
    vs: &VarStore,
    arch: Arch,
    path: &Path,
    tensors: Vec<(String, Tensor)>,
) -> Result<(), BackboneError> {
    let ours = vs.variables();
    let file: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let mut missing: Vec<String> = ours
        .keys()
        // The batch counter does not change what the network computes; older exports
        // (and tch's own) leave it out.
        .filter(|k| !file.contains_key(*k) && !k.ends_with(".num_batches_tracked"))
        .cloned()
        .collect();
    missing.sort();
    let unexpected: Vec<String> = file
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .cloned()
        .collect();
    let mut shapes: Vec<ShapeMismatch> = file
        .iter()
        .filter_map(|(k, src)| {
            let dst = ours.get(k)?;
            (dst.size() != src.size()).then(|| ShapeMismatch {
                key: k.clone(),
                expected: dst.size(),
                found: src.size(),
            })
        })
        .collect();
    shapes.sort_by(|a, b| a.key.cmp(&b.key));
    if !missing.is_empty() || !unexpected.is_empty() || !shapes.is_empty() {
        return Err(BackboneError::ArchMismatch {
            arch,
            path: path.to_path_buf(),
            missing,
            unexpected,
            shapes,
        });
    }
    tch::no_grad(|| -> Result<(), BackboneError> {
        for (name, src) in &file {
            if let Some(dst) = ours.get(name) {
                // `copy_` converts the dtype (e.g. float16 files into float32 variables).
                let mut dst = dst.shallow_clone();
                dst.f_copy_(src)
                    .map_err(|e| BackboneError::WeightsUnreadable {
                        path: path.to_path_buf(),
                        reason: format!("{name}: {e}"),
                    })?;
            }
        }
        Ok(())
    })
}

fn listed(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LISTED {
        s.push_str(&format!(", ... and {} more", names.len() - LISTED));
    }
    s
}

pub(super) fn mismatch_message(
    arch: &Arch,
    path: &Path,
    missing: &[String],
    unexpected: &[String],
    shapes: &[ShapeMismatch],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing keys ({})",
            missing.len(),
            listed(missing)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected keys ({})",
            unexpected.len(),
            listed(unexpected)
        ));
    }
    if !shapes.is_empty() {
        let list = shapes
            .iter()
            .take(LISTED)
            .map(|s| format!("{}: expected {:?}, found {:?}", s.key, s.expected, s.found))
            .collect::<Vec<_>>()
            .join("; ");
        let more = if shapes.len() > LISTED {
            format!("; ... and {} more", shapes.len() - LISTED)
        } else {
            String::new()
        };
        parts.push(format!("{} shape mismatches ({list}{more})", shapes.len()));
    }
    format!(
        "weights {} do not fit {arch} (architecture mismatch: are they another network's?): {}",
        path.display(),
        parts.join("; ")
    )
}

/// Everything of one variable, on the CPU, contiguous.
fn cpu_bytes(t: &Tensor) -> Result<Vec<u8>, tch::TchError> {
    let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
    let numel = t.numel();
    let mut buf = vec![0u8; numel * t.f_kind()?.elt_size_in_bytes()];
    t.f_copy_data_u8(&mut buf, numel)?;
    Ok(buf)
}

pub(super) fn hash(vs: &VarStore) -> String {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut h = Sha256::new();
    for (name, t) in &vars {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update(format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
        match cpu_bytes(t) {
            Ok(bytes) => h.update(&bytes),
            // Only an exotic dtype gets here; its name keeps the hash distinct.
            Err(e) => h.update(format!("unhashable: {e}").as_bytes()),
        }
    }
    hex::encode(h.finalize())
}

pub(super) fn save(vs: &VarStore, path: &Path) -> Result<(), BackboneError> {
    let failed = |reason: String| BackboneError::Save {
        path: path.to_path_buf(),
        reason,
    };
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let cpu = vars
        .iter()
        .map(|(k, t)| {
            let t = t.f_to_device(Device::Cpu)?.f_contiguous()?.f_detach()?;
            Ok((k.clone(), t))
        })
        .collect::<Result<Vec<_>, tch::TchError>>()
        .map_err(|e: tch::TchError| failed(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    }
    let tmp = vcl_dataset::paths::partial(path);
    Tensor::write_safetensors(&cpu, &tmp).map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| failed(e.to_string()))
}
