//! `vcl`: the trainer's command line. One module per command group, in the order of
//! the data flow (the dataset's commands come from `vcl_dataset::cli`; fit ->
//! fine-tune -> export, then the analyses and the report); every command's flags are
//! its library configuration type, flattened here.

mod analyses;
mod export;
mod finetune;
mod fit;
mod plan;

use std::sync::OnceLock;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vcl_dataset::cli::DataCommand;
use vcl_trainer::analysis::compare::CompareConfig;
use vcl_trainer::analysis::transfer::TransferConfig;
use vcl_trainer::analysis::{LandscapeConfig, LateralizationConfig, MiConfig, ProbeConfig};
use vcl_trainer::device::DeviceChoice;
use vcl_trainer::model::encoding::evaluate::EvaluateConfig;
use vcl_trainer::plan::{PlanConfig, RunConfig, StatusConfig};
use vcl_trainer::report::ReportConfig;

#[derive(Parser, Debug)]
#[command(
    name = "vcl",
    version,
    about = "Fine-tune CNNs on visual-cortex fMRI and fit voxel encoders"
)]
struct Cli {
    /// Where libtorch computes: auto (CUDA when a GPU is visible, else the CPU), cpu,
    /// cuda or cuda:N. Asking for a GPU that is not there is an error, not the CPU.
    #[arg(long, global = true, env = "VCL_DEVICE", default_value = "auto")]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Data(DataCommand),
    /// Fit voxel encoders (tap features -> PCA -> ridge, or fwRF) inside the training split.
    Fit(fit::FitArgs),
    /// Score a fit's encoders once on the held-out split; write tables and plots.
    Evaluate(EvaluateConfig),
    /// Compare evaluated runs (untuned, regression, cl, pooled) per ROI.
    Compare(CompareConfig),
    /// Held-out accuracy against the number of training images, from runs fitted with
    /// --train-images: a table and a line chart per ROI.
    Curve(vcl_trainer::analysis::CurveConfig),
    /// Export a fit's encoders (backbone + PCA + ridge) as verified ONNX models.
    Export(export::ExportArgs),
    /// Fine-tune a backbone for one ROI: contrastive (the paper's) or regression.
    Finetune(finetune::FinetuneArgs),
    /// Cross-subject transfer: tuned backbones as frozen extractors for other subjects.
    Transfer(TransferConfig),
    /// Where each ROI model of a fit looks: saliency (gradient, Grad-CAM) and its
    /// left-right and upper-lower indices on held-out images.
    Lateralization(LateralizationConfig),
    /// The contrastive MI lower bound of fine-tuning runs on held-out images.
    Mi(MiConfig),
    /// How much recognition tuned backbones keep: a logistic-regression probe (faces
    /// vs non-faces, and which photo a crop came from), untuned vs each run.
    Probe(ProbeConfig),
    /// Bhattacharyya distances between backbones' class predictions, embedded by MDS.
    Landscape(LandscapeConfig),
    /// One self-contained HTML page (and Markdown) of a folder of runs and analyses.
    Report(ReportConfig),
    /// A study as independent jobs (PLAN.json), with a Slurm array script or a
    /// Kubernetes Indexed Job to run them.
    Plan(Box<PlanConfig>),
    /// Run one job of a plan (index from --index, SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX); finished jobs are no-ops, interrupted ones resume.
    Run(RunConfig),
    /// Which jobs of a plan are done, running, interrupted, failed or missing.
    Status(StatusConfig),
}

fn main() -> Result<()> {
    vcl_dataset::logging::init();
    // Before libtorch allocates anything: keeps glibc from handing activation buffers
    // back to the kernel every step (2-3x faster CPU training).
    let tuning = vcl_trainer::model::finetune::tune_allocator();
    let cli = Cli::parse();
    tracing::debug!(?tuning, "allocator");
    DEVICE.get_or_init(|| cli.device);
    match cli.command {
        Command::Data(c) => c.run(),
        Command::Fit(a) => fit::fit(&a),
        Command::Evaluate(c) => fit::evaluate(&c.run),
        Command::Compare(c) => fit::compare(&c),
        Command::Curve(c) => fit::curve(&c),
        Command::Transfer(c) => fit::transfer(&c),
        Command::Export(a) => export::export(&a),
        Command::Finetune(a) => finetune::finetune(&a),
        Command::Lateralization(c) => analyses::lateralization(&c),
        Command::Mi(c) => analyses::mi(&c),
        Command::Probe(c) => analyses::probe(&c),
        Command::Landscape(c) => analyses::landscape(&c),
        Command::Report(c) => analyses::report(&c),
        Command::Plan(c) => plan::plan(&c),
        Command::Run(c) => plan::run(&c),
        Command::Status(c) => plan::status(&c),
    }
}

/// `--device`, as given once for the whole command.
static DEVICE: OnceLock<DeviceChoice> = OnceLock::new();

/// The libtorch device `--device` names (resolved when a command first needs it).
fn device() -> Result<tch::Device> {
    let choice = DEVICE.get().copied().unwrap_or_default();
    let d = choice
        .resolve()
        .with_context(|| format!("--device {choice}"))?;
    tracing::info!(device = ?d, "libtorch device");
    Ok(d)
}
