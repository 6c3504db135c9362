//! `vcl export`: fitted runs into the model repository, verified, all or none.

use std::path::PathBuf;

use anyhow::{Context, Result};
use vcl_trainer::export::{export_runs, ExportOptions};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Run directories written by `vcl fit` (repeatable).
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// Model repository to write into.
    #[arg(long, default_value = "exports")]
    pub out: PathBuf,
    #[command(flatten)]
    pub options: ExportOptions,
}

pub fn export(a: &ExportArgs) -> Result<()> {
    let runs: Vec<String> = a.runs.iter().map(|r| r.display().to_string()).collect();
    let models = export_runs(&a.runs, &a.out, &a.options)
        .with_context(|| format!("exporting {} (nothing was published)", runs.join(", ")))?;
    println!("| model | version | ROIs | voxels | ONNX Runtime vs libtorch (max rel. diff) |");
    println!("|---|---:|---:|---:|---:|");
    for m in models {
        let voxels: usize = m.manifest.rois.iter().map(|r| r.vertices.len()).sum();
        println!(
            "| {} | {} | {} | {} | {:.1e} |",
            m.name,
            m.version,
            m.manifest.rois.len(),
            voxels,
            m.comparison.max_rel
        );
    }
    println!("\nmodel repository: {}", a.out.display());
    Ok(())
}
