//! `vcl compare`: several evaluated runs of the same subjects and ROIs (untuned,
//! regression-tuned, CL-tuned, pooled) side by side, per ROI: mean and median r, the
//! share of voxels where the reference method beats each other one, and a paired
//! test across subjects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::model::encoding::error::EncodingError;
use crate::model::encoding::evaluate::{Evaluation, RoiResult};
use crate::model::encoding::{metrics, store};
use crate::report::plots;
use crate::Result;
use vcl_dataset::algonauts::Hemisphere;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodVsReference {
    pub method: String,
    /// Share of voxels (pooled over subjects) where the reference has the higher r.
    pub frac_reference_better: f32,
    /// Mean over subjects of (reference - method) ROI-mean r.
    pub mean_difference: f32,
    /// Two-sided paired t test across subjects; None with fewer than 2 subjects.
    pub paired_p: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoiComparison {
    pub hemisphere: Hemisphere,
    pub roi: String,
    pub subjects: Vec<String>,
    pub voxels: usize,
    /// method -> mean over subjects of the ROI's mean r.
    pub mean_r: BTreeMap<String, f32>,
    /// method -> mean over subjects of the ROI's median r.
    pub median_r: BTreeMap<String, f32>,
    pub versus: Vec<MethodVsReference>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub reference: String,
    pub methods: Vec<String>,
    pub runs: Vec<PathBuf>,
    pub rois: Vec<RoiComparison>,
}

struct Loaded {
    method: String,
    run: PathBuf,
    results: Vec<RoiResult>,
}

fn load(run: &Path) -> Result<Loaded> {
    let eval: Evaluation =
        store::read_json(&run.join("evaluation/results.json")).map_err(|_| {
            EncodingError::file(
                &run.join("evaluation/results.json"),
                "missing or unreadable: run `vcl evaluate` on this run first",
            )
        })?;
    Ok(Loaded {
        method: eval.method,
        run: run.to_path_buf(),
        results: eval.results,
    })
}

/// Two-sided paired t-test p-value of differences `d`.
pub fn paired_t_p(d: &[f64]) -> Option<f64> {
    let n = d.len();
    if n < 2 {
        return None;
    }
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    if var <= 0.0 {
        return Some(if mean == 0.0 { 1.0 } else { 0.0 });
    }
    let t = mean / (var / n as f64).sqrt();
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).ok()?;
    Some(2.0 * (1.0 - dist.cdf(t.abs())))
}

/// What `vcl compare` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareConfig {
    /// Evaluated run directories, one per method (or per method and subject).
    #[arg(required_unless_present = "plan", num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Instead of RUNS: the fits of every finished job of a plan (`vcl plan`).
    #[arg(long, conflicts_with = "runs")]
    pub plan: Option<PathBuf>,
    /// Method the others are measured against (default: cl when present).
    #[arg(long)]
    pub reference: Option<String>,
    /// Output folder for comparison.{md,csv,json,png}.
    #[arg(long)]
    pub out: PathBuf,
}

/// Compares the runs; `reference` is the method the others are measured against
/// (default: "cl" when present, else the first run's).
pub fn compare(runs: &[PathBuf], reference: Option<&str>, out: &Path) -> Result<Comparison> {
    if runs.len() < 2 {
        return Err(EncodingError::Invalid(format!(
            "compare needs at least 2 evaluated runs, got {}",
            runs.len()
        ))
        .into());
    }
    let loaded: Vec<Loaded> = runs.iter().map(|r| load(r)).collect::<Result<_>>()?;
    // Runs of one method may split its subjects (a CL backbone is tuned per subject,
    // so each subject's tuned fit is its own run); the same subject twice is an error.
    let mut methods: Vec<String> = Vec::new();
    for l in &loaded {
        if !methods.contains(&l.method) {
            methods.push(l.method.clone());
        }
    }
    let reference = match reference {
        Some(r) if methods.iter().any(|m| m == r) => r.to_string(),
        Some(r) => {
            return Err(EncodingError::Invalid(format!(
                "reference method '{r}' is not among the runs' methods: {}",
                methods.join(", ")
            ))
            .into())
        }
        None if methods.iter().any(|m| m == "cl") => "cl".into(),
        None => methods[0].clone(),
    };

    // (hemisphere, roi) -> subject -> method -> (result, voxel r)
    type PerMethod = BTreeMap<String, (RoiResult, Vec<f32>)>;
    let mut table: BTreeMap<(Hemisphere, String), BTreeMap<String, PerMethod>> = BTreeMap::new();
    let mut roi_order: Vec<(Hemisphere, String)> = Vec::new();
    for l in &loaded {
        for r in &l.results {
            let voxel_r = vcl_dataset::npy::read_f32_1d(&l.run.join(&r.voxel_r_file))?.to_vec();
            let key = (r.hemisphere, r.roi.clone());
            if !roi_order.contains(&key) {
                roi_order.push(key.clone());
            }
            let before = table
                .entry(key)
                .or_default()
                .entry(r.subject.clone())
                .or_default()
                .insert(l.method.clone(), (r.clone(), voxel_r));
            if before.is_some() {
                return Err(EncodingError::Invalid(format!(
                    "two runs labelled '{}' both evaluate {} {} {} (the second: {}): give \
                     each method one run per subject (vcl fit --method)",
                    l.method,
                    r.subject,
                    r.hemisphere.prefix(),
                    r.roi,
                    l.run.display()
                ))
                .into());
            }
        }
    }

    let mut rois = Vec::new();
    for key in roi_order {
        let per_subject = &table[&key];
        // Only subjects every method was evaluated on enter the comparison.
        let subjects: Vec<&String> = per_subject
            .iter()
            .filter(|(_, m)| methods.iter().all(|x| m.contains_key(x)))
            .map(|(s, _)| s)
            .collect();
        if subjects.is_empty() {
            continue;
        }
        let mut mean_r = BTreeMap::new();
        let mut median_r = BTreeMap::new();
        for m in &methods {
            let means: Vec<f32> = subjects
                .iter()
                .map(|s| per_subject[*s][m].0.scores.mean_r)
                .collect();
            let medians: Vec<f32> = subjects
                .iter()
                .map(|s| per_subject[*s][m].0.scores.median_r)
                .collect();
            mean_r.insert(m.clone(), metrics::mean(&means));
            median_r.insert(m.clone(), metrics::mean(&medians));
        }
        let mut versus = Vec::new();
        let mut voxels = 0;
        for m in methods.iter().filter(|m| **m != reference) {
            let (mut better, mut total) = (0usize, 0usize);
            let mut diffs = Vec::new();
            for s in &subjects {
                let (ref_res, ref_r) = &per_subject[*s][&reference];
                let (oth_res, oth_r) = &per_subject[*s][m];
                if ref_r.len() != oth_r.len() {
                    return Err(EncodingError::Invalid(format!(
                        "{} {} {}: {} voxels in '{reference}' but {} in '{m}': were the runs fitted on the same data?",
                        s, key.0, key.1, ref_r.len(), oth_r.len()
                    )).into());
                }
                better += ref_r.iter().zip(oth_r).filter(|(a, b)| a > b).count();
                total += ref_r.len();
                diffs.push((ref_res.scores.mean_r - oth_res.scores.mean_r) as f64);
            }
            voxels = total;
            versus.push(MethodVsReference {
                method: m.clone(),
                frac_reference_better: better as f32 / total.max(1) as f32,
                mean_difference: (diffs.iter().sum::<f64>() / diffs.len() as f64) as f32,
                paired_p: paired_t_p(&diffs),
            });
        }
        if versus.is_empty() {
            voxels = subjects
                .iter()
                .map(|s| per_subject[*s][&reference].1.len())
                .sum();
        }
        rois.push(RoiComparison {
            hemisphere: key.0,
            roi: key.1.clone(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            voxels,
            mean_r,
            median_r,
            versus,
        });
    }
    let cmp = Comparison {
        reference,
        methods,
        runs: runs.to_vec(),
        rois,
    };
    write(&cmp, out)?;
    Ok(cmp)
}

/// The comparison as a Markdown table.
pub fn markdown(cmp: &Comparison) -> String {
    let mut s = String::new();
    let others: Vec<&String> = cmp
        .methods
        .iter()
        .filter(|m| **m != cmp.reference)
        .collect();
    let _ = write!(s, "| hemi | ROI | subjects | voxels |");
    for m in &cmp.methods {
        let _ = write!(s, " mean r {m} | median r {m} |");
    }
    for m in &others {
        let _ = write!(
            s,
            " {} beats {m} (voxels) | paired p vs {m} |",
            cmp.reference
        );
    }
    let _ = writeln!(s);
    let cols = 4 + 2 * cmp.methods.len() + 2 * others.len();
    let _ = writeln!(s, "|{}", "---|".repeat(cols));
    for r in &cmp.rois {
        let _ = write!(
            s,
            "| {} | {} | {} | {} |",
            r.hemisphere,
            r.roi,
            r.subjects.len(),
            r.voxels
        );
        for m in &cmp.methods {
            let _ = write!(s, " {:.3} | {:.3} |", r.mean_r[m], r.median_r[m]);
        }
        for m in &others {
            match r.versus.iter().find(|v| &&v.method == m) {
                Some(v) => {
                    let p = v
                        .paired_p
                        .map(|p| format!("{p:.3}"))
                        .unwrap_or_else(|| "-".into());
                    let _ = write!(s, " {:.0}% | {p} |", 100.0 * v.frac_reference_better);
                }
                None => {
                    let _ = write!(s, " - | - |");
                }
            }
        }
        let _ = writeln!(s);
    }
    s
}

fn write(cmp: &Comparison, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| EncodingError::file(out, e))?;
    store::write_json(&out.join("comparison.json"), cmp)?;
    let mut csv =
        String::from("hemisphere,roi,method,mean_r,median_r,frac_reference_better,paired_p\n");
    for r in &cmp.rois {
        for m in &cmp.methods {
            let v = r.versus.iter().find(|v| &v.method == m);
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{}",
                r.hemisphere,
                r.roi,
                m,
                r.mean_r[m],
                r.median_r[m],
                v.map(|v| v.frac_reference_better.to_string())
                    .unwrap_or_default(),
                v.and_then(|v| v.paired_p)
                    .map(|p| p.to_string())
                    .unwrap_or_default()
            );
        }
    }
    std::fs::write(out.join("comparison.csv"), csv)
        .map_err(|e| EncodingError::file(&out.join("comparison.csv"), e))?;
    let md = format!(
        "# {} against {}\n\nMean over subjects of each ROI's mean / median held-out r; \"beats\" = share of voxels \
         (all subjects) where the reference has the higher r; paired p = two-sided paired t test of ROI means across subjects.\n\n{}\n![mean r per ROI and method](comparison.png)\n",
        cmp.reference,
        cmp.methods.iter().filter(|m| **m != cmp.reference).cloned().collect::<Vec<_>>().join(", "),
        markdown(cmp)
    );
    std::fs::write(out.join("comparison.md"), md)
        .map_err(|e| EncodingError::file(&out.join("comparison.md"), e))?;
    let cats: Vec<String> = cmp
        .rois
        .iter()
        .map(|r| format!("{} {}", r.hemisphere, r.roi))
        .collect();
    let series: Vec<(String, Vec<f64>)> = cmp
        .methods
        .iter()
        .map(|m| {
            (
                m.clone(),
                cmp.rois.iter().map(|r| r.mean_r[m] as f64).collect(),
            )
        })
        .collect();
    plots::grouped_bars(
        &out.join("comparison.png"),
        "Mean held-out r per ROI",
        "mean Pearson r",
        &cats,
        &series,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_t_matches_a_hand_value() {
        // d = [1, 2, 3]: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.464, df 2 -> p = 0.0742.
        let p = paired_t_p(&[1.0, 2.0, 3.0]).unwrap();
        assert!((p - 0.0742).abs() < 1e-3, "{p}");
        assert_eq!(paired_t_p(&[0.5]), None);
    }
}
