//! vcl's trainer: reads Algonauts 2023 / NSD data (or synthesizes an in-silico brain in
//! the same layout), and turns it into voxel encoders.
//!
//! Data flows one way: `algonauts` (dataset) -> `images` (pixels) -> features ->
//! model -> export; `analysis` reads fitted models to ask what they learned.

pub mod algonauts;
pub mod analysis;
pub mod backbones;
pub mod compare;
pub mod encoding;
pub mod error;
pub mod features;
pub mod finetune;
pub mod images;
pub mod npy;
pub mod onnx_export;
pub mod paths;
pub mod plots;
pub mod report;
pub mod ridge;
pub mod synth;
pub mod transfer;

pub use error::DataError;
