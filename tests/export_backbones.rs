//! ONNX export of every backbone: random-weight AlexNet, ResNet-18 and ResNet-50 (with
//! random batch-norm statistics, so folding is exercised) and the real MobileNetV2,
//! each with encoders on a pooled conv tap and a deep tap. For each: ONNX's own
//! checker (`check_model(full_check=True)`) passes, and Python's onnxruntime on the
//! written file gives vcl's (libtorch's) numbers; so does ONNX Runtime from Rust.

use ndarray::{Array2, Array4};
use vcl_dataset::{npy, paths};
use vcl_tests::run_python;
use vcl_trainer::export::contract::runtime::{self, Runtime};
use vcl_trainer::export::{
    build_model, predict_libtorch, verify_with_ort, EncoderSet, ExportOptions, OrtCheck, Readout,
    RoiHead, TapProjection,
};
use vcl_trainer::features::backbones::{Arch, Backbone, Device};
use vcl_trainer::features::images;
use vcl_trainer::features::Pooling;
use vcl_trainer::model::ridge::{Kind, Tensor};

/// Deterministic values in [-1, 1) (a 64-bit LCG): no global RNG, so parallel tests
/// cannot disturb each other.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(values: Vec<f32>, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&values).view(shape)
}

/// Batch-norm layers with non-trivial scale, shift and running statistics, so that the
/// folded convolutions differ from the raw ones.
fn randomize_batch_norm(backbone: &mut Backbone, seed: u64) {
    let vars = backbone.var_store().variables();
    let mut prefixes: Vec<String> = vars
        .keys()
        .filter_map(|k| k.strip_suffix(".running_var").map(str::to_string))
        .collect();
    prefixes.sort();
    assert!(!prefixes.is_empty(), "no batch-norm layers found");
    for (i, p) in prefixes.iter().enumerate() {
        let seed = seed * 1000 + i as u64;
        let set = |suffix: &str, f: &dyn Fn(f32) -> f32, salt: u64| {
            let mut t = vars[&format!("{p}.{suffix}")].shallow_clone();
            let v: Vec<f32> = noise(t.numel(), seed * 7 + salt)
                .into_iter()
                .map(f)
                .collect();
            let src = Tensor::from_slice(&v).view(t.size().as_slice());
            // Variables are autograd leaves: overwrite them outside autograd.
            tch::no_grad(|| t.copy_(&src));
        };
        set("weight", &|u| 1.0 + 0.4 * u, 1);
        set("bias", &|u| 0.1 * u, 2);
        set("running_mean", &|u| 0.2 * u, 3);
        set("running_var", &|u| 1.0 + 0.6 * u, 4);
    }
}

/// Smooth colour gradients plus a little noise, in [0, 1]: [n, 3, s, s].
fn images(n: usize, s: usize) -> (Tensor, Array4<f32>) {
    let noise = noise(n * 3 * s * s, 99);
    let arr = Array4::from_shape_fn((n, 3, s, s), |(i, c, y, x)| {
        let base = 0.5
            + 0.4
                * ((x as f32 / s as f32) * (1.0 + i as f32)
                    + (y as f32 / s as f32) * (c as f32 + 1.0))
                    .sin();
        let k = ((i * 3 + c) * s + y) * s + x;
        (base + 0.1 * noise[k]).clamp(0.0, 1.0)
    });
    let flat: Vec<f32> = arr.iter().copied().collect();
    (tensor(flat, &[n as i64, 3, s as i64, s as i64]), arr)
}

fn to_array2(t: &Tensor) -> Array2<f32> {
    let size = t.size();
    let v = Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().view([-1])).unwrap();
    Array2::from_shape_vec((size[0] as usize, size[1] as usize), v).unwrap()
}

/// Encoders on `taps`: PCA means from the images' real features (so centring cancels
/// as in a fitted model), random components and ridge maps. ROIs interleave taps
/// (a on tap 0, b on tap 1, c on tap 0, ...) so the graph must reorder columns.
fn encoders(backbone: &Backbone, x: &Tensor, taps: &[(&str, Pooling)]) -> EncoderSet {
    const K: i64 = 6;
    let names: Vec<&str> = taps.iter().map(|t| t.0).collect();
    let outs = tch::no_grad(|| backbone.taps(&images::normalize(x), &names, false).unwrap());
    let mut set = EncoderSet::default();
    for (p, ((tap, pooling), out)) in taps.iter().zip(outs).enumerate() {
        let pooled = match pooling {
            Pooling::None => out,
            Pooling::AdaptiveAvg { grid } => out.adaptive_avg_pool2d([*grid, *grid]),
        };
        let feats = pooled.flatten(1, -1);
        let d = feats.size()[1];
        let mean = feats.mean_dim(0, false, Kind::Float);
        let comps = tensor(noise((d * K) as usize, 10 + p as u64), &[d, K]) / (d as f64).sqrt();
        set.projections.push(TapProjection {
            tap: tap.to_string(),
            pooling: *pooling,
            mean,
            components: comps,
        });
    }
    let voxels = [7i64, 5, 3, 4];
    for (i, &v) in voxels.iter().enumerate() {
        let projection = i % taps.len();
        set.heads.push(RoiHead {
            roi: format!("roi{i}"),
            readout: Readout::Ridge { projection },
            coef: tensor(noise((K * v) as usize, 100 + i as u64), &[K, v]),
            intercept: tensor(noise(v as usize, 200 + i as u64), &[v]) * 0.1,
        });
    }
    set
}

const CHECK: &str = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
path, x_path, v_path, m_path = sys.argv[1:5]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
x = np.load(x_path)
vox, means = sess.run(["voxels", "roi_means"], {"images": x})
one, _ = sess.run(["voxels", "roi_means"], {"images": x[:1]})
ref_v, ref_m = np.load(v_path), np.load(m_path)
def rel(a, b):
    b = b.astype(np.float64)
    scale = max(float(np.sqrt(np.mean(b ** 2))), 1e-30)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), scale)))
dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
print(json.dumps({
    "voxels_rel": rel(vox, ref_v), "roi_means_rel": rel(means, ref_m),
    "voxels_abs": float(np.max(np.abs(vox - ref_v))),
    "scale": float(np.sqrt(np.mean(ref_v.astype(np.float64) ** 2))),
    "batch1_abs": float(np.max(np.abs(one - vox[:1]))),
    "ops": sorted({n.op_type for n in model.graph.node}),
    "opset": model.opset_import[0].version, "ir": model.ir_version, "input_dims": dims,
    "outputs": [o.name for o in model.graph.output],
}))
"#;

/// Builds, checks and compares one architecture's export; returns the summary.
fn check(mut backbone: Backbone, random_bn: bool, size: usize, taps: &[(&str, Pooling)]) {
    let arch = backbone.arch();
    if random_bn {
        randomize_batch_norm(&mut backbone, 3);
    }
    let dir = tempfile::tempdir().unwrap();
    let (x, x_arr) = images(3, size);
    let set = encoders(&backbone, &x, taps);
    let built = build_model(&backbone, size as u32, &set).unwrap();
    assert_eq!(
        built.slices,
        vec![0..7, 7..12, 12..15, 15..19],
        "{arch}: slices in ROI order"
    );
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, &built.bytes).unwrap();
    let pred = predict_libtorch(&backbone, &set, &x).unwrap();

    // ONNX Runtime from Rust, as `vcl export` checks every model it writes.
    let rt = Runtime::shared(&runtime::default_dylib_path().unwrap()).unwrap();
    let opts = ExportOptions::default();
    let check = OrtCheck {
        model: &model,
        name: arch.name(),
        images: &x,
        reference: &pred,
    };
    let rust_ort = verify_with_ort(rt, &check, &opts).unwrap_or_else(|e| panic!("{arch}: {e}"));

    // Python's onnx checker and onnxruntime, on the same input file.
    let (xp, vp, mp) = (
        dir.path().join("x.npy"),
        dir.path().join("voxels.npy"),
        dir.path().join("roi_means.npy"),
    );
    npy::write(&xp, &x_arr).unwrap();
    npy::write(&vp, &to_array2(&pred.voxels)).unwrap();
    npy::write(&mp, &to_array2(&pred.roi_means)).unwrap();
    let out = run_python(CHECK, &[&model, &xp, &vp, &mp]);
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!(
        "{arch} at {size} px: rust ORT max rel {:.2e} (abs {:.2e}); python ORT {r}",
        rust_ort.max_rel, rust_ort.max_abs
    );
    let f = |k: &str| r[k].as_f64().unwrap();
    assert!(f("voxels_rel") < 1e-4, "{arch}: {r}");
    assert!(f("roi_means_rel") < 1e-4, "{arch}: {r}");
    assert!(f("voxels_abs") < 1e-3 * f("scale").max(1.0), "{arch}: {r}");
    assert!(
        f("batch1_abs") < 1e-4 * f("scale").max(1.0),
        "{arch}: dynamic batch: {r}"
    );
    assert!(r["opset"].as_i64().unwrap() >= 17, "{r}");
    assert_eq!(r["input_dims"], serde_json::json!(["N", 3, size, size]));
    assert_eq!(r["outputs"], serde_json::json!(["voxels", "roi_means"]));
    let ops: Vec<&str> = r["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for op in ["Sub", "Div", "Conv", "MatMul", "Add", "Gather", "Concat"] {
        assert!(ops.contains(&op), "{arch}: {op} missing from {ops:?}");
    }
    assert!(
        !ops.contains(&"BatchNormalization"),
        "{arch}: folded: {ops:?}"
    );
    assert_eq!(built.op_types, ops, "{arch}: reported op types");
}

#[test]
fn alexnet_random_weights() {
    // 96 px: features.5 is 192x5x5 (pooled to 2x2: uneven bins, MatMul pooling) and
    // features.12 is 2x2, which the classifier's adaptive pool spreads to 6x6.
    check(
        Backbone::random(Arch::AlexNet, Device::Cpu, 1),
        false,
        96,
        &[
            ("features.5", Pooling::AdaptiveAvg { grid: 2 }),
            ("classifier.6", Pooling::None),
        ],
    );
}

#[test]
fn resnet18_random_weights() {
    // 64 px: layer2 is 128x8x8, pooled 4x4 by an even AveragePool.
    check(
        Backbone::random(Arch::ResNet18, Device::Cpu, 2),
        true,
        64,
        &[
            ("layer2", Pooling::AdaptiveAvg { grid: 4 }),
            ("fc", Pooling::None),
        ],
    );
}

#[test]
fn resnet50_random_weights() {
    // 64 px: layer3 is 1024x4x4, pooled to 1x1 (GlobalAveragePool).
    check(
        Backbone::random(Arch::ResNet50, Device::Cpu, 3),
        true,
        64,
        &[
            ("layer3", Pooling::AdaptiveAvg { grid: 1 }),
            ("avgpool", Pooling::None),
        ],
    );
}

#[test]
fn mobilenet_v2_imagenet_weights() {
    let weights = paths::weights_dir().join("mobilenet_v2.safetensors");
    let backbone = Backbone::load(Arch::MobileNetV2, &weights, Device::Cpu)
        .expect("set-up converts torchvision's MobileNetV2 weights");
    // 96 px: features.6 is 32x12x12 (to 5x5: uneven bins), features.13 96x6x6 flat.
    check(
        backbone,
        false,
        96,
        &[
            ("features.6", Pooling::AdaptiveAvg { grid: 5 }),
            ("classifier.1", Pooling::None),
            ("features.13", Pooling::None),
        ],
    );
}

#[test]
fn sizes_the_graph_cannot_compute_are_refused_naming_them() {
    let backbone = Backbone::random(Arch::AlexNet, Device::Cpu, 4);
    let (x, _) = images(2, 64);
    let set = encoders(&backbone, &x, &[("classifier.6", Pooling::None)]);
    // 32 px: features.12's max-pool would get a 1x1 map, smaller than its 3x3 window.
    let e = build_model(&backbone, 32, &set).unwrap_err().to_string();
    assert!(e.contains("32x32") && e.contains("features.12"), "{e}");

    // A conv-tap PCA fitted at 64 px does not fit the features of a 96 px graph.
    let set = encoders(&backbone, &x, &[("features.5", Pooling::None)]);
    let e = build_model(&backbone, 96, &set).unwrap_err().to_string();
    assert!(
        e.contains("features.5") && e.contains("PCA expects") && e.contains("96 px"),
        "{e}"
    );
}
