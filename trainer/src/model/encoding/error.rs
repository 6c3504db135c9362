use std::path::PathBuf;

use crate::features::backbones::BackboneError;
use crate::model::ridge::RidgeError;
use crate::report::plots::PlotError;
use vcl_dataset::DataError;

/// Errors of fitting, storing and scoring encoders; each names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum EncodingError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error(transparent)]
    Ridge(#[from] RidgeError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error(transparent)]
    Fwrf(#[from] crate::model::fwrf::FwrfError),
    #[error("libtorch failed on {what}: {source}")]
    Tch {
        what: String,
        #[source]
        source: tch::TchError,
    },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl EncodingError {
    pub fn file(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        EncodingError::File {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = EncodingError> = std::result::Result<T, E>;
