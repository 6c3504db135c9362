//! ONNX export: a fit's encoders (backbone -> tap -> PCA -> ridge) as one ONNX model
//! per bundle, written in Rust from the tch VarStore (libtorch has no exporter),
//! verified with ONNX Runtime against libtorch, and published with its manifest into
//! the model repository (`exports/<name>/<version>/`).
//!
//! Layers: `graph` (protobuf builder) <- `backbone` (architectures as nodes) <-
//! `model` (one model for an `EncoderSet`, its libtorch twin, the comparison) <-
//! `export` (run directory -> verified, published models).

mod backbone;
mod error;
mod export;
mod graph;
mod model;
pub mod proto;

/// The contract the exporter writes (manifest schema, ONNX Runtime loader), for
/// callers that depend on the trainer alone.
pub use vcl_contract as contract;

/// Kept here for callers that verify exports; it lives with the encoders.
pub use crate::encoding::heldout_images;
pub use error::ExportError;
pub use export::{
    dataset_fingerprint, export, export_runs, git_commit, load_run, verify_with_ort, Bundle,
    ExportOptions, ExportedModel, RunContents,
};
pub use graph::{IR_VERSION, OPSET};
pub use model::{
    build_model, compare, predict_libtorch, BuiltModel, Comparison, EncoderSet, Prediction,
    RoiHead, TapProjection, Worst,
};
