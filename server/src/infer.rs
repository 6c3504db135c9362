//! The inference layer, free of HTTP: a [`Model`] is a served model's manifest and the
//! handle on its queue and the backend thread that empties it. A request is first admitted
//! ([`Model::admit`]: the queue capacity for all its images, or 429 at once), so that
//! nothing costly (decoding) happens for a request the queue has no room for; then
//! [`Model::run`] splits it into batch-sized entries, enqueues them and awaits their
//! replies before the request's deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use vcl_contract::manifest::Manifest;
use vcl_contract::runtime::Provider;

use crate::backend::{chw, spawn_worker, Backend, Outputs, Worker, WorkerConfig};
use crate::batcher::{BatcherConfig, Entry, Queue, Readiness};
use crate::config::Config;
use crate::decode::Preprocess;
use crate::error::ServerError;
use crate::metrics as m;

pub struct Model {
    pub manifest: Manifest,
    pub provider: Provider,
    /// Every version folder found; the one served is `manifest.model.version`.
    pub versions: Vec<u32>,
    pub dir: PathBuf,
    /// How the images of a request become input (from the manifest).
    pub preprocess: Preprocess,
    queue: Arc<Queue>,
    permits: Arc<Semaphore>,
    ready: Arc<Readiness>,
    max_batch_size: usize,
    max_request_images: usize,
    timeout: Duration,
}

/// Where a model came from, besides its manifest.
pub struct Origin {
    pub provider: Provider,
    pub versions: Vec<u32>,
    pub dir: PathBuf,
}

/// Queue capacity held for one request's images, and its deadline.
pub struct Admission {
    n: usize,
    permit: OwnedSemaphorePermit,
    pub deadline: Instant,
}

impl Model {
    /// Starts the model's backend thread (which warms up first), announced in the metrics.
    pub fn spawn(
        manifest: Manifest,
        origin: Origin,
        backend: Box<dyn Backend>,
        cfg: &Config,
    ) -> Result<Self, ServerError> {
        let queue = Arc::new(Queue::default());
        let ready = Arc::new(Readiness::default());
        let name = manifest.model.name.clone();
        let worker = Worker {
            cfg: WorkerConfig {
                model: name.clone(),
                chw: chw(&manifest),
                n_voxels: manifest.n_voxels(),
                n_rois: manifest.rois.len(),
            },
            batching: BatcherConfig {
                model: name.clone(),
                max_batch_size: cfg.max_batch_size,
                max_queue_delay: cfg.queue_delay(),
                timeout_ms: cfg.request_timeout_ms,
            },
            queue: queue.clone(),
            ready: ready.clone(),
        };
        spawn_worker(worker, backend).map_err(|e| {
            ServerError::Repository(format!("{name}: cannot start its backend thread: {e}"))
        })?;
        m::queue_depth(&name, 0.0);
        let model = Model {
            preprocess: Preprocess::of(&manifest.input),
            manifest,
            provider: origin.provider,
            versions: origin.versions,
            dir: origin.dir,
            queue,
            permits: Arc::new(Semaphore::new(cfg.max_queue_length)),
            ready,
            max_batch_size: cfg.max_batch_size,
            max_request_images: cfg.max_request_images,
            timeout: cfg.request_timeout(),
        };
        model.announce();
        Ok(model)
    }

    /// Marks this version as no longer served in the metrics (its backend thread stops
    /// by itself once the last request holding it is done).
    pub fn retire(&self) {
        m::model_retired(
            self.name(),
            self.manifest.model.version,
            provider_name(self.provider),
        );
    }

    /// Marks this version as served in the metrics.
    pub fn announce(&self) {
        m::model_info(
            self.name(),
            self.manifest.model.version,
            provider_name(self.provider),
        );
    }

    pub fn name(&self) -> &str {
        &self.manifest.model.name
    }

    pub fn is_ready(&self) -> bool {
        self.ready.is_ready()
    }

    /// Why the model is not serving, once it has failed.
    pub fn failure(&self) -> Option<String> {
        self.ready.failure()
    }

    /// Blocks until the warm-up inference is done: Err when it failed or took longer
    /// than `timeout` (a reload then tries an older version, or keeps the one served).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        loop {
            if self.ready.is_ready() {
                return Ok(());
            }
            if let Some(why) = self.ready.failure() {
                return Err(why);
            }
            if Instant::now() >= until {
                return Err(format!("no warm-up within {} s", timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// [3, H, W] of one input image.
    pub fn chw(&self) -> [usize; 3] {
        chw(&self.manifest)
    }

    /// 400 for none, 413 over the per-request limit.
    pub fn check_count(&self, n: usize) -> Result<(), ServerError> {
        if n == 0 {
            return Err(ServerError::EmptyBatch);
        }
        if n > self.max_request_images {
            return Err(ServerError::BatchTooLarge {
                n,
                max: self.max_request_images,
            });
        }
        Ok(())
    }

    /// A deadline `--request-timeout-ms` from now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    pub fn timeout_error(&self) -> ServerError {
        ServerError::Timeout {
            ms: self.timeout.as_millis() as u64,
        }
    }

    /// Takes the queue capacity of `n` images, all or none (429), before anything is
    /// decoded.
    pub fn admit(&self, n: usize, deadline: Instant) -> Result<Admission, ServerError> {
        self.check_count(n)?;
        if !self.is_ready() {
            return Err(ServerError::NotReady(self.name().to_string()));
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n as u32)
            .map_err(|_| ServerError::Overloaded {
                model: self.name().to_string(),
            })?;
        Ok(Admission {
            n,
            permit,
            deadline,
        })
    }

    /// Admits and runs `n` images (`pixels` float32 [n, 3, H, W]) with a fresh deadline.
    pub async fn predict(&self, n: usize, pixels: Vec<f32>) -> Result<Outputs, ServerError> {
        let admission = self.admit(n, self.deadline())?;
        self.run(admission, pixels).await
    }

    /// Runs an admitted request's pixels through the model's queue.
    pub async fn run(
        &self,
        admission: Admission,
        pixels: Vec<f32>,
    ) -> Result<Outputs, ServerError> {
        let Admission {
            n,
            permit,
            deadline,
        } = admission;
        let per: usize = self.chw().iter().product();
        if pixels.len() != n * per {
            return Err(ServerError::BadTensor(format!(
                "{} values for {n} images of 3x{}x{}",
                pixels.len(),
                self.chw()[1],
                self.chw()[2]
            )));
        }
        let enqueued = Instant::now();
        let mut replies = Vec::new();
        let mut permit = Some(permit);
        let chunk_len = self.max_batch_size * per;
        let chunks = pixels.len().div_ceil(chunk_len);
        for (i, chunk) in pixels.chunks(chunk_len).enumerate() {
            let k = chunk.len() / per;
            let Some(held) = permit.as_mut() else { break };
            // The last chunk takes what is left of the permit.
            let part = if i + 1 == chunks {
                permit.take()
            } else {
                held.split(k)
            };
            let Some(part) = part else {
                return Err(ServerError::Inference("queue capacity accounting".into()));
            };
            let (reply, rx) = oneshot::channel();
            let entry = Entry {
                n: k,
                pixels: chunk.to_vec(),
                enqueued,
                deadline,
                reply,
                permit: part,
            };
            if self.queue.push(self.name(), entry).is_err() {
                return Err(ServerError::NotReady(self.name().to_string()));
            }
            replies.push(rx);
        }
        let all = async {
            let mut out = Outputs {
                voxels: Vec::with_capacity(n * self.manifest.n_voxels()),
                roi_means: Vec::with_capacity(n * self.manifest.rois.len()),
            };
            for rx in replies {
                let part = rx
                    .await
                    .map_err(|_| ServerError::NotReady(self.name().to_string()))??;
                out.voxels.extend(part.voxels);
                out.roi_means.extend(part.roi_means);
            }
            Ok::<_, ServerError>(out)
        };
        tokio::time::timeout_at(deadline.into(), all)
            .await
            .map_err(|_| self.timeout_error())?
    }
}

pub fn provider_name(p: Provider) -> &'static str {
    match p {
        Provider::Cuda => "cuda",
        Provider::Cpu => "cpu",
    }
}

impl Drop for Model {
    /// The last holder is gone (a reload replaced the version, and its requests are
    /// done): the backend thread finishes and stops.
    fn drop(&mut self) {
        self.queue.close();
    }
}
