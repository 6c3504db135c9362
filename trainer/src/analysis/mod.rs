//! What the tuned networks learned, beyond encoding accuracy (METHOD.md's analyses):
//! where in the image an ROI model looks (`saliency`, `lateralization`), and how much
//! the contrastive heads tell about the responses of unseen images (`mi`).
//!
//! Each analysis reads a `vcl fit` run (its backbone and ROI encoders, through
//! [`roi_model`]) and writes data (JSON, CSV, Markdown) and pictures (PNG).

pub mod lateralization;
pub mod mi;
pub mod roi_model;
pub mod saliency;

pub use lateralization::{lateralization, LateralizationConfig, ModelLaterality};
pub use mi::{mi, MiResult};
pub use roi_model::{FitModels, RoiEncoder};
