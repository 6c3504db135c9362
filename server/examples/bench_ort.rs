//! The limit `scripts/bench_serve.sh` holds vcl-serve to: one exported model run
//! in-process by ONNX Runtime (the backend the server's batcher owns), batch after
//! batch with no HTTP, queue or decoding, at the batch sizes the server's load makes.
//! Prints one JSON line per batch size.
//!
//!   cargo run --release -p vcl-server --example bench_ort -- --model-dir exports/<model>/<version>

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use vcl_contract::manifest::Manifest;
use vcl_server::backend::{self, Backend};
use vcl_server::repository;
use vcl_server::runtime::DeviceChoice;
use vcl_server::Config;

#[derive(Parser)]
struct Args {
    /// A version folder: model.onnx + manifest.json.
    #[arg(long)]
    model_dir: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch: Vec<usize>,
    /// Seconds of inference per batch size.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Intra-op threads; 0: every core, as vcl-serve gives a single model.
    #[arg(long, default_value_t = 0)]
    intra_threads: usize,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut cfg = Config::defaults();
    cfg.device = args.device;
    let rt = repository::runtime(&cfg)?;
    let manifest = Manifest::load(&args.model_dir)
        .with_context(|| format!("loading {}", args.model_dir.display()))?;
    let threads = match args.intra_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (mut b, provider) =
        backend::open_ort(rt, &args.model_dir, &manifest, args.device, threads)?;
    let per: usize = backend::chw(&manifest).iter().product();
    for &n in &args.batch {
        let pixels: Vec<f32> = (0..n * per).map(|i| (i % 251) as f32 / 251.0).collect();
        for _ in 0..3 {
            b.predict(n, pixels.clone())?;
        }
        let mut took = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs_f64(args.seconds) || took.len() < 5 {
            let t = Instant::now();
            b.predict(n, pixels.clone())?;
            took.push(t.elapsed().as_secs_f64());
        }
        let total: f64 = took.iter().sum();
        took.sort_by(f64::total_cmp);
        let q = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize] * 1e3;
        println!(
            "{}",
            serde_json::json!({
                "batch": n,
                "images_per_s": (n * took.len()) as f64 / total,
                "p50_ms": q(0.5),
                "p99_ms": q(0.99),
                "batches": took.len(),
                "provider": vcl_server::infer::provider_name(provider),
                "intra_threads": threads,
            })
        );
    }
    Ok(())
}
