//! The model repository's rules, written once for the exporter that publishes into it
//! and the server that serves from it: `<root>/<model>/<version>/{model.onnx,
//! manifest.json}`.
//!
//! - A model folder is a directory whose name is a model name ([`valid_model_name`]).
//! - A version folder is a directory named by a positive decimal integer without sign
//!   or leading zero (`1`, `2`, `10`; not `0`, `01`, `+1`, `1.0`). Everything else in a
//!   model folder is ignored, files too.
//! - A version is written whole under `<model>/.partial-<pid>-<nanos>/` and then renamed
//!   to its number: a reader never sees half a version. Folders of that prefix whose
//!   writer process is gone (killed mid-export) are leftovers that [`clean_stale`]
//!   removes.

use std::path::{Path, PathBuf};

use crate::error::ContractError;

/// Prefix of a version being written.
pub const PARTIAL_PREFIX: &str = ".partial-";

/// A model folder and its version numbers, lowest first (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFolder {
    pub name: String,
    pub versions: Vec<u32>,
}

impl ModelFolder {
    pub fn latest(&self) -> u32 {
        self.versions.last().copied().unwrap_or(0)
    }

    pub fn version_dir(&self, root: &Path, version: u32) -> PathBuf {
        root.join(&self.name).join(version.to_string())
    }
}

/// The version a folder name stands for, if it is a version folder's name.
pub fn parse_version(name: &str) -> Option<u32> {
    let digits = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
    if !digits || name.starts_with('0') {
        return None;
    }
    name.parse::<u32>().ok()
}

/// Model names are single folder names: not empty, no separator, not hidden, no `..`.
pub fn valid_model_name(name: &str) -> bool {
    !(name.is_empty()
        || name.contains(['/', '\\', '\0'])
        || name.starts_with('.')
        || name.contains(".."))
}

/// The version numbers under a model folder, lowest first (empty when there is none or
/// the folder does not exist).
pub fn versions(model_dir: &Path) -> Result<Vec<u32>, ContractError> {
    if !model_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(model_dir).map_err(|e| ContractError::io(model_dir, e))? {
        let e = e.map_err(|err| ContractError::io(model_dir, err))?;
        let Some(v) = e.file_name().to_str().and_then(parse_version) else {
            continue;
        };
        if e.path().is_dir() {
            out.push(v);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The number the next published version takes (1 in a new model folder).
pub fn next_version(model_dir: &Path) -> Result<u32, ContractError> {
    let latest = versions(model_dir)?.last().copied().unwrap_or(0);
    latest
        .checked_add(1)
        .ok_or_else(|| ContractError::io(model_dir, "the version numbers are exhausted"))
}

/// Every model folder under `root` with at least one version, by name.
pub fn scan(root: &Path) -> Result<Vec<ModelFolder>, ContractError> {
    let entries = std::fs::read_dir(root)
        .map_err(|e| ContractError::io(root, format!("cannot read the model repository: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|err| ContractError::io(root, err))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !valid_model_name(&name) || !e.path().is_dir() {
            continue;
        }
        let versions = versions(&e.path())?;
        if !versions.is_empty() {
            out.push(ModelFolder { name, versions });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A fresh staging folder name for this process.
pub fn partial_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{PARTIAL_PREFIX}{}-{nanos}", std::process::id())
}

/// The writer process of a staging folder, from its name.
fn partial_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PARTIAL_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// What [`clean_stale`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Staging folders of dead writers, removed.
    pub removed: Vec<PathBuf>,
    /// Staging folders whose writer still runs (another export): left alone.
    pub in_progress: Vec<PathBuf>,
}

/// Removes the staging folders of writers that are gone from every model folder under
/// `root` (a missing root has none), and model folders left empty by them.
pub fn clean_stale(root: &Path) -> Result<Leftovers, ContractError> {
    let mut found = Leftovers::default();
    if !root.is_dir() {
        return Ok(found);
    }
    for model in std::fs::read_dir(root).map_err(|e| ContractError::io(root, e))? {
        let model = model.map_err(|e| ContractError::io(root, e))?.path();
        if !model.is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(&model).map_err(|e| ContractError::io(&model, e))?;
        for e in entries {
            let e = e.map_err(|err| ContractError::io(&model, err))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(PARTIAL_PREFIX) {
                continue;
            }
            if partial_pid(&name).is_some_and(process_alive) {
                found.in_progress.push(e.path());
            } else {
                std::fs::remove_dir_all(e.path())
                    .map_err(|err| ContractError::io(&e.path(), err))?;
                found.removed.push(e.path());
            }
        }
        remove_if_empty(&model);
    }
    Ok(found)
}

/// Removes `dir` if it is an empty folder (a model folder nothing was published into).
pub fn remove_if_empty(dir: &Path) {
    // remove_dir refuses a non-empty folder, which is the check.
    let _ = std::fs::remove_dir(dir);
}

/// Renames a finished staging folder to the model's next version: `prepare(version)`
/// writes what depends on the number (the manifest) into `staged` first. Another writer
/// may claim a number meanwhile; rename refuses to replace a non-empty folder, so the
/// next number is tried. Returns the version and its folder.
pub fn publish(
    staged: &Path,
    model_dir: &Path,
    mut prepare: impl FnMut(u32) -> Result<(), ContractError>,
) -> Result<(u32, PathBuf), ContractError> {
    for _ in 0..8 {
        let version = next_version(model_dir)?;
        prepare(version)?;
        let dest = model_dir.join(version.to_string());
        if dest.exists() {
            continue;
        }
        if std::fs::rename(staged, &dest).is_ok() {
            return Ok((version, dest));
        }
    }
    Err(ContractError::io(
        model_dir,
        "could not claim a version folder after 8 tries (other exporters are publishing)",
    ))
}

/// Takes a published version back out (a later model of the same export failed): the
/// folder is renamed to a staging name first, so a server scanning meanwhile sees it
/// gone at once, then removed.
pub fn unpublish(version_dir: &Path) -> Result<(), ContractError> {
    let Some(model_dir) = version_dir.parent() else {
        return Err(ContractError::io(version_dir, "not inside a model folder"));
    };
    let hidden = model_dir.join(partial_name());
    std::fs::rename(version_dir, &hidden).map_err(|e| ContractError::io(version_dir, e))?;
    std::fs::remove_dir_all(&hidden).map_err(|e| ContractError::io(&hidden, e))?;
    remove_if_empty(model_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkdir(p: &Path) {
        std::fs::create_dir_all(p).unwrap();
    }

    /// Pins what counts as a version folder and what is ignored.
    #[test]
    fn version_folders_and_what_is_ignored() {
        for (name, v) in [("1", Some(1)), ("2", Some(2)), ("10", Some(10))] {
            assert_eq!(parse_version(name), v, "{name}");
        }
        for name in ["0", "01", "+1", "-1", "1.0", "", " 1", "v1", "99999999999"] {
            assert_eq!(parse_version(name), None, "{name}");
        }
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        for d in ["1", "3", "01", "0", ".partial-1-2", "x"] {
            mkdir(&m.join(d));
        }
        std::fs::write(m.join("4"), b"a file, not a version").unwrap();
        mkdir(&root.path().join(".hidden").join("1"));
        mkdir(&root.path().join("empty"));
        std::fs::write(root.path().join("README"), b"").unwrap();
        assert_eq!(versions(&m).unwrap(), vec![1, 3]);
        assert_eq!(next_version(&m).unwrap(), 4);
        assert_eq!(next_version(&root.path().join("new")).unwrap(), 1);
        let found = scan(root.path()).unwrap();
        assert_eq!(
            found,
            vec![ModelFolder {
                name: "m".into(),
                versions: vec![1, 3]
            }]
        );
        assert!(scan(&root.path().join("missing")).is_err());
        for bad in ["", ".x", "a/b", "a\\b", "..", "a..b"] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }

    #[test]
    fn publish_claims_the_next_number_and_unpublish_hides_first() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        mkdir(&m.join("1"));
        let staged = m.join(partial_name());
        mkdir(&staged);
        let mut asked = Vec::new();
        let (v, dir) = publish(&staged, &m, |v| {
            asked.push(v);
            // Another exporter takes 2 while this one prepares it.
            if v == 2 {
                mkdir(&m.join("2").join("x"));
            }
            Ok(())
        })
        .unwrap();
        assert_eq!((v, asked), (3, vec![2, 3]));
        assert!(dir.is_dir() && !staged.exists());
        unpublish(&dir).unwrap();
        assert_eq!(versions(&m).unwrap(), vec![1, 2]);
        let solo = root.path().join("solo");
        mkdir(&solo.join("1"));
        unpublish(&solo.join("1")).unwrap();
        assert!(!solo.exists(), "a model folder left empty is removed");
    }

    #[test]
    fn stale_staging_folders_are_cleaned_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        // No process has pid u32::MAX - 1: its writer is gone.
        let dead = m.join(format!("{PARTIAL_PREFIX}{}-1", u32::MAX - 1));
        let live = m.join(partial_name());
        mkdir(&dead.join("inner"));
        mkdir(&live);
        mkdir(&m.join("1"));
        let only_dead = root.path().join("only-dead");
        mkdir(&only_dead.join(format!("{PARTIAL_PREFIX}{}-1", u32::MAX - 1)));
        let found = clean_stale(root.path()).unwrap();
        assert_eq!(found.removed.len(), 2, "{found:?}");
        assert_eq!(found.in_progress, vec![live.clone()]);
        assert!(!dead.exists() && live.exists() && m.join("1").exists());
        assert!(!only_dead.exists(), "emptied model folders go too");
        assert_eq!(
            clean_stale(&root.path().join("none")).unwrap(),
            Leftovers::default()
        );
    }
}
