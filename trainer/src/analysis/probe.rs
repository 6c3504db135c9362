//! `vcl probe`: how much object recognition a backbone keeps after tuning (METHOD.md:
//! early-ROI CL models lose ImageNet probe accuracy). A multinomial logistic regression
//! (L2, C = 1 as scikit-learn's default) on a tap's features, global-average-pooled for
//! conv taps and standardized with each training fold's statistics, scored by
//! stratified K-fold cross-validation, on labeled images available offline:
//! - `faces`: scikit-image's lfw_subset, 100 faces and 100 non-faces (25 px, grey);
//! - `photo-source`: crops of set-up's photos, labelled by the photo they came from.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::backbones::NamedBackbone;
use crate::features::backbones::{Arch, Backbone};
use crate::model::encoding::error::EncodingError;
use crate::model::finetune::{image_features, ImageInput};
use crate::Result;
use crate::{features::images, report::plots};

/// Labeled images, float32 [N, 3, S, S] in [0, 1] on the CPU.
pub struct ProbeSet {
    pub name: String,
    pub images: Tensor,
    pub labels: Vec<i64>,
    pub classes: usize,
}

/// The probe's default tap: the penultimate layer, as the paper's classifier.5.
pub fn default_tap(arch: Arch) -> &'static str {
    match arch {
        Arch::AlexNet => "classifier.5",
        Arch::MobileNetV2 | Arch::ResNet18 | Arch::ResNet50 => "avgpool",
    }
}

/// scikit-image's lfw_subset.npy (float [200, 25, 25] in [0, 1]; faces first), as RGB
/// at `size` px.
pub fn faces(path: &Path, size: u32) -> Result<ProbeSet> {
    let a: ndarray::Array3<f64> = ndarray_npy::read_npy(path).map_err(|e| {
        EncodingError::file(
            path,
            format!("not lfw_subset.npy (float64 [200, 25, 25]): {e}"),
        )
    })?;
    let (n, h, w) = a.dim();
    if n < 4 || n % 2 != 0 {
        return Err(EncodingError::file(
            path,
            format!("{n} images; expected faces then as many non-faces"),
        )
        .into());
    }
    let flat: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    let grey = Tensor::from_slice(&flat).view([n as i64, 1, h as i64, w as i64]);
    let s = size as i64;
    let images = grey
        .upsample_bilinear2d([s, s], false, None, None)
        .clamp(0.0, 1.0)
        .expand([n as i64, 3, s, s], false)
        .contiguous();
    let labels = (0..n).map(|i| i64::from(i >= n / 2)).collect();
    Ok(ProbeSet {
        name: "faces".into(),
        images,
        labels,
        classes: 2,
    })
}

/// `per_photo` random square crops (a third to two thirds of the shorter side, random
/// place, seeded) of every photo in `dir`, labelled by photo.
pub fn photo_sources(dir: &Path, per_photo: usize, size: u32, seed: u64) -> Result<ProbeSet> {
    let photos = vcl_dataset::synth::stimuli::PhotoSet::load(dir)
        .map_err(|e| EncodingError::file(dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut buf = Vec::new();
    let mut labels = Vec::new();
    for (class, photo) in photos.photos.iter().enumerate() {
        let (w, h) = photo.dimensions();
        let short = w.min(h);
        for _ in 0..per_photo {
            let side = rng
                .random_range(short / 3..=(2 * short / 3).max(short / 3 + 1))
                .min(short);
            let x = rng.random_range(0..=w - side);
            let y = rng.random_range(0..=h - side);
            let crop = image::imageops::crop_imm(photo, x, y, side, side).to_image();
            buf.extend(images::to_chw(&crop, size));
            labels.push(class as i64);
        }
    }
    let n = labels.len() as i64;
    let s = size as i64;
    let images = Tensor::from_slice(&buf)
        .view([n, 3, s, s])
        .to_kind(Kind::Float)
        / 255.0;
    Ok(ProbeSet {
        name: "photo-source".into(),
        images,
        labels,
        classes: photos.photos.len(),
    })
}

/// Features [N, F] of unit-range images, in batches, without a graph: what the
/// fine-tuning heads read (`finetune::image_features`: `tap` averaged over space, or
/// the logits when `tap` is None), on the CPU.
pub fn features(
    backbone: &Backbone,
    tap: Option<&str>,
    x_unit: &Tensor,
    batch: i64,
) -> Result<Tensor> {
    let device = backbone.device();
    let n = x_unit.size()[0];
    let mut parts = Vec::new();
    for start in (0..n).step_by(batch.max(1) as usize) {
        let len = batch.min(n - start);
        let x = images::normalize(&x_unit.narrow(0, start, len).to_device(device));
        let f = tch::no_grad(|| image_features(backbone, &x, ImageInput::mean(tap), false))
            .map_err(|e| EncodingError::Invalid(e.to_string()))?;
        parts.push(f.to_kind(Kind::Float).to_device(Device::Cpu));
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Steps of the probe's optimizer at most: on standardized features of a few hundred
/// images it converges in one to a few hundred.
const MAX_STEPS: usize = 600;

/// Multinomial logistic regression: mean cross-entropy + ||W||^2 / (2 C n), fitted
/// by full-batch Adam to convergence on standardized x [n, F]; returns class scores of
/// `x_test`.
pub fn logistic_scores(x: &Tensor, y: &Tensor, x_test: &Tensor, classes: i64, c: f64) -> Tensor {
    let n = x.size()[0] as f64;
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().zeros("w", &[x.size()[1], classes]);
    let b = vs.root().zeros("b", &[classes]);
    let mut opt = nn::Adam::default()
        .build(&vs, 0.05)
        .expect("Adam on a fresh VarStore");
    let mut last = f64::INFINITY;
    for step in 0..MAX_STEPS {
        let logits = x.matmul(&w) + &b;
        let loss = logits.cross_entropy_for_logits(y) + w.square().sum(Kind::Float) / (2.0 * c * n);
        opt.backward_step(&loss);
        // Converged: the objective moved by less than 1e-5 relative over 25 steps
        // (the predicted classes stop changing long before).
        if step % 25 == 24 {
            let v = loss.double_value(&[]);
            if (last - v).abs() <= 1e-5 * v.abs().max(1e-12) {
                break;
            }
            last = v;
        }
    }
    tch::no_grad(|| x_test.matmul(&w) + &b)
}

/// Stratified K-fold accuracy of the probe on features x [N, F] (standardized with
/// each training fold's mean and std).
pub fn cv_accuracy(x: &Tensor, labels: &[i64], classes: usize, folds: usize, seed: u64) -> f64 {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold_of = vec![0usize; labels.len()];
    for members in &mut by_class {
        rand::seq::SliceRandom::shuffle(members.as_mut_slice(), &mut rng);
        for (k, &i) in members.iter().enumerate() {
            fold_of[i] = k % folds;
        }
    }
    let x = x.to_kind(Kind::Float);
    let (mut correct, mut total) = (0i64, 0i64);
    for f in 0..folds {
        let train: Vec<i64> = (0..labels.len())
            .filter(|&i| fold_of[i] != f)
            .map(|i| i as i64)
            .collect();
        let test: Vec<i64> = (0..labels.len())
            .filter(|&i| fold_of[i] == f)
            .map(|i| i as i64)
            .collect();
        if train.is_empty() || test.is_empty() {
            continue;
        }
        let (tr, te) = (Tensor::from_slice(&train), Tensor::from_slice(&test));
        let xtr = x.index_select(0, &tr);
        let mean = xtr.mean_dim(0, true, Kind::Float);
        let std = xtr.std_dim(0, false, true).clamp_min(1e-6);
        let z = |t: &Tensor| (t - &mean) / &std;
        let y_all = Tensor::from_slice(labels);
        let scores = logistic_scores(
            &z(&xtr),
            &y_all.index_select(0, &tr),
            &z(&x.index_select(0, &te)),
            classes as i64,
            1.0,
        );
        let hit = scores
            .argmax(1, false)
            .eq_tensor(&y_all.index_select(0, &te));
        correct += hit.sum(Kind::Int64).int64_value(&[]);
        total += test.len() as i64;
    }
    correct as f64 / total.max(1) as f64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    pub model: String,
    pub group: String,
    pub method: String,
    pub dataset: String,
    pub tap: String,
    pub images: usize,
    pub classes: usize,
    pub folds: usize,
    pub accuracy: f64,
    pub chance: f64,
}

/// What `vcl probe` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeConfig {
    /// `vcl finetune` run directories (repeatable); the untuned backbone is always in.
    #[arg(long = "run")]
    pub runs: Vec<PathBuf>,
    /// Tap the probe reads (default: the penultimate layer, avgpool / classifier.5).
    #[arg(long)]
    pub tap: Option<String>,
    /// Input size (default: the first run's, else 128).
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Crops per photo of the photo-source set.
    #[arg(long, default_value_t = 24)]
    pub crops_per_photo: usize,
    /// Folds of the stratified cross-validation.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Output folder: probe.{json,csv,md,png}.
    #[arg(long)]
    pub out: PathBuf,
}

/// Probes every backbone on every set with `cfg`'s tap and folds; writes
/// probe.{json,csv,md,png} into `cfg.out`.
pub fn probe(
    models: &[NamedBackbone],
    sets: &[ProbeSet],
    cfg: &ProbeConfig,
    device: Device,
) -> Result<Vec<ProbeResult>> {
    let (folds, out) = (cfg.folds, cfg.out.as_path());
    let mut results = Vec::new();
    for m in models {
        let backbone = Backbone::load(m.arch, &m.weights, device)?;
        let tap = cfg.tap.as_deref().unwrap_or(default_tap(m.arch));
        backbone.tap_index(tap)?;
        for set in sets {
            let x = features(&backbone, Some(tap), &set.images, 32)?;
            let accuracy = cv_accuracy(&x, &set.labels, set.classes, folds, 0);
            let most = (0..set.classes as i64)
                .map(|c| set.labels.iter().filter(|&&l| l == c).count())
                .max()
                .unwrap_or(0);
            let r = ProbeResult {
                model: m.label.clone(),
                group: m.group.clone(),
                method: m.method.clone(),
                dataset: set.name.clone(),
                tap: tap.to_string(),
                images: set.labels.len(),
                classes: set.classes,
                folds,
                accuracy,
                chance: most as f64 / set.labels.len().max(1) as f64,
            };
            tracing::info!(model = %r.model, dataset = %r.dataset, accuracy = format!("{:.3}", r.accuracy), "probe");
            results.push(r);
        }
    }
    write(out, &results)?;
    Ok(results)
}

fn write(out: &Path, results: &[ProbeResult]) -> Result<()> {
    crate::model::encoding::store::write_json(&out.join("probe.json"), &results)?;
    let mut csv =
        String::from("model,group,method,dataset,tap,images,classes,folds,accuracy,chance\n");
    let mut md = String::from("Logistic-regression probe (stratified CV accuracy) on a backbone tap: how much recognition each backbone keeps.\n\n| model | group | dataset | tap | images | classes | accuracy | chance |\n|---|---|---|---|---:|---:|---:|---:|\n");
    for r in results {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{:.4},{:.4}",
            r.model,
            r.group,
            r.method,
            r.dataset,
            r.tap,
            r.images,
            r.classes,
            r.folds,
            r.accuracy,
            r.chance
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} |",
            r.model, r.group, r.dataset, r.tap, r.images, r.classes, r.accuracy, r.chance
        );
    }
    let p = out.join("probe.csv");
    std::fs::write(&p, csv).map_err(|e| EncodingError::file(&p, e))?;
    let p = out.join("probe.md");
    std::fs::write(&p, md).map_err(|e| EncodingError::file(&p, e))?;
    let mut models: Vec<String> = Vec::new();
    let mut sets: Vec<String> = Vec::new();
    for r in results {
        if !models.contains(&r.model) {
            models.push(r.model.clone());
        }
        if !sets.contains(&r.dataset) {
            sets.push(r.dataset.clone());
        }
    }
    let series: Vec<(String, Vec<f64>)> = sets
        .iter()
        .map(|s| {
            let v = models
                .iter()
                .map(|m| {
                    results
                        .iter()
                        .find(|r| &r.model == m && &r.dataset == s)
                        .map_or(f64::NAN, |r| r.accuracy)
                })
                .collect();
            (s.clone(), v)
        })
        .collect();
    plots::grouped_bars(
        &out.join("probe.png"),
        "Probe accuracy (CV)",
        "accuracy",
        &models,
        &series,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_classes_score_near_one_and_noise_near_chance() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 120;
        let labels: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
        let mut sep = Vec::new();
        let mut noise = Vec::new();
        for &l in &labels {
            for d in 0..8 {
                let e: f32 = rng.random_range(-1.0..1.0);
                sep.push(if d == l as usize { 6.0 } else { 0.0 } + e);
                noise.push(rng.random_range(-1.0..1.0));
            }
        }
        let sep = Tensor::from_slice(&sep).view([n as i64, 8]);
        let noise = Tensor::from_slice(&noise).view([n as i64, 8]);
        let a = cv_accuracy(&sep, &labels, 3, 5, 0);
        assert!(a > 0.97, "{a}");
        let c = cv_accuracy(&noise, &labels, 3, 5, 0);
        assert!(c < 0.6, "{c}");
    }
}
