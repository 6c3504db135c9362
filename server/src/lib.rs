//! vcl-serve: serves voxel predictions of the encoders that `vcl export` writes into a
//! model repository (`exports/<model>/<version>/model.onnx` + `manifest.json`).
//!
//! Layers: [`http`] (actix handlers) -> [`infer`] (permits, chunks, deadline) ->
//! [`batcher`] (one thread per model, owning its [`backend`]) -> ONNX Runtime.

pub mod backend;
pub mod batcher;
pub mod config;
pub mod decode;
pub mod error;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod openapi;
pub mod rank;
pub mod repository;
pub mod testing;

/// The runtime lives in the contract crate: `vcl export` runs every model it writes
/// through the same loader the server serves it with.
pub use vcl_contract::runtime;

pub use config::Config;
pub use error::ServerError;
