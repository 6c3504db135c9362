//! `vcl evaluate`: scores a fit's encoders once on the held-out split and writes the
//! report (JSON, CSV, Markdown, PNG).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::error::{EncodingError, Result};
use super::fit::{self, index_tensor, FitRecord};
use super::metrics::{self, RoiScores};
use super::store::{self, FitConfig, StoredEncoder};
use crate::features::{images, FeatureSpec, GridChoice};
use crate::model::fwrf;
use crate::stages::Stages;
use crate::{model::ridge, report::plots};
use vcl_dataset::algonauts::{split, Dataset, Hemisphere, Subject};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoiResult {
    pub subject: String,
    pub hemisphere: Hemisphere,
    pub roi: String,
    pub method: String,
    pub tap: String,
    pub heldout_images: usize,
    pub scores: RoiScores,
    /// Per-voxel r on the held-out images, relative to the run directory (.npy, f32).
    pub voxel_r_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    pub run: PathBuf,
    pub method: String,
    pub results: Vec<RoiResult>,
    /// Time and peak memory per stage (absent in evaluations written before).
    #[serde(default)]
    pub stages: Stages,
}

/// One hemisphere's held-out responses [n_held, V], noise ceiling and noiseless truth.
struct HeldOut {
    y: Tensor,
    nc: Option<Vec<f32>>,
    truth: Option<Tensor>,
}

fn tensor_to_vec(t: &Tensor) -> Vec<f32> {
    let t = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&t).unwrap_or_default()
}

/// What `vcl evaluate` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct EvaluateConfig {
    /// Run directory written by `vcl fit`.
    pub run: PathBuf,
}

/// Scores every encoder of `run` on its subject's held-out images.
pub fn evaluate(run: &Path, cache_dir: &Path, device: Device) -> Result<Evaluation> {
    let record: FitRecord = store::read_json(&run.join("fit.json"))?;
    let cfg = &record.config;
    let encoders = store::load_encoders(run)?;
    let ds = Dataset::open(&cfg.data_dir)?;
    let backbone = fit::load_backbone(cfg, device)?;
    let hash = backbone.weights_hash();

    let mut by_subject: BTreeMap<String, Vec<&StoredEncoder>> = BTreeMap::new();
    for e in &encoders {
        if e.meta.weights_hash != hash {
            return Err(EncodingError::file(
                &cfg.weights(),
                format!("these weights (hash {hash}) are not the ones encoder {}/{}/{} was fitted with ({})",
                    e.meta.subject, e.meta.hemisphere, e.meta.roi, e.meta.weights_hash),
            ));
        }
        by_subject
            .entry(e.meta.subject.clone())
            .or_default()
            .push(e);
    }

    let mut results: Vec<RoiResult> = Vec::new();
    let mut stages = Stages::default();
    // (ROI, per-voxel (sqrt NC, r)) for the noise-ceiling plot.
    let mut scatter: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (subject_name, encs) in by_subject {
        let subject = ds.subject(&subject_name)?;
        let sp = split::holdout(
            subject.train_images.len(),
            cfg.heldout_fraction,
            cfg.split_seed,
        );
        let n_held = sp.heldout.len();
        // Each encoder's tap pooled exactly as its fit resolved it.
        let spec_of = |m: &store::EncoderMeta| FeatureSpec::new(&m.tap, GridChoice::of(m.pooling));
        let mut specs: Vec<FeatureSpec> = encs.iter().map(|e| spec_of(&e.meta)).collect();
        specs.sort();
        specs.dedup();
        let request = fit::FeatureRequest {
            subject: &subject,
            rows: &sp.heldout,
            specs: &specs,
        };
        let feats = fit::subject_features(cfg, &backbone, &request, cache_dir, &mut stages)?;
        stages.time("evaluation", || -> Result<()> {
            // What each encoder's readout reads: PCA scores (keyed by the PCA file,
            // shared by the ROIs of a tap) or, for fwRF, the pooled maps (keyed by tap).
            let mut z_held: BTreeMap<PathBuf, Tensor> = BTreeMap::new();
            let mut maps_held: BTreeMap<FeatureSpec, Tensor> = BTreeMap::new();
            for (spec, tf) in specs.iter().zip(&feats) {
                if encs
                    .iter()
                    .any(|e| spec_of(&e.meta) == *spec && e.meta.fields.is_some())
                {
                    maps_held.insert(spec.clone(), tf.tensor()?.to_device(device));
                }
                for enc in encs.iter().filter(|e| spec_of(&e.meta) == *spec) {
                    if enc.meta.fields.is_some() || z_held.contains_key(&enc.meta.pca_file) {
                        continue;
                    }
                    let pca = store::load_pca(run, &enc.meta.pca_file)?;
                    let x = tf.tensor()?.to_device(device);
                    if x.size()[1] != pca.mean.size()[0] {
                        return Err(EncodingError::file(
                            &run.join(&enc.meta.pca_file),
                            format!(
                                "PCA expects {} features but tap {} gives {}",
                                pca.mean.size()[0],
                                tf.info.tap,
                                x.size()[1]
                            ),
                        ));
                    }
                    let z =
                        (x - pca.mean.to_device(device)).matmul(&pca.components.to_device(device));
                    z_held.insert(enc.meta.pca_file.clone(), z);
                }
            }
            let held_idx = index_tensor(&sp.heldout, Device::Cpu);
            let mut cache: BTreeMap<Hemisphere, HeldOut> = BTreeMap::new();
            for enc in encs {
                let m = &enc.meta;
                let held = match cache.entry(m.hemisphere) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let y = ridge::matrix_to_tensor(subject.fmri(m.hemisphere)?.view())
                            .index_select(0, &held_idx);
                        let nc = subject.noise_ceiling(m.hemisphere)?.map(|a| a.to_vec());
                        let truth = subject
                            .ground_truth_train(m.hemisphere)?
                            .map(|t| ridge::matrix_to_tensor(t.view()).index_select(0, &held_idx));
                        e.insert(HeldOut { y, nc, truth })
                    }
                };
                let (y, nc, truth) = (&held.y, &held.nc, &held.truth);
                let cols = index_tensor(&m.vertices, Device::Cpu);
                let (coef, icpt) = (enc.coef.to_device(device), enc.intercept.to_device(device));
                let pred = if let Some(layout) = &m.fields {
                    let maps = maps_held.get(&spec_of(m)).ok_or_else(|| {
                        EncodingError::Invalid(format!("no maps of tap {} for {}", m.tap, m.roi))
                    })?;
                    check_maps(maps, layout, m)?;
                    fwrf::predict(maps, &layout.matrix(device), &coef, &icpt)
                } else {
                    let z = z_held.get(&m.pca_file).ok_or_else(|| {
                        EncodingError::file(&run.join(&m.pca_file), "no features for this PCA")
                    })?;
                    z.matmul(&coef) + icpt
                };
                let r = tensor_to_vec(&ridge::pearson_columns(
                    &pred,
                    &y.index_select(1, &cols).to_device(device),
                ));
                let nc_roi: Option<Vec<f32>> = nc
                    .as_ref()
                    .map(|nc| m.vertices.iter().map(|&i| nc[i]).collect());
                let r_truth = truth.as_ref().map(|t| {
                    tensor_to_vec(&ridge::pearson_columns(
                        &pred,
                        &t.index_select(1, &cols).to_device(device),
                    ))
                });
                if let Some(nc) = &nc_roi {
                    let points = nc
                        .iter()
                        .zip(&r)
                        .map(|(&c, &r)| ((c as f64).max(0.0).sqrt(), r as f64));
                    scatter.push((m.roi.clone(), points.collect()));
                }
                let scores = metrics::summarize(&r, n_held, nc_roi.as_deref(), r_truth.as_deref());
                let rel = PathBuf::from("evaluation/voxels")
                    .join(&m.subject)
                    .join(m.hemisphere.prefix())
                    .join(format!("{}.npy", store::safe_name(&m.roi)));
                let path = run.join(&rel);
                if let Some(p) = path.parent() {
                    std::fs::create_dir_all(p).map_err(|e| EncodingError::file(p, e))?;
                }
                vcl_dataset::npy::write(&path, &ndarray::Array1::from(r.clone()))?;
                results.push(RoiResult {
                    subject: m.subject.clone(),
                    hemisphere: m.hemisphere,
                    roi: m.roi.clone(),
                    method: m.method.clone(),
                    tap: m.tap.clone(),
                    heldout_images: n_held,
                    scores,
                    voxel_r_file: rel,
                });
            }
            Ok(())
        })?;
    }
    let eval = Evaluation {
        run: run.to_path_buf(),
        method: cfg.label(),
        results,
        stages,
    };
    write_report(run, &eval, &scatter)?;
    Ok(eval)
}

/// The held-out maps must be the ones the fields were fitted on.
fn check_maps(maps: &Tensor, layout: &fwrf::FieldLayout, m: &store::EncoderMeta) -> Result<()> {
    let want: i64 = layout.map.iter().product();
    if maps.size()[1] != want {
        return Err(EncodingError::Invalid(format!(
            "{} {} {}: tap {} gives {} features per image, but the fields read {:?} maps",
            m.subject,
            m.hemisphere,
            m.roi,
            m.tap,
            maps.size()[1],
            layout.map
        )));
    }
    Ok(())
}

fn opt(v: Option<f32>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The per-ROI table as Markdown.
pub fn markdown_table(eval: &Evaluation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| subject | hemi | ROI | voxels | tap | mean r | median r | signif. | Algonauts mean | Algonauts median | mean NC | r with truth |");
    let _ = writeln!(
        s,
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &eval.results {
        let c = &r.scores;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.0}% | {} | {} | {} | {} |",
            r.subject,
            r.hemisphere,
            r.roi,
            c.voxels,
            r.tap,
            c.mean_r,
            c.median_r,
            100.0 * c.frac_significant,
            opt(c.algonauts_mean, 1),
            opt(c.algonauts_median, 1),
            opt(c.mean_noise_ceiling, 2),
            opt(c.mean_r_truth, 3)
        );
    }
    s
}

fn write_report(
    run: &Path,
    eval: &Evaluation,
    scatter: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let dir = run.join("evaluation");
    std::fs::create_dir_all(&dir).map_err(|e| EncodingError::file(&dir, e))?;
    store::write_json(&dir.join("results.json"), eval)?;

    let mut csv = String::from("subject,hemisphere,roi,method,tap,voxels,heldout_images,mean_r,median_r,frac_significant,algonauts_mean,algonauts_median,mean_noise_ceiling,mean_r_truth\n");
    for r in &eval.results {
        let c = &r.scores;
        let o = |v: Option<f32>| v.map(|x| x.to_string()).unwrap_or_default();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.subject,
            r.hemisphere,
            r.roi,
            r.method,
            r.tap,
            c.voxels,
            r.heldout_images,
            c.mean_r,
            c.median_r,
            c.frac_significant,
            o(c.algonauts_mean),
            o(c.algonauts_median),
            o(c.mean_noise_ceiling),
            o(c.mean_r_truth)
        );
    }
    std::fs::write(dir.join("results.csv"), csv)
        .map_err(|e| EncodingError::file(&dir.join("results.csv"), e))?;

    let md = format!(
        "# Encoding accuracy on the held-out split ({})\n\nPer-voxel Pearson r on held-out images never used for fitting, tap or alpha selection. \
         signif. = share of voxels with r > 0 at BH-FDR q = 0.05; Algonauts = 100 r^2 / NC.\n\n{}\n\n![mean r per ROI](roi_mean_r.png)\n\n![r against the noise ceiling](r_vs_noise_ceiling.png)\n",
        eval.method,
        markdown_table(eval)
    );
    std::fs::write(dir.join("results.md"), md)
        .map_err(|e| EncodingError::file(&dir.join("results.md"), e))?;

    // Bars: ROIs along x, one series per subject x hemisphere.
    let mut rois: Vec<String> = Vec::new();
    for r in &eval.results {
        if !rois.contains(&r.roi) {
            rois.push(r.roi.clone());
        }
    }
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in &eval.results {
        let key = format!("{} {}", r.subject, r.hemisphere);
        let v = series
            .entry(key)
            .or_insert_with(|| vec![f64::NAN; rois.len()]);
        if let Some(i) = rois.iter().position(|x| x == &r.roi) {
            v[i] = r.scores.mean_r as f64;
        }
    }
    plots::grouped_bars(
        &dir.join("roi_mean_r.png"),
        &format!("Mean held-out r per ROI ({})", eval.method),
        "mean Pearson r",
        &rois,
        &series.into_iter().collect::<Vec<_>>(),
    )?;

    // Scatter: each voxel's r against sqrt(NC), the highest r its noise allows. Streams
    // overlap the other families, so only prf-visualrois (early) and floc ROIs (higher)
    // are drawn, each voxel once; early last so it stays visible.
    let early = vcl_dataset::algonauts::EARLY_ROIS;
    let streams = vcl_dataset::algonauts::STREAM_ROIS;
    let mut higher_pts = Vec::new();
    let mut early_pts = Vec::new();
    for (roi, points) in scatter {
        if streams.contains(&roi.as_str()) || roi == "streams:early" || roi.contains('+') {
            continue;
        }
        let target = if early.contains(&roi.as_str()) {
            &mut early_pts
        } else {
            &mut higher_pts
        };
        target.extend_from_slice(points);
    }
    let groups: Vec<(String, Vec<(f64, f64)>)> = [
        ("higher ROIs (floc)", higher_pts),
        ("early ROIs (V1-hV4)", early_pts),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !groups.is_empty() {
        plots::scatter(
            &dir.join("r_vs_noise_ceiling.png"),
            "Held-out r against the noise ceiling",
            ("sqrt(noise ceiling)", "Pearson r"),
            &groups,
            true,
        )?;
    }
    Ok(())
}

/// Up to `n` held-out images of `subject` (the run's split), decoded and resized as the
/// fit did, float32 [n, 3, S, S] in [0, 1]; with their row numbers. What an export is
/// verified on and what the analyses look at.
pub fn heldout_images(
    cfg: &FitConfig,
    subject: &Subject,
    n: usize,
) -> Result<(Vec<usize>, Tensor)> {
    let sp = split::holdout(
        subject.train_images.len(),
        cfg.heldout_fraction,
        cfg.split_seed,
    );
    // A run without a held-out part (fraction 0) falls back to images it saw.
    let pool = if sp.heldout.is_empty() {
        &sp.train
    } else {
        &sp.heldout
    };
    let rows: Vec<usize> = pool.iter().copied().take(n.max(1)).collect();
    if rows.is_empty() {
        return Err(EncodingError::Invalid(format!(
            "subject {} has no training images",
            subject.name
        )));
    }
    let size = cfg.input_size;
    let mut buf = Vec::with_capacity(rows.len() * 3 * (size * size) as usize);
    for &r in &rows {
        let entry = &subject.train_images[r];
        buf.extend(images::to_chw(&images::decode(&entry.path)?, size));
    }
    let s = size as i64;
    let x = Tensor::from_slice(&buf)
        .view([rows.len() as i64, 3, s, s])
        .to_kind(Kind::Float)
        / 255.0;
    Ok((rows, x))
}
