//! The HTTP layer: thin actix-web handlers over [`crate::infer`], by seam: [`input`]
//! (bodies, media types, forms and image decoding, shared by every inference route),
//! [`v1`] (predict, rank, models), [`kserve`] (the Open Inference Protocol) and
//! [`admin`] (health, readiness, metrics, OpenAPI, reload). This module registers the
//! routes, guards them ([`auth`]) and records every request ([`finish`]).

pub mod admin;
pub mod input;
pub mod kserve;
pub mod v1;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::ServerError;
use crate::infer::Model;
use crate::metrics as m;
use crate::repository::Live;

pub const NPY: &str = "application/x-npy";

pub struct AppState {
    /// The served models; swapped whole by a reload.
    pub live: Arc<Live>,
    pub cfg: Arc<Config>,
    /// Renders the Prometheus text (the exporter `main` installed).
    pub render_metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// Turns at decoding images: bounds the memory decoding takes.
    pub decoders: Arc<Semaphore>,
    /// Request-body bytes that may be held at once, all requests together.
    pub body_budget: Arc<Semaphore>,
}

impl AppState {
    pub fn new(
        live: Arc<Live>,
        cfg: Arc<Config>,
        render_metrics: Arc<dyn Fn() -> String + Send + Sync>,
    ) -> Self {
        AppState {
            decoders: Arc::new(Semaphore::new(cfg.decode_permits())),
            body_budget: Arc::new(Semaphore::new(cfg.max_inflight_body_bytes)),
            live,
            cfg,
            render_metrics,
        }
    }
}

pub(crate) type Res = Result<HttpResponse, ServerError>;

/// A resource answering `$method` with `$handler`, 405 (with Allow) to any other
/// method, optionally behind a guard middleware.
macro_rules! resource {
    ($path:expr, $method:ident, $handler:expr) => {
        web::resource($path)
            .route(web::$method().to($handler))
            .default_service(web::to(not_allowed(stringify!($method))))
    };
    ($path:expr, $method:ident, $handler:expr, $guard:expr) => {
        resource!($path, $method, $handler).wrap(from_fn($guard))
    };
}

/// Registers every route. Health, readiness, metrics and the OpenAPI document are
/// open; inference routes ask for the bearer token when one is configured; the
/// reload route asks for the administration token ([`admin_auth`]).
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |c: &mut web::ServiceConfig| {
        // A path segment that does not decode (bad percent-encoding) is a bad model
        // name, answered in JSON like every other error.
        let path_errors = web::PathConfig::default()
            .error_handler(|e, _| ServerError::InvalidModelName(e.to_string()).into());
        c.app_data(state)
            .app_data(path_errors)
            .service(resource!("/healthz", get, admin::live))
            .service(resource!("/readyz", get, admin::ready))
            .service(resource!("/v2/health/live", get, admin::live))
            .service(resource!("/v2/health/ready", get, admin::ready))
            .service(resource!("/metrics", get, admin::metrics))
            .service(resource!("/openapi.json", get, admin::openapi))
            .service(resource!("/v1/models", get, v1::list_models, auth))
            .service(resource!("/v1/models/{name}", get, v1::get_model, auth))
            .service(resource!(
                "/v1/models/{name}/predict",
                post,
                v1::predict,
                auth
            ))
            .service(resource!(
                "/v1/models/{name}/rank",
                post,
                v1::rank_images,
                auth
            ))
            .service(resource!(
                "/v1/repository/reload",
                post,
                admin::reload,
                admin_auth
            ))
            .service(resource!("/v2", get, kserve::server, auth))
            .service(resource!(
                "/v2/models/{name}",
                get,
                kserve::model_metadata,
                auth
            ))
            .service(resource!(
                "/v2/models/{name}/ready",
                get,
                kserve::model_ready,
                auth
            ))
            .service(resource!(
                "/v2/models/{name}/infer",
                post,
                kserve::infer,
                auth
            ))
            .default_service(web::to(not_found));
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 7235).
fn bearer(req: &ServiceRequest) -> &str {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim())
}

fn token_ok(req: &ServiceRequest, key: &str) -> bool {
    bool::from(bearer(req).as_bytes().ct_eq(key.as_bytes()))
}

fn refuse<B>(req: ServiceRequest, e: ServerError) -> ServiceResponse<EitherBody<B>> {
    req.into_response(e.error_response()).map_into_right_body()
}

fn cfg_of(req: &ServiceRequest) -> Option<Arc<Config>> {
    req.app_data::<web::Data<AppState>>().map(|s| s.cfg.clone())
}

async fn auth<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    if let Some(key) = cfg_of(&req).and_then(|c| c.api_key.clone()) {
        if !token_ok(&req, &key) {
            return Ok(refuse(req, ServerError::Unauthorized));
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Administration: refused when disabled; its own key when one is set; open only
/// when no key is set at all (an inference key does not administer).
async fn admin_auth<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let Some(cfg) = cfg_of(&req) else {
        return Ok(refuse(
            req,
            ServerError::Forbidden("no configuration".into()),
        ));
    };
    if cfg.disable_admin {
        return Ok(refuse(
            req,
            ServerError::Forbidden("administration is disabled (--disable-admin)".into()),
        ));
    }
    match (&cfg.admin_api_key, &cfg.api_key) {
        (Some(k), _) if !token_ok(&req, k) => return Ok(refuse(req, ServerError::Unauthorized)),
        (None, Some(_)) => {
            return Ok(refuse(
                req,
                ServerError::Forbidden(
                    "administration takes its own key: start vcl-serve with --admin-api-key \
                     (or VCL_ADMIN_API_KEY / --admin-api-key-file)"
                        .into(),
                ),
            ))
        }
        _ => {}
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

async fn not_found() -> Res {
    Err(ServerError::RouteNotFound)
}

fn not_allowed(
    allowed: &'static str,
) -> impl Fn(HttpRequest) -> std::future::Ready<Res> + Clone + 'static {
    let allowed = if allowed == "get" { "GET" } else { "POST" };
    move |req: HttpRequest| {
        std::future::ready(Err(ServerError::MethodNotAllowed {
            method: req.method().to_string(),
            allowed,
        }))
    }
}

/// The model a path names: 400 for names that are not folder names, 404 for unknown.
pub fn model(state: &AppState, name: &str) -> Result<Arc<Model>, ServerError> {
    if !vcl_contract::repository::valid_model_name(name) {
        return Err(ServerError::InvalidModelName(name.to_string()));
    }
    state
        .live
        .snapshot()
        .get(name)
        .cloned()
        .ok_or_else(|| ServerError::ModelNotFound(name.to_string()))
}

/// The metrics label of a URL's model name: the name of a served model, or
/// [`m::UNKNOWN_MODEL`] (a client cannot mint label values).
pub fn label(state: &AppState, name: &str) -> String {
    if state.live.snapshot().get(name).is_some() {
        name.to_string()
    } else {
        m::UNKNOWN_MODEL.to_string()
    }
}

/// Records the request (by model label, route, status) and passes the result on.
pub(crate) fn finish(model: &str, route: &'static str, start: Instant, res: Res) -> Res {
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    };
    m::request(model, route, status, start.elapsed());
    if let Err(e) = &res {
        if e.status().is_server_error() {
            tracing::warn!(model, route, status, error = %e, "request failed");
        }
    }
    res
}

/// Where the server listens.
pub enum Listen {
    Addr(String, u16),
    Listener(std::net::TcpListener),
}

/// The running actix server of `state`: `workers` workers (0: one per core), the
/// configuration's connection cap and client timeouts; `signals` lets it stop on
/// SIGTERM / Ctrl-C (draining in-flight requests).
pub fn server(
    state: web::Data<AppState>,
    workers: usize,
    listen: Listen,
    signals: bool,
) -> std::io::Result<actix_web::dev::Server> {
    let cfg = state.cfg.clone();
    let workers = if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let mut server = actix_web::HttpServer::new(move || {
        actix_web::App::new().configure(configure(state.clone()))
    })
    .workers(workers)
    .max_connections(cfg.max_connections.div_ceil(workers))
    .client_request_timeout(cfg.client_timeout())
    .client_disconnect_timeout(std::time::Duration::from_secs(1))
    .shutdown_timeout(cfg.request_timeout().as_secs().max(1) + 1);
    if !signals {
        server = server.disable_signals();
    }
    let server = match listen {
        Listen::Addr(host, port) => server.bind((host.as_str(), port))?,
        Listen::Listener(l) => server.listen(l)?,
    };
    Ok(server.run())
}

/// Serves `state` on `host:port` (port 0: any free port) from a thread of its own,
/// without signal handling: for tests and embedding. Returns the bound address and a
/// handle that stops the server.
pub fn start_background(
    state: AppState,
    host: &str,
    port: u16,
) -> std::io::Result<(std::net::SocketAddr, actix_web::dev::ServerHandle)> {
    let state = web::Data::new(state);
    let listener = std::net::TcpListener::bind((host, port))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("vcl-serve-http".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = server(state, 4, Listen::Listener(listener), false)?;
                let _ = tx.send(server.handle());
                server.await
            })
        })?;
    let handle = rx
        .recv()
        .map_err(|_| std::io::Error::other("the HTTP server failed to start"))?;
    Ok((addr, handle))
}
