//! `vcl curve`: how held-out accuracy grows with the number of training images. Each
//! evaluated run is a point: its method (the fit's label), the training images its
//! encoders were fitted on (from the run's splits), and per ROI the mean over subjects
//! of the ROI's mean r. Written as curve.{json,csv,md} and one line chart per ROI.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::encoding::error::EncodingError;
use crate::model::encoding::evaluate::Evaluation;
use crate::model::encoding::store;
use crate::report::plots;
use crate::Result;
use vcl_dataset::algonauts::split::Split;

#[derive(Debug, Clone, clap::Args)]
pub struct CurveConfig {
    /// Evaluated runs (`vcl fit --evaluate`), fitted with --train-images at several sizes.
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Output folder for curve.{md,csv,json} and curve_<roi>.png.
    #[arg(long)]
    pub out: PathBuf,
}

/// One point of a curve: a method's score on an ROI at a number of training images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    pub method: String,
    pub hemisphere: String,
    pub roi: String,
    pub train_images: usize,
    pub subjects: usize,
    /// Mean over subjects of the ROI's held-out mean r.
    pub mean_r: f64,
}

/// Reads the runs, writes the tables and plots into `out`, returns the points sorted
/// by ROI, method and size.
pub fn curve(cfg: &CurveConfig) -> Result<Vec<CurvePoint>> {
    // (hemisphere, roi, method, images) -> ROI mean r of each subject
    let mut acc: BTreeMap<(String, String, String, usize), Vec<f64>> = BTreeMap::new();
    for run in &cfg.runs {
        let path = run.join("evaluation/results.json");
        let eval: Evaluation = store::read_json(&path).map_err(|_| {
            EncodingError::file(&path, "missing or unreadable: evaluate this run first")
        })?;
        for r in &eval.results {
            let split_path = run.join("splits").join(format!("{}.json", r.subject));
            let split: Split = store::read_json(&split_path)?;
            acc.entry((
                r.hemisphere.prefix().to_string(),
                r.roi.clone(),
                eval.method.clone(),
                split.train.len(),
            ))
            .or_default()
            .push(r.scores.mean_r as f64);
        }
    }
    let points: Vec<CurvePoint> = acc
        .into_iter()
        .map(|((hemisphere, roi, method, train_images), rs)| CurvePoint {
            method,
            hemisphere,
            roi,
            train_images,
            subjects: rs.len(),
            mean_r: rs.iter().sum::<f64>() / rs.len().max(1) as f64,
        })
        .collect();
    write(&cfg.out, &points)?;
    Ok(points)
}

fn write(out: &Path, points: &[CurvePoint]) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| EncodingError::file(out, e))?;
    store::write_json(&out.join("curve.json"), &points)?;
    let mut csv = String::from("method,hemisphere,roi,train_images,subjects,mean_r\n");
    for p in points {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.5}",
            p.method, p.hemisphere, p.roi, p.train_images, p.subjects, p.mean_r
        );
    }
    let csv_path = out.join("curve.csv");
    std::fs::write(&csv_path, csv).map_err(|e| EncodingError::file(&csv_path, e))?;

    let mut methods: Vec<&str> = points.iter().map(|p| p.method.as_str()).collect();
    methods.sort_unstable();
    methods.dedup();
    let mut md = String::from(
        "Held-out mean r (mean over subjects) against the number of training images the \
         backbone was tuned and the encoders fitted on.\n",
    );
    let mut rois: Vec<(&str, &str)> = points
        .iter()
        .map(|p| (p.hemisphere.as_str(), p.roi.as_str()))
        .collect();
    rois.dedup();
    for (h, roi) in rois {
        let of_roi: Vec<&CurvePoint> = points
            .iter()
            .filter(|p| p.hemisphere == h && p.roi == roi)
            .collect();
        let mut sizes: Vec<usize> = of_roi.iter().map(|p| p.train_images).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let _ = write!(md, "\n### {h} {roi}\n\n| training images |");
        for m in &methods {
            let _ = write!(md, " {m} |");
        }
        md.push_str("\n|---:|");
        md.push_str(&"---:|".repeat(methods.len()));
        md.push('\n');
        for n in &sizes {
            let _ = write!(md, "| {n} |");
            for m in &methods {
                match of_roi
                    .iter()
                    .find(|p| p.method == *m && p.train_images == *n)
                {
                    Some(p) => {
                        let _ = write!(md, " {:.3} |", p.mean_r);
                    }
                    None => md.push_str(" - |"),
                }
            }
            md.push('\n');
        }
        let series: Vec<(String, Vec<(f64, f64)>)> = methods
            .iter()
            .map(|m| {
                let pts = of_roi
                    .iter()
                    .filter(|p| p.method == *m)
                    .map(|p| (p.train_images as f64, p.mean_r))
                    .collect();
                (m.to_string(), pts)
            })
            .collect();
        let png = format!("curve_{h}_{}.png", store::safe_name(roi));
        plots::line_chart(
            &out.join(&png),
            &format!("{h} {roi}: held-out mean r against training images"),
            ("training images", "mean r"),
            &series,
        )?;
        let _ = writeln!(md, "\n![{h} {roi}]({png})");
    }
    let md_path = out.join("curve.md");
    std::fs::write(&md_path, md).map_err(|e| EncodingError::file(&md_path, e))?;
    Ok(())
}
