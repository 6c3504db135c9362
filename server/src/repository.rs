//! The served model repository, on the contract's rules
//! ([`vcl_contract::repository`]: what a model folder and a version folder are).
//! Start-up and reload are one procedure ([`Repository::reload`], from an empty
//! repository at start-up): for every model folder the newest version that loads and
//! warms up is served; a version that fails is logged, listed in
//! [`Repository::failed`] (and so in /readyz), and the next older one is tried; a
//! version already serving is kept without reopening, unless its backend has failed.
//!
//! [`Live`] holds the served [`Repository`] and swaps it whole on reload (SIGHUP, a
//! poll, `POST /v1/repository/reload`, or a failed backend): new versions are loaded
//! and warmed up beside the ones serving, then every model changes at once; requests
//! already running finish on the snapshot they took.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use vcl_contract::manifest::Manifest;
use vcl_contract::repository::{self as contract_repo, ModelFolder};
use vcl_contract::runtime::{self, Provider, Runtime};

use crate::backend::{self, Backend};
use crate::config::Config;
use crate::error::ServerError;
use crate::infer::{provider_name, Model, Origin};
use crate::metrics as m;

/// The served models by name, and the model folders whose newest versions failed.
#[derive(Default)]
pub struct Repository {
    pub models: BTreeMap<String, Arc<Model>>,
    /// Model name -> why its newer versions (all of them, when the name is not in
    /// `models`) are not served.
    pub failed: BTreeMap<String, String>,
}

/// Model folders under `root` with at least one version, by name; an unreadable root
/// is 503 (the models served before still serve).
pub fn scan(root: &Path) -> Result<Vec<ModelFolder>, ServerError> {
    contract_repo::scan(root).map_err(|e| ServerError::RepositoryUnavailable(e.to_string()))
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
    /// Served before, nothing served now (gone from disk, or no version loads).
    pub removed: Vec<String>,
    /// Same version as before, not reopened.
    pub kept: Vec<String>,
    /// Same version as before, reopened because its backend had failed.
    pub reopened: Vec<String>,
    /// `name: why` per version refused; an older version, if any, serves.
    pub failed: Vec<String>,
}

impl ReloadReport {
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty())
    }
}

impl Repository {
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    /// Every served model ready (warmed up, not failed), and at least one.
    pub fn all_ready(&self) -> bool {
        !self.models.is_empty() && self.models.values().all(|m| m.is_ready())
    }

    /// Model folders with nothing served at all (every version failed).
    pub fn unserved(&self) -> Vec<&str> {
        self.failed
            .keys()
            .filter(|k| !self.models.contains_key(*k))
            .map(String::as_str)
            .collect()
    }

    /// Whether the server is ready: every served model ready and, when `strict`, no
    /// model folder left without a version that serves.
    pub fn ready(&self, strict: bool) -> bool {
        self.all_ready() && (!strict || self.unserved().is_empty())
    }

    /// Loads every model under `cfg.model_repository` with `open` (blocking: each
    /// warms up first): what a reload does, from nothing.
    pub fn load(cfg: &Config, open: &Opener) -> Result<Self, ServerError> {
        let (repo, _) = Repository::default().reload(cfg, open)?;
        if repo.models.is_empty() {
            tracing::warn!(repository = %cfg.model_repository.display(), "no model to serve");
        }
        Ok(repo)
    }

    /// The repository as it is on disk now, built from this one: for each model folder
    /// the newest version that loads; one already serving (and not failed) is shared,
    /// not reopened; versions that fail are reported and skipped.
    pub fn reload(
        &self,
        cfg: &Config,
        open: &Opener,
    ) -> Result<(Repository, ReloadReport), ServerError> {
        let root = &cfg.model_repository;
        let mut next = Repository::default();
        let mut report = ReloadReport::default();
        let warmup = cfg.request_timeout().max(Duration::from_secs(60));
        for folder in scan(root)? {
            let name = folder.name.clone();
            let healthy = self.models.get(&name).filter(|m| m.failure().is_none());
            let mut errors = Vec::new();
            let mut chosen: Option<(Arc<Model>, bool)> = None;
            for &v in folder.versions.iter().rev() {
                if let Some(o) = healthy.filter(|o| o.manifest.model.version == v) {
                    chosen = Some((o.clone(), false));
                    break;
                }
                match spawn_version(&folder, v, cfg, open, warmup) {
                    Ok(m) => {
                        chosen = Some((Arc::new(m), true));
                        break;
                    }
                    Err(e) => {
                        tracing::error!(model = %name, version = v, error = %e, "version REFUSED");
                        errors.push(format!("version {v}: {e}"));
                    }
                }
            }
            if !errors.is_empty() {
                let why = errors.join("; ");
                report.failed.push(format!("{name}: {why}"));
                next.failed.insert(name.clone(), why);
            }
            match (chosen, self.models.get(&name)) {
                (Some((m, false)), _) => {
                    report.kept.push(name.clone());
                    next.models.insert(name, m);
                }
                (Some((m, true)), None) => {
                    report.added.push(name.clone());
                    next.models.insert(name, m);
                }
                (Some((m, true)), Some(o))
                    if o.manifest.model.version == m.manifest.model.version =>
                {
                    report.reopened.push(name.clone());
                    next.models.insert(name, m);
                }
                (Some((m, true)), Some(o)) => {
                    report.updated.push(format!(
                        "{name}: {} -> {}",
                        o.manifest.model.version, m.manifest.model.version
                    ));
                    next.models.insert(name, m);
                }
                (None, _) => {}
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

/// Opens version `v` of a model folder, starts its threads and waits for its warm-up.
fn spawn_version(
    folder: &ModelFolder,
    v: u32,
    cfg: &Config,
    open: &Opener,
    warmup: Duration,
) -> Result<Model, ServerError> {
    let dir = folder.version_dir(&cfg.model_repository, v);
    let manifest = Manifest::load(&dir)?;
    if manifest.model.name != folder.name || manifest.model.version != v {
        return Err(ServerError::Repository(format!(
            "{}: the manifest names {} version {}, but the folder is {}/{v}",
            dir.display(),
            manifest.model.name,
            manifest.model.version,
            folder.name,
        )));
    }
    let (backend, provider) = open(&dir, &manifest)?;
    tracing::info!(
        model = %folder.name,
        version = v,
        provider = provider_name(provider),
        rois = manifest.rois.len(),
        voxels = manifest.n_voxels(),
        input = format!("{}x{}", manifest.input.height, manifest.input.width),
        dir = %dir.display(),
        "model loaded"
    );
    let origin = Origin {
        provider,
        versions: folder.versions.clone(),
        dir: dir.clone(),
    };
    let model = Model::spawn(manifest, origin, backend, cfg)?;
    model
        .wait_ready(warmup)
        .map_err(|e| ServerError::Repository(format!("{}: {e}", dir.display())))?;
    Ok(model)
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
        let result = current.reload(&self.cfg, &*self.open);
        let (next, report) = match result {
            Ok(r) => r,
            Err(e) => {
                m::reload("failed");
                return Err(e);
            }
        };
        for (name, m) in &current.models {
            let same = next.get(name).is_some_and(|n| Arc::ptr_eq(n, m));
            if !same {
                m.retire();
            }
        }
        // A reopened version shares its retired instance's labels: served again.
        for m in next.models.values() {
            m.announce();
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
            reopened = ?report.reopened,
            kept = report.kept.len(),
            "repository reloaded"
        );
        Ok(report)
    }

    /// The (name, versions) of every model folder: what a poll compares between scans
    /// so that it reloads only when the repository changed.
    pub fn fingerprint(&self) -> Result<Vec<ModelFolder>, ServerError> {
        scan(&self.cfg.model_repository)
    }

    /// Whether a served model's backend has failed (a reload reopens it).
    pub fn has_failed_model(&self) -> bool {
        self.snapshot()
            .models
            .values()
            .any(|m| m.failure().is_some())
    }
}

/// How often the watcher looks for failed backends to reopen.
pub const FAILURE_CHECK: Duration = Duration::from_secs(5);

/// Reloads `live` on SIGHUP, every `poll` when the repository's folders changed since
/// the last scan, and every [`FAILURE_CHECK`] when a served model's backend has failed
/// (so that a broken backend is reopened, not left failing); runs until the process
/// ends.
pub async fn watch(live: Arc<Live>, poll: Option<Duration>) {
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reload by poll or HTTP only");
            None
        }
    };
    let mut last = live.fingerprint().ok();
    let mut last_poll = std::time::Instant::now();
    loop {
        let hangup = async {
            #[cfg(unix)]
            if let Some(h) = hup.as_mut() {
                h.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        let tick = poll.map_or(FAILURE_CHECK, |p| p.min(FAILURE_CHECK));
        let by_signal = tokio::select! {
            _ = hangup => true,
            _ = tokio::time::sleep(tick) => false,
        };
        let trigger = if by_signal {
            "SIGHUP"
        } else if live.has_failed_model() {
            "failed backend"
        } else if poll.is_some_and(|p| last_poll.elapsed() >= p) {
            last_poll = std::time::Instant::now();
            let now = live.fingerprint().ok();
            if now == last {
                continue;
            }
            "poll"
        } else {
            continue;
        };
        tracing::info!(trigger, "reloading the model repository");
        let l = live.clone();
        match tokio::task::spawn_blocking(move || l.reload()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reload failed; the models served before still serve")
            }
            Err(e) => tracing::error!(error = %e, "reload thread failed"),
        }
        last = live.fingerprint().ok();
    }
}

/// The ONNX Runtime library `cfg` names, or the default one.
pub fn runtime(cfg: &Config) -> Result<&'static Runtime, ServerError> {
    let dylib = match &cfg.ort_dylib_path {
        Some(p) => p.clone(),
        None => runtime::default_dylib_path()?,
    };
    Ok(Runtime::shared(&dylib)?)
}
