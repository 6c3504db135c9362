//! File names of the Algonauts 2023 release (NSD), plus the files only the in-silico
//! brain writes (noise ceiling, noiseless truth, generator parameters).

use std::path::{Path, PathBuf};

/// ROI mask families, in the order of the Algonauts release.
pub const FAMILIES: [&str; 6] = [
    "prf-visualrois",
    "floc-bodies",
    "floc-faces",
    "floc-places",
    "floc-words",
    "streams",
];

/// ROI names per family (label = position + 1; 0 = no ROI), as the Algonauts release.
pub const ROI_NAMES: [&[&str]; 6] = [
    &["V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"],
    &["EBA", "FBA-1", "FBA-2", "mTL-bodies"],
    &["OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"],
    &["OPA", "PPA", "RSC"],
    &["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
    &[
        "early",
        "midventral",
        "midlateral",
        "midparietal",
        "ventral",
        "lateral",
        "parietal",
    ],
];

/// Index of a family in [`FAMILIES`].
pub fn family_index(family: &str) -> Option<usize> {
    FAMILIES.iter().position(|f| *f == family)
}

/// The early visual ROIs, V1v..hV4: the pRF family (`prf-visualrois`).
pub const EARLY_ROIS: &[&str] = ROI_NAMES[0];

/// The stream ROIs (`streams`: early, midventral, ..., parietal), which overlap the
/// other families.
pub const STREAM_ROIS: &[&str] = ROI_NAMES[5];

/// Names that stand for unions of pRF ROIs (`vcl fit --rois V1` means V1v+V1d).
pub fn roi_alias(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "early" => Some(EARLY_ROIS),
        "V1" => Some(&["V1v", "V1d"]),
        "V2" => Some(&["V2v", "V2d"]),
        "V3" => Some(&["V3v", "V3d"]),
        _ => None,
    }
}

/// True for an early ROI, an alias of early ROIs, or a `+` union of them (a family
/// prefix such as `prf-visualrois:` or `streams:` is ignored): how reports group
/// early and higher models.
pub fn is_early(roi: &str) -> bool {
    let mut parts = roi
        .split('+')
        .map(|p| p.rsplit(':').next().unwrap_or(p))
        .peekable();
    parts.peek().is_some() && parts.all(|p| EARLY_ROIS.contains(&p) || roi_alias(p).is_some())
}

/// Name of the generator's parameter file at the top of a synthesized dataset.
pub const IN_SILICO_PARAMS: &str = "in_silico.json";

/// The manifest's type: one definition for the data, the trainer and the server.
pub use vcl_contract::manifest::Hemisphere;

/// Paths inside one subject's folder, `DATA_DIR/subjXX/`.
#[derive(Debug, Clone)]
pub struct SubjectLayout {
    pub root: PathBuf,
}

impl SubjectLayout {
    pub fn new(data_dir: &Path, subject: &str) -> Self {
        SubjectLayout {
            root: data_dir.join(subject),
        }
    }

    pub fn fmri(&self, h: Hemisphere) -> PathBuf {
        self.root
            .join("training_split/training_fmri")
            .join(format!("{h}_training_fmri.npy"))
    }
    pub fn training_images(&self) -> PathBuf {
        self.root.join("training_split/training_images")
    }
    pub fn test_images(&self) -> PathBuf {
        self.root.join("test_split/test_images")
    }
    pub fn roi_masks(&self) -> PathBuf {
        self.root.join("roi_masks")
    }
    /// One integer label per challenge-space vertex (0 = none).
    pub fn roi_mask(&self, h: Hemisphere, family: &str) -> PathBuf {
        self.roi_masks()
            .join(format!("{h}.{family}_challenge_space.npy"))
    }
    /// The same labels on every fsaverage vertex.
    pub fn roi_mask_fsaverage(&self, h: Hemisphere, family: &str) -> PathBuf {
        self.roi_masks()
            .join(format!("{h}.{family}_fsaverage_space.npy"))
    }
    /// Pickled dict label -> ROI name.
    pub fn mapping(&self, family: &str) -> PathBuf {
        self.roi_masks().join(format!("mapping_{family}.npy"))
    }
    /// Binary mask over fsaverage: which fsaverage vertices are challenge vertices.
    pub fn all_vertices_fsaverage(&self, h: Hemisphere) -> PathBuf {
        self.roi_masks()
            .join(format!("{h}.all-vertices_fsaverage_space.npy"))
    }

    // Files real NSD data lacks; the in-silico brain writes them and the loader uses
    // them where present.

    /// Per-vertex noise ceiling NC as a fraction in [0, 1] (the Algonauts formula).
    pub fn noise_ceiling(&self, h: Hemisphere) -> PathBuf {
        self.root
            .join("noise_ceiling")
            .join(format!("{h}_noise_ceiling.npy"))
    }
    /// Per-vertex noise-ceiling SNR (NSD's ncsnr).
    pub fn ncsnr(&self, h: Hemisphere) -> PathBuf {
        self.root
            .join("noise_ceiling")
            .join(format!("{h}_ncsnr.npy"))
    }
    /// Noiseless responses to the training images, same shape as the fMRI file.
    pub fn ground_truth_train(&self, h: Hemisphere) -> PathBuf {
        self.root
            .join("ground_truth")
            .join(format!("{h}_training_fmri_noiseless.npy"))
    }
    /// Noiseless responses to the test images (no fMRI is given for them).
    pub fn ground_truth_test(&self, h: Hemisphere) -> PathBuf {
        self.root
            .join("ground_truth")
            .join(format!("{h}_test_fmri_noiseless.npy"))
    }
}

/// `subj01` for 1.
pub fn subject_dir_name(n: u32) -> String {
    format!("subj{n:02}")
}

/// `train-0001_nsd-00013.png` for row 0 and NSD id 13 (the row is 1-based in names,
/// the NSD id is written as given).
pub fn train_image_name(row: usize, nsd_id: usize) -> String {
    format!("train-{:04}_nsd-{:05}.png", row + 1, nsd_id)
}

/// `test-0001_nsd-00013.png` for row 0 and NSD id 13.
pub fn test_image_name(row: usize, nsd_id: usize) -> String {
    format!("test-{:04}_nsd-{:05}.png", row + 1, nsd_id)
}
