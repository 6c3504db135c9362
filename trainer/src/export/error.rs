use std::path::PathBuf;

use crate::features::backbones::{Arch, BackboneError};
use crate::model::encoding::EncodingError;
use vcl_dataset::DataError;

/// What can go wrong exporting a run; each variant names the file, tap or value.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("run directory {path} does not exist (give the --out folder of a `vcl fit`)")]
    MissingRun { path: PathBuf },

    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },

    #[error("encoder {encoder}: {source}")]
    Encoder {
        encoder: PathBuf,
        // Boxed, as below: backbone errors carry key lists, and every Result here
        // would otherwise be that large.
        #[source]
        source: Box<BackboneError>,
    },

    #[error(
        "{arch} at {size}x{size} px is too small: the map entering {at} is {side} px wide, \
         smaller than its window; export at a larger --input-size"
    )]
    InputTooSmall {
        arch: Arch,
        size: i64,
        at: String,
        side: i64,
    },

    #[error(
        "ONNX Runtime and libtorch disagree on {model}: max relative difference {rel:.3e} > \
         {tolerance:.0e} at {output}[{row}, {col}] (ONNX Runtime {ort}, libtorch {torch})"
    )]
    Mismatch {
        model: String,
        output: String,
        row: usize,
        col: usize,
        ort: f32,
        torch: f32,
        rel: f64,
        tolerance: f64,
    },

    #[error("libtorch failed on {what}: {source}")]
    Tch {
        what: String,
        #[source]
        source: tch::TchError,
    },

    #[error(transparent)]
    Encoding(#[from] EncodingError),

    #[error(transparent)]
    Backbone(Box<BackboneError>),

    #[error(transparent)]
    Data(#[from] DataError),

    #[error(transparent)]
    Contract(#[from] vcl_contract::ContractError),

    #[error("{0}")]
    Invalid(String),
}

impl From<BackboneError> for ExportError {
    fn from(e: BackboneError) -> Self {
        ExportError::Backbone(Box::new(e))
    }
}

impl ExportError {
    pub fn file(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        ExportError::File {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}
