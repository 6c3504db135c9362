//! `vcl`: the trainer's command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vcl_trainer::algonauts::Hemisphere;
use vcl_trainer::algonauts::{summary, Dataset};
use vcl_trainer::backbones::Arch;
use vcl_trainer::encoding::{self, AlphaMode, FitConfig};
use vcl_trainer::{paths, ridge, synth};

#[derive(Parser, Debug)]
#[command(
    name = "vcl",
    version,
    about = "Fine-tune CNNs on visual-cortex fMRI and fit voxel encoders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Synthesize an in-silico brain in the Algonauts 2023 layout.
    Synth(SynthArgs),
    /// Summarize a dataset folder: subjects, images, vertices per ROI, noise ceilings.
    Inspect(InspectArgs),
    /// Fit voxel encoders (tap features -> PCA -> ridge) inside the training split.
    Fit(FitArgs),
    /// Score a fit's encoders once on the held-out split; write tables and plots.
    Evaluate(EvaluateArgs),
    /// Compare evaluated runs (untuned, regression, cl, pooled) per ROI.
    Compare(CompareArgs),
    /// Export a fit's encoders (backbone + PCA + ridge) as verified ONNX models.
    Export(ExportArgs),
    /// Fine-tune a backbone for one ROI: contrastive (the paper's) or regression.
    Finetune(FinetuneArgs),
    /// Cross-subject transfer: tuned backbones as frozen extractors for other subjects.
    Transfer(TransferArgs),
    /// Where each ROI model of a fit looks: saliency (gradient, Grad-CAM) and its
    /// left-right and upper-lower indices on held-out images.
    Lateralization(LateralizationArgs),
    /// The contrastive MI lower bound of fine-tuning runs on held-out images.
    Mi(MiArgs),
    /// How much recognition tuned backbones keep: a logistic-regression probe (faces
    /// vs non-faces, and which photo a crop came from), untuned vs each run.
    Probe(ProbeArgs),
    /// Bhattacharyya distances between backbones' class predictions, embedded by MDS.
    Landscape(LandscapeArgs),
    /// One self-contained HTML page (and Markdown) of a folder of runs and analyses.
    Report(ReportArgs),
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// The folder of runs (e.g. runs/demo): fits, fine-tuning runs, comparisons and
    /// analysis outputs, up to two levels down.
    runs: PathBuf,
    /// Output folder (default: RUNS/report): index.html and report.md.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// `vcl finetune` run directories (repeatable); the untuned backbone is always in.
    #[arg(long = "run")]
    runs: Vec<PathBuf>,
    /// Tap the probe reads (default: the penultimate layer, avgpool / classifier.5).
    #[arg(long)]
    tap: Option<String>,
    /// Input size (default: the first run's, else 128).
    #[arg(long)]
    input_size: Option<u32>,
    /// Crops per photo of the photo-source set.
    #[arg(long, default_value_t = 24)]
    crops_per_photo: usize,
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Output folder: probe.{json,csv,md,png}.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct LandscapeArgs {
    /// `vcl finetune` run directories (repeatable); the untuned backbone is always in.
    #[arg(long = "run", required = true)]
    runs: Vec<PathBuf>,
    #[arg(long)]
    input_size: Option<u32>,
    /// Crops per photo in the probe set.
    #[arg(long, default_value_t = 8)]
    crops_per_photo: usize,
    /// Output folder: landscape.{json,csv,md,png}.
    #[arg(long)]
    out: PathBuf,
}

/// The untuned backbone and each run's tuned one, and the input size to use.
fn compared_backbones(
    runs: &[PathBuf],
    size: Option<u32>,
) -> Result<(Vec<vcl_trainer::analysis::NamedBackbone>, u32)> {
    use vcl_trainer::analysis::backbones;
    let tuned = runs
        .iter()
        .map(|r| backbones::finetuned(r).with_context(|| format!("reading {}", r.display())))
        .collect::<Result<Vec<_>>>()?;
    let arch = tuned
        .first()
        .map_or(vcl_trainer::backbones::Arch::MobileNetV2, |t| t.arch);
    let size = match (size, runs.first()) {
        (Some(s), _) => s,
        (None, Some(r)) => {
            let cfg: vcl_trainer::finetune::FinetuneConfig = serde_json::from_str(
                &std::fs::read_to_string(r.join("config.json")).context("config.json")?,
            )
            .context("config.json")?;
            cfg.input_size
        }
        (None, None) => 128,
    };
    let mut all = vec![backbones::untuned(arch)];
    all.extend(tuned);
    Ok((all, size))
}

#[derive(clap::Args, Debug)]
struct MiArgs {
    /// `vcl finetune --method cl` run directories (repeatable); a run with a frozen
    /// backbone (--freeze features,classifier) gives the untuned backbone's bound.
    #[arg(long = "run", required = true)]
    runs: Vec<PathBuf>,
    /// Output folder: mi.{json,csv,md,png}.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct LateralizationArgs {
    /// A `vcl fit` run directory.
    #[arg(long)]
    run: PathBuf,
    /// Output folder: lateralization.{json,csv,md,png} and overlays/.
    #[arg(long)]
    out: PathBuf,
    /// ROIs to analyse, as the run names them (default: all).
    #[arg(long, value_delimiter = ',')]
    rois: Vec<String>,
    /// Held-out images per subject.
    #[arg(long, default_value_t = 32)]
    images: usize,
    /// Grad-CAM layer (default: the encoder's tap, or the deepest conv tap before it).
    #[arg(long)]
    layer: Option<String>,
    /// Images shown in each model's overlay PNG.
    #[arg(long, default_value_t = 4)]
    overlays: usize,
}

#[derive(clap::Args, Debug)]
struct FinetuneArgs {
    #[arg(long)]
    data: PathBuf,
    /// Run directory (config, checkpoints, curves, backbone.safetensors).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "cl")]
    method: vcl_trainer::finetune::Method,
    /// Subjects; more than one trains the pooled model (one fMRI map per subject).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    subjects: Vec<String>,
    #[arg(long, default_value = "lh")]
    hemisphere: Hemisphere,
    /// ROI name or union (early, V1v+V1d, FFA-1, ...).
    #[arg(long)]
    roi: String,
    #[arg(long, default_value = "mobilenet_v2")]
    backbone: Arch,
    /// Initial weights (default: the installed ImageNet weights).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, default_value_t = 224)]
    input_size: u32,
    /// Default: 30 (cl) / 75 (regression), as METHOD.md.
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// Default: 1e-4 (cl) / 2.5e-5 (regression).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0.3)]
    tau: f64,
    /// Backbone parameters to keep frozen, by name prefix (e.g. features.0,features.1).
    #[arg(long, value_delimiter = ',')]
    freeze: Vec<String>,
    #[arg(long, default_value_t = 0.15)]
    heldout: f64,
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Two-way InfoNCE (beyond the paper).
    #[arg(long)]
    symmetric: bool,
    /// Learn the temperature (beyond the paper).
    #[arg(long)]
    learnable_tau: bool,
    /// Random resized crops + colour jitter, never flips (beyond the paper).
    #[arg(long)]
    augment: bool,
    /// float16 autocast on CUDA.
    #[arg(long)]
    mixed_precision: bool,
    /// Images per forward/backward pass inside a batch (bounds memory).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Backbone tap whose features replace the 1000 logits as the heads' input,
    /// global-average-pooled over space for conv taps (e.g. features.13 for
    /// mobilenet_v2). Layers after the tap stay as loaded (beyond the paper).
    #[arg(long, value_name = "TAP")]
    image_tap: Option<String>,
    /// Continue a killed run from its last checkpoint.
    #[arg(long)]
    resume: bool,
}

#[derive(clap::Args, Debug)]
struct TransferArgs {
    /// The evaluated untuned run (its fit config gives data, taps, input size).
    #[arg(long)]
    untuned: PathBuf,
    /// Tuned backbones as LABEL=PATH (e.g. subj01=runs/cl-s1/backbone.safetensors).
    #[arg(long = "source", required = true)]
    sources: Vec<String>,
    #[arg(long, default_value = "lh")]
    hemisphere: Hemisphere,
    #[arg(long)]
    roi: String,
    /// Target subjects (default: the untuned run's).
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<String>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Run directories written by `vcl fit` (repeatable).
    #[arg(long = "run", required = true)]
    runs: Vec<PathBuf>,
    /// Model repository to write into.
    #[arg(long, default_value = "exports")]
    out: PathBuf,
    /// Held-out images each model is checked on (ONNX Runtime against libtorch).
    #[arg(long, default_value_t = 8)]
    verify_images: usize,
    /// Largest relative difference accepted.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// One model per ROI even where ROIs could share a backbone in one model.
    #[arg(long)]
    per_roi: bool,
    /// libonnxruntime.so to verify with (default: the venv's onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib_path: Option<PathBuf>,
    /// Commit recorded as provenance (default: asks git).
    #[arg(long)]
    git_commit: Option<String>,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Evaluated run directories, one per method.
    #[arg(required = true, num_args = 2..)]
    runs: Vec<PathBuf>,
    /// Method the others are measured against (default: cl when present).
    #[arg(long)]
    reference: Option<String>,
    /// Output folder for comparison.{md,csv,json,png}.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct FitArgs {
    /// Dataset folder (Algonauts 2023 layout).
    #[arg(long)]
    data: PathBuf,
    /// Run directory to write (encoders, fit.json).
    #[arg(long)]
    out: PathBuf,
    /// Subjects (comma-separated: 1,2 or subj01,subj02); default: all.
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<String>,
    /// Hemispheres (lh, rh).
    #[arg(long, value_delimiter = ',', default_value = "lh,rh")]
    hemispheres: Vec<Hemisphere>,
    /// ROIs (comma-separated; `+` joins a union); default: every non-empty ROI.
    #[arg(long, value_delimiter = ',')]
    rois: Vec<String>,
    #[arg(long, default_value = "mobilenet_v2")]
    backbone: Arch,
    /// Backbone weights (safetensors, torchvision names); default: the installed ImageNet weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Taps to choose from (default: all of the backbone's).
    #[arg(long, value_delimiter = ',')]
    taps: Vec<String>,
    /// Input size in pixels (224 as in the paper; smaller is faster on CPU).
    #[arg(long, default_value_t = 224)]
    input_size: u32,
    #[arg(long, default_value_t = 1000)]
    pca: usize,
    /// Ridge alphas (default: logspace(-1, 7, 9)).
    #[arg(long, value_delimiter = ',')]
    alphas: Vec<f64>,
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// One alpha per voxel (default) or one per ROI (the paper's).
    #[arg(long, value_enum, default_value = "voxel")]
    alpha_mode: AlphaMode,
    #[arg(long, default_value_t = 0.15)]
    heldout: f64,
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Conv taps with more values per image are average-pooled to a coarser grid.
    #[arg(long, default_value_t = 16384)]
    max_feature_dim: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Label of the backbone's training in reports (untuned, cl, regression, ...).
    #[arg(long, default_value = "untuned")]
    method: String,
    /// Also run `evaluate` afterwards.
    #[arg(long)]
    evaluate: bool,
}

#[derive(clap::Args, Debug)]
struct EvaluateArgs {
    /// Run directory written by `vcl fit`.
    run: PathBuf,
}

#[derive(clap::Args, Debug)]
struct SynthArgs {
    /// Size preset: tiny (seconds, tests), demo (CPU demo), nsd (full NSD scale).
    #[arg(long, value_enum, default_value = "demo")]
    preset: synth::Preset,
    /// Output folder (created; holds subj01, subj02, ...).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of simulated subjects (default: the preset's).
    #[arg(long)]
    subjects: Option<u32>,
    /// Folder of real photos to cut stimuli from (default: what set-up installed).
    #[arg(long, env = "VCL_PHOTOS_DIR")]
    photos: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    /// Dataset folder (holds subj01, ...).
    data_dir: PathBuf,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before libtorch allocates anything: keeps glibc from handing activation buffers
    // back to the kernel every step (2-3x faster CPU training).
    let tuning = vcl_trainer::finetune::tune_allocator();
    let cli = Cli::parse();
    tracing::debug!(?tuning, "allocator");
    match cli.command {
        Command::Synth(a) => run_synth(a),
        Command::Inspect(a) => run_inspect(a),
        Command::Fit(a) => run_fit(a),
        Command::Evaluate(a) => run_evaluate(&a.run),
        Command::Export(a) => run_export(a),
        Command::Finetune(a) => run_finetune(a),
        Command::Transfer(a) => run_transfer(a),
        Command::Report(a) => {
            let out = a.out.unwrap_or_else(|| a.runs.join("report"));
            let r = vcl_trainer::report::report(&a.runs, &out)
                .with_context(|| format!("reporting {}", a.runs.display()))?;
            println!(
                "report: {} ({} sections: {}; {} images)",
                r.html.display(),
                r.sections.len(),
                r.sections.join(", "),
                r.images
            );
            Ok(())
        }
        Command::Probe(a) => {
            use vcl_trainer::analysis::probe;
            let (models, size) = compared_backbones(&a.runs, a.input_size)?;
            let sets = vec![
                probe::faces(&paths::lfw_subset(), size)
                    .context("the faces set (scripts/setup.sh installs it)")?,
                probe::photo_sources(&paths::photos_dir(), a.crops_per_photo, size, 0)
                    .context("the photo-source set")?,
            ];
            probe::probe(&models, &sets, a.tap.as_deref(), a.folds, &a.out, device())
                .context("probing")?;
            print!(
                "{}",
                std::fs::read_to_string(a.out.join("probe.md")).context("probe.md")?
            );
            Ok(())
        }
        Command::Landscape(a) => {
            use vcl_trainer::analysis::{landscape, probe};
            let (models, size) = compared_backbones(&a.runs, a.input_size)?;
            let set = probe::photo_sources(&paths::photos_dir(), a.crops_per_photo, size, 1)
                .context("the probe images")?;
            landscape(&models, &set, &a.out, device()).context("the model landscape")?;
            print!(
                "{}",
                std::fs::read_to_string(a.out.join("landscape.md")).context("landscape.md")?
            );
            Ok(())
        }
        Command::Mi(a) => {
            vcl_trainer::analysis::mi(&a.runs, &a.out, &paths::cache_dir(), device())
                .context("the MI lower bound")?;
            print!(
                "{}",
                std::fs::read_to_string(a.out.join("mi.md")).context("reading mi.md")?
            );
            Ok(())
        }
        Command::Lateralization(a) => {
            let cfg = vcl_trainer::analysis::LateralizationConfig {
                rois: a.rois,
                images: a.images,
                layer: a.layer,
                overlays: a.overlays,
                ..vcl_trainer::analysis::LateralizationConfig::new(a.run.clone(), a.out.clone())
            };
            vcl_trainer::analysis::lateralization(&cfg, device())
                .with_context(|| format!("lateralization of {}", a.run.display()))?;
            let md = std::fs::read_to_string(a.out.join("lateralization.md"))
                .context("reading the table just written")?;
            print!("{md}");
            println!("\nreport: {}", a.out.join("lateralization.md").display());
            Ok(())
        }
        Command::Compare(a) => {
            let cmp = vcl_trainer::compare::compare(&a.runs, a.reference.as_deref(), &a.out)
                .context("comparing runs")?;
            print!("{}", vcl_trainer::compare::markdown(&cmp));
            println!("\nreport: {}", a.out.join("comparison.md").display());
            Ok(())
        }
    }
}

fn run_synth(a: SynthArgs) -> Result<()> {
    let cfg = synth::SynthConfig {
        preset: a.preset,
        out: a.out.clone(),
        seed: a.seed,
        subjects: a.subjects,
        photos_dir: a.photos.unwrap_or_else(paths::photos_dir),
    };
    let summary = synth::synthesize(&cfg)
        .with_context(|| format!("synthesizing the in-silico brain into {}", a.out.display()))?;
    tracing::info!(?summary, "in-silico dataset written");
    Ok(())
}

fn run_inspect(a: InspectArgs) -> Result<()> {
    let ds = Dataset::open(&a.data_dir)?;
    let s =
        summary::summarize(&ds).with_context(|| format!("inspecting {}", a.data_dir.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.to_markdown());
    }
    Ok(())
}

fn device() -> tch::Device {
    let d = tch::Device::cuda_if_available();
    tracing::info!(device = ?d, "libtorch device");
    d
}

fn run_fit(a: FitArgs) -> Result<()> {
    let subjects = if a.subjects.is_empty() {
        Dataset::open(&a.data)?.subjects
    } else {
        a.subjects.clone()
    };
    // Stored absolute, so evaluate and export work from any directory.
    let data_dir = std::fs::canonicalize(&a.data)
        .with_context(|| format!("dataset folder {}", a.data.display()))?;
    let cfg = FitConfig {
        data_dir,
        subjects,
        hemispheres: a.hemispheres.clone(),
        rois: a.rois.clone(),
        arch: a.backbone,
        weights: a
            .weights
            .clone()
            .unwrap_or_else(|| paths::weights_dir().join(a.backbone.weights_file())),
        taps: a.taps.clone(),
        input_size: a.input_size,
        pca_components: a.pca,
        alphas: if a.alphas.is_empty() {
            ridge::default_alphas()
        } else {
            a.alphas.clone()
        },
        folds: a.folds,
        alpha_mode: a.alpha_mode,
        heldout_fraction: a.heldout,
        split_seed: a.split_seed,
        max_feature_dim: Some(a.max_feature_dim),
        batch_size: a.batch_size,
        method: a.method.clone(),
    };
    let record = encoding::fit(&cfg, &a.out, &paths::cache_dir(), device())
        .with_context(|| format!("fitting encoders into {}", a.out.display()))?;
    println!("| subject | hemi | ROI | voxels | chosen tap | CV R^2 (training split) |");
    println!("|---|---|---|---:|---|---:|");
    for s in &record.selections {
        println!(
            "| {} | {} | {} | {} | {} | {:.3} |",
            s.subject, s.hemisphere, s.roi, s.voxels, s.tap, s.cv_score
        );
    }
    if a.evaluate {
        run_evaluate(&a.out)?;
    }
    Ok(())
}

fn run_evaluate(run: &std::path::Path) -> Result<()> {
    let eval = encoding::evaluate(run, &paths::cache_dir(), device())
        .with_context(|| format!("evaluating {}", run.display()))?;
    print!("{}", encoding::evaluate::markdown_table(&eval));
    println!("\nreport: {}", run.join("evaluation/results.md").display());
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    let opts = vcl_trainer::onnx_export::ExportOptions {
        verify_images: a.verify_images,
        tolerance: a.tolerance,
        ort_dylib: a.ort_dylib_path.clone(),
        git_commit: a.git_commit.clone(),
        per_roi: a.per_roi,
        threads: 0,
    };
    let runs: Vec<String> = a.runs.iter().map(|r| r.display().to_string()).collect();
    let models = vcl_trainer::onnx_export::export_runs(&a.runs, &a.out, &opts)
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

fn run_finetune(a: FinetuneArgs) -> Result<()> {
    use vcl_trainer::finetune::{self, FinetuneConfig};
    let data_dir = std::fs::canonicalize(&a.data)
        .with_context(|| format!("dataset folder {}", a.data.display()))?;
    let mut cfg = FinetuneConfig::new(
        a.method,
        data_dir,
        a.subjects.clone(),
        a.hemisphere,
        a.roi.clone(),
    );
    cfg.arch = a.backbone;
    cfg.weights = a
        .weights
        .clone()
        .unwrap_or_else(|| paths::weights_dir().join(a.backbone.weights_file()));
    cfg.input_size = a.input_size;
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    }
    cfg.batch_size = a.batch_size;
    cfg.tau = a.tau;
    cfg.freeze = a.freeze.clone();
    cfg.heldout_fraction = a.heldout;
    cfg.split_seed = a.split_seed;
    cfg.seed = a.seed;
    cfg.symmetric = a.symmetric;
    cfg.learnable_tau = a.learnable_tau;
    cfg.augment = a.augment;
    cfg.mixed_precision = a.mixed_precision;
    cfg.micro_batch = a.micro_batch;
    cfg.image_tap = a.image_tap.clone();
    let s = finetune::finetune(&cfg, &a.out, a.resume, &paths::cache_dir(), device())
        .with_context(|| format!("fine-tuning into {}", a.out.display()))?;
    println!(
        "{} run of {} epochs ({} completed) in {:.0} s, {:.1} images/s on {}",
        s.method, s.epochs, s.epochs_completed, s.wall_seconds, s.images_per_s, s.device
    );
    if let Some(b) = &s.backbone {
        println!("tuned backbone: {}  (vcl fit --weights {0})", b.display());
    }
    Ok(())
}

fn run_transfer(a: TransferArgs) -> Result<()> {
    let record: encoding::fit::FitRecord = encoding::store::read_json(&a.untuned.join("fit.json"))
        .context("reading the untuned run")?;
    let mut base = record.config;
    base.hemispheres = vec![a.hemisphere];
    base.rois = vec![a.roi.clone()];
    if !a.subjects.is_empty() {
        base.subjects = a.subjects.clone();
    }
    let sources: Vec<(String, PathBuf)> = a
        .sources
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(l, p)| (l.to_string(), PathBuf::from(p)))
                .with_context(|| format!("--source {s}: expected LABEL=PATH"))
        })
        .collect::<Result<_>>()?;
    let m = vcl_trainer::transfer::transfer(
        &base,
        &a.untuned,
        &sources,
        &a.out,
        &paths::cache_dir(),
        device(),
    )
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
        a.out.join("transfer.png").display()
    );
    Ok(())
}
