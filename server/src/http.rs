//! The HTTP layer: thin actix-web handlers over [`crate::infer`]. Every handler goes
//! through the same helpers: [`model`] (name check and lookup in the repository's
//! current snapshot), [`read_body`] (the body limit, enforced here rather than by
//! actix's defaults, for multipart uploads too), [`media`] (content type) and
//! [`finish`] (request metrics by model, route and status).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::decode;
use crate::error::ServerError;
use crate::infer::{provider_name, Model};
use crate::metrics as m;
use crate::rank::{self, Objective};
use crate::repository::Live;

pub const NPY: &str = "application/x-npy";

pub struct AppState {
    /// The served models; swapped whole by a reload.
    pub live: Arc<Live>,
    pub cfg: Arc<Config>,
    /// Renders the Prometheus text (the exporter `main` installed).
    pub render_metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

type Res = Result<HttpResponse, ServerError>;

/// Registers every route. Health, readiness, metrics and the OpenAPI document are
/// open; the rest asks for the bearer token when one is configured.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |c: &mut web::ServiceConfig| {
        c.app_data(state)
            .route("/healthz", web::get().to(live))
            .route("/readyz", web::get().to(ready))
            .route("/v2/health/live", web::get().to(live))
            .route("/v2/health/ready", web::get().to(ready))
            .route("/metrics", web::get().to(metrics))
            .route("/openapi.json", web::get().to(openapi))
            .service(
                web::scope("")
                    .wrap(from_fn(auth))
                    .route("/v1/models", web::get().to(list_models))
                    .route("/v1/models/{name}", web::get().to(get_model))
                    .route("/v1/models/{name}/predict", web::post().to(predict))
                    .route("/v1/models/{name}/rank", web::post().to(rank_images))
                    .route("/v1/repository/reload", web::post().to(reload))
                    .route("/v2", web::get().to(v2_server))
                    .route("/v2/models/{name}", web::get().to(v2_model))
                    .route("/v2/models/{name}/ready", web::get().to(v2_model_ready))
                    .route("/v2/models/{name}/infer", web::post().to(v2_infer))
                    .default_service(web::to(not_found)),
            );
    }
}

async fn auth<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let key = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.cfg.api_key.clone());
    if let Some(key) = key {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(token.as_bytes().ct_eq(key.as_bytes())) {
            let resp = ServerError::Unauthorized.error_response();
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

async fn not_found() -> Res {
    Err(ServerError::RouteNotFound)
}

/// The model a path names: 400 for names that are not folder names, 404 for unknown.
pub fn model(state: &AppState, name: &str) -> Result<Arc<Model>, ServerError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') || name.contains("..")
    {
        return Err(ServerError::InvalidModelName(name.to_string()));
    }
    state
        .live
        .snapshot()
        .get(name)
        .cloned()
        .ok_or_else(|| ServerError::ModelNotFound(name.to_string()))
}

/// Records the request (by model, route, status) and passes the result on.
fn finish(model: &str, route: &'static str, start: Instant, res: Res) -> Res {
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

/// The body, at most `max_body_bytes` (413 beyond, before reading it where the
/// client announced its length).
async fn read_body(
    state: &AppState,
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, ServerError> {
    let limit = state.cfg.max_body_bytes;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(ServerError::BodyTooLarge { limit });
    }
    let mut buf = web::BytesMut::with_capacity(announced.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ServerError::Invalid(format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ServerError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Media {
    Json,
    Npy,
    Multipart,
    Missing,
}

fn media(req: &HttpRequest) -> Result<Media, ServerError> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(Media::Missing);
    };
    let ct = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => Ok(Media::Json),
        NPY | "application/octet-stream" => Ok(Media::Npy),
        "multipart/form-data" => Ok(Media::Multipart),
        _ => Err(ServerError::UnsupportedMediaType(ct)),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServerError> {
    serde_json::from_slice(body).map_err(|e| ServerError::InvalidJson(e.to_string()))
}

/// Decodes base64 images off the async workers.
async fn decode_images(
    state: &AppState,
    model: &Model,
    images: Vec<String>,
) -> Result<Vec<f32>, ServerError> {
    model.check_count(images.len())?;
    let [_, h, w] = model.chw();
    let max_side = state.cfg.max_image_side;
    web::block(move || decode::images(&images, h as u32, w as u32, max_side))
        .await
        .map_err(|e| ServerError::Inference(format!("decoding thread: {e}")))?
}

/// A multipart/form-data body: its image files in order (parts with a filename, or
/// named `image`/`images`) and its text fields by name.
#[derive(Default)]
struct Form {
    files: Vec<web::Bytes>,
    fields: BTreeMap<String, String>,
}

impl Form {
    /// Refuses text fields other than `allowed` (as JSON bodies refuse unknown keys).
    fn only(&self, allowed: &[&str]) -> Result<(), ServerError> {
        match self.fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ServerError::BadMultipart(format!(
                "unknown form field '{k}' (fields: {}; images as file parts)",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

/// Parses a multipart body that [`read_body`] already read under the limit.
async fn read_form(req: &HttpRequest, body: web::Bytes) -> Result<Form, ServerError> {
    let bad = |e: &dyn std::fmt::Display| ServerError::BadMultipart(e.to_string());
    let stream =
        futures_util::stream::once(async move { Ok::<_, actix_web::error::PayloadError>(body) });
    let mut parts = actix_multipart::Multipart::new(req.headers(), stream);
    let mut form = Form::default();
    while let Some(part) = parts.next().await {
        let mut part = part.map_err(|e| bad(&e))?;
        let name = part.name().unwrap_or("").to_string();
        let is_file = part
            .content_disposition()
            .and_then(|d| d.get_filename())
            .is_some()
            || name == "image"
            || name == "images";
        let mut buf = web::BytesMut::new();
        while let Some(chunk) = part.next().await {
            buf.extend_from_slice(&chunk.map_err(|e| bad(&e))?);
        }
        if is_file {
            form.files.push(buf.freeze());
        } else {
            let text = String::from_utf8(buf.to_vec())
                .map_err(|_| bad(&format!("field '{name}' is not UTF-8 text")))?;
            form.fields.insert(name, text);
        }
    }
    Ok(form)
}

/// Decodes uploaded image files off the async workers.
async fn decode_files(
    state: &AppState,
    model: &Model,
    files: Vec<web::Bytes>,
) -> Result<Vec<f32>, ServerError> {
    model.check_count(files.len())?;
    let [_, h, w] = model.chw();
    let max_side = state.cfg.max_image_side;
    web::block(move || decode::files_to_pixels(&files, h as u32, w as u32, max_side))
        .await
        .map_err(|e| ServerError::Inference(format!("decoding thread: {e}")))?
}

/// Checks a tensor's shape against the model: [N, 3, H, W].
fn check_shape(model: &Model, shape: &[usize]) -> Result<usize, ServerError> {
    let [c, h, w] = model.chw();
    if shape.len() != 4 || shape[1..] != [c, h, w] {
        return Err(ServerError::BadTensor(format!(
            "shape {shape:?}; this model takes [N, {c}, {h}, {w}]"
        )));
    }
    model.check_count(shape[0])?;
    Ok(shape[0])
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Reduce {
    #[default]
    Voxel,
    Roi,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    images: Vec<String>,
    #[serde(default)]
    reduce: Option<Reduce>,
}

#[derive(Deserialize)]
struct PredictQuery {
    reduce: Option<Reduce>,
}

fn rois_json(model: &Model) -> Value {
    Value::Array(
        model
            .manifest
            .rois
            .iter()
            .map(|r| json!({"name": r.name, "start": r.slice.start, "end": r.slice.end}))
            .collect(),
    )
}

async fn predict(
    state: web::Data<AppState>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let start = Instant::now();
    let res = async {
        let model = model(&state, &name)?;
        let kind = media(&req)?;
        let query = web::Query::<PredictQuery>::from_query(req.query_string())
            .map_err(|e| ServerError::Invalid(format!("query: {e}")))?;
        let body = read_body(&state, &req, payload).await?;
        let (n, pixels, reduce) = match kind {
            Media::Json => {
                let r: PredictRequest = json_body(&body)?;
                let n = r.images.len();
                (n, decode_images(&state, &model, r.images).await?, r.reduce)
            }
            Media::Npy => {
                let (shape, values) = decode::read_npy(&body)?;
                (check_shape(&model, &shape)?, values, None)
            }
            Media::Multipart => {
                let form = read_form(&req, body).await?;
                form.only(&["reduce"])?;
                let reduce = match form.fields.get("reduce").map(|r| r.trim()) {
                    None => None,
                    Some("voxel") => Some(Reduce::Voxel),
                    Some("roi") => Some(Reduce::Roi),
                    Some(other) => {
                        return Err(ServerError::Invalid(format!(
                            "reduce '{other}': voxel or roi"
                        )))
                    }
                };
                let n = form.files.len();
                (n, decode_files(&state, &model, form.files).await?, reduce)
            }
            Media::Missing => return Err(ServerError::UnsupportedMediaType("(none)".into())),
        };
        let out = model.predict(n, pixels).await?;
        let reduce = reduce.or(query.reduce).unwrap_or_default();
        let (cols, values) = match reduce {
            Reduce::Voxel => (model.manifest.n_voxels(), out.voxels),
            Reduce::Roi => (model.manifest.rois.len(), out.roi_means),
        };
        let wants_npy = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains(NPY));
        let version = model.manifest.model.version;
        if wants_npy {
            return Ok(HttpResponse::Ok()
                .content_type(NPY)
                .insert_header(("X-Model-Version", version.to_string()))
                .body(decode::write_npy(&[n, cols], &values)));
        }
        let rows: Vec<&[f32]> = values.chunks(cols).collect();
        Ok(HttpResponse::Ok().json(json!({
            "model": model.name(),
            "version": version,
            "reduce": if reduce == Reduce::Roi { "roi" } else { "voxel" },
            "rois": rois_json(&model),
            "predictions": rows,
        })))
    }
    .await;
    finish(&name, "predict", start, res)
}

fn default_top_k() -> usize {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RankRequest {
    images: Vec<String>,
    objective: Objective,
    #[serde(default = "default_top_k")]
    top_k: usize,
}

async fn rank_images(
    state: web::Data<AppState>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let start = Instant::now();
    let res = async {
        let model = model(&state, &name)?;
        let kind = media(&req)?;
        if !matches!(kind, Media::Json | Media::Multipart) {
            return Err(ServerError::UnsupportedMediaType(
                "rank takes application/json or multipart/form-data".into(),
            ));
        }
        let body = read_body(&state, &req, payload).await?;
        let (objective, top_k, n, pixels) = if kind == Media::Json {
            let r: RankRequest = json_body(&body)?;
            rank::check(&model.manifest, &r.objective, r.top_k)?;
            let n = r.images.len();
            let pixels = decode_images(&state, &model, r.images).await?;
            (r.objective, r.top_k, n, pixels)
        } else {
            let form = read_form(&req, body).await?;
            form.only(&["objective", "top_k"])?;
            let objective: Objective = json_body(
                form.fields
                    .get("objective")
                    .ok_or_else(|| ServerError::Invalid("no 'objective' field (JSON)".into()))?
                    .as_bytes(),
            )?;
            let top_k = match form.fields.get("top_k") {
                None => default_top_k(),
                Some(k) => k.trim().parse().map_err(|_| {
                    ServerError::Invalid(format!("top_k '{k}' is not a whole number"))
                })?,
            };
            rank::check(&model.manifest, &objective, top_k)?;
            let n = form.files.len();
            (
                objective,
                top_k,
                n,
                decode_files(&state, &model, form.files).await?,
            )
        };
        let out = model.predict(n, pixels).await?;
        let top = rank::rank(&model.manifest, &out, n, &objective, top_k)?;
        Ok(HttpResponse::Ok().json(json!({
            "model": model.name(),
            "version": model.manifest.model.version,
            "objective": objective,
            "rois": model.manifest.rois.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            "candidates": n,
            "top": top,
        })))
    }
    .await;
    finish(&name, "rank", start, res)
}

fn summary(model: &Model) -> Value {
    let mf = &model.manifest;
    json!({
        "name": model.name(),
        "version": mf.model.version,
        "versions": model.versions,
        "provider": provider_name(model.provider),
        "ready": model.is_ready(),
        "subject": mf.subject,
        "hemisphere": mf.hemisphere,
        "method": mf.training.method,
        "arch": mf.backbone.arch,
        "input": {"height": mf.input.height, "width": mf.input.width},
        "voxels": mf.n_voxels(),
        "rois": mf.rois.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
    })
}

async fn list_models(state: web::Data<AppState>) -> Res {
    let repo = state.live.snapshot();
    let models: Vec<Value> = repo.models.values().map(|m| summary(m)).collect();
    Ok(HttpResponse::Ok().json(json!({ "models": models })))
}

/// Rescans the repository and swaps in new versions (which warm up first); answers
/// what changed.
async fn reload(state: web::Data<AppState>) -> Res {
    let live = state.live.clone();
    let report = web::block(move || live.reload())
        .await
        .map_err(|e| ServerError::Inference(format!("reload thread: {e}")))??;
    Ok(HttpResponse::Ok().json(report))
}

async fn get_model(state: web::Data<AppState>, name: web::Path<String>) -> Res {
    let model = model(&state, &name)?;
    let mut v = summary(&model);
    v["manifest"] = serde_json::to_value(&model.manifest).unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(v))
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let repo = state.live.snapshot();
    let models: serde_json::Map<String, Value> = repo
        .models
        .iter()
        .map(|(k, m)| (k.clone(), Value::Bool(m.is_ready())))
        .collect();
    if repo.all_ready() {
        HttpResponse::Ok().json(json!({"status": "ready", "models": models}))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(json!({"status": "not ready", "models": models}))
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body((state.render_metrics)())
}

async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::document(&state.cfg))
}

// ---- KServe v2 (Open Inference Protocol), JSON tensors ----

async fn v2_server() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "vcl-serve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

fn v2_tensor(name: &str, shape: Vec<i64>) -> Value {
    json!({"name": name, "datatype": "FP32", "shape": shape})
}

async fn v2_model(state: web::Data<AppState>, name: web::Path<String>) -> Res {
    let model = model(&state, &name)?;
    let mf = &model.manifest;
    let [c, h, w] = model.chw();
    Ok(HttpResponse::Ok().json(json!({
        "name": model.name(),
        "versions": model.versions.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": [v2_tensor(&mf.input.tensor.name, vec![-1, c as i64, h as i64, w as i64])],
        "outputs": [
            v2_tensor(&mf.outputs.voxels.name, vec![-1, mf.n_voxels() as i64]),
            v2_tensor(&mf.outputs.roi_means.name, vec![-1, mf.rois.len() as i64]),
        ],
    })))
}

async fn v2_model_ready(state: web::Data<AppState>, name: web::Path<String>) -> Res {
    let model = model(&state, &name)?;
    if model.is_ready() {
        Ok(HttpResponse::Ok().json(json!({"name": model.name(), "ready": true})))
    } else {
        Err(ServerError::NotReady(model.name().to_string()))
    }
}

#[derive(Deserialize)]
struct V2Input {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    parameters: Value,
}

#[derive(Deserialize)]
struct V2Output {
    name: String,
    #[serde(default)]
    parameters: Value,
}

#[derive(Deserialize)]
struct V2Request {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<V2Input>,
    #[serde(default)]
    outputs: Option<Vec<V2Output>>,
    #[serde(default)]
    parameters: Value,
}

/// The binary tensor data extension's header: the JSON part's length.
const V2_JSON_LEN: &str = "inference-header-content-length";

/// Row-major values of a (possibly nested) JSON array of numbers.
fn flatten(v: &Value, out: &mut Vec<f32>) -> Result<(), ServerError> {
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| flatten(x, out)),
        Value::Number(n) => {
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        other => Err(ServerError::BadTensor(format!(
            "data holds {other}, not a number"
        ))),
    }
}

/// The input's values: JSON `data`, or `binary_data_size` bytes of float32 after the
/// JSON part (the binary tensor data extension, tritonclient's default).
fn v2_values(input: &V2Input, binary: &[u8], count: usize) -> Result<Vec<f32>, ServerError> {
    let values = match input
        .parameters
        .get("binary_data_size")
        .and_then(Value::as_u64)
    {
        Some(size) => {
            let bytes = binary.get(..size as usize).ok_or_else(|| {
                ServerError::BadTensor(format!(
                    "binary_data_size {size} but {} bytes follow the JSON",
                    binary.len()
                ))
            })?;
            if size % 4 != 0 {
                return Err(ServerError::BadTensor(format!("binary_data_size {size}")));
            }
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        None => {
            let mut data = Vec::with_capacity(count);
            flatten(&input.data, &mut data)?;
            data
        }
    };
    if values.len() != count {
        return Err(ServerError::BadTensor(format!(
            "{} values for shape {:?}",
            values.len(),
            input.shape
        )));
    }
    Ok(values)
}

async fn v2_infer(
    state: web::Data<AppState>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let start = Instant::now();
    let res = async {
        let model = model(&state, &name)?;
        let json_len = match req.headers().get(V2_JSON_LEN) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| ServerError::InvalidJson(format!("bad {V2_JSON_LEN} header")))?,
            ),
        };
        // JSON, or the binary extension's JSON + bytes (which clients send untyped or
        // as octet-stream).
        match media(&req)? {
            Media::Json | Media::Missing => {}
            Media::Npy if json_len.is_some() => {}
            Media::Npy | Media::Multipart => {
                return Err(ServerError::UnsupportedMediaType(
                    "v2 infer takes application/json (or the binary tensor data extension)".into(),
                ))
            }
        }
        let body = read_body(&state, &req, payload).await?;
        let (json_part, binary) = match json_len {
            Some(l) if l <= body.len() => body.split_at(l),
            Some(l) => {
                return Err(ServerError::InvalidJson(format!(
                    "{V2_JSON_LEN} {l} is over the body's {} bytes",
                    body.len()
                )))
            }
            None => (&body[..], &[][..]),
        };
        let r: V2Request = json_body(json_part)?;
        let mf = &model.manifest;
        let [input] = r.inputs.as_slice() else {
            return Err(ServerError::BadTensor(format!(
                "{} inputs; this model takes one, '{}'",
                r.inputs.len(),
                mf.input.tensor.name
            )));
        };
        if input.name != mf.input.tensor.name {
            return Err(ServerError::BadTensor(format!(
                "input '{}'; this model takes '{}'",
                input.name, mf.input.tensor.name
            )));
        }
        if input.datatype != "FP32" {
            return Err(ServerError::BadTensor(format!(
                "datatype {}; send FP32",
                input.datatype
            )));
        }
        if input.shape.iter().any(|&d| d < 0) {
            return Err(ServerError::BadTensor(format!("shape {:?}", input.shape)));
        }
        let shape: Vec<usize> = input.shape.iter().map(|&d| d as usize).collect();
        let n = check_shape(&model, &shape)?;
        let data = v2_values(input, binary, shape.iter().product())?;
        let binary_default = r
            .parameters
            .get("binary_data_output")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let wanted: Vec<(String, bool)> = match &r.outputs {
            Some(o) if !o.is_empty() => o
                .iter()
                .map(|o| {
                    let bin = o.parameters.get("binary_data").and_then(Value::as_bool);
                    (o.name.clone(), bin.unwrap_or(binary_default))
                })
                .collect(),
            _ => vec![
                (mf.outputs.voxels.name.clone(), binary_default),
                (mf.outputs.roi_means.name.clone(), binary_default),
            ],
        };
        for (w, _) in &wanted {
            if *w != mf.outputs.voxels.name && *w != mf.outputs.roi_means.name {
                return Err(ServerError::Invalid(format!("unknown output '{w}'")));
            }
        }
        let out = model.predict(n, data).await?;
        let mut blobs: Vec<u8> = Vec::new();
        let outputs: Vec<Value> = wanted
            .iter()
            .map(|(w, bin)| {
                let (cols, values) = if *w == mf.outputs.voxels.name {
                    (mf.n_voxels(), &out.voxels)
                } else {
                    (mf.rois.len(), &out.roi_means)
                };
                if *bin {
                    blobs.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                    json!({"name": w, "datatype": "FP32", "shape": [n, cols],
                           "parameters": {"binary_data_size": values.len() * 4}})
                } else {
                    json!({"name": w, "datatype": "FP32", "shape": [n, cols], "data": values})
                }
            })
            .collect();
        let mut resp = json!({
            "model_name": model.name(),
            "model_version": mf.model.version.to_string(),
            "outputs": outputs,
        });
        if let Some(id) = r.id {
            resp["id"] = Value::String(id);
        }
        if blobs.is_empty() {
            return Ok(HttpResponse::Ok().json(resp));
        }
        let mut bytes = serde_json::to_vec(&resp).expect("JSON");
        let json_len = bytes.len();
        bytes.extend_from_slice(&blobs);
        Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((V2_JSON_LEN, json_len.to_string()))
            .body(bytes))
    }
    .await;
    finish(&name, "v2_infer", start, res)
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
                let server = actix_web::HttpServer::new(move || {
                    actix_web::App::new().configure(configure(state.clone()))
                })
                .workers(4)
                .disable_signals()
                .listen(listener)?
                .run();
                let _ = tx.send(server.handle());
                server.await
            })
        })?;
    let handle = rx
        .recv()
        .map_err(|_| std::io::Error::other("the HTTP server failed to start"))?;
    Ok((addr, handle))
}
