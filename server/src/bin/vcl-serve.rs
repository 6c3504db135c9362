//! `vcl-serve`: loads ONNX Runtime and the model repository.
//!
//! At this stage it loads the runtime and every `model.onnx` it finds, runs nothing
//! over HTTP yet, and reports what it loaded and on which execution provider.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use vcl_server::runtime::{self, DeviceChoice, Runtime};

#[derive(Parser, Debug)]
#[command(
    name = "vcl-serve",
    version,
    about = "Serve vcl voxel encoders (ONNX Runtime)"
)]
struct Args {
    /// Model repository: <repo>/<model>/<version>/model.onnx + manifest.json.
    #[arg(long, env = "VCL_MODEL_REPOSITORY", default_value = "exports")]
    model_repository: PathBuf,
    /// libonnxruntime.so to load (default: the project's .venv onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib_path: Option<PathBuf>,
    #[arg(long, env = "VCL_DEVICE", value_enum, default_value = "auto")]
    device: DeviceChoice,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let dylib = match args.ort_dylib_path {
        Some(p) => p,
        None => runtime::default_dylib_path()?,
    };
    let rt = Runtime::load(&dylib)?;
    let mut models = Vec::new();
    if args.model_repository.is_dir() {
        for model in std::fs::read_dir(&args.model_repository)
            .with_context(|| format!("reading {}", args.model_repository.display()))?
            .flatten()
        {
            if let Ok(versions) = std::fs::read_dir(model.path()) {
                for v in versions.flatten() {
                    let onnx = v.path().join("model.onnx");
                    if onnx.exists() {
                        models.push(onnx);
                    }
                }
            }
        }
    }
    models.sort();
    for m in &models {
        match rt.session(m, args.device, 0) {
            Ok((session, provider)) => tracing::info!(
                model = %m.display(),
                ?provider,
                inputs = ?session.inputs().iter().map(|i| i.name().to_string()).collect::<Vec<_>>(),
                outputs = ?session.outputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>(),
                "model loaded"
            ),
            Err(e) => tracing::error!(model = %m.display(), error = %e, "model refused"),
        }
    }
    tracing::info!(models = models.len(), repository = %args.model_repository.display(), "done");
    Ok(())
}
