use super::*;
use tch::Kind;

/// Expected per-image tap shapes for a square input of `s` pixels.
fn expected_shapes(arch: Arch, s: i64) -> Vec<Vec<i64>> {
    match arch {
        Arch::AlexNet => {
            let c1 = (s + 4 - 11) / 4 + 1;
            let p1 = (c1 - 3) / 2 + 1;
            let p2 = (p1 - 3) / 2 + 1;
            let p3 = (p2 - 3) / 2 + 1;
            vec![
                vec![64, p1, p1],
                vec![192, p2, p2],
                vec![384, p2, p2],
                vec![256, p2, p2],
                vec![256, p3, p3],
                vec![4096],
                vec![4096],
                vec![1000],
            ]
        }
        Arch::MobileNetV2 => {
            let sp = |f: i64| s / f;
            vec![
                vec![16, sp(2), sp(2)],
                vec![24, sp(4), sp(4)],
                vec![32, sp(8), sp(8)],
                vec![64, sp(16), sp(16)],
                vec![96, sp(16), sp(16)],
                vec![160, sp(32), sp(32)],
                vec![320, sp(32), sp(32)],
                vec![1280, sp(32), sp(32)],
                vec![1280],
                vec![1000],
            ]
        }
        Arch::ResNet18 | Arch::ResNet50 => {
            let e = if arch == Arch::ResNet50 { 4 } else { 1 };
            vec![
                vec![64 * e, s / 4, s / 4],
                vec![128 * e, s / 8, s / 8],
                vec![256 * e, s / 16, s / 16],
                vec![512 * e, s / 32, s / 32],
                vec![512 * e],
                vec![1000],
            ]
        }
    }
}

#[test]
fn stages_are_named_after_the_taps() {
    for arch in Arch::ALL {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = arch.build(&vs.root());
        assert_eq!(net.tap_names(), arch.taps(), "{arch}");
        assert!(arch.taps().contains(&arch.default_tap()));
        assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
    }
}

#[test]
fn tap_shapes_at_224_and_128_px() {
    for arch in Arch::ALL {
        let backbone = Backbone::random(arch, Device::Cpu, 0);
        for s in [224, 128] {
            let x = Tensor::randn([2, 3, s, s], (Kind::Float, Device::Cpu));
            let outs = tch::no_grad(|| backbone.taps(&x, arch.taps(), false)).unwrap();
            let shapes: Vec<Vec<i64>> = outs.iter().map(|t| t.size()[1..].to_vec()).collect();
            assert_eq!(shapes, expected_shapes(arch, s), "{arch} at {s} px");
            assert!(outs.iter().all(|t| t.size()[0] == 2));
            // The last tap is the classifier's output.
            let logits = tch::no_grad(|| backbone.logits(&x, false));
            let last = outs.last().unwrap();
            assert!(logits.allclose(last, 1e-5, 1e-5, false), "{arch}");
            assert_eq!(
                logits.isfinite().all().int64_value(&[]),
                1,
                "{arch} gives non-finite logits at {s} px"
            );
        }
    }
}

#[test]
fn taps_come_back_in_the_order_asked() {
    let backbone = Backbone::random(Arch::ResNet18, Device::Cpu, 3);
    let x = Tensor::randn([1, 3, 128, 128], (Kind::Float, Device::Cpu));
    let outs =
        tch::no_grad(|| backbone.taps(&x, &["avgpool", "layer1", "avgpool"], false)).unwrap();
    assert_eq!(outs[0].size(), vec![1, 512]);
    assert_eq!(outs[1].size(), vec![1, 64, 32, 32]);
    assert!(outs[0].equal(&outs[2]));
}

#[test]
fn unknown_tap_lists_the_valid_ones() {
    let backbone = Backbone::random(Arch::AlexNet, Device::Cpu, 0);
    let x = Tensor::zeros([1, 3, 128, 128], (Kind::Float, Device::Cpu));
    let err = backbone.taps(&x, &["features.3"], false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackboneError::UnknownTap { .. }));
    assert!(
        msg.contains("features.3") && msg.contains("alexnet"),
        "{msg}"
    );
    for t in Arch::AlexNet.taps() {
        assert!(msg.contains(t), "{msg} lacks {t}");
    }
}

#[test]
fn unknown_arch_lists_the_valid_ones() {
    let err = "vgg16".parse::<Arch>().unwrap_err().to_string();
    assert!(err.contains("vgg16"), "{err}");
    for a in Arch::ALL {
        assert!(err.contains(a.name()), "{err} lacks {a}");
    }
    assert_eq!("ResNet50".parse::<Arch>().unwrap(), Arch::ResNet50);
}

#[test]
fn names_agree_across_clap_serde_and_from_str() {
    for arch in Arch::ALL {
        let json = serde_json::to_string(&arch).unwrap();
        assert_eq!(json, format!("\"{}\"", arch.name()));
        assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), arch);
        let cli = <Arch as clap::ValueEnum>::from_str(arch.name(), false).unwrap();
        assert_eq!(cli, arch);
        assert_eq!(arch.to_string(), arch.name());
    }
}

#[test]
fn mobilenet_weights_into_resnet18_name_missing_and_unexpected_keys() {
    let dir = tempfile::tempdir().unwrap();
    let real = vcl_dataset::paths::weights_dir().join(Arch::MobileNetV2.weights_file());
    let path = if real.is_file() {
        real
    } else {
        let p = dir.path().join("mobilenet_v2.safetensors");
        Backbone::random(Arch::MobileNetV2, Device::Cpu, 0)
            .save(&p)
            .unwrap();
        p
    };
    let err = Backbone::load(Arch::ResNet18, &path, Device::Cpu).unwrap_err();
    let msg = err.to_string();
    match &err {
        BackboneError::ArchMismatch {
            missing,
            unexpected,
            shapes,
            ..
        } => {
            assert!(missing.contains(&"conv1.weight".to_string()));
            assert!(missing.contains(&"fc.weight".to_string()));
            assert!(unexpected.contains(&"features.0.0.weight".to_string()));
            assert!(unexpected.contains(&"classifier.1.weight".to_string()));
            assert!(shapes.is_empty());
            assert!(
                msg.contains(&format!("{} missing keys", missing.len())),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("{} unexpected keys", unexpected.len())),
                "{msg}"
            );
        }
        other => panic!("expected an architecture mismatch, got {other}"),
    }
    assert!(
        msg.contains("resnet18") && msg.contains("bn1.bias"),
        "{msg}"
    );
    assert!(
        msg.contains("classifier.1.bias") && msg.contains("more"),
        "{msg}"
    );
    assert!(msg.contains("mobilenet_v2.safetensors"), "{msg}");
}

#[test]
fn alexnet_weights_into_resnet18_and_wrong_shapes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let alex = dir.path().join("alexnet.safetensors");
    Backbone::random(Arch::AlexNet, Device::Cpu, 0)
        .save(&alex)
        .unwrap();
    let msg = Backbone::load(Arch::ResNet18, &alex, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("architecture mismatch"), "{msg}");
    assert!(
        msg.contains("features.0.weight") && msg.contains("conv1.weight"),
        "{msg}"
    );

    // A ResNet-18 with a 10-way head: same names, one wrong shape.
    let r18 = Backbone::random(Arch::ResNet18, Device::Cpu, 0);
    let mut tensors: Vec<(String, Tensor)> = r18.var_store().variables().into_iter().collect();
    for (k, t) in tensors.iter_mut() {
        if k == "fc.weight" {
            *t = Tensor::zeros([10, 512], (Kind::Float, Device::Cpu));
        } else if k == "fc.bias" {
            *t = Tensor::zeros([10], (Kind::Float, Device::Cpu));
        }
    }
    let ten = dir.path().join("resnet18-10.safetensors");
    Tensor::write_safetensors(&tensors, &ten).unwrap();
    let err = Backbone::load(Arch::ResNet18, &ten, Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("2 shape mismatches")
            && msg.contains("fc.weight: expected [1000, 512], found [10, 512]"),
        "{msg}"
    );
    assert!(
        !msg.contains("missing keys") && !msg.contains("unexpected keys"),
        "{msg}"
    );
}

#[test]
fn missing_and_corrupt_weight_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("nope.safetensors");
    let err = Backbone::load(Arch::AlexNet, &gone, Device::Cpu).unwrap_err();
    assert!(matches!(err, BackboneError::WeightsMissing { .. }));
    assert!(err.to_string().contains("nope.safetensors"));
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not safetensors at all").unwrap();
    let err = Backbone::load(Arch::AlexNet, &bad, Device::Cpu).unwrap_err();
    assert!(
        matches!(err, BackboneError::WeightsUnreadable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad.safetensors"));
}

#[test]
fn save_load_round_trip_keeps_hash_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let a = Backbone::random(Arch::MobileNetV2, Device::Cpu, 11);
    let path = dir.path().join("sub/mnv2.safetensors");
    a.save(&path).unwrap();
    let b = Backbone::load(Arch::MobileNetV2, &path, Device::Cpu).unwrap();
    assert_eq!(a.weights_hash(), b.weights_hash());
    assert_eq!(a.weights_hash().len(), 64);
    let x = Tensor::randn([2, 3, 128, 128], (Kind::Float, Device::Cpu));
    let (la, lb) = tch::no_grad(|| (a.logits(&x, false), b.logits(&x, false)));
    assert!(la.equal(&lb));

    let same = Backbone::random(Arch::MobileNetV2, Device::Cpu, 11);
    let other = Backbone::random(Arch::MobileNetV2, Device::Cpu, 12);
    assert_eq!(a.weights_hash(), same.weights_hash());
    assert_ne!(a.weights_hash(), other.weights_hash());
}

#[test]
fn train_mode_uses_batch_statistics_and_counts_batches() {
    let backbone = Backbone::random(Arch::ResNet18, Device::Cpu, 5);
    let counter = "layer1.0.bn1.num_batches_tracked";
    let count = |b: &Backbone| b.var_store().variables()[counter].int64_value(&[]);
    assert_eq!(count(&backbone), 0);
    let x = Tensor::randn([2, 3, 128, 128], (Kind::Float, Device::Cpu));
    let eval = tch::no_grad(|| backbone.logits(&x, false));
    assert_eq!(count(&backbone), 0);
    let train = backbone.logits(&x, true);
    assert_eq!(count(&backbone), 1);
    assert!(!eval.allclose(&train, 1e-4, 1e-4, false));
    // Gradients reach the first conv: every layer is trainable.
    train.sum(Kind::Float).backward();
    let g = backbone.var_store().variables()["conv1.weight"].grad();
    assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn torchvision_initialization_statistics() {
    let b = Backbone::random(Arch::ResNet18, Device::Cpu, 0);
    let v = b.var_store().variables();
    let std = |k: &str| v[k].std(true).double_value(&[]);
    // kaiming_normal_(fan_out, relu): conv1 is [64, 3, 7, 7], fan_out = 64*49.
    let want = (2.0f64 / (64.0 * 49.0)).sqrt();
    assert!(
        (std("conv1.weight") / want - 1.0).abs() < 0.05,
        "{}",
        std("conv1.weight")
    );
    assert_eq!(v["bn1.weight"].mean(Kind::Float).double_value(&[]), 1.0);
    // Default nn.Linear: U(+-1/sqrt(512)) has std 1/sqrt(3*512).
    let want = 1.0 / (3.0f64 * 512.0).sqrt();
    assert!(
        (std("fc.weight") / want - 1.0).abs() < 0.05,
        "{}",
        std("fc.weight")
    );
    let m = Backbone::random(Arch::MobileNetV2, Device::Cpu, 0);
    let w = &m.var_store().variables()["classifier.1.weight"];
    assert!((w.std(true).double_value(&[]) / 0.01 - 1.0).abs() < 0.05);
}
