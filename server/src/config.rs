//! vcl-serve's whole configuration: one clap struct, every flag with an env fallback,
//! passed whole to the layers that need it.

use std::path::PathBuf;
use std::time::Duration;

use vcl_contract::runtime::DeviceChoice;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "vcl-serve",
    version,
    about = "Serve vcl voxel encoders over HTTP (ONNX Runtime, batched)"
)]
pub struct Config {
    /// Model repository: <repo>/<model>/<version>/model.onnx + manifest.json.
    #[arg(long, env = "VCL_MODEL_REPOSITORY", default_value = "exports")]
    pub model_repository: PathBuf,
    #[arg(long, env = "VCL_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "VCL_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Most images one inference batch holds (requests are split into chunks of this).
    #[arg(long, env = "VCL_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: usize,
    /// How long the first entry of a batch waits for others to join it. 0: a batch is
    /// what queued while the previous one ran (scripts/bench_serve.sh: on 2 CPU cores
    /// 0 ms gave 0.91x of in-process ONNX Runtime at concurrency 1 where 2 ms gave
    /// 0.57x, and as much at concurrency 32); a few ms can pay on a GPU, where a bigger
    /// batch costs little more than a small one.
    #[arg(long, env = "VCL_MAX_QUEUE_DELAY_MS", default_value_t = 0)]
    pub max_queue_delay_ms: u64,
    /// Images waiting or running per model; beyond it requests get 429.
    #[arg(long, env = "VCL_MAX_QUEUE_LENGTH", default_value_t = 2048)]
    pub max_queue_length: usize,
    /// Most images in one request (more: 413). At most --max-queue-length.
    #[arg(long, env = "VCL_MAX_REQUEST_IMAGES", default_value_t = 1024)]
    pub max_request_images: usize,
    /// Largest request body in bytes (JSON or .npy; more: 413).
    #[arg(long, env = "VCL_MAX_BODY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest decoded image side in pixels (more: 422).
    #[arg(long, env = "VCL_MAX_IMAGE_SIDE", default_value_t = 8192)]
    pub max_image_side: u32,
    /// Per-request deadline, queueing and inference included (past it: 503).
    #[arg(long, env = "VCL_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    #[arg(long, env = "VCL_DEVICE", value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// ONNX Runtime intra-op threads per model; 0: the cores divided among the models.
    #[arg(long, env = "VCL_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,
    /// libonnxruntime.so to load (default: the project's .venv onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Bearer token required on everything but health and metrics (unset: no auth).
    #[arg(long, env = "VCL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds between scans of the model repository for new or removed versions
    /// (0: none; SIGHUP or POST /v1/repository/reload always rescan).
    #[arg(long, env = "VCL_POLL_INTERVAL_S", default_value_t = 0)]
    pub poll_interval_s: u64,
    /// HTTP worker threads (0: one per core).
    #[arg(long, env = "VCL_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
}

impl Config {
    /// The defaults, as if run with no flags (env ignored): for tests.
    pub fn defaults() -> Self {
        Config {
            model_repository: PathBuf::from("exports"),
            host: "127.0.0.1".into(),
            port: 8080,
            max_batch_size: 32,
            max_queue_delay_ms: 0,
            max_queue_length: 2048,
            max_request_images: 1024,
            max_body_bytes: 256 * 1024 * 1024,
            max_image_side: 8192,
            request_timeout_ms: 30_000,
            device: DeviceChoice::Auto,
            intra_threads: 0,
            ort_dylib_path: None,
            api_key: None,
            poll_interval_s: 0,
            http_workers: 0,
        }
    }

    pub fn queue_delay(&self) -> Duration {
        Duration::from_millis(self.max_queue_delay_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 {
            return Err("--max-batch-size must be at least 1".into());
        }
        if self.max_request_images == 0 || self.max_request_images > self.max_queue_length {
            return Err(format!(
                "--max-request-images ({}) must be between 1 and --max-queue-length ({})",
                self.max_request_images, self.max_queue_length
            ));
        }
        Ok(())
    }
}
