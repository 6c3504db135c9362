//! The data layer's error type: every variant names the file, field or value at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("missing {what}: {path} does not exist")]
    MissingFile { what: String, path: PathBuf },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("malformed .npy file {path}: {reason}")]
    Npy { path: PathBuf, reason: String },

    #[error("malformed ROI name mapping {path}: {reason}")]
    Mapping { path: PathBuf, reason: String },

    #[error("corrupt or unreadable image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    #[error("{path} has {rows} rows but {images} training images were found in {images_dir}")]
    RowMismatch {
        path: PathBuf,
        rows: usize,
        images: usize,
        images_dir: PathBuf,
    },

    #[error("{path} has {len} entries but {expected} were expected ({why})")]
    LengthMismatch {
        path: PathBuf,
        len: usize,
        expected: usize,
        why: String,
    },

    #[error("unknown ROI '{roi}'; known ROIs: {}", known.join(", "))]
    UnknownRoi { roi: String, known: Vec<String> },

    #[error("ROI '{roi}' has no vertices in hemisphere {hemisphere} of {subject}")]
    EmptyRoi {
        roi: String,
        hemisphere: String,
        subject: String,
    },

    #[error("unknown subject '{subject}'; found: {}", found.join(", "))]
    UnknownSubject { subject: String, found: Vec<String> },

    #[error("bad file name {path}: {reason}")]
    BadName { path: PathBuf, reason: String },

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile {
                what: "file".into(),
                path,
            }
        } else {
            DataError::Io { path, source }
        }
    }
}
