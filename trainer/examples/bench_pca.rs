//! Benchmark of vcl's PCA at NSD size (run by `scripts/bench_pca.sh`, which also runs
//! scikit-learn's PCA on the same file and compares).
//!
//! `bench_pca gen --out DIR --n 8365 --d 16384 --seed 0` writes x.npy [n, d] (float32):
//! rows of a 1,500-dimensional latent space with power-law variances, like a CNN tap's,
//! plus isotropic noise.
//!
//! `bench_pca fit --data DIR --k 1000 --solver randomized` loads it, fits PCA, writes
//! components_<solver>.npy [d, k] and variance_<solver>.npy [k], and prints one JSON
//! line with the fit's wall time and the process's peak resident memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tch::{Device, Kind, Tensor};
use vcl_trainer::model::ridge::{fit_pca_with, PcaSolver};

mod common;
use common::{load_f32_matrix, proc_status_mb};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes x.npy into --out.
    Gen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 8365)]
        n: i64,
        #[arg(long, default_value_t = 16384)]
        d: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
    },
    /// Fits PCA on --data and reports time and peak memory.
    Fit {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 1000)]
        k: usize,
        #[arg(long, value_enum, default_value = "randomized")]
        solver: PcaSolver,
        /// cpu or cuda
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Gen { out, n, d, seed } => generate(&out, n, d, seed),
        Cmd::Fit {
            data,
            k,
            solver,
            device,
        } => fit(&data, k, solver, &device),
    }
}

fn generate(out: &Path, n: i64, d: i64, seed: i64) -> Result<()> {
    std::fs::create_dir_all(out)?;
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let r = 1500;
    // standard deviations falling as a power law over the latent dimensions
    let scale = (Tensor::arange(r, opts) + 1.0).pow_tensor_scalar(-0.8) * 20.0;
    let f = Tensor::randn([n, r], opts) * &scale;
    let g = Tensor::randn([r, d], opts) / (d as f64).sqrt();
    let x = f.matmul(&g) * (d as f64).sqrt().sqrt() + Tensor::randn([n, d], opts) * 0.5;
    x.write_npy(out.join("x.npy"))?;
    eprintln!("wrote x [{n}, {d}] to {}", out.display());
    Ok(())
}

fn fit(data: &Path, k: usize, solver: PcaSolver, device: &str) -> Result<()> {
    let device = match device {
        "cuda" => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let x = load_f32_matrix(&data.join("x.npy"))?;
    let rss_loaded = proc_status_mb("VmRSS:");
    let t = Instant::now();
    let pca = fit_pca_with(&x, k, solver, device)?;
    if device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let fit_s = t.elapsed().as_secs_f64();
    let name = format!("{solver:?}").to_lowercase();
    pca.components
        .to_kind(Kind::Float)
        .write_npy(data.join(format!("components_{name}.npy")))?;
    pca.explained_variance
        .write_npy(data.join(format!("variance_{name}.npy")))?;
    println!(
        "{{\"tool\": \"vcl {name}\", \"fit_s\": {fit_s:.3}, \"peak_rss_mb\": {:.1}, \
         \"rss_after_load_mb\": {rss_loaded:.1}, \"threads\": {}}}",
        proc_status_mb("VmHWM:"),
        tch::get_num_threads()
    );
    Ok(())
}
