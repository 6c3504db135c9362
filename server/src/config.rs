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
    /// Most pixels (width x height) of one image, read from its header before any
    /// decoding (more: 422): a small PNG can announce gigabytes of pixels.
    #[arg(long, env = "VCL_MAX_IMAGE_PIXELS", default_value_t = 4096 * 4096)]
    pub max_image_pixels: u64,
    /// Requests decoding images at once (0: one per core); others wait for a turn
    /// within their deadline. Bounds decoding memory to about this many times
    /// --max-image-pixels x 8 bytes.
    #[arg(long, env = "VCL_DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,
    /// Per-request deadline from the end of the body: decoding, queueing and inference
    /// (past it: 503).
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
    /// Bearer token read from a file (first line), so that it shows in no process
    /// list; wins over --api-key.
    #[arg(long, env = "VCL_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Bearer token of the administration routes (POST /v1/repository/reload). Unset:
    /// they take no token when no --api-key is set either, and are refused (403) when
    /// one is (an inference key does not administer).
    #[arg(long, env = "VCL_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// The administration token read from a file (first line); wins over --admin-api-key.
    #[arg(long, env = "VCL_ADMIN_API_KEY_FILE")]
    pub admin_api_key_file: Option<PathBuf>,
    /// No administration routes at all (403); SIGHUP and --poll-interval-s still reload.
    #[arg(long, env = "VCL_DISABLE_ADMIN")]
    pub disable_admin: bool,
    /// /readyz answers 503 while any model folder has no version that loads (true), or
    /// only while no model serves (false). Either way the failures are listed.
    #[arg(long, env = "VCL_STRICT_READINESS", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_readiness: bool,
    /// HTTP worker threads (0: one per core).
    #[arg(long, env = "VCL_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,
    /// Open connections at most, all workers together; more wait in the listen backlog.
    #[arg(long, env = "VCL_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Milliseconds a client has to send its request head, and at most between two
    /// pieces of its body (past it: 408 and the connection is closed).
    #[arg(long, env = "VCL_CLIENT_TIMEOUT_MS", default_value_t = 5_000)]
    pub client_timeout_ms: u64,
    /// Milliseconds a client has to send its whole body (past it: 408, closed).
    #[arg(long, env = "VCL_BODY_TIMEOUT_MS", default_value_t = 60_000)]
    pub body_timeout_ms: u64,
    /// Request-body bytes held in memory at once, all requests together; a request
    /// whose next bytes would pass it gets 429. Bytes are counted as they arrive,
    /// never from the client's Content-Length.
    #[arg(long, env = "VCL_MAX_INFLIGHT_BODY_BYTES", default_value_t = 1 << 30)]
    pub max_inflight_body_bytes: usize,
}

impl Config {
    /// The defaults, as if run with no flags (clap's, so they live in one place).
    pub fn defaults() -> Self {
        use clap::Parser;
        let mut cfg = Config::parse_from(["vcl-serve"]);
        // The environment is not the defaults.
        cfg.api_key = None;
        cfg.admin_api_key = None;
        cfg
    }

    /// Reads the token files into the keys (trailing newline dropped), naming the file
    /// that cannot be read or is empty.
    pub fn resolve_keys(&mut self) -> Result<(), String> {
        let read = |p: &PathBuf| -> Result<String, String> {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("reading the key file {}: {e}", p.display()))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                return Err(format!("the key file {} is empty", p.display()));
            }
            Ok(key)
        };
        if let Some(p) = &self.api_key_file {
            self.api_key = Some(read(p)?);
        }
        if let Some(p) = &self.admin_api_key_file {
            self.admin_api_key = Some(read(p)?);
        }
        for (flag, key) in [
            ("--api-key", &self.api_key),
            ("--admin-api-key", &self.admin_api_key),
        ] {
            if key.as_deref().is_some_and(str::is_empty) {
                return Err(format!("{flag} is empty"));
            }
        }
        Ok(())
    }

    /// Decoding turns: --decode-threads, or the cores.
    pub fn decode_permits(&self) -> usize {
        if self.decode_threads > 0 {
            self.decode_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn queue_delay(&self) -> Duration {
        Duration::from_millis(self.max_queue_delay_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_image_pixels == 0 || self.max_inflight_body_bytes < self.max_body_bytes {
            return Err(format!(
                "--max-image-pixels must be positive and --max-inflight-body-bytes ({}) at least \
                 --max-body-bytes ({})",
                self.max_inflight_body_bytes, self.max_body_bytes
            ));
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys can come from files (so that they show in no process list), first line,
    /// newline dropped; an empty or missing file is refused, naming it.
    #[test]
    fn keys_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "s3cret\n").unwrap();
        let mut cfg = Config::defaults();
        cfg.api_key = Some("from-the-command-line".into());
        cfg.api_key_file = Some(key.clone());
        cfg.admin_api_key_file = Some(key.clone());
        cfg.resolve_keys().unwrap();
        assert_eq!(cfg.api_key.as_deref(), Some("s3cret"));
        assert_eq!(cfg.admin_api_key.as_deref(), Some("s3cret"));
        std::fs::write(&key, "\n").unwrap();
        let e = cfg.resolve_keys().unwrap_err();
        assert!(e.contains("empty") && e.contains("key"), "{e}");
        cfg.api_key_file = Some(dir.path().join("missing"));
        let e = cfg.resolve_keys().unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn defaults_are_clap_defaults_and_valid() {
        let cfg = Config::defaults();
        assert_eq!(cfg.max_image_pixels, 4096 * 4096);
        assert!(cfg.strict_readiness && !cfg.disable_admin);
        cfg.validate().unwrap();
        let mut bad = Config::defaults();
        bad.max_inflight_body_bytes = bad.max_body_bytes - 1;
        assert!(bad.validate().is_err());
    }
}
