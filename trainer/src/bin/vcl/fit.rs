//! `vcl fit`, `evaluate`, `compare`, `transfer`: voxel encoders and their scores.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vcl_dataset::paths;
use vcl_trainer::analysis::compare::{self, CompareConfig};
use vcl_trainer::analysis::transfer::TransferConfig;
use vcl_trainer::model::encoding::{self, FitConfig};

use crate::device;

#[derive(clap::Args, Debug)]
pub struct FitArgs {
    #[command(flatten)]
    pub config: FitConfig,
    /// Run directory to write (encoders, fit.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Also run `evaluate` afterwards.
    #[arg(long)]
    pub evaluate: bool,
}

pub fn fit(a: &FitArgs) -> Result<()> {
    let record = encoding::fit(&a.config, &a.out, &paths::cache_dir(), device()?)
        .with_context(|| format!("fitting encoders into {}", a.out.display()))?;
    println!("| subject | hemi | ROI | voxels | chosen tap | CV R^2 (training split) |");
    println!("|---|---|---|---:|---|---:|");
    for s in &record.selections {
        println!(
            "| {} | {} | {} | {} | {} | {:.3} |",
            s.subject, s.hemisphere, s.roi, s.voxels, s.tap, s.cv_score
        );
    }
    println!("\n{}", record.stages.markdown());
    if a.evaluate {
        evaluate(&a.out)?;
    }
    Ok(())
}

pub fn evaluate(run: &Path) -> Result<()> {
    let eval = encoding::evaluate(run, &paths::cache_dir(), device()?)
        .with_context(|| format!("evaluating {}", run.display()))?;
    print!("{}", encoding::evaluate::markdown_table(&eval));
    println!("\n{}", eval.stages.markdown());
    println!("\nreport: {}", run.join("evaluation/results.md").display());
    Ok(())
}

pub fn curve(c: &vcl_trainer::analysis::CurveConfig) -> Result<()> {
    let points = vcl_trainer::analysis::curve(c).context("the data-size curve")?;
    let md = c.out.join("curve.md");
    print!("{}", std::fs::read_to_string(&md).unwrap_or_default());
    tracing::info!(points = points.len(), report = %md.display(), "curve written");
    Ok(())
}

pub fn compare(c: &CompareConfig) -> Result<()> {
    let runs = match &c.plan {
        Some(p) => vcl_trainer::plan::Plan::read(p)?.finished_fits()?,
        None => c.runs.clone(),
    };
    let cmp = compare::compare(&runs, c.reference.as_deref(), &c.out).context("comparing runs")?;
    print!("{}", compare::markdown(&cmp));
    println!("\nreport: {}", c.out.join("comparison.md").display());
    Ok(())
}

pub fn transfer(c: &TransferConfig) -> Result<()> {
    let m = vcl_trainer::analysis::transfer::transfer(c, &paths::cache_dir(), device()?)
        .context("cross-subject transfer")?;
    println!("| backbone tuned on | {} |", m.targets.join(" | "));
    println!("|---|{}", "---:|".repeat(m.targets.len()));
    for (i, s) in m.sources.iter().enumerate() {
        let cells: Vec<String> = m.frac_beating_untuned[i]
            .iter()
            .map(|f| format!("{:.0}%", 100.0 * f))
            .collect();
        println!("| {s} | {} |", cells.join(" | "));
    }
    println!(
        "\nshare of voxels beating untuned: {}",
        c.out.join("transfer.png").display()
    );
    Ok(())
}
