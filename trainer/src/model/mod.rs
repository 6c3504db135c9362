//! The models of the flow: voxel encoders (tap features -> PCA -> ridge, `ridge` and
//! `encoding`) and the fine-tuning of a backbone for an ROI (`finetune`).

pub mod encoding;
pub mod finetune;
pub mod ridge;
