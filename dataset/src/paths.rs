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

/// The wide photo set (`scripts/setup_photos.sh`): the photos above plus 25 from
/// scikit-learn and Debian's wallpaper packages, for `vcl synth --photos`.
pub fn wide_photos_dir() -> PathBuf {
    cache_dir().join("photos-wide")
}

/// scikit-image's lfw_subset.npy (100 faces, 100 non-faces) for `vcl probe`.
pub fn lfw_subset() -> PathBuf {
    std::env::var_os("VCL_LFW_SUBSET")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("probe/lfw_subset.npy"))
}

/// Where to write `path`'s next version before renaming it into place. The name is
/// unique to this process and call, so jobs sharing a cache (a Slurm array on one
/// node, or many nodes on one shared filesystem) never write into each other's
/// half-file: each rename brings a whole file, and identical content wins either way.
pub fn partial(path: &std::path::Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".partial-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}
