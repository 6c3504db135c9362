//! vcl's trainer: turns a dataset (the `vcl-dataset` crate: Algonauts 2023 / NSD
//! layout or the in-silico brain) into voxel encoders, one folder per stage of the flow
//! dataset -> features -> model -> export -> serve:
//!
//! - [`features`]: the backbones (AlexNet, MobileNetV2, ResNets with torchvision's
//!   names), the pixel cache, tap extraction and its cache;
//! - [`model`]: the voxel encoders (`ridge`, `encoding`: fit, evaluate, store) and the
//!   fine-tuning of backbones (`finetune`: contrastive and regression);
//! - [`export`]: backbone + encoder as one verified ONNX model in the repository;
//! - [`analysis`]: what fitted runs tell (compare, transfer, saliency, MI, probe, ...);
//! - [`report`]: tables, plots and the one-page report of a folder of runs;
//! - [`plan`]: a study fanned out as independent jobs for Slurm arrays and Kubernetes
//!   Indexed Jobs, each job one run of the stages above.
//!
//! [`config`] is how every command's configuration is built from its flags' defaults;
//! [`device`] where tensors compute and in what precision; [`error`] the library's
//! error type.

pub mod analysis;
pub mod config;
pub mod device;
pub mod error;
pub mod export;
pub mod features;
pub mod model;
pub mod plan;
pub mod provenance;
pub mod report;
pub mod stages;

pub use error::{Error, Result};
