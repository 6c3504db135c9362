//! What the tuned networks learned, beyond encoding accuracy (METHOD.md's analyses):
//! where in the image an ROI model looks (`saliency`, `lateralization`), how much the
//! contrastive heads tell about the responses of unseen images (`mi`), how much object
//! recognition a tuned backbone keeps (`probe`), and how far tuned backbones moved
//! apart (`landscape`).
//!
//! Each analysis reads a `vcl fit` run (its backbone and ROI encoders, through
//! [`roi_model`]) and writes data (JSON, CSV, Markdown) and pictures (PNG).

pub mod backbones;
pub mod compare;
pub mod curve;
pub mod landscape;
pub mod lateralization;
pub mod mi;
pub mod probe;
pub mod roi_model;
pub mod saliency;
pub mod transfer;

pub use backbones::NamedBackbone;
pub use curve::{curve, CurveConfig, CurvePoint};
pub use landscape::{landscape, Landscape, LandscapeConfig};
pub use lateralization::{lateralization, LateralizationConfig, ModelLaterality};
pub use mi::{mi, MiConfig, MiResult};
pub use probe::{probe, ProbeConfig, ProbeResult, ProbeSet};
pub use roi_model::{Features, FitModels, RoiEncoder};
