//! `vcl-serve`: loads ONNX Runtime and every model of the repository (the newest
//! version of each that loads and warms up), and serves them over HTTP until SIGTERM /
//! Ctrl-C (in-flight requests drain). SIGHUP (or --poll-interval-s) reloads the
//! repository: new versions swap in whole.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use vcl_server::http::{self, AppState, Listen};
use vcl_server::repository::{self, Live};
use vcl_server::Config;

#[actix_web::main]
async fn main() -> Result<()> {
    // Colours only on a terminal: container and journal logs stay plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(colour)
        .init();
    let matches = Config::command().get_matches();
    let mut cfg = Config::from_arg_matches(&matches)?;
    for key in ["api_key", "admin_api_key"] {
        if matches.value_source(key) == Some(clap::parser::ValueSource::CommandLine) {
            tracing::warn!(
                "--{} is visible to every user of this machine in the process list: use \
                 VCL_{} or --{}-file",
                key.replace('_', "-"),
                key.to_uppercase(),
                key.replace('_', "-")
            );
        }
    }
    cfg.resolve_keys().map_err(anyhow::Error::msg)?;
    cfg.validate().map_err(anyhow::Error::msg)?;
    let handle = vcl_server::metrics::prometheus_builder()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    vcl_server::metrics::describe();
    vcl_server::metrics::spawn_upkeep(handle.clone(), vcl_server::metrics::UPKEEP)
        .context("starting the metrics upkeep thread")?;
    let rt = repository::runtime(&cfg)?;
    let live = Arc::new(Live::load(&cfg, repository::ort_opener(&cfg, rt)?)?);
    let poll = (cfg.poll_interval_s > 0).then(|| Duration::from_secs(cfg.poll_interval_s));
    actix_web::rt::spawn(repository::watch(live.clone(), poll));
    let snapshot = live.snapshot();
    tracing::info!(
        models = snapshot.models.len(),
        failed = ?snapshot.failed.keys().collect::<Vec<_>>(),
        repository = %cfg.model_repository.display(),
        "serving on http://{}:{}",
        cfg.host,
        cfg.port
    );
    drop(snapshot);
    let state = actix_web::web::Data::new(AppState::new(
        live,
        Arc::new(cfg.clone()),
        Arc::new(move || handle.render()),
    ));
    http::server(
        state,
        cfg.http_workers,
        Listen::Addr(cfg.host.clone(), cfg.port),
        true,
    )
    .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?
    .await?;
    tracing::info!("stopped");
    Ok(())
}
