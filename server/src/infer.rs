//! The inference layer, free of HTTP: a [`Model`] is a served model's manifest and a
//! handle on its batcher thread. `predict` takes queue capacity from a semaphore (or
//! answers 429 at once), splits the request into batch-sized entries, enqueues them
//! and awaits their replies before the request's deadline.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};
use vcl_contract::manifest::Manifest;
use vcl_contract::runtime::Provider;

use crate::backend::{chw, Backend, Outputs};
use crate::batcher::{self, BatcherConfig, Entry, Readiness};
use crate::config::Config;
use crate::error::ServerError;
use crate::metrics as m;

pub struct Model {
    pub manifest: Manifest,
    pub provider: Provider,
    /// Every integer version folder found; the highest is served.
    pub versions: Vec<u32>,
    pub dir: PathBuf,
    tx: Sender<Entry>,
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

impl Model {
    /// Starts the model's batcher thread (which warms the backend up, then serves).
    pub fn spawn(
        manifest: Manifest,
        origin: Origin,
        backend: Box<dyn Backend>,
        cfg: &Config,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = Arc::new(Readiness::default());
        let name = manifest.model.name.clone();
        batcher::spawn(
            BatcherConfig {
                model: name.clone(),
                max_batch_size: cfg.max_batch_size,
                max_queue_delay: cfg.queue_delay(),
                chw: chw(&manifest),
                timeout_ms: cfg.request_timeout_ms,
                n_voxels: manifest.n_voxels(),
                n_rois: manifest.rois.len(),
            },
            backend,
            rx,
            ready.clone(),
        );
        m::model_info(
            &name,
            manifest.model.version,
            provider_name(origin.provider),
        );
        m::queue_depth(&name, 0.0);
        Model {
            manifest,
            provider: origin.provider,
            versions: origin.versions,
            dir: origin.dir,
            tx,
            permits: Arc::new(Semaphore::new(cfg.max_queue_length)),
            ready,
            max_batch_size: cfg.max_batch_size,
            max_request_images: cfg.max_request_images,
            timeout: cfg.request_timeout(),
        }
    }

    /// Marks this version as no longer served in the metrics (its batcher stops by
    /// itself once the last request holding it is done).
    pub fn retire(&self) {
        m::model_retired(
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

    /// Blocks until the warm-up inference is done: Err when it failed or took longer
    /// than `timeout` (a reload then keeps the version it was to replace).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        loop {
            if self.ready.is_ready() {
                return Ok(());
            }
            if self.ready.has_failed() {
                return Err("its warm-up inference failed".into());
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

    /// Runs `n` images (`pixels` float32 [n, 3, H, W]) through the model's queue.
    pub async fn predict(&self, n: usize, pixels: Vec<f32>) -> Result<Outputs, ServerError> {
        self.check_count(n)?;
        let per: usize = self.chw().iter().product();
        if pixels.len() != n * per {
            return Err(ServerError::BadTensor(format!(
                "{} values for {n} images of 3x{}x{}",
                pixels.len(),
                self.chw()[1],
                self.chw()[2]
            )));
        }
        if !self.is_ready() {
            return Err(ServerError::NotReady(self.name().to_string()));
        }
        let overloaded = || ServerError::Overloaded {
            model: self.name().to_string(),
        };
        // All the request's capacity or none: no half-enqueued requests.
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n as u32)
            .map_err(|_| overloaded())?;
        let enqueued = Instant::now();
        let deadline = enqueued + self.timeout;
        let mut replies = Vec::new();
        let mut permit = Some(permit);
        for (i, chunk) in pixels.chunks(self.max_batch_size * per).enumerate() {
            let k = chunk.len() / per;
            let p = permit.as_mut().expect("permit");
            let part = if (i + 1) * self.max_batch_size * per >= pixels.len() {
                permit.take().expect("permit")
            } else {
                p.split(k).expect("enough permits")
            };
            let (reply, rx) = oneshot::channel();
            m::queue_depth(self.name(), k as f64);
            self.tx
                .send(Entry {
                    n: k,
                    pixels: chunk.to_vec(),
                    enqueued,
                    deadline,
                    reply,
                    permit: part,
                })
                .map_err(|_| ServerError::NotReady(self.name().to_string()))?;
            replies.push(rx);
        }
        let timeout = || ServerError::Timeout {
            ms: self.timeout.as_millis() as u64,
        };
        let all = async {
            let mut out = Outputs {
                voxels: Vec::with_capacity(n * self.manifest.n_voxels()),
                roi_means: Vec::with_capacity(n * self.manifest.rois.len()),
            };
            for rx in replies {
                let part = rx
                    .await
                    .map_err(|_| ServerError::Inference("the batcher stopped".into()))??;
                out.voxels.extend(part.voxels);
                out.roi_means.extend(part.roi_means);
            }
            Ok::<_, ServerError>(out)
        };
        tokio::time::timeout_at(deadline.into(), all)
            .await
            .map_err(|_| timeout())?
    }
}

pub fn provider_name(p: Provider) -> &'static str {
    match p {
        Provider::Cuda => "cuda",
        Provider::Cpu => "cpu",
    }
}
