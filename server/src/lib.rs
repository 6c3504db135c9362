//! vcl-serve: serves voxel predictions of the encoders that `vcl export` writes into a
//! model repository (`exports/<model>/<version>/model.onnx` + `manifest.json`).

pub mod error;
pub mod runtime;

pub use error::ServerError;
