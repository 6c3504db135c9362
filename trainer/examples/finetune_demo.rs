//! Times a fine-tuning run through the library API (what `vcl finetune` will call),
//! e.g. the paper's CL recipe on one early ROI of the demo dataset at 128 px:
//!
//! cargo run --release -p vcl-trainer --example finetune_demo -- \
//!     --data data/demo --subjects 1 --roi V1v+V1d --out runs/ft-demo

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use vcl_trainer::algonauts::Hemisphere;
use vcl_trainer::finetune::{self, FinetuneConfig, Method};
use vcl_trainer::paths;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "1")]
    subjects: Vec<String>,
    #[arg(long, default_value = "lh")]
    hemisphere: Hemisphere,
    #[arg(long, default_value = "V1v+V1d")]
    roi: String,
    #[arg(long, value_enum, default_value = "cl")]
    method: Method,
    #[arg(long, default_value_t = 128)]
    input_size: u32,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// Images per backbone pass (memory); the loss still sees the whole batch.
    #[arg(long)]
    micro_batch: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    symmetric: bool,
    #[arg(long)]
    learnable_tau: bool,
    #[arg(long)]
    augment: bool,
    /// Leave glibc malloc at its defaults.
    #[arg(long)]
    no_tune: bool,
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--no-tune") {
        finetune::tune_allocator();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let mut cfg = FinetuneConfig::new(a.method, a.data, a.subjects, a.hemisphere, a.roi);
    cfg.input_size = a.input_size;
    cfg.batch_size = a.batch_size;
    cfg.micro_batch = a.micro_batch;
    cfg.seed = a.seed;
    cfg.symmetric = a.symmetric;
    cfg.learnable_tau = a.learnable_tau;
    cfg.augment = a.augment;
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    }
    let device = tch::Device::cuda_if_available();
    let t0 = Instant::now();
    let s = finetune::finetune(&cfg, &a.out, a.resume, &paths::cache_dir(), device)?;
    println!(
        "{} epochs in {:.1} s wall ({:.1} images/s training), batch {:?}, final train loss {:.4}, val loss {:?}, MI bound {:?}",
        s.epochs_completed,
        t0.elapsed().as_secs_f64(),
        s.images_per_s,
        s.batch_sizes,
        s.history.last().map(|r| r.train_loss).unwrap_or(f64::NAN),
        s.history.last().and_then(|r| r.val_loss),
        s.history.last().and_then(|r| r.val_mi_bound),
    );
    println!("backbone: {:?}", s.backbone);
    Ok(())
}
