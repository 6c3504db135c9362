//! The Algonauts 2023 / NSD dataset layout: subjects, images in name order, fMRI,
//! ROI masks and their name mappings, fsaverage maps, and the in-silico extras.
//!
//! Everything is checked against everything else when it is loaded (fMRI rows against
//! images, mask lengths against fMRI columns, fsaverage maps against vertex counts),
//! so a later stage never meets a silently misaligned array.

pub mod images;
pub mod layout;
pub mod rois;
pub mod split;
pub mod summary;

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};

use crate::error::{DataError, Result};
use crate::npy;
pub use images::ImageEntry;
pub use layout::{
    is_early, Hemisphere, SubjectLayout, EARLY_ROIS, FAMILIES, ROI_NAMES, STREAM_ROIS,
};
pub use rois::RoiAtlas;

/// A dataset root holding `subj01/`, `subj02/`, ...
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub subjects: Vec<String>,
}

impl Dataset {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(DataError::MissingFile {
                what: "dataset folder".into(),
                path: root.to_path_buf(),
            });
        }
        let mut subjects = Vec::new();
        let entries = std::fs::read_dir(root).map_err(|e| DataError::io(root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_subject = name.len() > 4
                && name.starts_with("subj")
                && name[4..].chars().all(|c| c.is_ascii_digit());
            if is_subject && entry.path().is_dir() {
                subjects.push(name);
            }
        }
        subjects.sort();
        if subjects.is_empty() {
            return Err(DataError::Invalid(format!(
                "{} holds no subject folders (subj01, subj02, ...): is it an Algonauts 2023 data folder?",
                root.display()
            )));
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            subjects,
        })
    }

    /// `subj01`, `1` and `01` all name the first subject.
    pub fn subject(&self, name: &str) -> Result<Subject> {
        let wanted = match name.trim_start_matches("subj").parse::<u32>() {
            Ok(n) => layout::subject_dir_name(n),
            Err(_) => name.to_string(),
        };
        if !self.subjects.contains(&wanted) {
            return Err(DataError::UnknownSubject {
                subject: name.to_string(),
                found: self.subjects.clone(),
            });
        }
        Subject::open(&self.root, &wanted)
    }

    /// Parameters of the in-silico generator, when this dataset was synthesized.
    pub fn in_silico_params(&self) -> Result<Option<serde_json::Value>> {
        let path = self.root.join(layout::IN_SILICO_PARAMS);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| DataError::Invalid(format!("{}: invalid JSON: {e}", path.display())))
    }
}

/// One subject: image lists are read eagerly (cheap), arrays on demand.
#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    pub layout: SubjectLayout,
    pub train_images: Vec<ImageEntry>,
    pub test_images: Vec<ImageEntry>,
}

impl Subject {
    pub fn open(data_dir: &Path, name: &str) -> Result<Self> {
        let layout = SubjectLayout::new(data_dir, name);
        let train_images = images::list(&layout.training_images(), "train")?;
        // Test images are optional: some users copy only the training split.
        let test_dir = layout.test_images();
        let test_images = if test_dir.exists() {
            images::list(&test_dir, "test")?
        } else {
            Vec::new()
        };
        Ok(Subject {
            name: name.to_string(),
            layout,
            train_images,
            test_images,
        })
    }

    /// Training fMRI of one hemisphere, float32 [n_train_images, n_vertices].
    pub fn fmri(&self, h: Hemisphere) -> Result<Array2<f32>> {
        let path = self.layout.fmri(h);
        let fmri = npy::read_f32_2d(&path)?;
        if fmri.nrows() != self.train_images.len() {
            return Err(DataError::RowMismatch {
                path,
                rows: fmri.nrows(),
                images: self.train_images.len(),
                images_dir: self.layout.training_images(),
            });
        }
        Ok(fmri)
    }

    /// Number of challenge-space vertices of a hemisphere, read from the fMRI header
    /// without loading the array.
    pub fn n_vertices(&self, h: Hemisphere) -> Result<usize> {
        let path = self.layout.fmri(h);
        let shape = npy_shape(&path)?;
        match shape.as_slice() {
            [_, v] => Ok(*v),
            other => Err(DataError::Npy {
                path,
                reason: format!("expected a 2-D [images, vertices] array, found shape {other:?}"),
            }),
        }
    }

    /// ROI masks of every family, checked against the fMRI's vertex count.
    pub fn rois(&self, h: Hemisphere) -> Result<RoiAtlas> {
        let n = self.n_vertices(h)?;
        RoiAtlas::load(&self.layout, h, n, &self.name)
    }

    /// Noise ceiling (fraction of explainable variance per vertex) where known.
    pub fn noise_ceiling(&self, h: Hemisphere) -> Result<Option<Array1<f32>>> {
        self.optional_vector(&self.layout.noise_ceiling(h), h, "noise ceiling")
    }

    /// Noiseless responses to the training images (in-silico data only).
    pub fn ground_truth_train(&self, h: Hemisphere) -> Result<Option<Array2<f32>>> {
        let path = self.layout.ground_truth_train(h);
        if !path.exists() {
            return Ok(None);
        }
        let truth = npy::read_f32_2d(&path)?;
        let n = self.n_vertices(h)?;
        if truth.dim() != (self.train_images.len(), n) {
            return Err(DataError::LengthMismatch {
                path,
                len: truth.len(),
                expected: self.train_images.len() * n,
                why: format!(
                    "shape {:?} must equal the fMRI's ({}, {n})",
                    truth.dim(),
                    self.train_images.len()
                ),
            });
        }
        Ok(Some(truth))
    }

    fn optional_vector(
        &self,
        path: &Path,
        h: Hemisphere,
        what: &str,
    ) -> Result<Option<Array1<f32>>> {
        if !path.exists() {
            return Ok(None);
        }
        let v = npy::read_f32_1d(path)?;
        let n = self.n_vertices(h)?;
        if v.len() != n {
            return Err(DataError::LengthMismatch {
                path: path.to_path_buf(),
                len: v.len(),
                expected: n,
                why: format!("one {what} value per {h} vertex of the fMRI"),
            });
        }
        Ok(Some(v))
    }
}

/// The shape of a .npy array, from its header alone.
pub fn npy_shape(path: &Path) -> Result<Vec<usize>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut head = vec![0u8; 4096];
    let mut got = 0;
    while got < head.len() {
        let k = f
            .read(&mut head[got..])
            .map_err(|e| DataError::io(path, e))?;
        if k == 0 {
            break;
        }
        got += k;
    }
    head.truncate(got);
    let bad = |reason: &str| DataError::Npy {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    // Only the header was read: the body may be cut short, the header may not.
    vcl_contract::npy::Npy::parse(&head)
        .and_then(|npy| npy.shape())
        .map_err(|reason| bad(&reason))
}
