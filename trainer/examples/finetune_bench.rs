//! One contrastive training step (MobileNetV2 -> CL heads -> InfoNCE -> backward ->
//! Adam), timed: on the CPU with and without `finetune::tune_allocator` (what glibc's
//! default malloc costs libtorch training), and on CUDA in each precision (the device
//! check's side of its vcl / PyTorch ratio; `scripts/bench_cl_step.py` is the other).
//!
//! cargo run --release -p vcl-trainer --example finetune_bench -- --size 128 --batch 64
//! (add --no-tune for glibc's defaults; run each in its own process: mallopt is global;
//! --device cuda --precision bf16 on a GPU).

use std::time::Instant;

use clap::Parser;
use tch::{Device, Kind, Tensor};
use vcl_dataset::algonauts::Hemisphere;
use vcl_trainer::device::{DeviceChoice, Precision};
use vcl_trainer::features::backbones::{Arch, Backbone, IMAGENET_CLASSES};
use vcl_trainer::model::finetune::{
    self, Adam, AdamConfig, ClDims, ContrastiveHeads, FinetuneConfig, ImageShape, Objective,
};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 128)]
    size: i64,
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Voxels of the simulated ROI.
    #[arg(long, default_value_t = 500)]
    voxels: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Leave glibc malloc at its defaults.
    #[arg(long)]
    no_tune: bool,
    /// libtorch intra-op threads (0: libtorch's default, one per core).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// One JSON line instead of a sentence (for scripts/bench_cl_step.sh).
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// bf16 / fp16 autocast (CUDA only); fp16 scales the loss as training does.
    #[arg(long, value_enum, default_value_t)]
    precision: Precision,
}

/// (minor page faults, peak resident KiB) of this process, from /proc.
fn proc_stats() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Field 10 (minflt), counted after the parenthesised command name.
    let minflt = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (minflt, hwm)
}

fn main() {
    let args = Args::parse();
    let tuning = if args.no_tune {
        None
    } else {
        Some(finetune::tune_allocator())
    };
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = args.device.resolve().expect("--device");
    let precision = args.precision.on(device);
    let backbone = Backbone::pretrained(Arch::MobileNetV2, device)
        .unwrap_or_else(|_| Backbone::random(Arch::MobileNetV2, device, 0));
    let vs = tch::nn::VarStore::new(device);
    let dims = ClDims::paper(&[args.voxels], 0.8, 0.2, 0.25).expect("voxels >= 5");
    // The paper's recipe: tau 0.3, image-anchored, fixed temperature, seed 0.
    let recipe = FinetuneConfig::new(
        Objective::Cl,
        ".".into(),
        vec!["s".into()],
        Hemisphere::Left,
        "V1".into(),
    );
    let heads = ContrastiveHeads::new(
        &vs.root(),
        &dims,
        ImageShape::vector(IMAGENET_CLASSES),
        &["s".into()],
        &recipe,
    );
    let mut params: Vec<(String, Tensor)> = backbone
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    params.extend(
        vs.variables()
            .into_iter()
            .map(|(k, t)| (format!("h.{k}"), t)),
    );
    let mut adam = Adam::new(
        AdamConfig {
            lr: 1e-4,
            ..AdamConfig::default()
        },
        params,
    );
    let x = Tensor::randn([args.batch, 3, args.size, args.size], (Kind::Float, device));
    let y = Tensor::randn([args.batch, args.voxels as i64], (Kind::Float, device));
    // As training does: no host read of the loss per step; fp16 reads one flag per
    // step (its gradients' finiteness), as PyTorch's GradScaler does.
    let scale = if precision == Precision::Fp16 {
        65536.0
    } else {
        1.0
    };
    let mut step = || {
        adam.zero_grad();
        let loss = precision.autocast(|| {
            let f = backbone.logits(&x, true).to_kind(Kind::Float);
            heads.loss(&f, 0, &y, true)
        });
        (&loss * scale).backward();
        if precision == Precision::Fp16 {
            if adam.grads_finite() {
                adam.scale_grads(1.0 / scale);
                adam.step();
            }
        } else {
            adam.step();
        }
        loss.detach()
    };
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    // Two warm-up steps: cuDNN's autotuner tries its algorithms on the first.
    let _ = step();
    step().double_value(&[]);
    sync();
    let (f0, _) = proc_stats();
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..args.steps {
        last = Some(step());
    }
    let final_loss = last.map_or(f64::NAN, |l| l.double_value(&[]));
    sync();
    let secs = t0.elapsed().as_secs_f64() / args.steps as f64;
    let (f1, hwm) = proc_stats();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "seconds_per_step": secs,
                "images_per_s": args.batch as f64 / secs,
                "page_faults_per_step": (f1 - f0) / args.steps as u64,
                "peak_rss_gib": hwm as f64 / (1u64 << 20) as f64,
                "threads": tch::get_num_threads(),
                "malloc_tuned": tuning.is_some(),
                "device": format!("{device:?}"),
                "precision": precision.name(),
                "final_loss": final_loss,
            })
        );
        return;
    }
    println!(
        "malloc {}: {} px, batch {}, {} threads: {:.3} s/step, {:.1} images/s, {} page faults/step, peak RSS {:.2} GiB",
        match &tuning {
            Some(t) => format!("tuned ({t:?})"),
            None => "glibc defaults".into(),
        },
        args.size,
        args.batch,
        tch::get_num_threads(),
        secs,
        args.batch as f64 / secs,
        (f1 - f0) / args.steps as u64,
        hwm as f64 / (1u64 << 20) as f64
    );
}
