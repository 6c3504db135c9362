//! The one contract between vcl's trainer and server: the model repository's
//! versioned manifest schema (`manifest`), the repository's rules (`repository`: what a
//! version is, how one is published) and the ONNX Runtime loader both sides run
//! models with (`runtime`). Deliberately small: no libtorch, no HTTP.

pub mod error;
pub mod manifest;
pub mod npy;
pub mod repository;
#[cfg(feature = "runtime")]
pub mod runtime;

pub use error::ContractError;
pub use manifest::{Manifest, SCHEMA_VERSION};
