//! The model repository: `<root>/<model>/<version>/{model.onnx, manifest.json}`.
//! Every model is loaded at start: integer version folders only (`.partial-*` and
//! anything else skipped), the highest served; its manifest is loaded (checksum
//! included), its session opened and checked against the manifest. A model that fails
//! any step is refused with an error log naming why, and the others serve.
//!
//! [`Live`] holds the served [`Repository`] and swaps it whole on reload (SIGHUP, a
//! poll, or `POST /v1/repository/reload`): a new version is loaded and warmed up beside
//! the one serving, then every model changes at once; requests already running finish
//! on the snapshot they took. A version that fails to load leaves the old one serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use vcl_contract::manifest::Manifest;
use vcl_contract::runtime::{self, Provider, Runtime};

use crate::backend::{self, Backend};
use crate::config::Config;
use crate::error::ServerError;
use crate::infer::{provider_name, Model, Origin};
use crate::metrics as m;

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
        root.join(&self.name).join(self.latest().to_string())
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

/// Turns a version folder and its loaded manifest into a backend (ONNX Runtime in the
/// server, a fake in tests).
pub type Opener =
    dyn Fn(&Path, &Manifest) -> Result<(Box<dyn Backend>, Provider), ServerError> + Send + Sync;

/// What a reload did, model by model.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct ReloadReport {
    /// New model names.
    pub added: Vec<String>,
    /// `name: old -> new` version changes.
    pub updated: Vec<String>,
    /// Served before, gone from the repository now.
    pub removed: Vec<String>,
    /// Same version as before, not reopened.
    pub kept: Vec<String>,
    /// `name: why`; an old version of it, if any, still serves.
    pub failed: Vec<String>,
}

impl ReloadReport {
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty())
    }
}

impl Candidate {
    pub fn latest(&self) -> u32 {
        *self.versions.last().expect("a candidate has versions")
    }
}

impl Repository {
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    /// Every model ready (warmed up), and at least one.
    pub fn all_ready(&self) -> bool {
        !self.models.is_empty() && self.models.values().all(|m| m.is_ready())
    }

    /// Loads every model under `cfg.model_repository` with `open`; refused models are
    /// logged and left out. Models warm up in the background (see `/readyz`).
    pub fn load(cfg: &Config, open: &Opener) -> Result<Self, ServerError> {
        let root = &cfg.model_repository;
        let mut repo = Repository::default();
        for c in scan(root)? {
            match spawn_candidate(&c, root, cfg, open) {
                Ok(model) => {
                    repo.models.insert(c.name.clone(), Arc::new(model));
                }
                Err(e) => {
                    tracing::error!(model = %c.name, dir = %c.dir(root).display(), error = %e, "model REFUSED, not served")
                }
            }
        }
        if repo.models.is_empty() {
            tracing::warn!(repository = %root.display(), "no model to serve");
        }
        Ok(repo)
    }

    /// The repository as it is on disk now, built from this one: models whose served
    /// version is unchanged are shared, not reopened; new versions are opened and
    /// warmed up (blocking) before they enter; one that fails keeps its old version.
    pub fn reload(
        &self,
        cfg: &Config,
        open: &Opener,
    ) -> Result<(Repository, ReloadReport), ServerError> {
        let root = &cfg.model_repository;
        let mut next = Repository::default();
        let mut report = ReloadReport::default();
        let warmup = cfg
            .request_timeout()
            .max(std::time::Duration::from_secs(60));
        for c in scan(root)? {
            let old = self.models.get(&c.name);
            if let Some(m) = old.filter(|m| m.manifest.model.version == c.latest()) {
                next.models.insert(c.name.clone(), m.clone());
                report.kept.push(c.name.clone());
                continue;
            }
            let fresh = spawn_candidate(&c, root, cfg, open).and_then(|m| {
                m.wait_ready(warmup).map_err(|e| {
                    ServerError::Repository(format!("{}: {e}", c.dir(root).display()))
                })?;
                Ok(m)
            });
            match (fresh, old) {
                (Ok(m), None) => {
                    report.added.push(c.name.clone());
                    next.models.insert(c.name.clone(), Arc::new(m));
                }
                (Ok(m), Some(o)) => {
                    report.updated.push(format!(
                        "{}: {} -> {}",
                        c.name, o.manifest.model.version, m.manifest.model.version
                    ));
                    next.models.insert(c.name.clone(), Arc::new(m));
                }
                (Err(e), old) => {
                    tracing::error!(model = %c.name, dir = %c.dir(root).display(), error = %e,
                        serving = old.map(|o| o.manifest.model.version),
                        "new version REFUSED");
                    report.failed.push(format!("{}: {e}", c.name));
                    if let Some(o) = old {
                        next.models.insert(c.name.clone(), o.clone());
                    }
                }
            }
        }
        for name in self.models.keys() {
            if !next.models.contains_key(name) {
                report.removed.push(name.clone());
            }
        }
        Ok((next, report))
    }
}

/// Opens version folders with ONNX Runtime on `cfg.device`; intra-op threads from
/// the cores divided among the models found now.
pub fn ort_opener(cfg: &Config, rt: &'static Runtime) -> Result<Arc<Opener>, ServerError> {
    let n_models = scan(&cfg.model_repository)?.len().max(1);
    let threads = if cfg.intra_threads > 0 {
        cfg.intra_threads
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / n_models).max(1)
    };
    let device = cfg.device;
    Ok(Arc::new(move |dir: &Path, manifest: &Manifest| {
        let (b, p) = backend::open_ort(rt, dir, manifest, device, threads)?;
        Ok((Box::new(b) as Box<dyn Backend>, p))
    }))
}

/// The served repository and how to reopen it: requests take a snapshot, reloads
/// (one at a time) build the next repository beside it and swap it in whole.
pub struct Live {
    current: RwLock<Arc<Repository>>,
    reloading: Mutex<()>,
    cfg: Config,
    open: Arc<Opener>,
}

impl Live {
    pub fn new(repo: Repository, cfg: Config, open: Arc<Opener>) -> Self {
        Live {
            current: RwLock::new(Arc::new(repo)),
            reloading: Mutex::new(()),
            cfg,
            open,
        }
    }

    /// Loads the repository with `open` and wraps it.
    pub fn load(cfg: &Config, open: Arc<Opener>) -> Result<Self, ServerError> {
        let repo = Repository::load(cfg, &*open)?;
        Ok(Live::new(repo, cfg.clone(), open))
    }

    /// The repository now; it stays whole for as long as the caller holds it.
    pub fn snapshot(&self) -> Arc<Repository> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Rescans the repository and swaps in what changed (blocking: new versions warm
    /// up first). Concurrent calls run one after the other.
    pub fn reload(&self) -> Result<ReloadReport, ServerError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let t = std::time::Instant::now();
        let current = self.snapshot();
        let (next, report) = current.reload(&self.cfg, &*self.open)?;
        for name in &report.removed {
            if let Some(m) = current.get(name) {
                m.retire();
            }
        }
        for (name, m) in &current.models {
            let replaced = next
                .get(name)
                .is_some_and(|n| n.manifest.model.version != m.manifest.model.version);
            if replaced {
                m.retire();
            }
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        m::reload(if report.failed.is_empty() {
            "ok"
        } else {
            "failed"
        });
        tracing::info!(
            ms = t.elapsed().as_millis() as u64,
            added = ?report.added,
            updated = ?report.updated,
            removed = ?report.removed,
            failed = ?report.failed,
            kept = report.kept.len(),
            "repository reloaded"
        );
        Ok(report)
    }

    /// The (name, versions) of every model folder: what a poll compares between scans
    /// so that it reloads only when the repository changed.
    pub fn fingerprint(&self) -> Result<Vec<Candidate>, ServerError> {
        scan(&self.cfg.model_repository)
    }
}

/// Reloads `live` on SIGHUP, and every `poll` when the repository's folders changed
/// since the last scan; runs until the process ends.
pub async fn watch(live: Arc<Live>, poll: Option<std::time::Duration>) {
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reload by poll or HTTP only");
            None
        }
    };
    let mut last = live.fingerprint().ok();
    loop {
        let hangup = async {
            #[cfg(unix)]
            if let Some(h) = hup.as_mut() {
                h.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        let tick = async {
            match poll {
                Some(p) => tokio::time::sleep(p).await,
                None => std::future::pending::<()>().await,
            }
        };
        let by_signal = tokio::select! {
            _ = hangup => true,
            _ = tick => false,
        };
        let now = live.fingerprint().ok();
        if !by_signal && now == last {
            continue;
        }
        tracing::info!(
            trigger = if by_signal { "SIGHUP" } else { "poll" },
            "reloading the model repository"
        );
        let l = live.clone();
        match tokio::task::spawn_blocking(move || l.reload()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reload failed; the models served before still serve")
            }
            Err(e) => tracing::error!(error = %e, "reload thread failed"),
        }
        last = now;
    }
}

/// Opens a candidate's latest version and starts its batcher (warm-up in background).
fn spawn_candidate(
    c: &Candidate,
    root: &Path,
    cfg: &Config,
    open: &Opener,
) -> Result<Model, ServerError> {
    let dir = c.dir(root);
    let (manifest, backend, provider) = load_one(c, &dir, open)?;
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
    Ok(Model::spawn(manifest, origin, backend, cfg))
}

fn load_one(
    c: &Candidate,
    dir: &Path,
    open: &Opener,
) -> Result<(Manifest, Box<dyn Backend>, Provider), ServerError> {
    let manifest = Manifest::load(dir)?;
    let version = c.latest();
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
