//! What the generator built, read back from a dataset folder it wrote: analyses compare
//! fitted models against it (fwRF fields against the true pRFs). The brain is rebuilt
//! from `in_silico.json`'s preset and seed, as deterministic as the writing was.

use std::path::Path;

use super::{Preset, Prf, SubjectBrain};
use crate::algonauts::layout::IN_SILICO_PARAMS;
use crate::algonauts::Hemisphere;
use crate::error::{DataError, Result};

#[derive(serde::Deserialize)]
struct Params {
    preset: Preset,
    seed: u64,
}

/// Each challenge-space vertex's true pRF (None off the early ROIs) for `subject`
/// (`subj01`) of the in-silico dataset in `dir`; None when `dir` is not one.
pub fn prfs(dir: &Path, subject: &str, h: Hemisphere) -> Result<Option<Vec<Option<Prf>>>> {
    let path = dir.join(IN_SILICO_PARAMS);
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    let params: Params = serde_json::from_slice(&bytes)
        .map_err(|e| DataError::Invalid(format!("{}: preset and seed: {e}", path.display())))?;
    let number = subject
        .strip_prefix("subj")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            DataError::Invalid(format!(
                "subject {subject:?} of {}: expected subjNN",
                dir.display()
            ))
        })?;
    let brain = SubjectBrain::new(params.preset, params.seed, number);
    Ok(Some(brain.vertices(h).iter().map(|v| v.prf).collect()))
}
