//! The contract's one error type: what the trainer and the server can get wrong about
//! a model repository entry or the ONNX Runtime that runs it. Every variant names the
//! file (and, for manifests, the field) it concerns.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
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

    /// The model file does not compute what its manifest says (house rule 2: the server
    /// refuses such a model).
    #[error("{model}: {what} is {found} in the model but {expected} in its manifest")]
    ModelMismatch {
        model: PathBuf,
        what: String,
        expected: String,
        found: String,
    },

    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },

    /// The file is not a manifest of this schema: unreadable JSON, a missing field, a
    /// value of the wrong type.
    #[error("{path}: field `{field}`: {reason}")]
    ManifestParse {
        path: PathBuf,
        field: String,
        reason: String,
    },

    /// Well-formed JSON whose values contradict each other or the model contract.
    #[error("{path}: field `{field}` is invalid: {reason}")]
    ManifestInvalid {
        path: PathBuf,
        field: String,
        reason: String,
    },

    #[error(
        "{path}: unknown manifest schema_version {found}; this build reads schema_version \
         {supported} only (re-export the model with a matching vcl, or upgrade the reader)"
    )]
    UnknownSchemaVersion {
        path: PathBuf,
        found: String,
        supported: u32,
    },

    #[error(
        "{model}: SHA-256 is {actual} but {manifest} says model_sha256 = {expected}: the model \
         file was changed or corrupted after export"
    )]
    ChecksumMismatch {
        model: PathBuf,
        manifest: PathBuf,
        expected: String,
        actual: String,
    },
}

impl ContractError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        ContractError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}
