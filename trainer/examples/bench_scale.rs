//! The tables and plots of `scripts/bench_scale.sh`: per stage, the wall time and peak
//! resident memory of `vcl fit --evaluate` and of the Python reference pipeline, at
//! each number of images, with their ratios and how each stage grows.
//!
//! `bench_scale --runs RUNS.json --out DIR` reads the script's list of runs
//! (`[{"images": N, "vcl_run": DIR, "reference": FILE, "vcl_process_peak_mb": MB}]`)
//! and writes DIR/scale.md, scale.csv, scale_time.png and scale_memory.png.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;
use vcl_trainer::report::plots;
use vcl_trainer::stages::Stages;

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    runs: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Deserialize)]
struct RunEntry {
    images: usize,
    /// The synth preset the images come from: growth is measured within one.
    preset: String,
    vcl_run: PathBuf,
    reference: PathBuf,
    /// The whole `vcl fit --evaluate` process's peak (`/usr/bin/time -v`), MB.
    vcl_process_peak_mb: Option<f64>,
}

#[derive(Deserialize)]
struct Reference {
    tool: String,
    stages: Vec<RefStage>,
    results: BTreeMap<String, RefResult>,
}

#[derive(Deserialize)]
struct RefStage {
    stage: String,
    seconds: f64,
    peak_rss_mb: f64,
}

#[derive(Deserialize)]
struct RefResult {
    tap: String,
    mean_r: f64,
}

#[derive(Deserialize)]
struct FitJson {
    stages: Stages,
}

#[derive(Deserialize)]
struct EvalJson {
    stages: Stages,
    results: Vec<EvalResult>,
}

#[derive(Deserialize)]
struct EvalResult {
    hemisphere: String,
    roi: String,
    tap: String,
    scores: EvalScores,
}

#[derive(Deserialize)]
struct EvalScores {
    mean_r: f64,
}

const STAGES: [&str; 5] = ["decode", "features", "pca", "ridge", "evaluation"];

/// (seconds, peak MB) of one tool's stage at one size.
type Cell = (f64, f64);

#[derive(Clone)]
struct Row {
    images: usize,
    preset: String,
    vcl: BTreeMap<&'static str, Cell>,
    reference: BTreeMap<&'static str, Cell>,
    vcl_process_peak_mb: Option<f64>,
    /// "hemi/ROI" -> (vcl tap, vcl r, reference tap, reference r)
    scores: BTreeMap<String, (String, f64, String, f64)>,
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn cell(stages: &Stages, names: &[&str]) -> Cell {
    let picked = stages
        .stages
        .iter()
        .filter(|s| names.contains(&s.stage.as_str()));
    picked.fold((0.0, 0.0), |(t, m), s| {
        (t + s.seconds, m.max(s.peak_rss_mb.unwrap_or(0.0)))
    })
}

fn row(entry: &RunEntry) -> Result<(Row, String)> {
    let fit: FitJson = read(&entry.vcl_run.join("fit.json"))?;
    let eval: EvalJson = read(&entry.vcl_run.join("evaluation/results.json"))?;
    let reference: Reference = read(&entry.reference)?;
    let mut vcl = BTreeMap::new();
    for stage in ["decode", "features", "pca", "ridge"] {
        vcl.insert(stage, cell(&fit.stages, &[stage]));
    }
    // Scoring re-reads the held-out images and runs the network on them: vcl records
    // those as its evaluate command's own decode and features stages.
    vcl.insert(
        "evaluation",
        cell(&eval.stages, &["decode", "features", "evaluation"]),
    );
    let mut refs = BTreeMap::new();
    for stage in STAGES {
        let s = reference
            .stages
            .iter()
            .find(|s| s.stage == stage)
            .with_context(|| format!("{}: no stage {stage}", entry.reference.display()))?;
        refs.insert(stage, (s.seconds, s.peak_rss_mb));
    }
    let mut scores = BTreeMap::new();
    for r in &eval.results {
        let key = format!("{}/{}", r.hemisphere, r.roi);
        let Some(theirs) = reference.results.get(&key) else {
            bail!("{}: no result for {key}", entry.reference.display());
        };
        scores.insert(
            key,
            (
                r.tap.clone(),
                r.scores.mean_r,
                theirs.tap.clone(),
                theirs.mean_r,
            ),
        );
    }
    Ok((
        Row {
            images: entry.images,
            preset: entry.preset.clone(),
            vcl,
            reference: refs,
            vcl_process_peak_mb: entry.vcl_process_peak_mb,
            scores,
        },
        reference.tool,
    ))
}

fn total(cells: &BTreeMap<&'static str, Cell>) -> Cell {
    cells
        .values()
        .fold((0.0, 0.0), |(t, m), c| (t + c.0, m.max(c.1)))
}

/// Exponent b of seconds ~ images^b between the first and last sizes.
fn growth(rows: &[Row], f: impl Fn(&Row) -> f64) -> Option<f64> {
    let (a, b) = (rows.first()?, rows.last()?);
    let (ta, tb) = (f(a), f(b));
    if rows.len() < 2 || ta <= 0.0 || tb <= 0.0 || a.images == b.images {
        return None;
    }
    Some((tb / ta).ln() / (b.images as f64 / a.images as f64).ln())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let entries: Vec<RunEntry> = read(&cli.runs)?;
    if entries.is_empty() {
        bail!("{}: no runs", cli.runs.display());
    }
    let mut rows = Vec::new();
    let mut tool = String::new();
    for e in &entries {
        let (r, t) = row(e)?;
        rows.push(r);
        tool = t;
    }
    rows.sort_by_key(|r| r.images);
    std::fs::create_dir_all(&cli.out)?;

    let mut md = String::new();
    let _ = writeln!(md, "Reference: {tool}. Time in seconds, peak resident set in MB; ratio = vcl / reference (below 1: vcl is faster or smaller).\n");
    let _ = writeln!(md, "| images | stage | vcl s | reference s | time ratio | vcl peak MB | reference peak MB | memory ratio |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut csv =
        String::from("images,stage,vcl_seconds,reference_seconds,vcl_peak_mb,reference_peak_mb\n");
    for r in &rows {
        let _ = writeln!(
            md,
            "| **{}** | *{} preset* | | | | | | |",
            r.images, r.preset
        );
        let mut lines: Vec<(&str, Cell, Cell)> = STAGES
            .iter()
            .map(|s| (*s, r.vcl[s], r.reference[s]))
            .collect();
        lines.push(("total", total(&r.vcl), total(&r.reference)));
        for (stage, v, f) in lines {
            let _ = writeln!(
                md,
                "| {} | {stage} | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} | {:.2} |",
                r.images,
                v.0,
                f.0,
                v.0 / f.0,
                v.1,
                f.1,
                v.1 / f.1
            );
            let _ = writeln!(
                csv,
                "{},{stage},{:.3},{:.3},{:.1},{:.1}",
                r.images, v.0, f.0, v.1, f.1
            );
        }
        if let Some(p) = r.vcl_process_peak_mb {
            let _ = writeln!(
                md,
                "| {} | (vcl fit --evaluate, whole process, time -v) | | | | {p:.0} | | |",
                r.images
            );
        }
    }

    // Growth within the preset of the largest run: another brain has other voxel counts.
    let last_preset = rows[rows.len() - 1].preset.clone();
    let same: Vec<Row> = rows
        .iter()
        .filter(|r| r.preset == last_preset)
        .map(Row::clone)
        .collect();
    let _ = writeln!(
        md,
        "\nGrowth, seconds ~ images^b from {} to {} images of the {last_preset} preset:\n",
        same[0].images,
        same[same.len() - 1].images
    );
    let _ = writeln!(md, "| stage | vcl b | reference b |");
    let _ = writeln!(md, "|---|---:|---:|");
    let fmt = |b: Option<f64>| b.map_or("-".into(), |b| format!("{b:.2}"));
    for stage in STAGES {
        let _ = writeln!(
            md,
            "| {stage} | {} | {} |",
            fmt(growth(&same, |r| r.vcl[stage].0)),
            fmt(growth(&same, |r| r.reference[stage].0))
        );
    }

    let _ = writeln!(
        md,
        "\nHeld-out mean r (both fit and score the same rows; vcl's tap / reference's tap):\n"
    );
    let _ = writeln!(md, "| images | hemi/ROI | vcl | reference |");
    let _ = writeln!(md, "|---:|---|---:|---:|");
    for r in &rows {
        for (k, (vt, vr, rt, rr)) in &r.scores {
            let _ = writeln!(
                md,
                "| {} | {k} | {vr:.3} ({vt}) | {rr:.3} ({rt}) |",
                r.images
            );
        }
    }
    std::fs::write(cli.out.join("scale.md"), &md)?;
    std::fs::write(cli.out.join("scale.csv"), csv)?;

    let xs = |f: &dyn Fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.images as f64, f(r))).collect()
    };
    let mut time_series = vec![
        ("vcl total".to_string(), xs(&|r| total(&r.vcl).0)),
        (
            "reference total".to_string(),
            xs(&|r| total(&r.reference).0),
        ),
    ];
    for stage in ["features", "pca", "ridge"] {
        time_series.push((format!("vcl {stage}"), xs(&|r| r.vcl[stage].0)));
        time_series.push((format!("reference {stage}"), xs(&|r| r.reference[stage].0)));
    }
    plots::line_chart(
        &cli.out.join("scale_time.png"),
        "vcl fit --evaluate vs the Python reference: wall time",
        ("training images of one subject", "seconds"),
        &time_series,
    )?;
    let memory_series = vec![
        ("vcl peak".to_string(), xs(&|r| total(&r.vcl).1)),
        ("reference peak".to_string(), xs(&|r| total(&r.reference).1)),
    ];
    plots::line_chart(
        &cli.out.join("scale_memory.png"),
        "peak resident memory",
        ("training images of one subject", "MB"),
        &memory_series,
    )?;
    print!("{md}");
    println!("\nwritten: {}", cli.out.join("scale.md").display());
    Ok(())
}
