//! vcl-serve: serves voxel predictions of the encoders that `vcl export` writes into a
//! model repository (`exports/<model>/<version>/model.onnx` + `manifest.json`).

pub mod error;

/// The runtime lives in the contract crate: `vcl export` runs every model it writes
/// through the same loader the server serves it with.
pub use vcl_contract::runtime;

pub use error::ServerError;
