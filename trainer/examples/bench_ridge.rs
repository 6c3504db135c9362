//! Benchmark of vcl's per-voxel-alpha ridge CV (run by `scripts/bench_ridge.sh`, which
//! also runs himalaya on the same files and compares).
//!
//! `bench_ridge gen --out DIR --n 8000 --p 1000 --v 20000 --seed 0` writes x.npy [n, p]
//! and y.npy [n, v] (float32): PCA-like features whose variances decay over three
//! orders of magnitude, and voxels y = x w + noise whose noise levels span two orders
//! of magnitude, so that voxels prefer different alphas.
//!
//! `bench_ridge fit --data DIR` loads them, runs `ridge_cv` (logspace(-1, 7, 9), 5
//! contiguous folds, per-voxel alphas, R^2), writes alphas_vcl.npy and prints one JSON
//! line with the fit's wall time and the process's peak resident memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

mod common;
use clap::{Parser, Subcommand};
use common::{load_f32_matrix, proc_status_mb};
use tch::{Device, Kind, Tensor};
use vcl_trainer::model::ridge::{ridge_cv, RidgeCvConfig};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes x.npy and y.npy into --out.
    Gen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 8000)]
        n: i64,
        #[arg(long, default_value_t = 1000)]
        p: i64,
        #[arg(long, default_value_t = 20000)]
        v: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
    },
    /// Fits ridge_cv on --data and reports time and peak memory.
    Fit {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = vcl_trainer::model::ridge::DEFAULT_VOXEL_BATCH)]
        voxel_batch: usize,
        /// cpu or cuda
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Gen { out, n, p, v, seed } => generate(&out, n, p, v, seed),
        Cmd::Fit {
            data,
            folds,
            voxel_batch,
            device,
        } => fit(&data, folds, voxel_batch, &device),
    }
}

fn generate(out: &std::path::Path, n: i64, p: i64, v: i64, seed: i64) -> Result<()> {
    std::fs::create_dir_all(out)?;
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    // feature standard deviations from 10 down to 0.3, like the leading PCA components
    // of a CNN tap
    let scale = Tensor::logspace(1.0, -0.5, p, 10.0, opts);
    let x = Tensor::randn([n, p], opts) * &scale;
    let w = Tensor::randn([p, v], opts) / (p as f64).sqrt();
    // noise levels log-uniform over [0.3, 30] per voxel
    let noise = (Tensor::rand([v], opts) * 2.0 - 0.5) * std::f64::consts::LN_10;
    let y = x.matmul(&w) + Tensor::randn([n, v], opts) * noise.exp() + Tensor::randn([v], opts);
    x.write_npy(out.join("x.npy"))?;
    y.write_npy(out.join("y.npy"))?;
    eprintln!("wrote x [{n}, {p}] and y [{n}, {v}] to {}", out.display());
    Ok(())
}

fn fit(data: &std::path::Path, folds: usize, voxel_batch: usize, device: &str) -> Result<()> {
    let device = match device {
        "cuda" => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let t0 = Instant::now();
    let x = load_f32_matrix(&data.join("x.npy"))?;
    let y = load_f32_matrix(&data.join("y.npy"))?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_loaded = proc_status_mb("VmRSS:");
    let cfg = RidgeCvConfig {
        folds,
        voxel_batch,
        ..RidgeCvConfig::default()
    };
    let t1 = Instant::now();
    let fit = ridge_cv(&x, &y, &cfg, device)?;
    if device.is_cuda() {
        // the last kernels may still be running; wall time must include them
        tch::Cuda::synchronize(0);
    }
    let fit_s = t1.elapsed().as_secs_f64();
    Tensor::from_slice(&fit.alphas).write_npy(data.join("alphas_vcl.npy"))?;
    println!(
        "{{\"tool\": \"vcl\", \"device\": \"{device:?}\", \"fit_s\": {fit_s:.3}, \"load_s\": {load_s:.3}, \
         \"peak_rss_mb\": {:.1}, \"rss_after_load_mb\": {rss_loaded:.1}, \"threads\": {}}}",
        proc_status_mb("VmHWM:"),
        tch::get_num_threads()
    );
    Ok(())
}
