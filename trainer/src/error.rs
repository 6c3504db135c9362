//! The trainer library's one public error type. Each stage keeps its typed error (what
//! the stage's own functions return, matched on by callers that care); `Error` holds
//! any of them, so code that spans stages (the analyses, the CLI) has one type to
//! return and every message still names the file, field or value at fault.

use crate::export::ExportError;
use crate::features::backbones::BackboneError;
use crate::model::encoding::EncodingError;
use crate::model::finetune::FinetuneError;
use crate::model::ridge::RidgeError;
use crate::report::plots::PlotError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] vcl_dataset::DataError),
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error(transparent)]
    Ridge(#[from] RidgeError),
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    #[error(transparent)]
    Finetune(#[from] FinetuneError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Plot(#[from] PlotError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
