//! vcl's own API: predictions (JSON base64 images, .npy tensors or multipart uploads;
//! voxels or ROI means, JSON or .npy), stimulus ranking, and model descriptions.

use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::{self, Images, Media};
use super::{finish, label, model, AppState, Res, NPY};
use crate::decode;
use crate::error::ServerError;
use crate::infer::{provider_name, Admission, Model};
use crate::rank::{self, Objective};

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Reduce {
    #[default]
    Voxel,
    Roi,
}

impl Reduce {
    fn parse(s: &str) -> Result<Self, ServerError> {
        match s.trim() {
            "voxel" => Ok(Reduce::Voxel),
            "roi" => Ok(Reduce::Roi),
            other => Err(ServerError::Invalid(format!(
                "reduce '{other}': voxel or roi"
            ))),
        }
    }
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
    reduce: Option<String>,
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

/// An admitted request's pixels: images are admitted (queue capacity taken, or 429)
/// before they are decoded.
async fn admit_images(
    state: &AppState,
    model: &Model,
    images: Images,
) -> Result<(Admission, Vec<f32>), ServerError> {
    let admission = model.admit(images.len(), model.deadline())?;
    let pixels = input::decode_images(state, model, images, admission.deadline).await?;
    Ok((admission, pixels))
}

pub async fn predict(
    state: web::Data<AppState>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let start = Instant::now();
    let res = async {
        let model = model(&state, &name)?;
        let kind = input::media(&req, input::PREDICT_MEDIA)?;
        let query = web::Query::<PredictQuery>::from_query(req.query_string())
            .map_err(|e| ServerError::Invalid(format!("query: {e}")))?;
        let query_reduce = query.reduce.as_deref().map(Reduce::parse).transpose()?;
        let body = input::read_body(&state, &req, payload).await?;
        let (admission, pixels, reduce) = match kind {
            Media::Json => {
                let r: PredictRequest = input::json_body(&body.bytes)?;
                drop(body);
                let (a, p) = admit_images(&state, &model, Images::Base64(r.images)).await?;
                (a, p, r.reduce)
            }
            Media::Npy => {
                let (shape, values) = decode::read_npy(&body.bytes)?;
                let n = input::check_shape(&model, &shape)?;
                input::check_tensor(&model, &values)?;
                (model.admit(n, model.deadline())?, values, None)
            }
            Media::Multipart => {
                let form = input::read_form(req.headers(), body.bytes.clone()).await?;
                form.only(&["reduce"])?;
                let reduce = form
                    .fields
                    .get("reduce")
                    .map(|r| Reduce::parse(r))
                    .transpose()?;
                let (a, p) = admit_images(&state, &model, Images::Raw(form.files)).await?;
                (a, p, reduce)
            }
            Media::Missing => return Err(input::unsupported(&req, input::PREDICT_MEDIA)),
        };
        let n = pixels.len() / model.chw().iter().product::<usize>();
        let out = model.run(admission, pixels).await?;
        let reduce = reduce.or(query_reduce).unwrap_or_default();
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
    finish(&label(&state, &name), "predict", start, res)
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

pub async fn rank_images(
    state: web::Data<AppState>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let start = Instant::now();
    let res = async {
        let model = model(&state, &name)?;
        const RANK_MEDIA: &str = "application/json or multipart/form-data";
        let kind = input::media(&req, RANK_MEDIA)?;
        if !matches!(kind, Media::Json | Media::Multipart) {
            return Err(input::unsupported(&req, RANK_MEDIA));
        }
        let body = input::read_body(&state, &req, payload).await?;
        let (objective, top_k, images) = if kind == Media::Json {
            let r: RankRequest = input::json_body(&body.bytes)?;
            (r.objective, r.top_k, Images::Base64(r.images))
        } else {
            let form = input::read_form(req.headers(), body.bytes.clone()).await?;
            form.only(&["objective", "top_k"])?;
            let objective: Objective = input::json_body(
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
            (objective, top_k, Images::Raw(form.files))
        };
        drop(body);
        rank::check(&model.manifest, &objective, top_k)?;
        let n = images.len();
        let (admission, pixels) = admit_images(&state, &model, images).await?;
        let out = model.run(admission, pixels).await?;
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
    finish(&label(&state, &name), "rank", start, res)
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

pub async fn list_models(state: web::Data<AppState>) -> Res {
    let repo = state.live.snapshot();
    let models: Vec<Value> = repo.models.values().map(|m| summary(m)).collect();
    Ok(HttpResponse::Ok().json(json!({ "models": models })))
}

pub async fn get_model(state: web::Data<AppState>, name: web::Path<String>) -> Res {
    let model = model(&state, &name)?;
    let mut v = summary(&model);
    v["manifest"] = serde_json::to_value(&model.manifest).unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(v))
}
