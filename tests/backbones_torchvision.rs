//! Parity with Python torchvision 0.26 (the venv's, made for torch 2.11): the
//! state_dict keys and shapes of all four backbones, and the numbers at every tap:
//! ImageNet MobileNetV2 on real photos at
//! 224 px, and random AlexNet / ResNet-18 / ResNet-50 (saved here, loaded there with
//! `strict=True`) at 128 px, which also exercises the adaptive pools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ndarray::{Array2, Array4};
use vcl_dataset::{npy, paths};
use vcl_tests::{python, run_python};
use vcl_trainer::features::backbones::{Arch, Backbone, BackboneError, Device};
use vcl_trainer::features::images::{self, PixelCache, IMAGENET_MEAN, IMAGENET_STD};
use vcl_trainer::features::{extract, ExtractOptions, FeatureSpec, GridChoice};

const PHOTOS: [&str; 4] = ["chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg"];
/// ImageNet's cat classes (tabby, tiger cat, Persian, Siamese, Egyptian cat).
const CAT_CLASSES: std::ops::RangeInclusive<usize> = 281..=285;

/// torchvision comes with the venv (scripts/requirements.txt pins the release made for
/// its torch); a missing one is a set-up fault, said once per test process.
fn ensure_torchvision() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let have = Command::new(python())
            .args(["-c", "import torchvision"])
            .status()
            .expect("the venv's python runs");
        assert!(
            have.success(),
            "the venv has no torchvision: run scripts/setup.sh (it installs scripts/requirements.txt)"
        );
    });
}

/// The photos resized to `size`, as a pixel cache (what our extractor reads) and as
/// the ImageNet-normalized float32 [N, 3, size, size] array handed to Python.
fn photos(dir: &Path, size: u32) -> (PixelCache, PathBuf) {
    let s = size as usize;
    let mut flat = Vec::new();
    for name in PHOTOS {
        let img =
            images::decode(&paths::photos_dir().join(name)).expect("set-up installs the photos");
        flat.extend(images::to_chw(&img, size));
    }
    let pixels = Array4::from_shape_vec((PHOTOS.len(), 3, s, s), flat).unwrap();
    let x = Array4::from_shape_fn(pixels.dim(), |(i, c, y, xx)| {
        (pixels[[i, c, y, xx]] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    });
    let x_path = dir.join(format!("photos-{size}.npy"));
    npy::write(&x_path, &x).unwrap();
    let cache = PixelCache::write(&dir.join(format!("pixels-photos-{size}.npy")), &pixels).unwrap();
    (cache, x_path)
}

/// Runs torchvision on jobs [{arch, weights, x, out, taps}], writing each tap's output,
/// flattened per image to float32 [N, D], as `<out>/<tap>.npy`.
const TORCHVISION_TAPS: &str = r#"
import json, sys
import numpy as np, torch, torchvision
from safetensors.torch import load_file
torch.set_grad_enabled(False)
for job in json.load(open(sys.argv[1])):
    m = getattr(torchvision.models, job["arch"])(weights=None)
    m.load_state_dict(load_file(job["weights"]), strict=True)
    m.eval()
    outs = {}
    def keep(name):
        def hook(mod, inp, out):
            outs[name] = out.detach().clone()
        return hook
    for t in job["taps"]:
        if t == "avgpool" and job["arch"] == "mobilenet_v2":
            # torchvision pools functionally here: no submodule to hook.
            m.features.register_forward_hook(lambda mod, i, o: outs.__setitem__(
                "avgpool", torch.nn.functional.adaptive_avg_pool2d(o, 1).flatten(1)))
        else:
            m.get_submodule(t).register_forward_hook(keep(t))
    x = torch.from_numpy(np.load(job["x"]))
    m(x)
    for t in job["taps"]:
        np.save(f'{job["out"]}/{t}.npy', outs[t].reshape(x.shape[0], -1).numpy().astype(np.float32))
"#;

struct Job {
    arch: Arch,
    weights: PathBuf,
    x: PathBuf,
    out: PathBuf,
}

fn run_torchvision(dir: &Path, jobs: &[Job]) {
    let spec: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            std::fs::create_dir_all(&j.out).unwrap();
            serde_json::json!({
                "arch": j.arch.name(),
                "weights": j.weights,
                "x": j.x,
                "out": j.out,
                "taps": j.arch.taps(),
            })
        })
        .collect();
    let cfg = dir.join("jobs.json");
    std::fs::write(&cfg, serde_json::to_vec(&spec).unwrap()).unwrap();
    run_python(TORCHVISION_TAPS, &[&cfg]);
}

/// Largest |ours - theirs| and largest |theirs|.
fn max_diff(ours: &Array2<f32>, theirs: &Array2<f32>) -> (f32, f32) {
    assert_eq!(ours.dim(), theirs.dim());
    let d = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let m = theirs.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    (d, m)
}

/// Compares every tap of `backbone` on `pixels` with torchvision's output in `out`.
fn compare_taps(backbone: &Backbone, pixels: &PixelCache, out: &Path, rel_tol: f32) {
    let arch = backbone.arch();
    let rows: Vec<usize> = (0..pixels.len()).collect();
    let opts = ExtractOptions {
        batch_size: rows.len(),
        ..ExtractOptions::default()
    };
    let specs: Vec<FeatureSpec> = arch
        .taps()
        .iter()
        .map(|t| FeatureSpec::new(t, GridChoice::Cap))
        .collect();
    let ours = extract(backbone, pixels, &rows, &specs, &opts).unwrap();
    for tap in arch.taps() {
        let theirs = npy::read_f32_2d(&out.join(format!("{tap}.npy"))).unwrap();
        let (d, m) = max_diff(&ours.get(tap).unwrap().array().unwrap(), &theirs);
        eprintln!("{arch} {tap}: max |diff| {d:.3e}, max |value| {m:.3e}");
        assert!(
            d <= rel_tol * m.max(1.0),
            "{arch} {tap}: max |diff| {d} exceeds {rel_tol} x max(1, {m})"
        );
    }
}

#[test]
fn key_names_and_shapes_match_torchvision() {
    ensure_torchvision();
    let code = r#"
import json, torchvision
out = {}
for arch in ["alexnet", "mobilenet_v2", "resnet18", "resnet50"]:
    sd = getattr(torchvision.models, arch)(weights=None).state_dict()
    out[arch] = {k: list(v.shape) for k, v in sd.items()}
print(json.dumps(out))
"#;
    let theirs: BTreeMap<String, BTreeMap<String, Vec<i64>>> =
        serde_json::from_str(run_python(code, &[]).trim()).unwrap();
    for arch in Arch::ALL {
        let want = &theirs[arch.name()];
        let have = Backbone::random(arch, Device::Cpu, 0).state_dict_shapes();
        let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
        let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{arch}: torchvision has {missing:?} that we lack; we have {extra:?} that it lacks"
        );
        for (k, shape) in want {
            assert_eq!(&have[k], shape, "{arch} {k}");
        }
        eprintln!("{arch}: {} state_dict entries match", want.len());
    }
}

#[test]
fn imagenet_mobilenet_v2_matches_torchvision_on_photos() {
    ensure_torchvision();
    let weights = paths::weights_dir().join(Arch::MobileNetV2.weights_file());
    let dir = tempfile::tempdir().unwrap();
    let (pixels, x) = photos(dir.path(), 224);
    let out = dir.path().join("mobilenet_v2");
    run_torchvision(
        dir.path(),
        &[Job {
            arch: Arch::MobileNetV2,
            weights: weights.clone(),
            x,
            out: out.clone(),
        }],
    );
    let backbone = Backbone::load(Arch::MobileNetV2, &weights, Device::Cpu).unwrap();
    compare_taps(&backbone, &pixels, &out, 1e-4);

    // The brief's bound on logits, in absolute terms.
    let theirs = npy::read_f32_2d(&out.join("classifier.1.npy")).unwrap();
    let rows: Vec<usize> = (0..pixels.len()).collect();
    let ours = extract(
        &backbone,
        &pixels,
        &rows,
        &[FeatureSpec::new("classifier.1", GridChoice::Cap)],
        &ExtractOptions::default(),
    )
    .unwrap();
    let logits = &ours.taps[0].array().unwrap();
    let (d, _) = max_diff(logits, &theirs);
    assert!(d <= 1e-3, "logits differ by {d}");

    let top1 = |row: usize| {
        logits
            .row(row)
            .iter()
            .enumerate()
            .fold(
                (0, f32::MIN),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
            .0
    };
    let cat = top1(0);
    assert!(
        CAT_CLASSES.contains(&cat),
        "chelsea.png's top-1 class is {cat}, not a cat"
    );
    eprintln!(
        "top-1 classes: {:?}",
        (0..PHOTOS.len()).map(top1).collect::<Vec<_>>()
    );
}

#[test]
fn random_alexnet_and_resnets_match_torchvision_at_128_px() {
    ensure_torchvision();
    let dir = tempfile::tempdir().unwrap();
    let (pixels, x) = photos(dir.path(), 128);
    let archs = [Arch::AlexNet, Arch::ResNet18, Arch::ResNet50];
    let backbones: Vec<Backbone> = archs
        .iter()
        .map(|&a| Backbone::random(a, Device::Cpu, 21))
        .collect();
    let jobs: Vec<Job> = backbones
        .iter()
        .map(|b| {
            let weights = dir.path().join(b.arch().weights_file());
            b.save(&weights).unwrap();
            Job {
                arch: b.arch(),
                weights,
                x: x.clone(),
                out: dir.path().join(b.arch().name()),
            }
        })
        .collect();
    run_torchvision(dir.path(), &jobs);
    for (b, job) in backbones.iter().zip(&jobs) {
        compare_taps(b, &pixels, &job.out, 1e-4);
    }
}

#[test]
fn torch_save_files_load_only_in_the_zip_format() {
    ensure_torchvision();
    let weights = paths::weights_dir().join(Arch::MobileNetV2.weights_file());
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("mobilenet_v2-zip.pth");
    let legacy = dir.path().join("mobilenet_v2-legacy.pth");
    run_python(
        r#"
import sys, torch
from safetensors.torch import load_file
sd = load_file(sys.argv[1])
torch.save(sd, sys.argv[2])
torch.save(sd, sys.argv[3], _use_new_zipfile_serialization=False)
"#,
        &[&weights, &zip, &legacy],
    );
    let reference = Backbone::load(Arch::MobileNetV2, &weights, Device::Cpu).unwrap();
    let from_zip = Backbone::load(Arch::MobileNetV2, &zip, Device::Cpu).unwrap();
    assert_eq!(reference.weights_hash(), from_zip.weights_hash());

    match Backbone::load(Arch::MobileNetV2, &legacy, Device::Cpu) {
        Err(e @ BackboneError::WeightsUnreadable { .. }) => {
            let msg = e.to_string();
            eprintln!("legacy torch.save file: {msg}");
            assert!(
                msg.contains("mobilenet_v2-legacy.pth") && msg.contains("safetensors"),
                "{msg}"
            );
        }
        Err(e) => panic!("unexpected error for a legacy torch.save file: {e}"),
        Ok(b) => {
            eprintln!("legacy torch.save file loaded");
            assert_eq!(reference.weights_hash(), b.weights_hash());
        }
    }
}
