//! The server's error type at its library boundary.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot load ONNX Runtime from {path}: {reason} (set --ort-dylib-path or ORT_DYLIB_PATH \
         to a libonnxruntime.so of version 1.22 or newer, e.g. the one in the onnxruntime==1.31.1 wheel)"
    )]
    RuntimeLoad { path: PathBuf, reason: String },

    #[error(
        "no ONNX Runtime library found: looked for {looked_for}; run scripts/setup.sh or set \
         --ort-dylib-path / ORT_DYLIB_PATH"
    )]
    RuntimeMissing { looked_for: String },

    #[error("cannot load model {path}: {reason}")]
    ModelLoad { path: PathBuf, reason: String },

    #[error(
        "CUDA was requested (--device cuda) but its execution provider failed to register: {0}"
    )]
    CudaUnavailable(String),

    #[error("inference failed: {0}")]
    Inference(String),

    #[error("bad input: {0}")]
    BadInput(String),
}
