//! The in-silico brain: NSD-like datasets with known ground truth, written in the
//! Algonauts 2023 layout (see shared/IN_SILICO.md and METHOD.md).
//!
//! - Stimuli ([`stimuli`]): random crops and mirror flips of real photos, plus about 10%
//!   dead-leaves images.
//! - Early ROIs V1v..hV4 ([`early`]): Gaussian pRFs with contralateral, upper/lower
//!   field retinotopy, sizes growing with eccentricity and up the hierarchy, pooling
//!   Gabor energy (V1) and energy of energy (V2, V3, hV4) with compressive summation.
//! - Higher ROIs ([`brain`]): softplus readouts of latent factors of a fixed
//!   random-weight teacher network ([`teacher`]).
//! - Measurement ([`measure`]): NSD repeats, Gaussian noise at a per-vertex ncsnr,
//!   per-session z-scoring, averaging; the Algonauts noise ceiling.
//!
//! Same config and seed give byte-identical files: every random draw has its own
//! keyed stream ([`rng`]) and parallel work never splits a reduction.

pub mod anatomy;
pub mod brain;
mod dataset;
pub mod early;
pub mod measure;
mod par;
pub mod preset;
pub(crate) mod rng;
pub mod stimuli;
pub mod teacher;
pub mod truth;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use anatomy::VertexInfo;
pub use brain::{ImageFeatures, SharedModel, SubjectBrain};
pub use dataset::synthesize;
pub use early::{Area, Prf};
pub use measure::{noise_ceiling, RepeatCounts, TrialDesign};
pub use preset::{Preset, PresetParams};
pub use stimuli::PhotoSet;

use crate::error::DataError;

/// What `vcl synth` (and `vcl-data synth`) asks for: the command's flags, defined once.
#[derive(Clone, Debug, clap::Args)]
pub struct SynthConfig {
    /// Size preset: tiny (seconds, tests), demo (CPU demo), nsd (full NSD scale).
    #[arg(long, value_enum, default_value = "demo")]
    pub preset: Preset,
    /// Dataset root, created; subjects go to `out/subjXX/`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of simulated subjects (default: the preset's).
    #[arg(long)]
    pub subjects: Option<u32>,
    /// Folder of real photos to cut stimuli from (default: what set-up installed, or
    /// VCL_PHOTOS_DIR).
    #[arg(long = "photos", value_name = "DIR", default_value_os_t = crate::paths::photos_dir())]
    pub photos_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("photos folder {path}: {reason} (set-up copies scikit-image's photos to .cache/photos; or pass --photos DIR)")]
    Photos { path: PathBuf, reason: String },

    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("output folder {path}: {reason}")]
    OutDir { path: PathBuf, reason: String },

    #[error("cannot write image {path}: {reason}")]
    WriteImage { path: PathBuf, reason: String },

    #[error("cannot write {path}: {reason}")]
    WriteParams { path: PathBuf, reason: String },

    #[error("invalid synthesis request: {0}")]
    Invalid(String),

    #[error(transparent)]
    Data(#[from] DataError),
}

/// One subject as written.
#[derive(Clone, Debug, Serialize)]
pub struct SubjectSummary {
    pub name: String,
    pub n_train: usize,
    pub n_test: usize,
    /// [lh, rh]
    pub n_vertices: [usize; 2],
    /// Mean noise ceiling (fraction) over vertices, [lh, rh].
    pub mean_nc: [f32; 2],
}

/// What a synthesis wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SynthSummary {
    pub out: PathBuf,
    pub preset: Preset,
    pub seed: u64,
    pub image_size: u32,
    pub photos: usize,
    pub subjects: Vec<SubjectSummary>,
}

impl fmt::Display for SynthSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "in-silico brain ({} preset, seed {}, {} px images cut from {} photos) in {}",
            self.preset.name(),
            self.seed,
            self.image_size,
            self.photos,
            self.out.display()
        )?;
        for s in &self.subjects {
            writeln!(
                f,
                "  {}: {} training + {} test images, {} lh / {} rh vertices, mean noise ceiling {:.2} lh / {:.2} rh",
                s.name, s.n_train, s.n_test, s.n_vertices[0], s.n_vertices[1], s.mean_nc[0], s.mean_nc[1]
            )?;
        }
        Ok(())
    }
}
