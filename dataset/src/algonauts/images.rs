//! Image lists: `train-NNNN_nsd-NNNNN.png` in name order; row i of the fMRI is the
//! i-th image.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DataError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageEntry {
    pub path: PathBuf,
    /// 0-based position in name order (the fMRI row for training images).
    pub row: usize,
    /// The NSD image id parsed from the name.
    pub nsd_id: u32,
}

/// Lists `<prefix>-NNNN_nsd-NNNNN.{png,jpg,jpeg}` in `dir`, in name order, and checks
/// that the numbering runs 1, 2, 3, ... so that a missing file cannot shift rows.
pub fn list(dir: &Path, prefix: &str) -> Result<Vec<ImageEntry>> {
    if !dir.is_dir() {
        return Err(DataError::MissingFile {
            what: format!("{prefix} image folder"),
            path: dir.to_path_buf(),
        });
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
            names.push(name);
        }
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for (row, name) in names.into_iter().enumerate() {
        let path = dir.join(&name);
        let (number, nsd_id) = parse_name(&name, prefix).ok_or_else(|| DataError::BadName {
            path: path.clone(),
            reason: format!("expected {prefix}-NNNN_nsd-NNNNN.png"),
        })?;
        if number != row + 1 {
            return Err(DataError::BadName {
                path,
                reason: format!(
                    "image number {number} is at position {} in name order: an image is missing or misnamed",
                    row + 1
                ),
            });
        }
        out.push(ImageEntry { path, row, nsd_id });
    }
    if out.is_empty() {
        return Err(DataError::Invalid(format!(
            "{} holds no {prefix}-NNNN_nsd-NNNNN.png images",
            dir.display()
        )));
    }
    Ok(out)
}

fn parse_name(name: &str, prefix: &str) -> Option<(usize, u32)> {
    let stem = name.rsplit_once('.')?.0;
    let rest = stem.strip_prefix(prefix)?.strip_prefix('-')?;
    let (num, nsd) = rest.split_once("_nsd-")?;
    Some((num.parse().ok()?, nsd.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_algonauts_names() {
        assert_eq!(
            parse_name("train-0001_nsd-00013.png", "train"),
            Some((1, 13))
        );
        assert_eq!(
            parse_name("test-0159_nsd-72999.png", "test"),
            Some((159, 72999))
        );
        assert_eq!(parse_name("train-01.png", "train"), None);
    }

    #[test]
    fn a_gap_in_numbering_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for n in [1, 2, 4] {
            std::fs::write(dir.path().join(format!("train-{n:04}_nsd-{n:05}.png")), b"").unwrap();
        }
        let err = list(dir.path(), "train").unwrap_err().to_string();
        assert!(err.contains("train-0004_nsd-00004.png"), "{err}");
    }
}
