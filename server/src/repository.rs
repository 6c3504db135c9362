//! The model repository: `<root>/<model>/<version>/{model.onnx, manifest.json}`.
//! Every model is loaded at start: integer version folders only (`.partial-*` and
//! anything else skipped), the highest served; its manifest is loaded (checksum
//! included), its session opened and checked against the manifest. A model that fails
//! any step is refused with an error log naming why, and the others serve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vcl_contract::manifest::Manifest;
use vcl_contract::runtime::{self, Provider, Runtime};

use crate::backend::{self, Backend};
use crate::config::Config;
use crate::error::ServerError;
use crate::infer::{provider_name, Model, Origin};

/// The served models by name.
#[derive(Default)]
pub struct Repository {
    pub models: BTreeMap<String, Arc<Model>>,
}

/// A model folder and its version folders, highest last.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub versions: Vec<u32>,
}

impl Candidate {
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join(&self.name).join(
            self.versions
                .last()
                .expect("a candidate has versions")
                .to_string(),
        )
    }
}

/// Model folders under `root` with at least one integer version folder, by name.
pub fn scan(root: &Path) -> Result<Vec<Candidate>, ServerError> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        ServerError::Repository(format!(
            "cannot read model repository {}: {e}",
            root.display()
        ))
    })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.path().is_dir() {
            continue;
        }
        let mut versions: Vec<u32> = std::fs::read_dir(e.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|v| v.path().is_dir())
            .filter_map(|v| v.file_name().to_str()?.parse::<u32>().ok())
            .filter(|v| *v > 0)
            .collect();
        versions.sort_unstable();
        if versions.is_empty() {
            tracing::warn!(model = %name, "no integer version folder: skipped");
            continue;
        }
        out.push(Candidate { name, versions });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

impl Repository {
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    /// Every model ready (warmed up), and at least one.
    pub fn all_ready(&self) -> bool {
        !self.models.is_empty() && self.models.values().all(|m| m.is_ready())
    }

    /// Loads every model under `cfg.model_repository` with `open` (which turns a
    /// version folder and its manifest into a backend); refused models are logged.
    pub fn load<F>(cfg: &Config, open: F) -> Result<Self, ServerError>
    where
        F: Fn(&Path, &Manifest) -> Result<(Box<dyn Backend>, Provider), ServerError>,
    {
        let root = &cfg.model_repository;
        let mut repo = Repository::default();
        for c in scan(root)? {
            let dir = c.dir(root);
            match load_one(&c, &dir, &open) {
                Ok((manifest, backend, provider)) => {
                    tracing::info!(
                        model = %c.name,
                        version = manifest.model.version,
                        provider = provider_name(provider),
                        rois = manifest.rois.len(),
                        voxels = manifest.n_voxels(),
                        input = format!("{}x{}", manifest.input.height, manifest.input.width),
                        dir = %dir.display(),
                        "model loaded"
                    );
                    let origin = Origin {
                        provider,
                        versions: c.versions.clone(),
                        dir,
                    };
                    let model = Model::spawn(manifest, origin, backend, cfg);
                    repo.models.insert(c.name.clone(), Arc::new(model));
                }
                Err(e) => {
                    tracing::error!(model = %c.name, dir = %dir.display(), error = %e, "model REFUSED, not served")
                }
            }
        }
        if repo.models.is_empty() {
            tracing::warn!(repository = %root.display(), "no model to serve");
        }
        Ok(repo)
    }

    /// Loads with ONNX Runtime on `cfg.device`, intra-op threads from the cores.
    pub fn load_ort(cfg: &Config, rt: &Runtime) -> Result<Self, ServerError> {
        let n_models = scan(&cfg.model_repository)?.len().max(1);
        let threads = if cfg.intra_threads > 0 {
            cfg.intra_threads
        } else {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / n_models).max(1)
        };
        Repository::load(cfg, |dir, manifest| {
            let (b, p) = backend::open_ort(rt, dir, manifest, cfg.device, threads)?;
            Ok((Box::new(b) as Box<dyn Backend>, p))
        })
    }
}

fn load_one<F>(
    c: &Candidate,
    dir: &Path,
    open: &F,
) -> Result<(Manifest, Box<dyn Backend>, Provider), ServerError>
where
    F: Fn(&Path, &Manifest) -> Result<(Box<dyn Backend>, Provider), ServerError>,
{
    let manifest = Manifest::load(dir)?;
    let version = *c.versions.last().expect("versions");
    if manifest.model.name != c.name || manifest.model.version != version {
        return Err(ServerError::Repository(format!(
            "{}: the manifest names {} version {}, but the folder is {}/{}",
            dir.display(),
            manifest.model.name,
            manifest.model.version,
            c.name,
            version
        )));
    }
    let (backend, provider) = open(dir, &manifest)?;
    Ok((manifest, backend, provider))
}

/// The ONNX Runtime library `cfg` names, or the default one.
pub fn runtime(cfg: &Config) -> Result<&'static Runtime, ServerError> {
    let dylib = match &cfg.ort_dylib_path {
        Some(p) => p.clone(),
        None => runtime::default_dylib_path()?,
    };
    Ok(Runtime::shared(&dylib)?)
}
