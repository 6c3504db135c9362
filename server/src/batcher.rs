//! The batcher: each model's queue, and the batches its backend thread
//! ([`crate::backend::worker`], the only owner of the session) takes from it. Request
//! handlers append entries as they come ([`Queue::push`]); the backend, whenever it is
//! idle, takes everything that waits, up to `max_batch_size` images
//! ([`Queue::take`]), dropping entries whose client left or whose deadline passed.
//! Assembly overlaps inference, as in text-embeddings-inference's router: while the
//! backend runs one batch, the next one grows in the queue.
//!
//! Why no batcher thread between them (scripts/bench_serve.sh, 2 cores): one that
//! polled a rendezvous with the backend cost 10-20% of the throughput, and one that
//! met it under a condition variable did no better than this queue while adding a
//! thread to schedule between ONNX Runtime's; a channel of capacity 1 would also fix
//! a batch's size one inference early. With the queue, a batch is exactly what waited
//! when the backend became free.
//!
//! Each entry carries its reply channel, enqueue time and deadline: entries whose
//! client hung up are skipped and counted, expired ones answered 503.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::backend::Outputs;
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

/// Entries that run as one inference, `size` images in all.
pub struct Batch {
    pub entries: Vec<Entry>,
    pub size: usize,
}

#[derive(Clone)]
pub struct BatcherConfig {
    pub model: String,
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub timeout_ms: u64,
}

/// A model's health: warming up, ready, or failed (warm-up failed, or the backend
/// panicked or kept failing), with the reason. Set by the backend thread,
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

/// A model's queue: entries waiting for the backend.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    /// An entry arrived, or the queue closed.
    filled: Condvar,
}

#[derive(Default)]
struct QueueState {
    entries: VecDeque<Entry>,
    /// No more entries: the model is no longer served.
    closed: bool,
    /// No more inference: the backend stopped (failed).
    backend_gone: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends an entry; gives it back when the backend has stopped (the caller answers
    /// 503).
    pub fn push(&self, model: &str, e: Entry) -> Result<(), Entry> {
        let mut st = self.lock();
        if st.backend_gone || st.closed {
            return Err(e);
        }
        m::queue_depth(model, e.n as f64);
        st.entries.push_back(e);
        drop(st);
        self.filled.notify_one();
        Ok(())
    }

    /// Blocks until there is a batch to run and takes it: every waiting entry that
    /// fits in `cfg.max_batch_size` images, in order. With a queue delay, a batch
    /// smaller than that waits until its first entry is `delay` old. None once the
    /// queue is closed and empty.
    pub fn take(&self, cfg: &BatcherConfig) -> Option<Batch> {
        let (max, delay) = (cfg.max_batch_size, cfg.max_queue_delay);
        let mut st = self.lock();
        loop {
            let Some(first) = st.entries.front() else {
                if st.closed {
                    return None;
                }
                st = self.filled.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            let due = first.enqueued + delay;
            let now = Instant::now();
            let waiting: usize = st.entries.iter().map(|e| e.n).sum();
            if !delay.is_zero() && waiting < max && now < due && !st.closed {
                st = self
                    .filled
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            let mut batch = Batch {
                entries: Vec::new(),
                size: 0,
            };
            while let Some(e) = st.entries.front() {
                if batch.size + e.n > max {
                    break;
                }
                let Some(e) = st.entries.pop_front() else {
                    break;
                };
                if let Some(e) = admit(cfg, e) {
                    batch.size += e.n;
                    batch.entries.push(e);
                }
            }
            if !batch.entries.is_empty() {
                return Some(batch);
            }
        }
    }

    /// No more entries (the model was replaced or removed): the backend finishes what
    /// waits, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.filled.notify_all();
    }

    /// The backend stopped: entries that wait are handed back (to be answered 503) and
    /// later pushes refused.
    pub fn close_backend(&self, model: &str) -> Vec<Entry> {
        let mut st = self.lock();
        st.backend_gone = true;
        let left: Vec<Entry> = st.entries.drain(..).collect();
        for e in &left {
            m::queue_depth(model, -(e.n as f64));
        }
        left
    }
}

/// The entry, unless its client is gone (dropped, counted) or its deadline passed
/// (answered 503); either way it leaves the queue depth.
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
