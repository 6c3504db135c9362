//! ONNX export: a fit's encoders (backbone -> tap -> PCA -> ridge) as one ONNX model
//! per bundle, written in Rust from the tch VarStore (libtorch has no exporter),
//! verified with ONNX Runtime against libtorch, and published with its manifest into
//! the model repository (`exports/<name>/<version>/`).
//!
//! Layers: `graph` (protobuf builder) <- `backbone` (architectures as nodes) <-
//! `model` (one model for an `EncoderSet`, its libtorch twin, the comparison); then
//! per model `run` (a run directory read and grouped into bundles) -> `verify` (ONNX
//! Runtime against libtorch) -> `manifest` -> `publish` (staging, all or none).

mod backbone;
mod error;
mod graph;
mod manifest;
mod model;
pub mod proto;
mod publish;
mod run;
mod verify;

/// The contract the exporter writes (manifest schema, ONNX Runtime loader), for
/// callers that depend on the trainer alone.
pub use vcl_contract as contract;

/// Kept here for callers that verify exports; it lives with the encoders.
pub use crate::model::encoding::heldout_images;
pub use error::ExportError;
pub use graph::{IR_VERSION, OPSET};
pub use model::{
    build_model, compare, predict_libtorch, BuiltModel, Comparison, EncoderSet, Prediction,
    Readout, RoiHead, TapProjection, Worst,
};
pub use publish::{export, export_runs, ExportOptions, ExportedModel};
pub use run::{dataset_fingerprint, load_run, Bundle, RunContents};
pub use verify::{verify_with_ort, OrtCheck};
