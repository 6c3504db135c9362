//! Health, readiness (with the models that failed and why), Prometheus metrics, the
//! OpenAPI document, and the repository reload.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::{AppState, Res};
use crate::error::ServerError;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

/// 200 when every served model is warmed up and (with --strict-readiness) every model
/// folder serves a version; 503 otherwise. Either way: each served model's readiness,
/// and `failed`: the model folders whose newest versions were refused, with why.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let repo = state.live.snapshot();
    let models: serde_json::Map<String, Value> = repo
        .models
        .iter()
        .map(|(k, m)| (k.clone(), Value::Bool(m.is_ready())))
        .collect();
    let mut failed: serde_json::Map<String, Value> = repo
        .failed
        .iter()
        .map(|(k, why)| (k.clone(), Value::String(why.clone())))
        .collect();
    for (k, m) in &repo.models {
        if let Some(why) = m.failure() {
            failed.insert(k.clone(), Value::String(why));
        }
    }
    let unserved = repo.unserved();
    let body = |status: &str| json!({"status": status, "models": models, "failed": failed, "unserved": unserved});
    if repo.ready(state.cfg.strict_readiness) {
        HttpResponse::Ok().json(body("ready"))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(body("not ready"))
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body((state.render_metrics)())
}

pub async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    let names: Vec<String> = state.live.snapshot().models.keys().cloned().collect();
    HttpResponse::Ok().json(crate::openapi::document(&state.cfg, &names))
}

/// Rescans the repository and swaps in new versions (which warm up first); answers
/// what changed. A repository folder that cannot be read is 503, and the models
/// served before go on serving.
pub async fn reload(state: web::Data<AppState>) -> Res {
    let live = state.live.clone();
    let report = web::block(move || live.reload())
        .await
        .map_err(|e| ServerError::Inference(format!("reload thread: {e}")))??;
    Ok(HttpResponse::Ok().json(report))
}
