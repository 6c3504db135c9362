//! A killed-and-resumed run ends bit-identical to an uninterrupted one (CPU, fixed
//! seed), also when its newest checkpoint is damaged; a non-finite loss stops the run
//! and keeps the last good checkpoint.

#[path = "finetune_common.rs"]
mod common;

use std::path::Path;

use vcl_trainer::features::backbones::{Backbone, Device};
use vcl_trainer::model::finetune::{
    self, checkpoint, finetune_with, FinetuneError, Hooks, Objective, RunOptions,
};

fn opts<'a>(run: &'a Path, cache: &'a Path, resume: bool, hooks: Hooks) -> RunOptions<'a> {
    RunOptions {
        run,
        resume,
        cache_dir: cache,
        device: Device::Cpu,
        hooks,
    }
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = common::small_config(Objective::Cl, &["subj01"], 3);

    let whole = tempfile::tempdir().unwrap();
    let a = finetune::finetune(&cfg, whole.path(), false, cache.path(), Device::Cpu).unwrap();
    assert!(a.completed && a.epochs_completed == 3);
    assert_eq!(a.history.len(), 3);

    // "Killed" after epoch 2; then the newest checkpoint is damaged, so the resume
    // must fall back to epoch 1 and redo epochs 2 and 3.
    let split = tempfile::tempdir().unwrap();
    let hooks = Hooks {
        stop_after_epoch: Some(2),
        ..Hooks::default()
    };
    let b1 = finetune_with(&cfg, &opts(split.path(), cache.path(), false, hooks)).unwrap();
    assert!(!b1.completed && b1.backbone.is_none() && b1.epochs_completed == 2);
    assert!(!split.path().join("backbone.safetensors").exists());
    let ckpts = checkpoint::list(split.path()).unwrap();
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2, 1]);
    std::fs::write(&ckpts[0].1, b"truncated by a crash").unwrap();

    // Without --resume the run directory is not overwritten.
    let refused = finetune::finetune(&cfg, split.path(), false, cache.path(), Device::Cpu)
        .expect_err("a run with checkpoints must not restart silently");
    assert!(
        matches!(refused, FinetuneError::Resume { .. }) && refused.to_string().contains("--resume"),
        "{refused}"
    );

    let b2 = finetune::finetune(&cfg, split.path(), true, cache.path(), Device::Cpu).unwrap();
    assert_eq!(b2.resumed_from_epoch, Some(1));
    assert!(b2.completed);
    assert_eq!(b2.backbone_hash, a.backbone_hash, "resumed weights differ");
    let fa = std::fs::read(whole.path().join("backbone.safetensors")).unwrap();
    let fb = std::fs::read(split.path().join("backbone.safetensors")).unwrap();
    assert!(fa == fb, "backbone files differ");
    for (ra, rb) in a.history.iter().zip(&b2.history) {
        assert_eq!(
            ra.train_loss.to_bits(),
            rb.train_loss.to_bits(),
            "epoch {}",
            ra.epoch
        );
        assert_eq!(ra.val_loss.map(f64::to_bits), rb.val_loss.map(f64::to_bits));
    }
    // The tuned backbone loads as torchvision weights and is not the initial one.
    let tuned = Backbone::load(
        cfg.arch,
        &whole.path().join("backbone.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(tuned.weights_hash(), a.backbone_hash);
    let initial = Backbone::load(cfg.arch, &cfg.weights(), Device::Cpu).unwrap();
    assert_ne!(initial.weights_hash(), a.backbone_hash);
    // Only the newest checkpoints are kept.
    assert!(checkpoint::list(whole.path()).unwrap().len() <= 2);
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let cfg = common::small_config(Objective::Cl, &["subj01"], 3);
    let hooks = Hooks {
        nan_loss_at: Some((2, 3)),
        ..Hooks::default()
    };
    let err = finetune_with(&cfg, &opts(run.path(), cache.path(), false, hooks))
        .expect_err("a NaN loss must stop the run");
    let msg = err.to_string();
    match &err {
        FinetuneError::NonFinite {
            epoch,
            batch,
            last_good,
            ..
        } => {
            assert_eq!((*epoch, *batch), (2, Some(3)), "{msg}");
            let good = last_good.as_ref().expect("epoch 1 was checkpointed");
            assert!(
                good.ends_with("checkpoints/epoch-0001.safetensors"),
                "{msg}"
            );
            let l = checkpoint::read(good).unwrap();
            assert_eq!(l.meta.epoch, 1);
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(
        msg.contains("NaN") && msg.contains("epoch 2") && msg.contains("batch 3"),
        "{msg}"
    );
    let ckpts = checkpoint::list(run.path()).unwrap();
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1]);
    assert!(!run.path().join("backbone.safetensors").exists());
    // The history on disk ends at the last good epoch.
    let csv = std::fs::read_to_string(run.path().join("history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
}
