//! `vcl lateralization`: where each ROI model of a fit run looks. Per model, on held-out
//! images, the saliency mass on the right half of the image minus the left half, over
//! the total ((R - L) / (R + L), in [-1, 1]), for the gradient, Grad-CAM and HiResCAM
//! maps (see `saliency`); the same for the upper minus the lower half; and the left-right
//! index of the mirror images' saliency, mapped back onto the original images.
//!
//! The visual field maps onto the image as seen: a left-hemisphere early-visual model
//! (right visual field) should have a positive left-right index, a right-hemisphere one
//! a negative index; ventral areas (upper field) a positive upper-lower index, dorsal
//! areas (lower field) a negative one. A model that reads a fixed place of the visual
//! field still looks right on a mirrored image, so, relative to the image's content
//! (the mirrored map flipped back), its saliency changes sides: the mirrored index has
//! the opposite sign. A map that followed the content instead would keep its sign there.
//! The middle column / row of an odd-sized map belongs to neither half.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::roi_model::FitModels;
use super::saliency;
use crate::model::encoding::error::EncodingError;
use crate::model::encoding::{heldout_images, store};
use crate::report::plots;
use crate::Result;
use vcl_dataset::algonauts::{Dataset, Hemisphere};

/// What `vcl lateralization` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct LateralizationConfig {
    /// A `vcl fit` run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Output folder: lateralization.{json,csv,md,png} and overlays/.
    #[arg(long)]
    pub out: PathBuf,
    /// ROIs to analyse, as the run names them (default: all).
    #[arg(long, value_delimiter = ',')]
    pub rois: Vec<String>,
    /// Held-out images per subject.
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    /// Grad-CAM layer (default: the encoder's tap, or the deepest conv tap before it).
    #[arg(long)]
    pub layer: Option<String>,
    /// Images shown in each model's overlay PNG.
    #[arg(long, default_value_t = 4)]
    pub overlays: usize,
    /// Images per backward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

impl LateralizationConfig {
    /// The command's defaults for `run`, writing into `out`.
    pub fn new(run: PathBuf, out: PathBuf) -> Self {
        let defaults: LateralizationConfig = crate::config::from_flags(["--run=.", "--out=."])
            .expect("the flags' own defaults parse");
        LateralizationConfig {
            run,
            out,
            ..defaults
        }
    }
}

/// One ROI model's indices, each the mean over the held-out images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelLaterality {
    pub subject: String,
    pub hemisphere: Hemisphere,
    pub roi: String,
    pub tap: String,
    pub gradcam_layer: String,
    pub images: usize,
    /// (right - left) / total of the gradient map.
    pub gradient_lr: f64,
    pub gradient_lr_mirrored: f64,
    /// Share of images whose gradient index has the sign of the mean.
    pub gradient_lr_agreement: f64,
    pub gradcam_lr: f64,
    pub gradcam_lr_mirrored: f64,
    pub hirescam_lr: f64,
    pub hirescam_lr_mirrored: f64,
    /// (upper - lower) / total.
    pub gradient_ud: f64,
    pub gradcam_ud: f64,
    pub hirescam_ud: f64,
    /// The overlay PNG, relative to the output folder.
    pub overlay: PathBuf,
    /// fwRF encoders: where their fields are, read directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldSummary>,
}

/// Where an fwRF encoder's voxels look: its fields' centres on the image (the visual
/// field as seen), and, on the in-silico brain, how far they are from the true pRFs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldSummary {
    pub voxels: usize,
    /// (right - left) / voxels: voxels whose field centre is right of the image's
    /// middle, minus those left of it.
    pub lr: f64,
    /// (upper - lower) / voxels.
    pub ud: f64,
    /// Median field sd, as a fraction of the image side.
    pub median_size: f64,
    pub truth: Option<FieldTruth>,
    /// Per voxel: vertex, fitted and true centre and size (CSV), relative to the output
    /// folder.
    pub table: PathBuf,
}

/// Fitted fields against the generator's pRFs (voxels that have one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldTruth {
    pub voxels: usize,
    /// Median distance between fitted and true centres, as a fraction of the image side.
    pub median_error: f64,
    /// Pearson r across voxels of fitted and true centre x, and y.
    pub r_x: f64,
    pub r_y: f64,
    /// The true pRFs' (right - left) / voxels and (upper - lower) / voxels.
    pub lr: f64,
    pub ud: f64,
}

fn side_index(values: impl Iterator<Item = f64>) -> f64 {
    let (mut pos, mut neg, mut n) = (0.0, 0.0, 0.0);
    for v in values {
        n += 1.0;
        if v > 0.5 {
            pos += 1.0;
        } else if v < 0.5 {
            neg += 1.0;
        }
    }
    if n == 0.0 {
        f64::NAN
    } else {
        (pos - neg) / n
    }
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(1e-300)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// ((fitted x, true x), (fitted y, true y)) of one voxel.
type CentrePair = ((f64, f64), (f64, f64));

/// An fwRF encoder's fields summarized, its per-voxel table written under `out`, and
/// the (fitted, true) centre pairs for the run's scatter plot.
fn field_summary(
    out: &Path,
    meta: &store::EncoderMeta,
    truth: Option<&[Option<vcl_dataset::synth::Prf>]>,
    pairs: &mut Vec<CentrePair>,
) -> Result<Option<FieldSummary>> {
    let Some(layout) = &meta.fields else {
        return Ok(None);
    };
    let f = &layout.fields;
    let mut csv = String::from("vertex,x,y,size,true_x,true_y,true_size\n");
    let (mut fx, mut fy, mut tx, mut ty, mut err) = (vec![], vec![], vec![], vec![], vec![]);
    for (field, &v) in f.iter().zip(&meta.vertices) {
        let prf = truth.and_then(|t| t.get(v).copied().flatten());
        let (t_x, t_y, t_s) = match prf {
            Some(p) => {
                let (x, y) = p.centre_norm();
                (x.to_string(), y.to_string(), p.sigma_norm().to_string())
            }
            None => (String::new(), String::new(), String::new()),
        };
        let _ = writeln!(
            csv,
            "{v},{},{},{},{t_x},{t_y},{t_s}",
            field.x, field.y, field.size
        );
        if let Some(p) = prf {
            let (x, y) = p.centre_norm();
            fx.push(field.x as f64);
            fy.push(field.y as f64);
            tx.push(x as f64);
            ty.push(y as f64);
            err.push(((field.x - x) as f64).hypot((field.y - y) as f64));
            pairs.push(((field.x as f64, x as f64), (field.y as f64, y as f64)));
        }
    }
    let table = PathBuf::from("fields").join(format!(
        "{}_{}_{}.csv",
        meta.subject,
        meta.hemisphere.prefix(),
        store::safe_name(&meta.roi)
    ));
    let path = out.join(&table);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EncodingError::file(dir, e))?;
    }
    std::fs::write(&path, csv).map_err(|e| EncodingError::file(&path, e))?;
    let truth = (!tx.is_empty()).then(|| FieldTruth {
        voxels: tx.len(),
        median_error: median(err),
        r_x: pearson(&fx, &tx),
        r_y: pearson(&fy, &ty),
        lr: side_index(tx.iter().copied()),
        ud: -side_index(ty.iter().copied()),
    });
    Ok(Some(FieldSummary {
        voxels: f.len(),
        lr: side_index(f.iter().map(|c| c.x as f64)),
        // Image rows grow downwards: upper is y < 0.5.
        ud: -side_index(f.iter().map(|c| c.y as f64)),
        median_size: median(f.iter().map(|c| c.size as f64).collect()),
        truth,
        table,
    }))
}

/// Per image of non-negative maps [N, H, W]: ((R - L) / total, (U - D) / total).
pub fn indices(maps: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let s = maps.size();
    let (h, w) = (s[1], s[2]);
    let m = maps.to_kind(Kind::Double);
    let total = m.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double);
    let part = |dim: i64, start: i64, len: i64| {
        m.narrow(dim, start, len)
            .sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double)
    };
    let ratio = |a: Tensor, b: Tensor| -> Vec<f64> {
        let d = (a - b) / total.clamp_min(1e-300);
        Vec::<f64>::try_from(d.to_device(Device::Cpu)).unwrap_or_default()
    };
    let lr = ratio(part(2, w - w / 2, w / 2), part(2, 0, w / 2));
    let ud = ratio(part(1, 0, h / 2), part(1, h - h / 2, h / 2));
    (lr, ud)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Runs the analysis and writes lateralization.{json,csv,md,png} and overlays/.
pub fn lateralization(cfg: &LateralizationConfig, device: Device) -> Result<Vec<ModelLaterality>> {
    let models = FitModels::load(&cfg.run, device, |_, _, roi| {
        cfg.rois.is_empty() || cfg.rois.iter().any(|r| r == roi)
    })?;
    if models.encoders.is_empty() {
        return Err(EncodingError::Invalid(format!(
            "{}: no encoder of ROIs {:?} in this run",
            cfg.run.display(),
            cfg.rois
        ))
        .into());
    }
    let overlay_dir = cfg.out.join("overlays");
    std::fs::create_dir_all(&overlay_dir).map_err(|e| EncodingError::file(&overlay_dir, e))?;
    let fit_cfg = &models.record.config;
    let ds = Dataset::open(&fit_cfg.data_dir)?;
    let mut results = Vec::new();
    let mut subject_images: Option<(String, Tensor)> = None;
    let mut truths: std::collections::BTreeMap<
        (String, Hemisphere),
        Option<Vec<Option<vcl_dataset::synth::Prf>>>,
    > = std::collections::BTreeMap::new();
    let mut pairs = Vec::new();
    for e in &models.encoders {
        let x = match &subject_images {
            Some((s, x)) if *s == e.meta.subject => x.shallow_clone(),
            _ => {
                let subject = ds.subject(&e.meta.subject)?;
                let (_, x) = heldout_images(fit_cfg, &subject, cfg.images)?;
                let x = x.to_device(device);
                subject_images = Some((e.meta.subject.clone(), x.shallow_clone()));
                x
            }
        };
        let layer = saliency::gradcam_layer(&models, e, cfg.layer.as_deref())?;
        let n = x.size()[0];
        let (mut g_lr, mut g_ud, mut c_lr, mut c_ud, mut g_lr_m, mut c_lr_m) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut h_lr, mut h_ud, mut h_lr_m) = (vec![], vec![], vec![]);
        let mut first: Option<(Tensor, saliency::Maps)> = None;
        for start in (0..n).step_by(cfg.batch_size.max(1)) {
            let len = (cfg.batch_size.max(1) as i64).min(n - start);
            let xb = x.narrow(0, start, len);
            let maps = saliency::maps(&models, e, &xb, &layer)?;
            let (lr, ud) = indices(&maps.gradient);
            g_lr.extend(lr);
            g_ud.extend(ud);
            let (lr, ud) = indices(&maps.gradcam);
            c_lr.extend(lr);
            c_ud.extend(ud);
            let (lr, ud) = indices(&maps.hirescam);
            h_lr.extend(lr);
            h_ud.extend(ud);
            // The mirror images' maps, flipped back onto the original images.
            let mirrored = saliency::maps(&models, e, &xb.flip([3]), &layer)?;
            g_lr_m.extend(indices(&mirrored.gradient.flip([2])).0);
            c_lr_m.extend(indices(&mirrored.gradcam.flip([2])).0);
            h_lr_m.extend(indices(&mirrored.hirescam.flip([2])).0);
            if first.is_none() {
                first = Some((xb, maps));
            }
        }
        let overlay = PathBuf::from("overlays").join(format!(
            "{}_{}_{}.png",
            e.meta.subject,
            e.meta.hemisphere.prefix(),
            store::safe_name(&e.meta.roi)
        ));
        if let Some((xb, maps)) = &first {
            saliency::write_overlays(&cfg.out.join(&overlay), xb, maps, cfg.overlays)?;
        }
        let fields = if e.meta.fields.is_some() {
            let key = (e.meta.subject.clone(), e.meta.hemisphere);
            if !truths.contains_key(&key) {
                let t = vcl_dataset::synth::truth::prfs(&fit_cfg.data_dir, &key.0, key.1)?;
                truths.insert(key.clone(), t);
            }
            let truth = truths.get(&key).and_then(|t| t.as_deref());
            field_summary(&cfg.out, &e.meta, truth, &mut pairs)?
        } else {
            None
        };
        let m = mean(&g_lr);
        let agree = g_lr.iter().filter(|v| v.signum() == m.signum()).count() as f64
            / g_lr.len().max(1) as f64;
        let r = ModelLaterality {
            subject: e.meta.subject.clone(),
            hemisphere: e.meta.hemisphere,
            roi: e.meta.roi.clone(),
            tap: e.meta.tap.clone(),
            gradcam_layer: layer,
            images: g_lr.len(),
            gradient_lr: m,
            gradient_lr_mirrored: mean(&g_lr_m),
            gradient_lr_agreement: agree,
            gradcam_lr: mean(&c_lr),
            gradcam_lr_mirrored: mean(&c_lr_m),
            hirescam_lr: mean(&h_lr),
            hirescam_lr_mirrored: mean(&h_lr_m),
            gradient_ud: mean(&g_ud),
            gradcam_ud: mean(&c_ud),
            hirescam_ud: mean(&h_ud),
            overlay,
            fields,
        };
        tracing::info!(
            model = %e.label(),
            gradient_lr = format!("{:+.3}", r.gradient_lr),
            mirrored = format!("{:+.3}", r.gradient_lr_mirrored),
            hirescam_lr = format!("{:+.3}", r.hirescam_lr),
            gradient_ud = format!("{:+.3}", r.gradient_ud),
            "lateralization"
        );
        results.push(r);
    }
    write(&cfg.out, &results)?;
    if !pairs.is_empty() {
        plots::scatter(
            &cfg.out.join("fields_vs_prf.png"),
            "fwRF field centres against the true pRF centres",
            (
                "true centre (fraction of the image side)",
                "fitted field centre",
            ),
            &[
                (
                    "x".to_string(),
                    pairs.iter().map(|p| (p.0 .1, p.0 .0)).collect(),
                ),
                (
                    "y".to_string(),
                    pairs.iter().map(|p| (p.1 .1, p.1 .0)).collect(),
                ),
            ],
            true,
        )?;
    }
    Ok(results)
}

/// The indices of `r` in the column order of the CSV and the Markdown table.
fn columns(r: &ModelLaterality) -> [f64; 10] {
    [
        r.gradient_lr,
        r.gradient_lr_mirrored,
        r.gradient_lr_agreement,
        r.hirescam_lr,
        r.hirescam_lr_mirrored,
        r.gradcam_lr,
        r.gradcam_lr_mirrored,
        r.gradient_ud,
        r.hirescam_ud,
        r.gradcam_ud,
    ]
}

fn write(out: &Path, results: &[ModelLaterality]) -> Result<()> {
    store::write_json(&out.join("lateralization.json"), &results)?;
    let mut csv = String::from("subject,hemisphere,roi,tap,gradcam_layer,images,gradient_lr,gradient_lr_mirrored,gradient_lr_agreement,hirescam_lr,hirescam_lr_mirrored,gradcam_lr,gradcam_lr_mirrored,gradient_ud,hirescam_ud,gradcam_ud\n");
    let mut md = String::from("Saliency of each ROI model on held-out images, mean over images: L/R = (right - left) / total, U/D = (upper - lower) / total. \"mirrored\": the mirror images' saliency flipped back onto the originals (a model that reads a fixed place of the visual field changes sign there). Expected for early ROIs: left hemisphere L/R > 0, right hemisphere < 0; ventral U/D > 0, dorsal < 0. Grad-CAM averages gradients over positions and so follows image content rather than the receptive field; HiResCAM keeps them.\n\n| model | tap | CAM layer | images | L/R gradient | mirrored | same sign | L/R HiResCAM | mirrored | L/R Grad-CAM | mirrored | U/D gradient | U/D HiResCAM | U/D Grad-CAM |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let values = columns(r);
        let csv_values: Vec<String> = values.iter().map(|v| format!("{v:.5}")).collect();
        let md_values: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| match i {
                2 => format!("{:.0}%", 100.0 * v),
                _ => format!("{v:+.3}"),
            })
            .collect();
        let (h, layer) = (r.hemisphere.prefix(), &r.gradcam_layer);
        let _ = writeln!(
            csv,
            "{},{h},{},{},{layer},{},{}",
            r.subject,
            r.roi,
            r.tap,
            r.images,
            csv_values.join(",")
        );
        let _ = writeln!(
            md,
            "| {} {h} {} | {} | {layer} | {} | {} |",
            r.subject,
            r.roi,
            r.tap,
            r.images,
            md_values.join(" | ")
        );
    }
    if results.iter().any(|r| r.fields.is_some()) {
        md.push_str("\nfwRF encoders, read from their fields: L/R = (voxels whose field centre is right of the middle - left of it) / voxels, U/D likewise upper - lower; on the in-silico brain, the same indices of the true pRF centres, the median distance between fitted and true centres and the correlation of their x and y across voxels (fractions of the image side).\n\n| model | voxels | L/R fields | U/D fields | median size | L/R true | U/D true | median centre error | r x | r y |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in results {
            let Some(f) = &r.fields else { continue };
            let truth = match &f.truth {
                Some(t) => format!(
                    "{:+.3} | {:+.3} | {:.3} | {:.3} | {:.3}",
                    t.lr, t.ud, t.median_error, t.r_x, t.r_y
                ),
                None => "- | - | - | - | -".into(),
            };
            let _ = writeln!(
                md,
                "| {} {} {} | {} | {:+.3} | {:+.3} | {:.3} | {truth} |",
                r.subject,
                r.hemisphere.prefix(),
                r.roi,
                f.voxels,
                f.lr,
                f.ud,
                f.median_size
            );
        }
    }
    let csv_path = out.join("lateralization.csv");
    std::fs::write(&csv_path, csv).map_err(|e| EncodingError::file(&csv_path, e))?;
    let md_path = out.join("lateralization.md");
    std::fs::write(&md_path, md).map_err(|e| EncodingError::file(&md_path, e))?;
    let labels: Vec<String> = results
        .iter()
        .map(|r| format!("{} {} {}", r.subject, r.hemisphere.prefix(), r.roi))
        .collect();
    let series = |name: &str, f: fn(&ModelLaterality) -> f64| {
        (name.to_string(), results.iter().map(f).collect::<Vec<_>>())
    };
    plots::grouped_bars(
        &out.join("lateralization.png"),
        "Saliency laterality: (right - left) / total",
        "index",
        &labels,
        &[
            series("gradient", |r| r.gradient_lr),
            series("gradient, mirrored (flipped back)", |r| {
                r.gradient_lr_mirrored
            }),
            series("HiResCAM", |r| r.hirescam_lr),
            series("Grad-CAM", |r| r.gradcam_lr),
            series("upper - lower (gradient)", |r| r.gradient_ud),
        ],
    )?;
    Ok(())
}
