//! Cross-subject transfer and method comparison on the tiny in-silico brain: subject
//! 1's CL-tuned backbone as a frozen extractor for subjects 1 and 2, scored against
//! their untuned encoders; then `compare` on the untuned and tuned runs.

use vcl_dataset::algonauts::Hemisphere;
use vcl_trainer::features::backbones::Device;
use vcl_trainer::model::encoding::{self, FitConfig, Method};
use vcl_trainer::model::finetune::{self, FinetuneConfig, Objective};
use vcl_trainer::{analysis::compare, analysis::transfer};

#[test]
fn transfer_matrix_and_comparison_on_tiny() {
    let dir = tempfile::tempdir().unwrap();
    // Dropped at the end of this function: the data is only read while fitting.
    let (_data_dir, data) = vcl_tests::tiny_dataset(5, 2);
    let cache = dir.path().join("cache");

    let mut ft = FinetuneConfig::new(
        Objective::Cl,
        data.clone(),
        vec!["subj01".into()],
        Hemisphere::Left,
        "V1".into(),
    );
    ft.input_size = 64;
    ft.epochs = Some(1);
    ft.batch_size = 16;
    let tuned =
        finetune::finetune(&ft, &dir.path().join("cl"), false, &cache, Device::Cpu).unwrap();
    let tuned_weights = tuned.backbone.expect("a finished run writes its backbone");

    let base = FitConfig {
        subjects: vec!["subj01".into(), "subj02".into()],
        hemispheres: vec![Hemisphere::Left],
        rois: vec!["V1".into()],
        taps: vec!["features.6".into(), "avgpool".into()],
        ..vcl_tests::fit_config(&data)
    };
    let untuned = dir.path().join("untuned");
    encoding::fit(&base, &untuned, &cache, Device::Cpu).unwrap();
    encoding::evaluate(&untuned, &cache, Device::Cpu).unwrap();

    let out = dir.path().join("transfer");
    let cfg = transfer::TransferConfig {
        untuned: untuned.clone(),
        sources: vec![transfer::Source {
            label: "subj01".into(),
            weights: tuned_weights.clone(),
        }],
        hemisphere: Hemisphere::Left,
        roi: "V1".into(),
        subjects: Vec::new(),
        out: out.clone(),
    };
    let m = transfer::transfer(&cfg, &cache, Device::Cpu).unwrap();
    assert_eq!(m.targets, vec!["subj01", "subj02"]);
    assert_eq!(m.frac_beating_untuned.len(), 1);
    for f in &m.frac_beating_untuned[0] {
        assert!((0.0..=1.0).contains(f), "{f}");
    }
    for f in ["transfer.csv", "transfer.json", "transfer.png"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(out.join("transfer.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // The tuned encoders of subj01, against the untuned ones.
    let cl_fit = dir.path().join("cl-fit");
    let cfg = FitConfig {
        subjects: vec!["subj01".into()],
        weights: Some(tuned_weights),
        method: Method::Cl,
        ..base.clone()
    };
    encoding::fit(&cfg, &cl_fit, &cache, Device::Cpu).unwrap();
    encoding::evaluate(&cl_fit, &cache, Device::Cpu).unwrap();
    let cmp_dir = dir.path().join("cmp");
    let cmp = compare::compare(&[untuned.clone(), cl_fit], None, &cmp_dir).unwrap();
    assert_eq!(cmp.reference, "cl");
    let v1 = cmp.rois.iter().find(|r| r.roi == "V1").unwrap();
    assert_eq!(
        v1.subjects,
        vec!["subj01"],
        "only subjects both methods cover"
    );
    let frac = v1.versus[0].frac_reference_better;
    assert!((0.0..=1.0).contains(&frac));
    assert!(cmp_dir.join("comparison.md").exists() && cmp_dir.join("comparison.png").exists());

    // One method's subjects may come in separate runs (a CL backbone is tuned per
    // subject): subj02's tuned fit joins subj01's, and the paired test has two subjects.
    let cl_fit2 = dir.path().join("cl-fit-subj02");
    let cfg2 = FitConfig {
        subjects: vec!["subj02".into()],
        ..cfg.clone()
    };
    encoding::fit(&cfg2, &cl_fit2, &cache, Device::Cpu).unwrap();
    encoding::evaluate(&cl_fit2, &cache, Device::Cpu).unwrap();
    let cl_fit = dir.path().join("cl-fit");
    let cmp = compare::compare(&[untuned.clone(), cl_fit, cl_fit2], None, &cmp_dir).unwrap();
    let v1 = cmp.rois.iter().find(|r| r.roi == "V1").unwrap();
    assert_eq!(v1.subjects, vec!["subj01", "subj02"]);
    assert!(v1.versus[0].paired_p.is_some(), "{:?}", v1.versus);

    // The same subject twice under one label cannot be told apart.
    let e = compare::compare(&[untuned.clone(), untuned], None, &cmp_dir)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("two runs labelled 'untuned' both evaluate subj01"),
        "{e}"
    );
}
