//! The backend: a small synchronous trait free of ort types, and the thread that owns
//! one ([`worker`]). [`OrtBackend`] runs an exported model with ONNX Runtime (the
//! `testing` feature adds a fake). The worker warms the backend up, then runs the
//! batches the batcher hands it; a panic, or [`MAX_CONSECUTIVE_FAILURES`] failed
//! batches in a row, marks the model failed (not ready, with the reason) and stops
//! the thread, so that readiness tells the truth and the next reload reopens it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use vcl_contract::manifest::Manifest;
use vcl_contract::runtime::{self, NamedOutput};

use crate::batcher::{self, BatcherConfig, Queue, Readiness};
use crate::error::ServerError;
use crate::metrics as m;

/// What one batch computes: voxels [n, V] and roi_means [n, R], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    pub voxels: Vec<f32>,
    pub roi_means: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

pub trait Backend: Send {
    /// Runs `n` images, `pixels` float32 [n, 3, H, W] RGB in [0, 1].
    fn predict(&mut self, n: usize, pixels: Vec<f32>) -> Result<Outputs, BackendError>;
}

/// An ONNX Runtime session checked against its manifest.
pub struct OrtBackend {
    session: ort::session::Session,
    chw: [usize; 3],
    voxels: (String, usize),
    roi_means: (String, usize),
}

impl OrtBackend {
    /// `session` must have passed `runtime::check_session` against `manifest`.
    pub fn new(session: ort::session::Session, manifest: &Manifest) -> Self {
        OrtBackend {
            session,
            chw: chw(manifest),
            voxels: (manifest.outputs.voxels.name.clone(), manifest.n_voxels()),
            roi_means: (manifest.outputs.roi_means.name.clone(), manifest.rois.len()),
        }
    }
}

/// [3, H, W] of a manifest's input.
pub fn chw(manifest: &Manifest) -> [usize; 3] {
    [
        3,
        manifest.input.height as usize,
        manifest.input.width as usize,
    ]
}

impl Backend for OrtBackend {
    fn predict(&mut self, n: usize, pixels: Vec<f32>) -> Result<Outputs, BackendError> {
        let shape = [n, self.chw[0], self.chw[1], self.chw[2]];
        let outs = runtime::run_f32_all(&mut self.session, &shape, pixels)
            .map_err(|e| BackendError(e.to_string()))?;
        let take = |outs: &[NamedOutput], (name, cols): &(String, usize)| {
            let o = outs
                .iter()
                .find(|o| &o.name == name)
                .ok_or_else(|| BackendError(format!("the model returned no output '{name}'")))?;
            if o.shape != [n as i64, *cols as i64] {
                return Err(BackendError(format!(
                    "output '{name}' has shape {:?}, expected [{n}, {cols}]",
                    o.shape
                )));
            }
            Ok(o.values.clone())
        };
        Ok(Outputs {
            voxels: take(&outs, &self.voxels)?,
            roi_means: take(&outs, &self.roi_means)?,
        })
    }
}

/// Opens `dir/model.onnx` on ONNX Runtime and checks it against its manifest.
pub fn open_ort(
    rt: &runtime::Runtime,
    dir: &Path,
    manifest: &Manifest,
    device: runtime::DeviceChoice,
    intra_threads: usize,
) -> Result<(OrtBackend, runtime::Provider), vcl_contract::ContractError> {
    let model = dir.join(vcl_contract::manifest::MODEL_FILE);
    let (session, provider) = rt.session(&model, device, intra_threads)?;
    runtime::check_session(manifest, &session, &model)?;
    Ok((OrtBackend::new(session, manifest), provider))
}

/// Failed batches in a row after which a backend is taken for broken.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;

/// What the worker needs to know of its model.
pub struct WorkerConfig {
    pub model: String,
    /// [3, H, W], for the warm-up input.
    pub chw: [usize; 3],
    /// Columns of voxels and roi_means, to split the outputs per entry.
    pub n_voxels: usize,
    pub n_rois: usize,
}

/// The backend thread's share of a model: its configuration, how batches form, the
/// queue it takes them from, and the readiness it reports to.
pub struct Worker {
    pub cfg: WorkerConfig,
    pub batching: BatcherConfig,
    pub queue: Arc<Queue>,
    pub ready: Arc<Readiness>,
}

/// Starts the backend thread: a warm-up inference (then the model is ready), then
/// batches until the batcher is gone or the backend breaks.
pub fn spawn_worker(
    w: Worker,
    backend: Box<dyn Backend>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("backend-{}", w.cfg.model))
        .spawn(move || worker(&w, backend))
}

/// The backend stopped: whatever waits in the queue is answered 503 (and later pushes
/// are refused, so answered 503 by the request).
fn stop(w: &Worker) {
    for e in w.queue.close_backend(&w.cfg.model) {
        let _ = e
            .reply
            .send(Err(ServerError::NotReady(w.cfg.model.clone())));
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs the backend, a panic caught and turned into an error.
fn guarded(
    backend: &mut dyn Backend,
    n: usize,
    pixels: Vec<f32>,
) -> Result<Result<Outputs, BackendError>, String> {
    catch_unwind(AssertUnwindSafe(|| backend.predict(n, pixels))).map_err(|p| panic_message(&*p))
}

fn worker(w: &Worker, mut backend: Box<dyn Backend>) {
    let (cfg, ready) = (&w.cfg, &w.ready);
    let t = Instant::now();
    let warm = vec![0.5f32; cfg.chw.iter().product()];
    match guarded(backend.as_mut(), 1, warm) {
        Ok(Ok(_)) => {
            tracing::info!(model = %cfg.model, ms = t.elapsed().as_millis() as u64, "warm-up done, ready");
            ready.set_ready();
        }
        Ok(Err(e)) => {
            tracing::error!(model = %cfg.model, error = %e, "warm-up inference failed: the model stays not ready");
            ready.fail(format!("its warm-up inference failed: {e}"));
            return stop(w);
        }
        Err(p) => {
            tracing::error!(model = %cfg.model, panic = %p, "warm-up inference panicked");
            ready.fail(format!("its warm-up inference panicked: {p}"));
            return stop(w);
        }
    }
    let mut failures = 0;
    while let Some(batch) = w.queue.take(&w.batching) {
        match execute(cfg, backend.as_mut(), batch) {
            Ok(()) => failures = 0,
            Err(Broken::Failed(e)) => {
                failures += 1;
                if failures >= MAX_CONSECUTIVE_FAILURES {
                    m::backend_failure(&cfg.model, "errors");
                    tracing::error!(model = %cfg.model, failures, error = %e, "backend keeps failing: model marked failed");
                    ready.fail(format!(
                        "{failures} inferences in a row failed, the last with: {e}"
                    ));
                    return stop(w);
                }
            }
            Err(Broken::Panicked(p)) => {
                m::backend_failure(&cfg.model, "panic");
                tracing::error!(model = %cfg.model, panic = %p, "backend panicked: model marked failed");
                ready.fail(format!("the backend panicked: {p}"));
                return stop(w);
            }
        }
    }
}

enum Broken {
    Failed(String),
    Panicked(String),
}

/// Runs one batch and answers its entries.
fn execute(
    cfg: &WorkerConfig,
    backend: &mut dyn Backend,
    batch: batcher::Batch,
) -> Result<(), Broken> {
    let start = Instant::now();
    let mut pixels = Vec::with_capacity(batch.entries.iter().map(|e| e.pixels.len()).sum());
    for e in &batch.entries {
        m::queue_time(&cfg.model, start - e.enqueued);
        pixels.extend_from_slice(&e.pixels);
    }
    m::batch_size(&cfg.model, batch.size);
    let result = guarded(backend, batch.size, pixels);
    m::inference_time(&cfg.model, start.elapsed());
    let (v, r) = (batch.size * cfg.n_voxels, batch.size * cfg.n_rois);
    let result = match result {
        Ok(Ok(out)) if out.voxels.len() == v && out.roi_means.len() == r => Ok(out),
        Ok(Ok(out)) => Err(Broken::Failed(format!(
            "the backend returned {} voxel and {} ROI values for {} images; expected {v} and {r}",
            out.voxels.len(),
            out.roi_means.len(),
            batch.size
        ))),
        Ok(Err(e)) => Err(Broken::Failed(e.to_string())),
        Err(p) => Err(Broken::Panicked(p)),
    };
    match result {
        Ok(out) => {
            let (mut v0, mut r0) = (0, 0);
            for e in batch.entries {
                let (v1, r1) = (v0 + e.n * cfg.n_voxels, r0 + e.n * cfg.n_rois);
                let part = Outputs {
                    voxels: out.voxels[v0..v1].to_vec(),
                    roi_means: out.roi_means[r0..r1].to_vec(),
                };
                (v0, r0) = (v1, r1);
                if e.reply.send(Ok(part)).is_err() {
                    m::dropped(&cfg.model, "client_gone");
                }
            }
            m::images(&cfg.model, batch.size);
            Ok(())
        }
        Err(broken) => {
            let why = match &broken {
                Broken::Failed(e) => e.clone(),
                Broken::Panicked(p) => format!("the backend panicked: {p}"),
            };
            tracing::error!(model = %cfg.model, batch = batch.size, error = %why, "inference failed");
            for e in batch.entries {
                let _ = e.reply.send(Err(ServerError::Inference(why.clone())));
            }
            Err(broken)
        }
    }
}
