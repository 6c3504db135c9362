//! vcl-serve: serves voxel predictions of the encoders that `vcl export` writes into a
//! model repository (`exports/<model>/<version>/model.onnx` + `manifest.json`).
//!
//! Layers: [`http`] (actix handlers; [`decode`] of untrusted bytes) -> [`infer`]
//! (admission, chunks, deadline) -> [`batcher`] (a thread per model assembling
//! batches) -> [`backend`] (a thread per model owning its session) -> ONNX Runtime.
//! [`repository`] decides what is served; [`testing`] (feature `testing`) holds the
//! fake backend the tests use.

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
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The runtime lives in the contract crate: `vcl export` runs every model it writes
/// through the same loader the server serves it with.
pub use vcl_contract::runtime;

pub use config::Config;
pub use error::ServerError;
