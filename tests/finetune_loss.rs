//! The contrastive loss on batches computed by hand, and gradients reaching the
//! backbone's first convolution.

use tch::{Device, Kind, Tensor};
use vcl_dataset::algonauts::Hemisphere;
use vcl_trainer::features::backbones::{Arch, Backbone, IMAGENET_CLASSES};
use vcl_trainer::model::finetune::{
    info_nce, mi_lower_bound, Adam, AdamConfig, ClDims, ContrastiveHeads, FinetuneConfig, Objective,
};

fn t(rows: &[[f32; 2]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, 2])
}

/// z_fmri = e1, e2; z_img = (2, 0), (1, 1) (lengths differ on purpose: cosines ignore them).
/// S[a, b] = cos(z_fmri[a], z_img[b]) = [[1, 1/sqrt2], [0, 1/sqrt2]], tau = 0.5.
#[test]
fn info_nce_matches_the_hand_computed_values() {
    let z_fmri = t(&[[1.0, 0.0], [0.0, 1.0]]);
    let z_img = t(&[[2.0, 0.0], [1.0, 1.0]]);
    let tau = Tensor::from(0.5f32);
    let r2 = 2f64.sqrt(); // S/tau: column 0 = (2, 0), column 1 = (sqrt2, sqrt2)

    // Image anchors: image 0 against responses (2 | 0): -log(e^2 / (e^2 + e^0));
    // image 1 against (sqrt2 | sqrt2): -log(1/2).
    let image0 = (1.0 + (-2.0f64).exp()).ln();
    let image1 = 2f64.ln();
    let one_way = (image0 + image1) / 2.0;
    let got = info_nce(&z_fmri, &z_img, &tau, false).double_value(&[]);
    assert!((got - one_way).abs() < 1e-6, "one-way {got} vs {one_way}");

    // Response anchors: response 0 against images (2 | sqrt2), response 1 against
    // (0 | sqrt2), positives on the diagonal.
    let fmri0 = (1.0 + (r2 - 2.0).exp()).ln();
    let fmri1 = (1.0 + (-r2).exp()).ln();
    let symmetric = (one_way + (fmri0 + fmri1) / 2.0) / 2.0;
    let got = info_nce(&z_fmri, &z_img, &tau, true).double_value(&[]);
    assert!(
        (got - symmetric).abs() < 1e-6,
        "symmetric {got} vs {symmetric}"
    );

    // The MI bound is log K minus the one-way loss over the same K pairs.
    let mi = mi_lower_bound(&z_fmri, &z_img, 0.5);
    assert!((mi - (2f64.ln() - one_way)).abs() < 1e-6, "MI {mi}");
}

/// Three pairs: a perfectly aligned batch at low temperature reaches the bound log K.
#[test]
fn aligned_pairs_approach_log_k() {
    let z = t(&[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]);
    let mi = mi_lower_bound(&z, &z, 0.01);
    assert!((mi - 3f64.ln()).abs() < 1e-6, "{mi}");
    let loss = info_nce(&z, &z, &Tensor::from(0.01f32), false).double_value(&[]);
    assert!(loss < 1e-6, "{loss}");
}

#[test]
fn one_step_changes_the_first_convolution() {
    tch::manual_seed(0);
    let backbone = Backbone::pretrained(Arch::MobileNetV2, Device::Cpu)
        .or_else(|_| Ok::<_, ()>(Backbone::random(Arch::MobileNetV2, Device::Cpu, 0)))
        .unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let dims = ClDims::paper(&[20], 0.8, 0.2, 0.25).unwrap();
    assert_eq!((dims.h, dims.z), (16, 4));
    let heads = ContrastiveHeads::new(
        &vs.root(),
        &dims,
        vcl_trainer::model::finetune::ImageShape::vector(IMAGENET_CLASSES),
        &["subj01".to_string()],
        // The paper's loss (tau 0.3, image-anchored, fixed temperature), seed 0.
        &FinetuneConfig::new(
            Objective::Cl,
            "unused".into(),
            vec!["1".into()],
            Hemisphere::Left,
            "V1v".into(),
        ),
    );
    let mut params: Vec<(String, Tensor)> = backbone
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(k, t)| (format!("backbone.{k}"), t))
        .collect();
    params.extend(
        vs.variables()
            .into_iter()
            .map(|(k, t)| (format!("heads.{k}"), t)),
    );
    let mut adam = Adam::new(
        AdamConfig {
            lr: 1e-4,
            ..AdamConfig::default()
        },
        params,
    );
    let conv = backbone
        .var_store()
        .variables()
        .remove("features.0.0.weight")
        .expect("torchvision name");
    let before = conv.detach().copy();

    let x = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([4, 20], (Kind::Float, Device::Cpu));
    adam.zero_grad();
    let loss = heads.loss(&backbone.logits(&x, true), 0, &y, true);
    assert!(loss.double_value(&[]).is_finite());
    loss.backward();
    let grad = conv.grad();
    assert!(grad.defined(), "no gradient reached features.0.0.weight");
    let g = grad.abs().sum(Kind::Double).double_value(&[]);
    assert!(g > 0.0, "zero gradient at features.0.0.weight");
    adam.step();
    let moved = (&conv - &before).abs().max().double_value(&[]);
    assert!(moved > 0.0, "features.0.0.weight did not change");
    // Adam's first step moves each weight by about lr.
    assert!(moved < 2e-4, "step too large: {moved}");
}
