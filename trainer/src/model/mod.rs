//! The models of the flow: voxel encoders (tap features -> PCA -> ridge, `ridge` and
//! `encoding`; per-voxel Gaussian pooling fields -> ridge, `fwrf`) and the fine-tuning
//! of a backbone for an ROI (`finetune`).

pub mod encoding;
pub mod finetune;
pub mod fwrf;
pub mod ridge;
