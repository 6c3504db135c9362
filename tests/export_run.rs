//! `export` end to end on the tiny in-silico brain with the real MobileNetV2: a fit
//! whose ROIs read two different taps becomes one verified bundle model per
//! hemisphere in the model repository, which ONNX's checker and Python's onnxruntime
//! accept and which the manifest describes; tuned runs give one model per ROI; bad
//! runs and damaged repository entries are refused, naming what is wrong.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, Array4};
use vcl_dataset::algonauts::Dataset;
use vcl_dataset::npy;
use vcl_tests::run_python;
use vcl_trainer::export::contract::manifest::{self, Manifest, Method};
use vcl_trainer::export::contract::runtime;
use vcl_trainer::export::{export, heldout_images, load_run, predict_libtorch, ExportOptions};
use vcl_trainer::features::backbones::Device;
use vcl_trainer::model::encoding::{self, FitConfig};
use vcl_trainer::model::ridge::{Kind, Tensor};

fn tiny() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| vcl_tests::tiny_dataset(11, 1)).1
}

fn config(rois: &[&str], taps: &[&str]) -> FitConfig {
    FitConfig {
        rois: rois.iter().map(|s| s.to_string()).collect(),
        taps: taps.iter().map(|s| s.to_string()).collect(),
        // Small models: the export tests write several.
        max_feature_dim: Some(1000),
        ..vcl_tests::fit_config(tiny())
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A run whose hemispheres each have V1 and early on features.6 and floc-faces on
/// avgpool (fitted separately and merged in, listed between the two), evaluated.
fn two_tap_run() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let a = dir.path().join("run");
        let b = dir.path().join("faces");
        encoding::fit(
            &config(&["V1", "early"], &["features.6"]),
            &a,
            &cache,
            Device::Cpu,
        )
        .unwrap();
        encoding::fit(
            &config(&["floc-faces"], &["avgpool"]),
            &b,
            &cache,
            Device::Cpu,
        )
        .unwrap();
        for h in ["lh", "rh"] {
            for ext in ["json", "safetensors"] {
                let rel = format!("encoders/subj01/{h}/floc-faces.{ext}");
                std::fs::copy(b.join(&rel), a.join(&rel)).unwrap();
            }
        }
        let pca = "encoders/subj01/pca/avgpool.safetensors";
        std::fs::copy(b.join(pca), a.join(pca)).unwrap();
        // The fit's order is the models' ROI order: put floc-faces between V1 and early.
        let fit_json = a.join("fit.json");
        let mut record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&fit_json).unwrap()).unwrap();
        let faces: serde_json::Value = serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(b.join("fit.json")).unwrap(),
        )
        .unwrap()["selections"]
            .clone();
        let sel = record["selections"].as_array_mut().unwrap();
        let mut merged = Vec::new();
        for h in ["lh", "rh"] {
            let of = |list: &[serde_json::Value], roi: &str| {
                list.iter()
                    .find(|s| s["hemisphere"] == h && s["roi"] == roi)
                    .cloned()
                    .unwrap()
            };
            merged.push(of(sel, "V1"));
            merged.push(of(faces.as_array().unwrap(), "floc-faces"));
            merged.push(of(sel, "early"));
        }
        *sel = merged;
        std::fs::write(&fit_json, serde_json::to_string_pretty(&record).unwrap()).unwrap();
        encoding::evaluate(&a, &cache, Device::Cpu).unwrap();
        (dir, a)
    })
    .1
}

/// The first export of the two-tap run, shared by the tests that only read it.
fn exported() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static REPO: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    REPO.get_or_init(|| {
        let repo = tempfile::tempdir().unwrap();
        let models = export(two_tap_run(), repo.path(), &ExportOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let dirs = models.iter().map(|m| m.dir.clone()).collect();
        for m in &models {
            eprintln!(
                "{} v{}: ORT vs libtorch max rel {:.2e}, abs {:.2e}; ops {:?}",
                m.name, m.version, m.comparison.max_rel, m.comparison.max_abs, m.op_types
            );
        }
        (repo, dirs)
    })
}

fn to_array2(t: &Tensor) -> Array2<f32> {
    let size = t.size();
    let v = Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().view([-1])).unwrap();
    Array2::from_shape_vec((size[0] as usize, size[1] as usize), v).unwrap()
}

const CHECK: &str = r#"
import json, sys
import numpy as np, onnx, onnxruntime as ort
model_dir, x_path, v_path = sys.argv[1:4]
path = model_dir + "/model.onnx"
onnx.checker.check_model(onnx.load(path), full_check=True)
man = json.load(open(model_dir + "/manifest.json"))
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
x = np.load(x_path)
vox, means = sess.run(["voxels", "roi_means"], {"images": x})
ref = np.load(v_path).astype(np.float64)
scale = float(np.sqrt(np.mean(ref ** 2)))
rel = float(np.max(np.abs(vox - ref) / np.maximum(np.abs(ref), scale)))
# roi_means must be the mean of each ROI's slice of voxels, as the manifest states them.
mean_err = max(
    float(np.max(np.abs(means[:, i] - vox[:, r["slice"]["start"]:r["slice"]["end"]].mean(axis=1))))
    for i, r in enumerate(man["rois"]))
print(json.dumps({"rel": rel, "scale": scale, "mean_err": mean_err,
                  "shape": list(vox.shape), "means_shape": list(means.shape)}))
"#;

#[test]
fn pooling_grids_are_cv_candidates_that_evaluate_and_export_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = dir.path().join("grids");
    let cfg = FitConfig {
        pool_grids: ["1", "2", "cap"]
            .iter()
            .map(|g| g.parse().unwrap())
            .collect(),
        ..config(&["V1", "early"], &["features.3", "features.6", "avgpool"])
    };
    let record = encoding::fit(&cfg, &run, &cache, Device::Cpu).unwrap();
    // features.3 is 24x16x16 at 64 px and features.6 32x8x8; the 1000-value cap pools
    // them to 6x6 and 5x5. avgpool is a vector: one candidate whatever the grid.
    let want = [
        "features.3@1x1",
        "features.3@2x2",
        "features.3@6x6",
        "features.6@1x1",
        "features.6@2x2",
        "features.6@5x5",
        "avgpool@full",
    ];
    let encs = encoding::store::load_encoders(&run).unwrap();
    assert_eq!(encs.len(), 4);
    for (e, s) in encs.iter().zip(&record.selections) {
        let m = &e.meta;
        let labels: Vec<&str> = m.tap_cv_scores.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, want, "{}", m.roi);
        let (best, score) =
            m.tap_cv_scores.iter().fold(
                ("", f32::MIN),
                |b, (l, c)| if *c >= b.1 { (l, *c) } else { b },
            );
        assert_eq!((s.tap.as_str(), s.cv_score), (best, score), "{}", m.roi);
        assert_eq!(s.tap.split('@').next(), Some(m.tap.as_str()));
        let grid = match m.pooling {
            manifest::Pooling::None => "full".to_string(),
            manifest::Pooling::AdaptiveAvg { grid } => format!("{grid}x{grid}"),
        };
        assert_eq!(s.tap, format!("{}@{grid}", m.tap));
    }
    let eval = encoding::evaluate(&run, &cache, Device::Cpu).unwrap();
    assert!(eval.results.iter().all(|r| r.scores.mean_r.is_finite()));

    // A grid the cap would not make, exported: ONNX pools the map as the fit did.
    let coarse = dir.path().join("coarse");
    let cfg = FitConfig {
        pool_grids: vec!["2".parse().unwrap()],
        ..config(&["V1"], &["features.6"])
    };
    encoding::fit(&cfg, &coarse, &cache, Device::Cpu).unwrap();
    let grid_eval = encoding::evaluate(&coarse, &cache, Device::Cpu).unwrap();
    let fitted = encoding::store::load_encoders(&coarse).unwrap();
    assert_eq!(fitted[0].meta.feature_dim, 32 * 2 * 2);
    assert!(grid_eval.results.iter().all(|r| r.tap == "features.6"));
    let repo = dir.path().join("repo");
    let models =
        export(&coarse, &repo, &ExportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    for m in &models {
        let man = Manifest::load(&m.dir).unwrap();
        assert_eq!(
            man.rois[0].pooling,
            manifest::Pooling::AdaptiveAvg { grid: 2 }
        );
        assert!(
            man.verification.max_rel_diff < 1e-4,
            "{}",
            man.verification.max_rel_diff
        );
    }
}

#[test]
fn a_bundle_on_two_taps_exports_checked_models_with_their_manifests() {
    let (repo, dirs) = exported();
    assert_eq!(dirs.len(), 2, "one bundle per hemisphere");
    let contents = load_run(two_tap_run(), false).unwrap();
    let ds = Dataset::open(tiny()).unwrap();
    let subject = ds.subject("subj01").unwrap();
    let (rows, x) = heldout_images(&contents.record.config, &subject, 5).unwrap();
    assert_eq!(rows.len(), 5);

    for (dir, bundle) in dirs.iter().zip(&contents.bundles) {
        let h = bundle.hemisphere.prefix();
        let name = format!("subj01-{h}-untuned-mobilenet_v2");
        assert_eq!(dir, &repo.path().join(&name).join("1"));
        let m = Manifest::load(dir).unwrap();
        assert_eq!((m.model.name.as_str(), m.model.version), (name.as_str(), 1));
        assert_eq!(m.hemisphere.prefix(), h);
        assert_eq!(m.training.method, Method::Untuned);
        assert!(m.model.opset >= 17);
        let names: Vec<&str> = m.rois.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["V1", "floc-faces", "early"]);
        let taps: Vec<&str> = m.rois.iter().map(|r| r.tap.as_str()).collect();
        assert_eq!(taps, ["features.6", "avgpool", "features.6"]);
        assert_eq!(
            m.rois[0].pooling,
            manifest::Pooling::AdaptiveAvg { grid: 5 }
        );
        // Slices tile the output in ROI order, each as long as the encoder's vertices.
        let mut start = 0;
        for (r, &i) in m.rois.iter().zip(&bundle.encoders) {
            let meta = &contents.encoders[i].meta;
            assert_eq!(r.name, meta.roi);
            assert_eq!(r.slice.start, start);
            assert_eq!(r.slice.len(), meta.vertices.len());
            let verts: Vec<usize> = r.vertices.iter().map(|&v| v as usize).collect();
            assert_eq!(verts, meta.vertices);
            assert!(r.evaluation.is_some(), "{}: evaluated run", r.name);
            assert_eq!(r.pca_components, meta.pca_components);
            start = r.slice.end;
        }
        assert_eq!(
            m.outputs.voxels.shape[1],
            manifest::Dim::Fixed(start as u64)
        );
        assert!(m.verification.max_rel_diff < 1e-4 && m.verification.images == 8);
        assert_eq!(m.provenance.dataset_fingerprint.len(), 64);
        assert_eq!(m.backbone.weights_hash, contents.backbone.weights_hash());

        // Python: the checker, and onnxruntime against vcl's libtorch prediction.
        let pred = predict_libtorch(&contents.backbone, &bundle.set, &x).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (xp, vp) = (tmp.path().join("x.npy"), tmp.path().join("v.npy"));
        let xs = x.size();
        let xv = Vec::<f32>::try_from(&x.contiguous().view([-1])).unwrap();
        let shape = (xs[0] as usize, 3, xs[2] as usize, xs[3] as usize);
        npy::write(&xp, &Array4::from_shape_vec(shape, xv).unwrap()).unwrap();
        npy::write(&vp, &to_array2(&pred.voxels)).unwrap();
        let out = run_python(CHECK, &[dir, &xp, &vp]);
        let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        eprintln!("{name}: python ORT vs libtorch {r}");
        assert!(r["rel"].as_f64().unwrap() < 1e-4, "{r}");
        assert!(
            r["mean_err"].as_f64().unwrap() < 1e-5 * r["scale"].as_f64().unwrap().max(1.0),
            "{r}"
        );
        assert_eq!(r["shape"], serde_json::json!([5, start]));
        assert_eq!(r["means_shape"], serde_json::json!([5, 3]));
    }
}

#[test]
fn versions_count_up_and_tuned_runs_export_one_model_per_roi() {
    let repo = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        verify_images: 2,
        ..ExportOptions::default()
    };
    let first = export(two_tap_run(), repo.path(), &opts).unwrap();
    let second = export(two_tap_run(), repo.path(), &opts).unwrap();
    assert!(first.iter().all(|m| m.version == 1));
    assert!(second.iter().all(|m| m.version == 2));
    let versions: Vec<String> = std::fs::read_dir(repo.path().join(&first[0].name))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut versions = versions;
    versions.sort();
    assert_eq!(versions, ["1", "2"], "no partial folders left behind");

    // The same encoders labelled as a CL run: one model per ROI.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    copy_dir(two_tap_run(), &run);
    let fit_json = run.join("fit.json");
    let text = std::fs::read_to_string(&fit_json).unwrap();
    std::fs::write(&fit_json, text.replace("\"untuned\"", "\"cl\"")).unwrap();
    let models = export(&run, repo.path(), &opts).unwrap();
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "subj01-lh-V1-cl-mobilenet_v2",
            "subj01-lh-floc-faces-cl-mobilenet_v2",
            "subj01-lh-early-cl-mobilenet_v2",
            "subj01-rh-V1-cl-mobilenet_v2",
            "subj01-rh-floc-faces-cl-mobilenet_v2",
            "subj01-rh-early-cl-mobilenet_v2",
        ]
    );
    for m in &models {
        assert_eq!(m.manifest.rois.len(), 1);
        assert_eq!(m.manifest.training.method, Method::Cl);
        assert_eq!(Manifest::load(&m.dir).unwrap(), m.manifest);
    }

    std::fs::write(&fit_json, text.replace("\"untuned\"", "\"imagenet-ish\"")).unwrap();
    let e = export(&run, repo.path(), &opts).unwrap_err().to_string();
    assert!(
        e.contains("imagenet-ish")
            && e.contains("fit.json")
            && e.contains("`untuned`, `regression`"),
        "{e}"
    );
}

#[test]
fn bad_runs_are_refused_naming_what_is_wrong() {
    let repo = tempfile::tempdir().unwrap();
    let missing = repo.path().join("no-such-run");
    let e = export(&missing, repo.path(), &ExportOptions::default())
        .unwrap_err()
        .to_string();
    eprintln!("missing run: {e}");
    assert!(
        e.contains("no-such-run") && e.contains("does not exist"),
        "{e}"
    );

    // An encoder whose tap the backbone does not have.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    copy_dir(two_tap_run(), &run);
    let enc = run.join("encoders/subj01/lh/V1.json");
    let text = std::fs::read_to_string(&enc).unwrap();
    assert!(text.contains("\"tap\": \"features.6\""));
    std::fs::write(
        &enc,
        text.replace("\"tap\": \"features.6\"", "\"tap\": \"features.99\""),
    )
    .unwrap();
    let e = export(&run, repo.path(), &ExportOptions::default())
        .unwrap_err()
        .to_string();
    eprintln!("unknown tap: {e}");
    assert!(
        e.contains("features.99") && e.contains("V1.json") && e.contains("features.18"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(repo.path()).unwrap().count(),
        0,
        "a refused export writes nothing"
    );
}

#[test]
fn damaged_repository_entries_are_refused() {
    let (_, dirs) = exported();
    let scratch = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let d = scratch.path().join(name);
        copy_dir(&dirs[0], &d);
        d
    };
    let edit = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = d.join(manifest::MANIFEST_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    };

    // Corrupted manifest: a field of the wrong type, named with its path.
    let d = fresh("corrupt");
    edit(&d, &|v| {
        v["rois"][0]["slice"]["end"] = serde_json::json!("ten")
    });
    let e = Manifest::load(&d).unwrap_err().to_string();
    eprintln!("corrupted manifest: {e}");
    assert!(
        e.contains("manifest.json") && e.contains("rois[0].slice.end"),
        "{e}"
    );
    // Consistent types, inconsistent values: slices that do not match the outputs.
    let d = fresh("inconsistent");
    edit(&d, &|v| {
        v["outputs"]["voxels"]["shape"][1] = serde_json::json!(1)
    });
    let e = Manifest::load(&d).unwrap_err().to_string();
    assert!(e.contains("outputs.voxels"), "{e}");

    // Checksum mismatch: the model changed after export.
    let d = fresh("tampered");
    let good = Manifest::read(&d.join(manifest::MANIFEST_FILE)).unwrap();
    let model = d.join(manifest::MODEL_FILE);
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.extend_from_slice(b"\0");
    std::fs::write(&model, bytes).unwrap();
    let actual = manifest::sha256_file(&model).unwrap();
    let e = Manifest::load(&d).unwrap_err().to_string();
    eprintln!("checksum mismatch: {e}");
    assert!(
        e.contains(&good.model_sha256) && e.contains(&actual) && e.contains("model.onnx"),
        "{e}"
    );

    // A schema this build does not know.
    let d = fresh("future");
    edit(&d, &|v| v["schema_version"] = serde_json::json!(99));
    let e = Manifest::load(&d).unwrap_err().to_string();
    eprintln!("unknown schema: {e}");
    assert!(
        e.contains("schema_version 99") && e.contains("reads schema_version 1"),
        "{e}"
    );

    // A manifest that is consistent in itself but not with its model: the contract's
    // session check (what the server runs before serving) refuses it.
    let d = fresh("other-size");
    edit(&d, &|v| {
        let input = &mut v["input"];
        input["height"] = serde_json::json!(65);
        input["width"] = serde_json::json!(65);
        input["resize"]["size"] = serde_json::json!(65);
        input["tensor"]["shape"] = serde_json::json!(["N", 3, 65, 65]);
    });
    let m = Manifest::load(&d).unwrap();
    let model = d.join(manifest::MODEL_FILE);
    let rt = runtime::Runtime::shared(&runtime::default_dylib_path().unwrap()).unwrap();
    let (session, _) = rt.session(&model, runtime::DeviceChoice::Cpu, 1).unwrap();
    let e = runtime::check_session(&m, &session, &model)
        .unwrap_err()
        .to_string();
    eprintln!("manifest against session: {e}");
    assert!(
        e.contains("images") && e.contains("65") && e.contains("64") && e.contains("model.onnx"),
        "{e}"
    );

    // The untouched copy still loads.
    assert!(Manifest::load(&fresh("intact")).is_ok());
}

/// Every file and folder under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A disk that fills in the middle of an export (a real write error: the `vcl export`
/// process runs with a file-size limit that the first model fits under and a later
/// one does not, SIGXFSZ ignored so the write fails with EFBIG) publishes nothing and
/// leaves nothing behind, and a staging folder left by a killed export is cleaned up.
#[test]
fn an_export_publishes_all_its_models_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    copy_dir(two_tap_run(), &run);
    let fit_json = run.join("fit.json");
    let text = std::fs::read_to_string(&fit_json).unwrap();
    // Labelled a CL run: one model per ROI, V1 (small) before early (large).
    std::fs::write(&fit_json, text.replace("\"untuned\"", "\"cl\"")).unwrap();
    let opts = ExportOptions {
        verify_images: 2,
        ..ExportOptions::default()
    };
    let scratch = tempfile::tempdir().unwrap();
    let sizes: Vec<u64> = export(&run, scratch.path(), &opts)
        .unwrap()
        .iter()
        .map(|m| std::fs::metadata(m.dir.join("model.onnx")).unwrap().len())
        .collect();
    let largest = *sizes.iter().max().unwrap();
    assert!(sizes[0] < largest, "the first model must fit: {sizes:?}");
    let limit_kb = (sizes[0] + largest) / 2 / 1024;

    let repo = dir.path().join("exports");
    // What an export killed with -9 leaves: a staging folder of a process now gone.
    let stale = repo
        .join("subj01-lh-V1-cl-mobilenet_v2")
        .join(format!(".partial-{}-1", u32::MAX - 1));
    std::fs::create_dir_all(stale.join("half")).unwrap();
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f \"$0\"; exec \"$@\"",
            &limit_kb.to_string(),
        ])
        .arg(vcl_tests::vcl_bin())
        .args(["export", "--verify-images", "2", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&repo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "model sizes {sizes:?}, file-size limit {limit_kb} KiB -> exit {:?}: {}",
        out.status.code(),
        stderr.lines().rev().take(4).collect::<Vec<_>>().join(" | ")
    );
    assert!(!out.status.success());
    assert!(
        stderr.contains("nothing was published") && stderr.contains("model.onnx"),
        "{stderr}"
    );
    assert_eq!(
        tree(&repo),
        Vec::<String>::new(),
        "nothing published, nothing left"
    );
    // (With room on the disk the same export publishes every model: the tests above.)
}
