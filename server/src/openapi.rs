//! The OpenAPI 3 document served at /openapi.json. Each route's error responses are
//! built from the error kinds it can return, through [`ServerError::status`], so the
//! document cannot promise a status the code does not answer.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::Config;
use crate::error::ServerError;

const INPUT_ERRORS: &[&str] = &[
    "unauthorized",
    "invalid_model_name",
    "model_not_found",
    "unsupported_media_type",
    "body_too_large",
    "invalid_json",
    "empty_batch",
    "batch_too_large",
    "overloaded",
    "timeout",
    "not_ready",
    "inference",
];

/// Responses for the error kinds `kinds` (plus `extra`), grouped by status.
fn errors(kinds: &[&str], extra: &[&str]) -> BTreeMap<String, Value> {
    let examples = ServerError::examples();
    let mut by_status: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for k in kinds.iter().chain(extra) {
        let e = examples
            .iter()
            .find(|e| e.kind() == *k)
            .unwrap_or_else(|| panic!("no error kind '{k}'"));
        by_status
            .entry(e.status().as_u16().to_string())
            .or_default()
            .push(k);
    }
    by_status
        .into_iter()
        .map(|(status, kinds)| {
            let retry = if status == "429" || status == "503" { " (with Retry-After)" } else { "" };
            (
                status,
                json!({
                    "description": format!("error kinds: {}{retry}", kinds.join(", ")),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }),
            )
        })
        .collect()
}

fn op(summary: &str, ok: Value, errs: BTreeMap<String, Value>, body: Option<Value>) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert("200".into(), ok);
    for (k, v) in errs {
        responses.insert(k, v);
    }
    let mut o = json!({
        "summary": summary,
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": responses,
    });
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    o
}

fn ok_json(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"type": "object"}}}})
}

pub fn document(cfg: &Config) -> Value {
    let images_body = json!({"required": true, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        "application/x-npy": {"schema": {"type": "string", "format": "binary",
            "description": "float32 little-endian .npy, shape [N, 3, H, W], RGB in [0, 1]"}},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PredictForm"}},
    }});
    let predict_errors = errors(
        INPUT_ERRORS,
        &[
            "bad_multipart",
            "bad_base64",
            "not_an_image",
            "image_too_large",
            "bad_tensor",
            "invalid",
        ],
    );
    let mut predict_ok =
        ok_json("predictions (JSON, or .npy float32 [N, V|R] with Accept: application/x-npy)");
    predict_ok["content"]["application/x-npy"] =
        json!({"schema": {"type": "string", "format": "binary"}});
    let health = |d: &str| json!({"get": {"summary": d, "responses": {"200": ok_json(d)}}});
    let ready = |d: &str| {
        json!({"get": {"summary": d, "responses": {
        "200": ok_json("every model warmed up"),
        "503": {"description": "a model is not ready (with Retry-After)"}}}})
    };
    let lookup = errors(
        &["unauthorized", "invalid_model_name", "model_not_found"],
        &[],
    );
    let mut model_ready = lookup.clone();
    model_ready.extend(errors(&["not_ready"], &[]));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "vcl-serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Voxel predictions of exported vcl encoders. Limits: {} images per request, \
                 {} bytes per body, batches of up to {} images. Errors: JSON {{error, status, kind}}.",
                cfg.max_request_images, cfg.max_body_bytes, cfg.max_batch_size),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status", "kind"], "properties": {
                    "error": {"type": "string"}, "status": {"type": "integer"}, "kind": {"type": "string"}}},
                "PredictRequest": {"type": "object", "required": ["images"], "properties": {
                    "images": {"type": "array", "items": {"type": "string", "description": "base64 PNG or JPEG"}},
                    "reduce": {"type": "string", "enum": ["voxel", "roi"], "default": "voxel"}}},
                "PredictForm": {"type": "object", "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                        "description": "PNG or JPEG files, in order (any part with a filename counts)"},
                    "reduce": {"type": "string", "enum": ["voxel", "roi"], "default": "voxel"}}},
                "RankForm": {"type": "object", "required": ["objective"], "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "objective": {"type": "string", "description": "the objective as JSON (see RankRequest)"},
                    "top_k": {"type": "integer", "default": 10, "minimum": 1}}},
                "RankRequest": {"type": "object", "required": ["images", "objective"], "properties": {
                    "images": {"type": "array", "items": {"type": "string"}},
                    "top_k": {"type": "integer", "default": 10, "minimum": 1},
                    "objective": {"oneOf": [
                        {"type": "object", "properties": {"maximize_roi": {"type": "string"}}},
                        {"type": "object", "properties": {"minimize_roi": {"type": "string"}}},
                        {"type": "object", "properties": {"match_pattern": {"type": "array", "items": {"type": "number"}}}},
                        {"type": "object", "properties": {"contrast": {"type": "object",
                            "properties": {"high": {"type": "string"}, "low": {"type": "string"}}}}}]}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": health("liveness"),
            "/readyz": ready("readiness"),
            "/v2/health/live": health("KServe v2 liveness"),
            "/v2/health/ready": ready("KServe v2 readiness"),
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition"}}}},
            "/v1/models": {"get": {"summary": "served models", "responses": {"200": ok_json("models"),
                "401": errors(&["unauthorized"], &[])["401"].clone()}}},
            "/v1/models/{name}": {"get": op("a model: summary and manifest", ok_json("model"), lookup.clone(), None)},
            "/v1/models/{name}/predict": {"post": op("voxel or ROI predictions", predict_ok, predict_errors, Some(images_body))},
            "/v1/models/{name}/rank": {"post": op("top k candidate images for an objective", ok_json("ranking"),
                errors(INPUT_ERRORS, &["bad_multipart", "bad_base64", "not_an_image", "image_too_large", "invalid"]),
                Some(json!({"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/RankRequest"}},
                    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/RankForm"}}}})))},
            "/v1/repository/reload": {"post": {"summary": "rescan the model repository; new versions warm up, then swap in whole (as on SIGHUP)",
                "responses": {"200": ok_json("what changed: added, updated, removed, kept, failed"),
                    "401": errors(&["unauthorized"], &[])["401"].clone(),
                    "500": errors(&["repository"], &[])["500"].clone()}}},
            "/v2/models/{name}": {"get": op("KServe v2 model metadata", ok_json("metadata"), lookup, None)},
            "/v2/models/{name}/ready": {"get": op("KServe v2 model readiness", ok_json("ready"), model_ready, None)},
            "/v2/models/{name}/infer": {"post": op("KServe v2 inference (JSON tensors)", ok_json("outputs voxels and roi_means"),
                errors(INPUT_ERRORS, &["bad_tensor", "invalid"]),
                Some(json!({"required": true, "content": {"application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                        "description": "binary tensor data extension: JSON of Inference-Header-Content-Length bytes, then float32 data"}}}})))},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_documents_every_input_status() {
        let doc = document(&Config::defaults());
        let p = &doc["paths"]["/v1/models/{name}/predict"]["post"]["responses"];
        for s in [
            "200", "400", "401", "404", "413", "415", "422", "429", "500", "503",
        ] {
            assert!(p.get(s).is_some(), "predict lacks {s}: {p}");
        }
    }
}
