//! `vcl-serve`: loads ONNX Runtime and every model of the repository, warms each up,
//! and serves them over HTTP until SIGTERM / Ctrl-C (in-flight requests drain).
//! SIGHUP (or --poll-interval-s) reloads the repository: new versions swap in whole.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use vcl_server::http::{configure, AppState};
use vcl_server::repository::{self, Live};
use vcl_server::Config;

#[actix_web::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = Config::parse();
    cfg.validate().map_err(anyhow::Error::msg)?;
    let handle = vcl_server::metrics::prometheus_builder()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    vcl_server::metrics::describe();
    let rt = repository::runtime(&cfg)?;
    let live = Arc::new(Live::load(&cfg, repository::ort_opener(&cfg, rt)?)?);
    let poll = (cfg.poll_interval_s > 0).then(|| Duration::from_secs(cfg.poll_interval_s));
    actix_web::rt::spawn(repository::watch(live.clone(), poll));
    tracing::info!(
        models = live.snapshot().models.len(),
        repository = %cfg.model_repository.display(),
        "serving on http://{}:{}",
        cfg.host,
        cfg.port
    );
    let state = actix_web::web::Data::new(AppState {
        live,
        cfg: Arc::new(cfg.clone()),
        render_metrics: Arc::new(move || handle.render()),
    });
    let mut server = actix_web::HttpServer::new(move || {
        actix_web::App::new().configure(configure(state.clone()))
    })
    .shutdown_timeout(cfg.request_timeout().as_secs().max(1) + 1);
    if cfg.http_workers > 0 {
        server = server.workers(cfg.http_workers);
    }
    server
        .bind((cfg.host.as_str(), cfg.port))
        .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?
        .run()
        .await?;
    tracing::info!("stopped");
    Ok(())
}
