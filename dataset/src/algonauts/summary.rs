//! `vcl inspect`: what a dataset folder holds, as a Markdown report or JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::{Dataset, Hemisphere};
use crate::error::Result;

/// What `vcl inspect` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectConfig {
    /// Dataset folder (holds subj01, ...).
    pub data_dir: PathBuf,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// The report `vcl inspect` prints: Markdown, or JSON with `json`.
pub fn inspect(cfg: &InspectConfig) -> Result<String> {
    let s = summarize(&Dataset::open(&cfg.data_dir)?)?;
    if cfg.json {
        serde_json::to_string_pretty(&s)
            .map(|j| j + "\n")
            .map_err(|e| {
                crate::DataError::Invalid(format!("summary of {}: {e}", cfg.data_dir.display()))
            })
    } else {
        Ok(s.to_markdown())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetSummary {
    pub root: PathBuf,
    pub in_silico: Option<serde_json::Value>,
    pub subjects: Vec<SubjectSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectSummary {
    pub subject: String,
    pub train_images: usize,
    pub test_images: usize,
    pub hemispheres: Vec<HemisphereSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HemisphereSummary {
    pub hemisphere: Hemisphere,
    pub vertices: usize,
    pub fsaverage_mapped: bool,
    pub has_ground_truth: bool,
    pub rois: Vec<RoiSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoiSummary {
    pub family: String,
    pub roi: String,
    pub vertices: usize,
    /// Quartiles (25, 50, 75 %) of the noise ceiling over the ROI's vertices, where known.
    pub noise_ceiling_quartiles: Option<[f32; 3]>,
}

pub fn summarize(ds: &Dataset) -> Result<DatasetSummary> {
    let mut subjects = Vec::new();
    for name in &ds.subjects {
        let s = ds.subject(name)?;
        let mut hemispheres = Vec::new();
        for h in Hemisphere::BOTH {
            let atlas = s.rois(h)?;
            let nc = s.noise_ceiling(h)?;
            let mut rois = Vec::new();
            for f in &atlas.families {
                for (&label, roi) in &f.names {
                    let idx: Vec<usize> = (0..atlas.n_vertices)
                        .filter(|&i| f.labels[i] == label)
                        .collect();
                    let quartiles = nc.as_ref().filter(|_| !idx.is_empty()).map(|nc| {
                        let mut v: Vec<f32> = idx.iter().map(|&i| nc[i]).collect();
                        v.sort_by(f32::total_cmp);
                        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
                        [q(0.25), q(0.5), q(0.75)]
                    });
                    rois.push(RoiSummary {
                        family: f.family.clone(),
                        roi: roi.clone(),
                        vertices: idx.len(),
                        noise_ceiling_quartiles: quartiles,
                    });
                }
            }
            hemispheres.push(HemisphereSummary {
                hemisphere: h,
                vertices: atlas.n_vertices,
                fsaverage_mapped: atlas.fsaverage.is_some(),
                has_ground_truth: s.layout.ground_truth_train(h).exists(),
                rois,
            });
        }
        subjects.push(SubjectSummary {
            subject: name.clone(),
            train_images: s.train_images.len(),
            test_images: s.test_images.len(),
            hemispheres,
        });
    }
    Ok(DatasetSummary {
        root: ds.root.clone(),
        in_silico: ds.in_silico_params()?,
        subjects,
    })
}

impl DatasetSummary {
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let kind = match &self.in_silico {
            Some(p) => format!(
                "in-silico brain (preset {}, seed {})",
                p.get("preset").map(|v| v.to_string()).unwrap_or_default(),
                p.get("seed").map(|v| v.to_string()).unwrap_or_default()
            ),
            None => "Algonauts 2023 / NSD layout".to_string(),
        };
        let _ = writeln!(
            s,
            "# Dataset {}\n\n{kind}, {} subject(s)\n",
            self.root.display(),
            self.subjects.len()
        );
        let _ = writeln!(s, "| subject | train images | test images | lh vertices | rh vertices | noiseless truth |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
        for sub in &self.subjects {
            let v = |i: usize| sub.hemispheres.get(i).map(|h| h.vertices).unwrap_or(0);
            let gt = sub.hemispheres.iter().all(|h| h.has_ground_truth);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                sub.subject,
                sub.train_images,
                sub.test_images,
                v(0),
                v(1),
                if gt { "yes" } else { "no" }
            );
        }
        for sub in &self.subjects {
            let _ = writeln!(
                s,
                "\n## {}: vertices per ROI (noise ceiling median [IQR] where known)\n",
                sub.subject
            );
            let _ = writeln!(s, "| family | ROI | lh | rh |");
            let _ = writeln!(s, "|---|---|---:|---:|");
            let (Some(lh), Some(rh)) = (sub.hemispheres.first(), sub.hemispheres.get(1)) else {
                continue;
            };
            for (a, b) in lh.rois.iter().zip(&rh.rois) {
                let cell = |r: &RoiSummary| match r.noise_ceiling_quartiles {
                    Some([q1, m, q3]) => format!("{} (NC {m:.2} [{q1:.2}, {q3:.2}])", r.vertices),
                    None => r.vertices.to_string(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    a.family,
                    a.roi,
                    cell(a),
                    cell(b)
                );
            }
        }
        s
    }
}
