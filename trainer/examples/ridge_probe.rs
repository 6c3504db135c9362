use std::time::Instant;
use tch::{Device, Kind, Tensor};
use vcl_trainer::ridge::*;
fn main() {
    let d = std::env::args().nth(1).unwrap();
    let x = Tensor::read_npy(format!("{d}/x.npy")).unwrap();
    let y = Tensor::read_npy(format!("{d}/y.npy")).unwrap();
    let y = y.narrow(1, 0, 8192.min(y.size()[1])).contiguous();
    let alphas = default_alphas();
    let folds = kfold(x.size()[0] as usize, 5, None).unwrap();
    for vb in [1024usize, 2048, 4096, 8192] {
        let t = Instant::now();
        let grid = CvGrid {
            folds: &folds,
            alphas: &alphas,
            scorer: Scorer::R2,
            voxel_batch: vb,
        };
        let s = cross_validate(&x, &y, &grid, Device::Cpu).unwrap();
        println!("cv vb {vb}: {:.2}", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let a = select_alphas(&mean_over_folds(&s), &alphas, true).unwrap();
        println!("select: {:.2}", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let _w = solve_ridge_svd_per_voxel(&x, &y, &a, vb, Device::Cpu).unwrap();
        println!("refit: {:.2}", t.elapsed().as_secs_f64());
    }
    let a = Tensor::randn([300, 300], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([300, 4096], (Kind::Float, Device::Cpu));
    let t = Instant::now();
    for _ in 0..20 {
        let _ = a.matmul(&b);
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "matmul 300x300x4096 x20: {:.3} s = {:.1} GFLOP/s",
        el,
        20.0 * 2.0 * 300.0 * 300.0 * 4096.0 / el / 1e9
    );
    let a = Tensor::randn([2000, 2000], (Kind::Float, Device::Cpu));
    let t = Instant::now();
    for _ in 0..5 {
        let _ = a.matmul(&a);
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "matmul 2000^3 x5: {:.1} GFLOP/s",
        5.0 * 2.0 * 8e9 / el / 1e9
    );
}
