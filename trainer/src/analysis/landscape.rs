//! `vcl landscape`: how far apart tuned backbones have moved, seen through what they
//! still predict. On a probe set of images, each backbone's ImageNet class distribution
//! (softmax of its logits); between two backbones the Bhattacharyya distance
//! -ln sum_k sqrt(p_k q_k), averaged over images; the matrix embedded in 2-D by
//! classical MDS (Torgerson), plotted with each backbone coloured by ROI family and
//! hemisphere.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::backbones::NamedBackbone;
use super::probe::ProbeSet;
use crate::features::backbones::Backbone;
use crate::model::encoding::error::EncodingError;
use crate::report::plots;
use crate::Result;

/// Mean over images of the Bhattacharyya distance between rows of p and q [N, K]
/// (probability distributions).
pub fn bhattacharyya(p: &Tensor, q: &Tensor) -> f64 {
    let bc = (p.to_kind(Kind::Double) * q.to_kind(Kind::Double))
        .sqrt()
        .sum_dim_intlist(1, false, Kind::Double)
        .clamp(1e-300, 1.0);
    (-bc.log()).mean(Kind::Double).double_value(&[])
}

/// Classical MDS: `dims` coordinates per item whose Euclidean distances approximate
/// the symmetric matrix `d` (double-centred squared distances, top eigenvectors).
pub fn classical_mds(d: &[Vec<f64>], dims: usize) -> Vec<Vec<f64>> {
    let n = d.len();
    if n == 0 {
        return Vec::new();
    }
    let flat: Vec<f64> = d.iter().flat_map(|r| r.iter().map(|v| v * v)).collect();
    let d2 = Tensor::from_slice(&flat).view([n as i64, n as i64]);
    let j = Tensor::eye(n as i64, (Kind::Double, Device::Cpu)) - 1.0 / n as f64;
    let b = j.matmul(&d2).matmul(&j) * -0.5;
    let (values, vectors) = b.linalg_eigh("L");
    // eigh sorts ascending: the last `dims` are the largest.
    (0..n)
        .map(|i| {
            (0..dims)
                .map(|k| {
                    let col = n as i64 - 1 - k as i64;
                    if col < 0 {
                        return 0.0;
                    }
                    let lambda = values.double_value(&[col]).max(0.0);
                    vectors.double_value(&[i as i64, col]) * lambda.sqrt()
                })
                .collect()
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Landscape {
    pub models: Vec<String>,
    pub groups: Vec<String>,
    pub images: usize,
    /// Mean Bhattacharyya distance, [model][model].
    pub distance: Vec<Vec<f64>>,
    /// 2-D classical MDS coordinates, one per model.
    pub mds: Vec<Vec<f64>>,
}

/// What `vcl landscape` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct LandscapeConfig {
    /// `vcl finetune` run directories (repeatable); the untuned backbone is always in.
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// Input size (default: the first run's).
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Crops per photo in the probe set.
    #[arg(long, default_value_t = 8)]
    pub crops_per_photo: usize,
    /// Output folder: landscape.{json,csv,md,png}.
    #[arg(long)]
    pub out: PathBuf,
}

/// Class distributions of every backbone on `set`; writes landscape.{json,csv,md,png}.
pub fn landscape(
    models: &[NamedBackbone],
    set: &ProbeSet,
    out: &Path,
    device: Device,
) -> Result<Landscape> {
    if models.len() < 2 {
        return Err(EncodingError::Invalid(format!(
            "the landscape needs at least 2 backbones, got {}",
            models.len()
        ))
        .into());
    }
    let mut probs = Vec::new();
    for m in models {
        let backbone = Backbone::load(m.arch, &m.weights, device)?;
        let logits = super::probe::features(&backbone, None, &set.images, 32)?;
        probs.push(logits.softmax(1, Kind::Float));
    }
    let k = probs.len();
    let mut distance = vec![vec![0.0; k]; k];
    for a in 0..k {
        for b in a + 1..k {
            let v = bhattacharyya(&probs[a], &probs[b]);
            distance[a][b] = v;
            distance[b][a] = v;
        }
    }
    let mds = classical_mds(&distance, 2);
    let l = Landscape {
        models: models.iter().map(|m| m.label.clone()).collect(),
        groups: models.iter().map(|m| m.group.clone()).collect(),
        images: set.labels.len(),
        distance,
        mds,
    };
    write(out, &l)?;
    Ok(l)
}

fn write(out: &Path, l: &Landscape) -> Result<()> {
    crate::model::encoding::store::write_json(&out.join("landscape.json"), l)?;
    let mut csv = format!("model,group,mds_x,mds_y,{}\n", l.models.join(","));
    let mut md = format!(
        "Mean Bhattacharyya distance between the backbones' ImageNet class distributions on {} probe images, and 2-D classical MDS.\n\n| model | group | MDS x | MDS y | {} |\n|---|---|---:|---:|{}\n",
        l.images,
        l.models.join(" | "),
        "---:|".repeat(l.models.len())
    );
    for (i, m) in l.models.iter().enumerate() {
        let row: Vec<String> = l.distance[i].iter().map(|v| format!("{v:.4}")).collect();
        let _ = writeln!(
            csv,
            "{m},{},{:.5},{:.5},{}",
            l.groups[i],
            l.mds[i][0],
            l.mds[i][1],
            row.join(",")
        );
        let _ = writeln!(
            md,
            "| {m} | {} | {:.3} | {:.3} | {} |",
            l.groups[i],
            l.mds[i][0],
            l.mds[i][1],
            row.join(" | ")
        );
    }
    let p = out.join("landscape.csv");
    std::fs::write(&p, csv).map_err(|e| EncodingError::file(&p, e))?;
    let p = out.join("landscape.md");
    std::fs::write(&p, md).map_err(|e| EncodingError::file(&p, e))?;
    let mut groups: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (i, g) in l.groups.iter().enumerate() {
        let pt = (l.mds[i][0], l.mds[i][1]);
        match groups.iter_mut().find(|(name, _)| name == g) {
            Some((_, pts)) => pts.push(pt),
            None => groups.push((g.clone(), vec![pt])),
        }
    }
    plots::scatter(
        &out.join("landscape.png"),
        "Model landscape (MDS of Bhattacharyya distances)",
        ("MDS 1", "MDS 2"),
        &groups,
        false,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_are_at_distance_zero_and_disjoint_far() {
        let p = Tensor::from_slice(&[0.5f32, 0.5, 0.0, 0.0]).view([1, 4]);
        let q = Tensor::from_slice(&[0.0f32, 0.0, 0.5, 0.5]).view([1, 4]);
        assert!(bhattacharyya(&p, &p).abs() < 1e-12);
        assert!(bhattacharyya(&p, &q) > 100.0);
        let r = Tensor::from_slice(&[0.25f32, 0.25, 0.25, 0.25]).view([1, 4]);
        // BC = 2 * sqrt(0.5 * 0.25) = 0.7071: distance ln(sqrt(2)).
        assert!((bhattacharyya(&p, &r) - 2f64.sqrt().ln()).abs() < 1e-6);
    }

    #[test]
    fn mds_recovers_planar_distances() {
        let pts: [(f64, f64); 5] = [(0.0, 0.0), (3.0, 0.0), (0.0, 4.0), (3.0, 4.0), (1.0, 1.0)];
        let d: Vec<Vec<f64>> = pts
            .iter()
            .map(|a| {
                pts.iter()
                    .map(|b| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt())
                    .collect()
            })
            .collect();
        let x = classical_mds(&d, 2);
        for i in 0..pts.len() {
            for j in 0..pts.len() {
                let e = ((x[i][0] - x[j][0]).powi(2) + (x[i][1] - x[j][1]).powi(2)).sqrt();
                assert!((e - d[i][j]).abs() < 1e-6, "{i} {j}: {e} vs {}", d[i][j]);
            }
        }
    }
}
