//! One thread per model owns its backend (and so its ORT session, whose `run` takes
//! `&mut self`) and the receiving end of the model's queue. It blocks for a first
//! entry, then lets the batch grow until it holds `max_batch_size` images or the first
//! entry has waited `max_queue_delay`; entries that arrive while the backend runs wait
//! in the channel and are drained at once into the next batch (they are already older
//! than the delay). Each entry carries its reply channel, enqueue time and deadline:
//! entries whose client hung up are skipped and counted, expired ones answered 503.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::backend::{Backend, Outputs};
use crate::error::ServerError;
use crate::metrics as m;

/// A chunk of one request: at most `max_batch_size` images.
pub struct Entry {
    pub n: usize,
    /// float32 [n, 3, H, W].
    pub pixels: Vec<f32>,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Outputs, ServerError>>,
    /// Queue capacity this entry holds (`n` permits), released when it is dropped.
    pub permit: OwnedSemaphorePermit,
}

pub struct BatcherConfig {
    pub model: String,
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    /// [3, H, W], for the warm-up input.
    pub chw: [usize; 3],
    pub timeout_ms: u64,
    /// Columns of voxels and roi_means, to split the outputs per entry.
    pub n_voxels: usize,
    pub n_rois: usize,
}

/// A model's warm-up state: set once by its batcher, read by requests, readiness
/// probes, and a reload waiting to swap the model in (which must tell a failed
/// warm-up from a slow one).
#[derive(Debug)]
pub struct Readiness(AtomicU8);

const WARMING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

impl Default for Readiness {
    fn default() -> Self {
        Readiness(AtomicU8::new(WARMING))
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst) == READY
    }

    pub fn has_failed(&self) -> bool {
        self.0.load(Ordering::SeqCst) == FAILED
    }

    fn set(&self, ok: bool) {
        self.0
            .store(if ok { READY } else { FAILED }, Ordering::SeqCst);
    }
}

/// Starts the model's thread: a warm-up inference (then `ready` is set), then batches
/// until every sender is gone.
pub fn spawn(
    cfg: BatcherConfig,
    backend: Box<dyn Backend>,
    rx: Receiver<Entry>,
    ready: Arc<Readiness>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("batcher-{}", cfg.model))
        .spawn(move || run(cfg, backend, rx, ready))
        .expect("spawning a batcher thread")
}

fn run(
    cfg: BatcherConfig,
    mut backend: Box<dyn Backend>,
    rx: Receiver<Entry>,
    ready: Arc<Readiness>,
) {
    let t = Instant::now();
    let warm = vec![0.5f32; cfg.chw.iter().product()];
    match backend.predict(1, warm) {
        Ok(_) => {
            tracing::info!(model = %cfg.model, ms = t.elapsed().as_millis() as u64, "warm-up done, ready");
            ready.set(true);
        }
        Err(e) => {
            tracing::error!(model = %cfg.model, error = %e, "warm-up inference failed: the model stays not ready");
            ready.set(false);
        }
    }
    let mut pending: Option<Entry> = None;
    loop {
        let first = match pending.take() {
            Some(e) => e,
            None => match rx.recv() {
                Ok(e) => e,
                Err(_) => break,
            },
        };
        let Some(first) = admit(&cfg, first) else {
            continue;
        };
        let flush_at = first.enqueued + cfg.max_queue_delay;
        let mut size = first.n;
        let mut batch = vec![first];
        while size < cfg.max_batch_size {
            let now = Instant::now();
            let next = if now >= flush_at {
                match rx.try_recv() {
                    Ok(e) => e,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.recv_timeout(flush_at - now) {
                    Ok(e) => e,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            };
            let Some(next) = admit(&cfg, next) else {
                continue;
            };
            if size + next.n > cfg.max_batch_size {
                pending = Some(next);
                break;
            }
            size += next.n;
            batch.push(next);
        }
        execute(&cfg, backend.as_mut(), batch, size);
    }
    tracing::info!(model = %cfg.model, "batcher stopped");
}

/// The entry, unless its client is gone (dropped, counted) or its deadline passed
/// (answered 503).
fn admit(cfg: &BatcherConfig, e: Entry) -> Option<Entry> {
    m::queue_depth(&cfg.model, -(e.n as f64));
    if e.reply.is_closed() {
        m::dropped(&cfg.model, "client_gone");
        return None;
    }
    if Instant::now() >= e.deadline {
        m::dropped(&cfg.model, "deadline");
        let _ = e
            .reply
            .send(Err(ServerError::Timeout { ms: cfg.timeout_ms }));
        return None;
    }
    Some(e)
}

fn execute(cfg: &BatcherConfig, backend: &mut dyn Backend, batch: Vec<Entry>, size: usize) {
    let start = Instant::now();
    let mut pixels = Vec::with_capacity(batch.iter().map(|e| e.pixels.len()).sum());
    for e in &batch {
        m::queue_time(&cfg.model, start - e.enqueued);
        pixels.extend_from_slice(&e.pixels);
    }
    m::batch_size(&cfg.model, size);
    let result = backend.predict(size, pixels);
    m::inference_time(&cfg.model, start.elapsed());
    match result {
        Ok(out) => {
            let (mut v0, mut r0) = (0, 0);
            for e in batch {
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
            m::images(&cfg.model, size);
        }
        Err(err) => {
            tracing::error!(model = %cfg.model, batch = size, error = %err, "inference failed");
            for e in batch {
                let _ = e.reply.send(Err(ServerError::Inference(err.to_string())));
            }
        }
    }
}
