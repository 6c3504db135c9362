//! The batcher: one thread per model assembles batches from the model's queue and
//! hands them to the model's backend thread ([`crate::backend::worker`]), which alone
//! owns the session. Assembly overlaps inference, as in text-embeddings-inference's
//! router: while the backend runs one batch, the next one grows here.
//!
//! The hand-off is a rendezvous (a channel of capacity 0): a batch leaves only when the
//! backend asks for work, and until then it keeps taking entries, up to
//! `max_batch_size` images. A channel of capacity 1 would fix the next batch's size one
//! inference early (whatever had queued when the slot emptied); the rendezvous costs a
//! poll of at most [`HANDOFF_POLL`] while the backend is busy and nothing when it is
//! idle. The first entry of a batch may wait `max_queue_delay` for others when the
//! backend is idle (0 by default: see the config).
//!
//! Each entry carries its reply channel, enqueue time and deadline: entries whose
//! client hung up are skipped and counted, expired ones answered 503.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::backend::Outputs;
use crate::error::ServerError;
use crate::metrics as m;

/// How often a batch waiting for a busy backend checks whether it may go.
pub const HANDOFF_POLL: Duration = Duration::from_micros(200);

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

/// Entries that run as one inference, `size` images in all.
pub struct Batch {
    pub entries: Vec<Entry>,
    pub size: usize,
}

pub struct BatcherConfig {
    pub model: String,
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub timeout_ms: u64,
}

/// A model's health: warming up, ready, or failed (warm-up failed, or the backend
/// panicked or kept failing), with the reason. Set by the batcher and the backend,
/// read by requests, readiness probes and reloads (which reopen failed models).
#[derive(Debug, Default)]
pub struct Readiness {
    state: AtomicU8,
    reason: Mutex<Option<String>>,
}

const WARMING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::SeqCst) == READY
    }

    pub fn has_failed(&self) -> bool {
        self.state.load(Ordering::SeqCst) == FAILED
    }

    /// Why the model failed, once it has.
    pub fn failure(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_ready(&self) {
        // A failure is final for this instance: only a reload replaces it.
        let _ = self
            .state
            .compare_exchange(WARMING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn fail(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.state.store(FAILED, Ordering::SeqCst);
    }
}

/// Starts the model's batcher thread: it runs until every sender of `rx` is gone or
/// the backend thread has stopped.
pub fn spawn(
    cfg: BatcherConfig,
    rx: Receiver<Entry>,
    to_backend: SyncSender<Batch>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("batcher-{}", cfg.model))
        .spawn(move || run(&cfg, &rx, &to_backend))
}

fn run(cfg: &BatcherConfig, rx: &Receiver<Entry>, to_backend: &SyncSender<Batch>) {
    let mut pending: Option<Entry> = None;
    loop {
        let first = match pending.take() {
            Some(e) => e,
            None => match rx.recv() {
                Ok(e) => e,
                Err(_) => break,
            },
        };
        let Some(first) = admit(cfg, first) else {
            continue;
        };
        let mut batch = Batch {
            size: first.n,
            entries: Vec::new(),
        };
        let flush_at = first.enqueued + cfg.max_queue_delay;
        batch.entries.push(first);
        // The queue delay: wait for company until `flush_at`.
        while batch.size < cfg.max_batch_size && pending.is_none() {
            let now = Instant::now();
            if now >= flush_at {
                break;
            }
            match rx.recv_timeout(flush_at - now) {
                Ok(e) => add(cfg, &mut batch, &mut pending, e),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // The hand-off: grow while the backend is busy.
        let mut batch = Some(batch);
        while let Some(b) = batch.take() {
            match to_backend.try_send(b) {
                Ok(()) => {}
                Err(TrySendError::Disconnected(b)) => {
                    answer_all(b, || ServerError::NotReady(cfg.model.clone()));
                    if let Some(p) = pending.take() {
                        let _ = p.reply.send(Err(ServerError::NotReady(cfg.model.clone())));
                    }
                    drain(cfg, rx);
                    return;
                }
                Err(TrySendError::Full(mut b)) => {
                    prune(cfg, &mut b);
                    if b.entries.is_empty() {
                        break;
                    }
                    if b.size < cfg.max_batch_size && pending.is_none() {
                        match rx.recv_timeout(HANDOFF_POLL) {
                            Ok(e) => add(cfg, &mut b, &mut pending, e),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                        }
                        batch = Some(b);
                    } else if let Err(std::sync::mpsc::SendError(b)) = to_backend.send(b) {
                        batch = Some(b);
                    }
                }
            }
        }
    }
    tracing::info!(model = %cfg.model, "batcher stopped");
}

/// Drops the entries of a waiting batch whose client left or whose deadline passed
/// meanwhile (they would cost an inference nobody reads).
fn prune(cfg: &BatcherConfig, b: &mut Batch) {
    let entries = std::mem::take(&mut b.entries);
    b.size = 0;
    for e in entries {
        // `admit` counts the entry out of the queue depth; it was counted out already.
        m::queue_depth(&cfg.model, e.n as f64);
        if let Some(e) = admit(cfg, e) {
            b.size += e.n;
            b.entries.push(e);
        }
    }
}

/// Adds `e` to the batch if it fits; otherwise it opens the next batch.
fn add(cfg: &BatcherConfig, batch: &mut Batch, pending: &mut Option<Entry>, e: Entry) {
    let Some(e) = admit(cfg, e) else {
        return;
    };
    if batch.size + e.n > cfg.max_batch_size {
        *pending = Some(e);
    } else {
        batch.size += e.n;
        batch.entries.push(e);
    }
}

fn answer_all(b: Batch, err: impl Fn() -> ServerError) {
    for e in b.entries {
        let _ = e.reply.send(Err(err()));
    }
}

/// The backend is gone: every entry still queued, and every one that comes until the
/// model is replaced, is answered 503.
fn drain(cfg: &BatcherConfig, rx: &Receiver<Entry>) {
    while let Ok(e) = rx.recv() {
        m::queue_depth(&cfg.model, -(e.n as f64));
        let _ = e.reply.send(Err(ServerError::NotReady(cfg.model.clone())));
    }
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
