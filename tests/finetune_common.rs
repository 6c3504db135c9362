//! Shared by the finetune_* tests: the tiny in-silico brain, synthesized once per test
//! process, and a small fast fine-tuning config on it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vcl_dataset::algonauts::Hemisphere;
use vcl_trainer::model::finetune::{FinetuneConfig, Objective};

/// Tiny preset, 2 subjects: 48 training images of 64 px each.
pub fn tiny() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| vcl_tests::tiny_dataset(5, 2)).1
}

/// The paper's recipe shrunk to seconds: 64 px, batch 8, real MobileNetV2 weights.
pub fn small_config(method: Objective, subjects: &[&str], epochs: usize) -> FinetuneConfig {
    let mut cfg = FinetuneConfig::new(
        method,
        tiny().to_path_buf(),
        subjects.iter().map(|s| s.to_string()).collect(),
        Hemisphere::Left,
        "V1v+V1d".into(),
    );
    cfg.input_size = 64;
    cfg.batch_size = 8;
    cfg.epochs = Some(epochs);
    cfg.seed = 3;
    cfg
}
