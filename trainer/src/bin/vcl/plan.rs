//! `vcl plan`, `run`, `status`: a study fanned out as jobs for Slurm or Kubernetes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vcl_dataset::paths;
use vcl_trainer::plan::StatusConfig;
use vcl_trainer::plan::{self, scheduler, JobEnv, Outcome, Plan, PlanConfig, RunConfig};

use crate::device;

pub fn plan(c: &PlanConfig) -> Result<()> {
    let mut p = plan::plan(c).context("planning the study")?;
    p.sbatch = c.sbatch.as_ref().map(|s| absolute(s));
    let out = absolute(&c.out);
    // Every file is made before any is written: a bad flag leaves nothing behind.
    let sbatch = match &c.sbatch {
        Some(_) => Some(scheduler::sbatch_script(&p, &out, &c.resources)?),
        None => None,
    };
    let k8s = match &c.k8s {
        Some(_) => Some(scheduler::k8s_job(&p, &out, &c.resources)?),
        None => None,
    };
    p.write(&out)?;
    println!("| # | job | method | subject | hemispheres | ROIs |");
    println!("|---:|---|---|---|---|---|");
    for j in &p.jobs {
        let hemis: Vec<&str> = j.hemispheres.iter().map(|h| h.prefix()).collect();
        let rois = if j.rois.is_empty() {
            "all".to_string()
        } else {
            j.rois.join(", ")
        };
        println!(
            "| {} | {} | {} | {} | {} | {rois} |",
            j.index,
            j.id,
            j.method.name(),
            j.subject,
            hemis.join(",")
        );
    }
    println!("\n{} jobs: {}", p.jobs.len(), out.display());
    if let (Some(path), Some(text)) = (&c.sbatch, sbatch) {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("Slurm: sbatch {}", path.display());
    }
    if let (Some(path), Some(text)) = (&c.k8s, k8s) {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("Kubernetes: kubectl apply -f {}", path.display());
    }
    println!("one job here: vcl run --plan {} --index 0", out.display());
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

pub fn run(c: &RunConfig) -> Result<()> {
    let p = Plan::read(&c.plan)?;
    let index = c.index()?;
    let cache = paths::cache_dir();
    let env = JobEnv {
        cache_dir: &cache,
        device: device()?,
    };
    let outcome = plan::run_job(&p, index, &env, true)
        .with_context(|| format!("job {index} of {}", c.plan.display()))?;
    let (results, what) = match outcome {
        Outcome::AlreadyDone(r) => (r, "done already (nothing to do)".to_string()),
        Outcome::Done {
            results,
            resumed_from_epoch: Some(e),
        } => (
            results,
            format!("done (resumed from the checkpoint of epoch {e})"),
        ),
        Outcome::Done { results, .. } => (results, "done".to_string()),
    };
    println!("job {index} ({}): {what}", p.jobs[index].id);
    for r in results {
        println!(
            "  {} {} {}: mean r {:.3} over {} voxels",
            r.subject,
            r.hemisphere.prefix(),
            r.roi,
            r.mean_r,
            r.voxels
        );
    }
    Ok(())
}

pub fn status(c: &StatusConfig) -> Result<()> {
    let p = Plan::read(&c.plan)?;
    let statuses = plan::status(&p)?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        print!("{}", plan::state::markdown(&p, &statuses));
    }
    Ok(())
}
