//! ONNX Runtime, loaded at run time from a libonnxruntime.so the user points at (the
//! venv's onnxruntime wheel by default): nothing is downloaded, and the same binary
//! runs on CPU machines and, with an onnxruntime-gpu library, on CUDA.
//!
//! It lives in the contract crate because both sides run models with it: the server
//! serves them, and `vcl export` runs each model it writes before publishing it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;

use crate::error::ContractError;
use crate::manifest::{Dim, Manifest, TensorSpec};

/// Which execution provider a model should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when it registers, CPU otherwise (the fallback is logged).
    Auto,
    /// CUDA or an error.
    Cuda,
    Cpu,
}

/// The provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cuda,
    Cpu,
}

/// Where `libonnxruntime.so` is looked for when no path is given: `ORT_DYLIB_PATH`,
/// then the project's `.venv` (any Python version's site-packages).
pub fn default_dylib_path() -> Result<PathBuf, ContractError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let venv_lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    let looked_for = format!(
        "ORT_DYLIB_PATH (unset), {}/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.*",
        venv_lib.display()
    );
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&venv_lib) {
        for e in entries.flatten() {
            let capi = e.path().join("site-packages/onnxruntime/capi");
            if let Ok(files) = std::fs::read_dir(&capi) {
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if name.starts_with("libonnxruntime.so") {
                        found.push(f.path());
                    }
                }
            }
        }
    }
    // The versioned file (libonnxruntime.so.1.31.1) sorts last; any of them loads.
    found.sort();
    found
        .pop()
        .ok_or(ContractError::RuntimeMissing { looked_for })
}

/// A loaded ONNX Runtime. Only one can exist per process: ORT's library and its
/// environment are global (a second `load` fails), so code that may run several times
/// in one process (exports, tests) uses [`Runtime::shared`].
pub struct Runtime {
    pub dylib: PathBuf,
    env: Environment,
}

impl Runtime {
    pub fn load(dylib: &Path) -> Result<Self, ContractError> {
        if !dylib.exists() {
            return Err(ContractError::RuntimeLoad {
                path: dylib.to_path_buf(),
                reason: "file does not exist".into(),
            });
        }
        let err = |reason: String| ContractError::RuntimeLoad {
            path: dylib.to_path_buf(),
            reason,
        };
        let env = ort::init_from(dylib)
            .map_err(|e| err(e.to_string()))?
            .with_name("vcl-serve")
            .build()
            .map_err(|e| err(e.to_string()))?;
        tracing::info!(dylib = %dylib.display(), "ONNX Runtime loaded");
        Ok(Runtime {
            dylib: dylib.to_path_buf(),
            env,
        })
    }

    /// The process's runtime, loaded from `dylib` on first use. Later calls return the
    /// same runtime whatever path they name: ORT cannot load a second library.
    pub fn shared(dylib: &Path) -> Result<&'static Runtime, ContractError> {
        static SHARED: OnceLock<Runtime> = OnceLock::new();
        static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        if let Some(rt) = SHARED.get() {
            return Ok(rt);
        }
        // Serializes first loads: two threads racing into `ort::init_from` would make
        // the loser fail with "only one environment".
        let _guard = LOADING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = SHARED.get() {
            return Ok(rt);
        }
        let rt = Runtime::load(dylib)?;
        Ok(SHARED.get_or_init(|| rt))
    }

    /// Opens a model on the requested device; `intra_threads` = 0 lets ORT choose.
    pub fn session(
        &self,
        model: &Path,
        device: DeviceChoice,
        intra_threads: usize,
    ) -> Result<(Session, Provider), ContractError> {
        let err = |reason: String| ContractError::ModelLoad {
            path: model.to_path_buf(),
            reason,
        };
        let mut builder = Session::builder(&self.env).map_err(|e| err(e.to_string()))?;
        if intra_threads > 0 {
            builder = builder
                .with_intra_threads(intra_threads)
                .map_err(|e| err(e.to_string()))?;
        }
        let provider = match device {
            DeviceChoice::Cpu => Provider::Cpu,
            DeviceChoice::Cuda | DeviceChoice::Auto => {
                let cuda = ort::ep::CUDA::default().build().error_on_failure();
                match builder.with_execution_providers([cuda]) {
                    Ok(b) => {
                        builder = b;
                        Provider::Cuda
                    }
                    Err(e) if device == DeviceChoice::Cuda => {
                        return Err(ContractError::CudaUnavailable(e.to_string()))
                    }
                    Err(e) => {
                        tracing::warn!(model = %model.display(), error = %e, "CUDA unavailable, running on CPU");
                        builder = e.recover();
                        Provider::Cpu
                    }
                }
            }
        };
        let session = builder
            .commit_from_file(model)
            .map_err(|e| err(e.to_string()))?;
        Ok((session, provider))
    }
}

/// One output of a run: its name, shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedOutput {
    pub name: String,
    pub shape: Vec<i64>,
    pub values: Vec<f32>,
}

/// Runs a session with one float32 input and returns every output, in the model's
/// output order.
pub fn run_f32_all(
    session: &mut Session,
    shape: &[usize],
    data: Vec<f32>,
) -> Result<Vec<NamedOutput>, ContractError> {
    let input = ort::value::Tensor::from_array((shape.to_vec(), data))
        .map_err(|e| ContractError::BadInput(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![input])
        .map_err(|e| ContractError::Inference(e.to_string()))?;
    outputs
        .iter()
        .map(|(name, value)| {
            let (out_shape, values) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| ContractError::Inference(format!("output {name}: {e}")))?;
            Ok(NamedOutput {
                name: name.to_string(),
                shape: out_shape.to_vec(),
                values: values.to_vec(),
            })
        })
        .collect()
}

/// Runs a session with one float32 input and returns its first output as (shape, data).
pub fn run_f32(
    session: &mut Session,
    shape: &[usize],
    data: Vec<f32>,
) -> Result<(Vec<i64>, Vec<f32>), ContractError> {
    let input = ort::value::Tensor::from_array((shape.to_vec(), data))
        .map_err(|e| ContractError::BadInput(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![input])
        .map_err(|e| ContractError::Inference(e.to_string()))?;
    let (out_shape, values) = outputs[0]
        .try_extract_tensor::<f32>()
        .map_err(|e| ContractError::Inference(e.to_string()))?;
    Ok((out_shape.to_vec(), values.to_vec()))
}

/// Checks that `session` (opened from `model`) has exactly the input and outputs its
/// manifest promises: names, float32, and shapes (the symbolic batch dimension as a
/// dynamic one). A server calls this before serving a model and refuses it otherwise.
pub fn check_session(
    manifest: &Manifest,
    session: &Session,
    model: &Path,
) -> Result<(), ContractError> {
    let mismatch = |what: String, expected: String, found: String| ContractError::ModelMismatch {
        model: model.to_path_buf(),
        what,
        expected,
        found,
    };
    let names = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| o.name().to_string())
            .collect::<Vec<_>>()
    };
    let want_inputs = vec![manifest.input.tensor.name.clone()];
    let want_outputs = vec![
        manifest.outputs.voxels.name.clone(),
        manifest.outputs.roi_means.name.clone(),
    ];
    for (what, want, got) in [
        ("the inputs", want_inputs, names(session.inputs())),
        ("the outputs", want_outputs, names(session.outputs())),
    ] {
        if want != got {
            return Err(mismatch(
                what.into(),
                format!("{want:?}"),
                format!("{got:?}"),
            ));
        }
    }
    let specs: [(&TensorSpec, &ort::value::Outlet); 3] = [
        (&manifest.input.tensor, &session.inputs()[0]),
        (&manifest.outputs.voxels, &session.outputs()[0]),
        (&manifest.outputs.roi_means, &session.outputs()[1]),
    ];
    for (spec, outlet) in specs {
        let ty = outlet.dtype();
        if ty.tensor_type() != Some(ort::value::TensorElementType::Float32) {
            return Err(mismatch(
                format!("the element type of {}", spec.name),
                spec.dtype.clone(),
                format!("{ty:?}"),
            ));
        }
        let want: Vec<i64> = spec
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n as i64,
                Dim::Symbolic(_) => -1,
            })
            .collect();
        let got: Vec<i64> = ty.tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        if want != got {
            return Err(mismatch(
                format!("the shape of {} (-1: dynamic)", spec.name),
                format!("{want:?}"),
                format!("{got:?}"),
            ));
        }
    }
    Ok(())
}
