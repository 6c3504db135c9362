//! The pooled-subject contrastive model and the regression baseline run end to end on
//! the tiny in-silico brain and leave a backbone `vcl fit --weights` can load.

#[path = "finetune_common.rs"]
mod common;

use std::collections::HashMap;

use vcl_trainer::features::backbones::{Backbone, Device};
use vcl_trainer::model::finetune::{self, Objective};

#[test]
fn pooled_contrastive_model_trains_on_two_subjects() {
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(Objective::Cl, &["1", "subj02"], 1);
    cfg.roi = "early".into();
    // Batches of 8 through the backbone 3 images at a time (the loss still sees 8).
    cfg.micro_batch = Some(3);
    let s = finetune::finetune(&cfg, run.path(), false, cache.path(), Device::Cpu).unwrap();
    assert!(s.completed);
    assert_eq!(s.subjects.len(), 2);
    let v: Vec<usize> = s.subjects.iter().map(|x| x.voxels).collect();
    let dims = s.dims.clone().expect("CL has dims");
    // METHOD.md: h = mean V over subjects, z = int(0.25 h).
    assert_eq!(dims.h as usize, (v[0] + v[1]) / 2);
    assert_eq!(dims.z, (dims.h as f64 * 0.25) as i64);
    for x in &s.subjects {
        // 48 images: 7 held out (15%), 4 of the other 41 validate.
        assert_eq!((x.train_images, x.val_images, x.heldout_images), (37, 4, 7));
    }
    let rec = &s.history[0];
    assert!(rec.train_loss.is_finite() && rec.val_loss.is_some_and(f64::is_finite));
    let mi = rec.val_mi_bound.expect("CL reports the MI bound");
    assert!(mi <= 4f64.ln() + 1e-9, "MI bound {mi} above log K");
    for f in [
        "config.json",
        "provenance.json",
        "history.csv",
        "loss.png",
        "mi.png",
        "summary.json",
        "backbone.safetensors",
        "checkpoints/epoch-0001.safetensors",
    ] {
        assert!(run.path().join(f).exists(), "{f} missing");
    }
    let prov: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.path().join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["dataset_fingerprint"].as_str().map(str::len), Some(64));
    assert!(prov["git_commit"].is_string());
    let tuned = Backbone::load(
        cfg.arch,
        &run.path().join("backbone.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(tuned.weights_hash(), s.backbone_hash);
    // Both subjects' fMRI maps trained in one model.
    let l =
        finetune::checkpoint::read(&run.path().join("checkpoints/epoch-0001.safetensors")).unwrap();
    for subj in ["subj01", "subj02"] {
        assert!(l
            .tensors
            .contains_key(&format!("heads.fmri_map.{subj}.weight")));
    }
}

#[test]
fn regression_baseline_trains_and_respects_frozen_layers() {
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(Objective::Regression, &["subj01"], 2);
    cfg.freeze = vec!["features.0..features.3".into()];
    let s = finetune::finetune(&cfg, run.path(), false, cache.path(), Device::Cpu).unwrap();
    assert!(s.completed && s.history.len() == 2 && s.dims.is_none());
    for r in &s.history {
        assert!(r.train_loss.is_finite() && r.val_mi_bound.is_none());
    }
    assert!(s.frozen_variables > 0);
    let csv = std::fs::read_to_string(run.path().join("history.csv")).unwrap();
    assert!(csv.starts_with("epoch,train_loss,val_loss,val_mi_bound,images_per_s"));

    let initial = Backbone::load(cfg.arch, &cfg.weights(), Device::Cpu).unwrap();
    let tuned = Backbone::load(
        cfg.arch,
        &run.path().join("backbone.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let before: HashMap<String, _> = initial.var_store().variables();
    let after: HashMap<String, _> = tuned.var_store().variables();
    let same = |k: &str| before[k].equal(&after[k]);
    assert!(same("features.0.0.weight"), "a frozen conv changed");
    assert!(same("features.3.conv.0.0.weight"), "a frozen conv changed");
    assert!(
        !same("features.4.conv.0.0.weight"),
        "a trained conv did not change"
    );
    assert!(!same("classifier.1.weight"));

    // Everything frozen, in micro-batches: only the heads learn (the untuned
    // backbone's MI bound), and the backbone, batch-norm statistics included, is the
    // one loaded.
    let mut heads_only = common::small_config(Objective::Cl, &["subj01"], 1);
    heads_only.freeze = vec!["features".into(), "classifier".into()];
    heads_only.micro_batch = Some(6);
    let frozen_run = tempfile::tempdir().unwrap();
    let s = finetune::finetune(
        &heads_only,
        frozen_run.path(),
        false,
        cache.path(),
        Device::Cpu,
    )
    .unwrap();
    assert!(s.completed && s.history[0].train_loss.is_finite());
    let kept = Backbone::load(
        cfg.arch,
        &frozen_run.path().join("backbone.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let kept: HashMap<String, _> = kept.var_store().variables();
    for (k, v) in &before {
        assert!(v.equal(&kept[k]), "{k} changed with every layer frozen");
    }

    // A typo in --freeze is an error, not a silently unfrozen network.
    let mut typo = cfg.clone();
    typo.freeze = vec!["feature.0".into()];
    let other = tempfile::tempdir().unwrap();
    let e = finetune::finetune(&typo, other.path(), false, cache.path(), Device::Cpu)
        .expect_err("unknown freeze prefix")
        .to_string();
    assert!(
        e.contains("feature.0") && e.contains("matches no variable"),
        "{e}"
    );
}

#[test]
fn contrastive_heads_on_a_tap_tune_only_the_layers_before_it() {
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(Objective::Cl, &["subj01"], 2);
    cfg.batch_size = 16;
    cfg.image_tap = Some("features.6".into());
    let s = finetune::finetune(&cfg, run.path(), false, cache.path(), Device::Cpu).unwrap();
    assert!(s.completed && s.history.len() == 2);
    assert_eq!(s.image, "features.6");
    for r in &s.history {
        assert!(r.train_loss.is_finite() && r.val_mi_bound.is_some_and(f64::is_finite));
    }
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(written["image_tap"], "features.6");
    // features.6 of MobileNetV2 has 32 channels: the image map reads their spatial means.
    let l =
        finetune::checkpoint::read(&run.path().join("checkpoints/epoch-0002.safetensors")).unwrap();
    let h = s.dims.as_ref().expect("CL has dims").h;
    assert_eq!(l.tensors["heads.image_map.weight"].size(), vec![h, 32]);

    let initial = Backbone::load(cfg.arch, &cfg.weights(), Device::Cpu).unwrap();
    let tuned = Backbone::load(
        cfg.arch,
        &run.path().join("backbone.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let before: HashMap<String, _> = initial.var_store().variables();
    let after: HashMap<String, _> = tuned.var_store().variables();
    let same = |k: &str| before[k].equal(&after[k]);
    assert!(
        !same("features.1.conv.0.0.weight"),
        "a layer before the tap did not train"
    );
    assert!(
        !same("features.6.conv.0.0.weight"),
        "the tap's own layer did not train"
    );
    // Past the tap nothing runs: no gradient, no batch-norm statistics.
    for k in [
        "features.7.conv.0.0.weight",
        "features.18.1.running_mean",
        "classifier.1.weight",
    ] {
        assert!(same(k), "{k}, after the tap, changed");
    }

    // The micro-batched (GradCache) passes read the same tap.
    let mut micro = cfg.clone();
    micro.epochs = Some(1);
    micro.micro_batch = Some(6);
    let other = tempfile::tempdir().unwrap();
    let m = finetune::finetune(&micro, other.path(), false, cache.path(), Device::Cpu).unwrap();
    assert!(m.completed && m.history[0].train_loss.is_finite());

    let mut unknown = cfg.clone();
    unknown.image_tap = Some("features.99".into());
    let third = tempfile::tempdir().unwrap();
    let e = finetune::finetune(&unknown, third.path(), false, cache.path(), Device::Cpu)
        .expect_err("unknown tap")
        .to_string();
    assert!(e.contains("features.99") && e.contains("valid taps"), "{e}");
}

/// `--image-readout spatial`: CL and regression heads read the tap's maps through a
/// learned mask per unit, micro-batched too; the masks move off uniform; the MI
/// analysis rebuilds the same heads; the logits, which have no space, are refused.
#[test]
fn spatial_readout_heads_learn_masks_on_the_tap_maps() {
    use vcl_trainer::model::finetune::ImageReadout;
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(Objective::Cl, &["subj01"], 2);
    cfg.batch_size = 16;
    cfg.micro_batch = Some(8);
    cfg.image_tap = Some("features.6".into());
    cfg.image_readout = ImageReadout::Spatial;
    let s = finetune::finetune(&cfg, run.path(), false, cache.path(), Device::Cpu).unwrap();
    assert!(s.completed && s.history.iter().all(|r| r.train_loss.is_finite()));
    let l =
        finetune::checkpoint::read(&run.path().join("checkpoints/epoch-0002.safetensors")).unwrap();
    let h = s.dims.as_ref().expect("CL has dims").h;
    // features.6 at the suite's 64 px is 32 x 8 x 8: one mask over 64 places per unit.
    let masks = &l.tensors["heads.image_map.masks"];
    assert_eq!(masks.size(), vec![h, 64]);
    assert_eq!(l.tensors["heads.image_map.weight"].size(), vec![h, 32]);
    assert!(
        masks.abs().max().double_value(&[]) > 0.0,
        "the masks never moved"
    );
    let mi = vcl_trainer::analysis::mi(
        &vcl_trainer::analysis::MiConfig {
            runs: vec![run.path().to_path_buf()],
            out: run.path().join("mi"),
        },
        cache.path(),
        Device::Cpu,
    )
    .expect("the MI bound of a spatial-readout run");
    assert!(
        !mi.is_empty() && mi.iter().all(|r| r.bound_nats.is_finite()),
        "{mi:?}"
    );

    let mut regression = cfg.clone();
    regression.method = Objective::Regression;
    regression.epochs = Some(1);
    let other = tempfile::tempdir().unwrap();
    let r =
        finetune::finetune(&regression, other.path(), false, cache.path(), Device::Cpu).unwrap();
    assert!(r.completed && r.history[0].train_loss.is_finite());

    let mut logits = cfg.clone();
    logits.image_tap = None;
    let e = finetune::finetune(&logits, other.path(), false, cache.path(), Device::Cpu)
        .expect_err("no space in the logits")
        .to_string();
    assert!(
        e.contains("image_readout") && e.contains("--image-tap"),
        "{e}"
    );
}

/// `--recipe auto` on 37 training images: batch 32 (two batches an epoch: 32 and 5),
/// 6 optimizer steps are 3 epochs, cosine schedule, and the backbone kept is the best
/// validation epoch's, named in the summary.
#[test]
fn auto_recipe_scales_to_the_data_and_keeps_the_best_epoch() {
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let mut cfg = common::small_config(Objective::Cl, &["1"], 1);
    cfg.recipe = finetune::Recipe::Auto;
    cfg.steps = 6;
    let s = finetune::finetune(&cfg, run.path(), false, cache.path(), Device::Cpu).unwrap();
    assert!(s.completed);
    assert_eq!((s.epochs, s.batch_sizes.clone()), (3, vec![32]));
    let steps = std::fs::read_to_string(run.path().join("steps.csv")).unwrap();
    assert_eq!(steps.lines().count(), 1 + 6, "{steps}");
    let written: finetune::FinetuneConfig =
        serde_json::from_str(&std::fs::read_to_string(run.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            written.batch_size,
            written.epochs,
            written.lr_schedule,
            written.select
        ),
        (
            32,
            Some(3),
            finetune::LrSchedule::Cosine,
            finetune::Selection::Best
        )
    );
    let mi: Vec<f64> = s.history.iter().map(|r| r.val_mi_bound.unwrap()).collect();
    let best = 1 + (0..mi.len()).fold(0, |b, i| if mi[i] > mi[b] { i } else { b });
    assert_eq!(s.selected_epoch, Some(best), "{mi:?}");
    let kept = std::fs::read(run.path().join("backbone.safetensors")).unwrap();
    let best_file = std::fs::read(run.path().join("best-backbone.safetensors")).unwrap();
    assert!(
        kept == best_file,
        "backbone.safetensors is not the best epoch's"
    );
    let loaded = Backbone::load(
        vcl_trainer::features::backbones::Arch::MobileNetV2,
        &run.path().join("backbone.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(loaded.weights_hash(), s.backbone_hash);
}

/// A GPU asked for and absent is an error naming it, before any work; a precision the
/// device cannot run is said, and the run trains in fp32.
#[test]
fn an_absent_gpu_is_refused_and_cpu_autocast_falls_back_to_fp32() {
    let data = common::tiny().to_str().unwrap().to_string();
    let out = vcl_tests::vcl(&[
        "--device",
        "cuda:99",
        "finetune",
        "--data",
        &data,
        "--roi",
        "V1v",
        "--input-size",
        "64",
        "--out",
        "/nonexistent/never-written",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cuda:99") && err.contains("CUDA device"),
        "{err}"
    );
    let bad = vcl_tests::vcl(&["--device", "tpu", "inspect", &data]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("'tpu'"), "{err}");

    let run = tempfile::tempdir().unwrap();
    let out = vcl_tests::vcl(&[
        "--device",
        "cpu",
        "finetune",
        "--data",
        &data,
        "--roi",
        "V1v+V1d",
        "--input-size",
        "64",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--precision",
        "bf16",
        "--out",
        run.path().to_str().unwrap(),
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("autocast needs CUDA: training in fp32"),
        "{log}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["precision"], "bf16");
}
