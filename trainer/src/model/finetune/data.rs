//! What a fine-tuning run reads: per subject, the ROI's responses and the training
//! images, split exactly as `vcl fit` splits them (the held-out part is never read
//! here), with a validation part cut out of the training part.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use super::{FinetuneConfig, FinetuneError};
use crate::features::images::PixelCache;
use vcl_dataset::algonauts::{split, Dataset, ImageEntry};
use vcl_dataset::DataError;

/// A u64 derived from the run's seed and a purpose: independent streams for data
/// order, dropout and augmentation, each reproducible per epoch (and batch) without
/// carrying RNG state across a restart.
pub(crate) fn derive_seed(seed: u64, purpose: &str, parts: &[u64]) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(purpose.as_bytes());
    for p in parts {
        h.update(p.to_le_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// One subject's part of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectInfo {
    pub subject: String,
    /// Voxels of the ROI (V_s).
    pub voxels: usize,
    /// Images fine-tuning trains on (training split minus validation).
    pub train_images: usize,
    /// Images of the validation part (inside the training split).
    pub val_images: usize,
    /// Images of the held-out split, never read by fine-tuning.
    pub heldout_images: usize,
}

pub(crate) struct SubjectData {
    pub info: SubjectInfo,
    /// Rows (training-image indices) to train on, ascending.
    pub train: Vec<usize>,
    /// Rows of the validation part, ascending.
    pub val: Vec<usize>,
    /// The ROI's responses of every training image, float32 [n_images, V] on the CPU.
    pub fmri: Tensor,
    images: Vec<ImageEntry>,
    fmri_path: std::path::PathBuf,
    vertices: Vec<usize>,
    pixels: Option<PixelCache>,
}

impl SubjectData {
    /// Responses of `rows`, [B, V] on `device`.
    pub fn responses(&self, rows: &[usize], device: Device) -> Tensor {
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        crate::device::upload(
            &self.fmri.index_select(0, &Tensor::from_slice(&idx)),
            device,
        )
    }

    /// The decoded pixels (loaded from / written to the pixel cache on first use).
    pub fn pixels(&mut self, size: u32, cache_dir: &Path) -> Result<&PixelCache, FinetuneError> {
        if self.pixels.is_none() {
            self.pixels = Some(PixelCache::build_or_load(
                &self.images,
                size,
                &cache_dir.join("pixels"),
            )?);
        }
        self.pixels
            .as_ref()
            .ok_or_else(|| FinetuneError::Config("pixel cache vanished".into()))
    }

    /// The pixels, if [`SubjectData::pixels`] loaded them and they were not released.
    pub fn loaded_pixels(&self) -> Option<&PixelCache> {
        self.pixels.as_ref()
    }

    /// Frees the pixels (pooled runs over many subjects hold one subject's at a time).
    pub fn release_pixels(&mut self) {
        self.pixels = None;
    }

    /// Shuffled batches of the training rows for `epoch`: batch = min(batch_size, n);
    /// a final batch of fewer than 2 images is dropped (batch-norm needs 2).
    pub fn epoch_batches(
        &self,
        batch_size: usize,
        seed: u64,
        subject_index: usize,
        epoch: usize,
    ) -> Vec<Vec<usize>> {
        let mut rows = self.train.clone();
        let s = derive_seed(seed, "data-order", &[subject_index as u64, epoch as u64]);
        rows.shuffle(&mut ChaCha8Rng::seed_from_u64(s));
        let b = batch_size.min(rows.len()).max(1);
        rows.chunks(b)
            .filter(|c| c.len() >= 2)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// Reads every subject's ROI responses and split. Subjects where the ROI is empty are
/// skipped with a warning when pooling (METHOD.md: h averages over the subjects that
/// have the ROI); a single subject without it is an error.
pub(crate) fn load(cfg: &FinetuneConfig) -> Result<Vec<SubjectData>, FinetuneError> {
    let ds = Dataset::open(&cfg.data_dir)?;
    let mut out = Vec::new();
    for name in &cfg.subjects {
        let subject = ds.subject(name)?;
        let atlas = subject.rois(cfg.hemisphere)?;
        let vertices = match atlas.select(&cfg.roi, &subject.name) {
            Ok(v) => v,
            Err(DataError::EmptyRoi { .. }) if cfg.pooled() => {
                tracing::warn!(subject = %subject.name, roi = %cfg.roi, hemisphere = %cfg.hemisphere, "ROI empty: subject left out of the pooled model");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let fmri_all = subject.fmri(cfg.hemisphere)?;
        let n = subject.train_images.len();
        let sp = split::holdout(n, cfg.heldout_fraction, cfg.split_seed)
            .limit_train(cfg.train_images, cfg.split_seed)
            .map_err(|e| FinetuneError::Config(format!("{}: {e}", subject.name)))?;
        let (train, val) = validation_split(&sp.train, cfg.val_fraction, cfg.split_seed);
        if train.len() < 2 {
            return Err(FinetuneError::Config(format!(
                "{}: only {} training images after holding out {} and validating on {}; \
                 fine-tuning needs at least 2",
                subject.name,
                train.len(),
                sp.heldout.len(),
                val.len()
            )));
        }
        let v = vertices.len();
        let cols: Vec<i64> = vertices.iter().map(|&c| c as i64).collect();
        let fmri = crate::model::ridge::matrix_to_tensor(fmri_all.view())
            .index_select(1, &Tensor::from_slice(&cols))
            .contiguous();
        tracing::info!(subject = %subject.name, hemisphere = %cfg.hemisphere, roi = %cfg.roi, voxels = v, train = train.len(), val = val.len(), heldout = sp.heldout.len(), "fine-tuning data");
        out.push(SubjectData {
            info: SubjectInfo {
                subject: subject.name.clone(),
                voxels: v,
                train_images: train.len(),
                val_images: val.len(),
                heldout_images: sp.heldout.len(),
            },
            train,
            val,
            fmri,
            images: subject.train_images.clone(),
            fmri_path: subject.layout.fmri(cfg.hemisphere),
            vertices,
            pixels: None,
        });
    }
    if out.is_empty() {
        return Err(FinetuneError::Config(format!(
            "ROI '{}' has no vertices in hemisphere {} of any of {:?}",
            cfg.roi, cfg.hemisphere, cfg.subjects
        )));
    }
    Ok(out)
}

/// Splits the training part into (train, validation): `fraction` of it, chosen by a
/// stream of `split_seed` (not the training seed, so that runs with different seeds
/// validate on the same images). A validation part of one image is widened to two:
/// the MI bound needs a negative.
pub(crate) fn validation_split(
    rows: &[usize],
    fraction: f64,
    split_seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut idx = rows.to_vec();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(
        split_seed,
        "validation",
        &[],
    )));
    let mut n_val = ((rows.len() as f64) * fraction).round() as usize;
    if n_val == 1 && rows.len() >= 4 {
        n_val = 2;
    }
    if n_val < 2 {
        n_val = 0;
    }
    let mut val = idx[..n_val].to_vec();
    let mut train = idx[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

/// SHA-256 over what the run learns from: each subject's fMRI file bytes, its training
/// image names in order, the ROI's vertex indices, and the splits. A resumed run must
/// see the same fingerprint.
pub(crate) fn fingerprint(subjects: &[SubjectData]) -> Result<String, FinetuneError> {
    let mut h = Sha256::new();
    for s in subjects {
        h.update(s.info.subject.as_bytes());
        vcl_contract::manifest::hash_file(&mut h, &s.fmri_path)?;
        for e in &s.images {
            let name = e
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            h.update(name.as_bytes());
            h.update([0u8]);
        }
        for list in [&s.vertices, &s.train, &s.val] {
            h.update((list.len() as u64).to_le_bytes());
            for &v in list.iter() {
                h.update((v as u64).to_le_bytes());
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_is_a_partition_of_the_training_part() {
        let rows: Vec<usize> = (0..100).filter(|r| r % 7 != 0).collect();
        let (t, v) = validation_split(&rows, 0.1, 3);
        assert_eq!(v.len(), 9);
        let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
        all.sort_unstable();
        assert_eq!(all, rows);
        assert_eq!((t.clone(), v.clone()), validation_split(&rows, 0.1, 3));
        let (t0, v0) = validation_split(&rows, 0.0, 3);
        assert!(v0.is_empty() && t0 == rows);
    }
}
