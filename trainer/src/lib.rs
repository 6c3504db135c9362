//! vcl's trainer: reads Algonauts 2023 / NSD data (or synthesizes an in-silico brain in
//! the same layout), and turns it into voxel encoders.
//!
//! Data flows one way: `algonauts` (dataset) -> `images` (pixels) -> features ->
//! model -> export; `analysis` reads fitted models to ask what they learned.

pub mod analysis;
pub mod backbones;
pub mod compare;
pub mod config;
pub mod encoding;
pub mod features;
pub mod finetune;
pub mod images;
pub mod onnx_export;
pub mod plots;
pub mod report;
pub mod ridge;
pub mod transfer;
