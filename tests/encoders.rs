//! The untuned baseline end to end on the tiny in-silico brain: real MobileNetV2
//! features -> PCA -> ridge (CV inside the training split) -> held-out scores, tables
//! and plots; and the CLI's errors for bad requests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vcl_dataset::paths;
use vcl_tests::vcl;
use vcl_trainer::features::backbones::Device;
use vcl_trainer::model::encoding::{self, AlphaMode, FitConfig};

fn tiny() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| vcl_tests::tiny_dataset(11, 1)).1
}

fn config(data: &Path) -> FitConfig {
    FitConfig {
        rois: vec![
            "V1".into(),
            "V2v+V2d".into(),
            "early".into(),
            "floc-faces".into(),
        ],
        taps: vec!["features.3".into(), "features.6".into(), "avgpool".into()],
        ..vcl_tests::fit_config(data)
    }
}

#[test]
fn fit_and_evaluate_write_encoders_scores_and_plots() {
    let run_dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(tiny());
    let record = encoding::fit(&cfg, run_dir.path(), cache.path(), Device::Cpu).unwrap();
    assert_eq!(record.selections.len(), 8, "4 ROIs x 2 hemispheres");
    for s in &record.selections {
        assert!(cfg.taps.contains(&s.tap), "{s:?}");
    }
    let eval = encoding::evaluate(run_dir.path(), cache.path(), Device::Cpu).unwrap();
    assert_eq!(eval.results.len(), 8);
    for r in &eval.results {
        assert_eq!(r.heldout_images, 12);
        assert!(r.scores.mean_r.is_finite() && r.scores.algonauts_mean.is_some());
    }
    // ImageNet features predict the simulated early visual cortex: the noiseless truth
    // of the held-out images correlates with the predictions.
    let early: Vec<_> = eval.results.iter().filter(|r| r.roi == "early").collect();
    for r in &early {
        let truth = r.scores.mean_r_truth.expect("in-silico data has a truth");
        assert!(
            truth > 0.2,
            "{} {}: r with truth {truth}",
            r.subject,
            r.hemisphere
        );
    }
    let dir = run_dir.path().join("evaluation");
    for f in [
        "results.json",
        "results.csv",
        "results.md",
        "roi_mean_r.png",
        "r_vs_noise_ceiling.png",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(md.contains("| subj01 | lh | V1 |"), "{md}");
    // The stored encoders are complete: meta, weights, and the PCA they point at.
    let encs = encoding::store::load_encoders(run_dir.path()).unwrap();
    assert_eq!(encs.len(), 8);
    for e in &encs {
        assert!(run_dir.path().join(&e.meta.pca_file).exists());
        assert_eq!(e.meta.alphas.len(), e.meta.vertices.len());
    }

    // The paper's one alpha per ROI.
    let roi_run = tempfile::tempdir().unwrap();
    let roi_cfg = FitConfig {
        alpha_mode: AlphaMode::Roi,
        ..cfg.clone()
    };
    encoding::fit(&roi_cfg, roi_run.path(), cache.path(), Device::Cpu).unwrap();
    for e in encoding::store::load_encoders(roi_run.path()).unwrap() {
        assert!(cfg.alphas.contains(&e.meta.alphas[0]));
        assert!(
            e.meta.alphas.iter().all(|&a| a == e.meta.alphas[0]),
            "{}: {:?}",
            e.meta.roi,
            e.meta.alphas
        );
    }
}

fn fit_cli(extra: &[&str]) -> String {
    let run = tempfile::tempdir().unwrap();
    let mut args = vec![
        "fit",
        "--data",
        tiny().to_str().unwrap(),
        "--out",
        run.path().to_str().unwrap(),
        "--input-size",
        "64",
        "--rois",
        "V1",
    ];
    args.extend_from_slice(extra);
    let out = vcl(&args);
    assert!(!out.status.success(), "vcl fit {extra:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_requests_are_refused_with_clear_errors() {
    let e = fit_cli(&["--taps", "features.99"]);
    assert!(
        e.contains("features.99") && e.contains("features.6") && e.contains("classifier.1"),
        "{e}"
    );

    let e = fit_cli(&["--backbone", "vgg16"]);
    assert!(
        e.contains("vgg16") && e.contains("mobilenet_v2") && e.contains("alexnet"),
        "{e}"
    );

    let mobilenet = paths::weights_dir().join("mobilenet_v2.safetensors");
    let e = fit_cli(&[
        "--backbone",
        "resnet18",
        "--weights",
        mobilenet.to_str().unwrap(),
    ]);
    assert!(
        e.contains("missing") && e.contains("unexpected") && e.contains("conv1.weight"),
        "{e}"
    );

    let e = fit_cli(&["--folds", "100"]);
    assert!(e.contains("cannot be split into 100"), "{e}");

    let e = fit_cli(&["--rois", "V7"]);
    assert!(e.contains("unknown ROI 'V7'"), "{e}");
}

/// The randomized PCA (what `--pca-solver auto` takes at NSD size) gives the same
/// held-out scores as the exact one, on the demo brain's 900 images: per ROI, mean r
/// within 1e-3.
#[test]
fn randomized_pca_scores_as_the_exact_one_on_the_demo_brain() {
    use vcl_trainer::model::ridge::PcaSolver;
    let (_guard, data) = vcl_tests::preset_dataset(vcl_dataset::synth::Preset::Demo, 3, 1);
    let cache = tempfile::tempdir().unwrap();
    let scores = |solver: PcaSolver| {
        let run = tempfile::tempdir().unwrap();
        let cfg = FitConfig {
            hemispheres: vec![vcl_dataset::algonauts::Hemisphere::Left],
            rois: vec![
                "V1v".into(),
                "V2v+V2d".into(),
                "early".into(),
                "floc-faces".into(),
            ],
            taps: vec!["features.6".into(), "features.13".into()],
            pca_components: 300,
            pca_solver: solver,
            ..vcl_tests::fit_config(&data)
        };
        encoding::fit(&cfg, run.path(), cache.path(), Device::Cpu).unwrap();
        let eval = encoding::evaluate(run.path(), cache.path(), Device::Cpu).unwrap();
        eval.results
            .iter()
            .map(|r| (r.roi.clone(), r.tap.clone(), r.scores.mean_r))
            .collect::<Vec<_>>()
    };
    let exact = scores(PcaSolver::Svd);
    let fast = scores(PcaSolver::Randomized);
    assert_eq!(exact.len(), 4);
    for ((roi, tap_e, re), (_, tap_f, rf)) in exact.iter().zip(&fast) {
        eprintln!("{roi}: exact {re:.5} ({tap_e}), randomized {rf:.5} ({tap_f})");
        assert_eq!(tap_e, tap_f, "{roi}: the CV chose another tap");
        assert!((re - rf).abs() < 1e-3, "{roi}: {re} vs {rf}");
    }
}
