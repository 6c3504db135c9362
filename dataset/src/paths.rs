//! Where vcl finds what set-up installed, unless told otherwise.
//!
//! Set-up (`scripts/setup.sh`) fills `<repo>/.cache/`; the binaries look there by
//! default so that a newcomer never has to pass a path. Flags and environment
//! variables override it for real data and user-supplied weights.

use std::path::PathBuf;

/// The repository's `.cache` folder (or `VCL_CACHE_DIR`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VCL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache")
}

/// Converted torchvision weights (`mobilenet_v2.safetensors`, ...).
pub fn weights_dir() -> PathBuf {
    std::env::var_os("VCL_WEIGHTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("weights"))
}

/// Real photos the in-silico brain cuts its stimuli from (scikit-image's data).
pub fn photos_dir() -> PathBuf {
    std::env::var_os("VCL_PHOTOS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("photos"))
}

/// scikit-image's lfw_subset.npy (100 faces, 100 non-faces) for `vcl probe`.
pub fn lfw_subset() -> PathBuf {
    std::env::var_os("VCL_LFW_SUBSET")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("probe/lfw_subset.npy"))
}
