//! The backbones an analysis compares: the untuned one and the tuned backbones of
//! `vcl finetune` runs, each with a label and the group reports colour it by (ROI
//! family and hemisphere).

use std::path::{Path, PathBuf};

use crate::features::backbones::Arch;
use crate::model::finetune::{FinetuneConfig, FinetuneError};

#[derive(Debug, Clone)]
pub struct NamedBackbone {
    /// The run's folder name, or "untuned".
    pub label: String,
    pub arch: Arch,
    pub weights: PathBuf,
    /// e.g. "early lh", "higher rh", "untuned".
    pub group: String,
    pub method: String,
    /// The input size the run was tuned at (None for the untuned backbone).
    pub input_size: Option<u32>,
}

/// The ImageNet weights set-up installed (or the user's, for other architectures).
pub fn untuned(arch: Arch) -> NamedBackbone {
    NamedBackbone {
        label: "untuned".into(),
        arch,
        weights: vcl_dataset::paths::weights_dir().join(arch.weights_file()),
        group: "untuned".into(),
        method: "untuned".into(),
        input_size: None,
    }
}

/// The tuned backbone of a finished `vcl finetune` run.
pub fn finetuned(run: &Path) -> crate::Result<NamedBackbone> {
    let cfg: FinetuneConfig = crate::model::encoding::store::read_json(&run.join("config.json"))?;
    let weights = run.join("backbone.safetensors");
    if !weights.is_file() {
        return Err(FinetuneError::Config(format!(
            "{}: missing (the run has not finished its last epoch)",
            weights.display()
        ))
        .into());
    }
    let label = run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string());
    Ok(NamedBackbone {
        label,
        arch: cfg.arch,
        weights,
        group: format!("{} {}", roi_family(&cfg.roi), cfg.hemisphere.prefix()),
        method: cfg.method.to_string(),
        input_size: Some(cfg.input_size),
    })
}

/// "early" for ROIs made of V1-hV4 (and the early stream), "higher" otherwise.
pub fn roi_family(roi: &str) -> &'static str {
    if vcl_dataset::algonauts::is_early(roi) {
        "early"
    } else {
        "higher"
    }
}

/// The untuned backbone and each run's tuned one, and the input size to use: `size`,
/// else the first run's, else 128 px.
pub fn compared(runs: &[PathBuf], size: Option<u32>) -> crate::Result<(Vec<NamedBackbone>, u32)> {
    let tuned = runs
        .iter()
        .map(|r| finetuned(r))
        .collect::<crate::Result<Vec<_>>>()?;
    let arch = tuned.first().map_or(Arch::MobileNetV2, |t| t.arch);
    let size = size
        .or(tuned.first().and_then(|t| t.input_size))
        .unwrap_or(128);
    let mut all = vec![untuned(arch)];
    all.extend(tuned);
    Ok((all, size))
}

#[cfg(test)]
mod tests {
    #[test]
    fn families() {
        assert_eq!(super::roi_family("V1v+V1d"), "early");
        assert_eq!(super::roi_family("prf-visualrois:hV4"), "early");
        assert_eq!(super::roi_family("FFA-1"), "higher");
        assert_eq!(super::roi_family("V1+FFA-1"), "higher");
    }
}
