//! `vcl finetune`: the paper's contrastive fine-tuning, or its regression baseline.

use std::path::PathBuf;

use anyhow::{Context, Result};
use vcl_dataset::paths;
use vcl_trainer::model::finetune::{self, FinetuneConfig};

use crate::device;

#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub config: FinetuneConfig,
    /// Run directory (config, checkpoints, curves, backbone.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue a killed run from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
}

pub fn finetune(a: &FinetuneArgs) -> Result<()> {
    let s = finetune::finetune(&a.config, &a.out, a.resume, &paths::cache_dir(), device()?)
        .with_context(|| format!("fine-tuning into {}", a.out.display()))?;
    println!(
        "{} run of {} epochs ({} completed) in {:.0} s, {:.1} images/s on {}",
        s.method, s.epochs, s.epochs_completed, s.wall_seconds, s.images_per_s, s.device
    );
    if let Some(b) = &s.backbone {
        println!("tuned backbone: {}  (vcl fit --weights {0})", b.display());
    }
    Ok(())
}
