//! The OpenAPI 3 document served at /openapi.json, generated from what the server
//! does: each route's error responses come from the error kinds it can return,
//! through [`ServerError::status`]; limits (images per request) from the
//! configuration; security only on the routes that ask for a token, and only when one
//! is configured. schemathesis checks the document against the running server in the
//! test suite (tests/serve_schema.rs).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::Config;
use crate::error::ServerError;

/// What every route that reads a model name and a body can answer.
const INPUT_ERRORS: &[&str] = &[
    "invalid_model_name",
    "model_not_found",
    "unsupported_media_type",
    "bad_header",
    "body_too_large",
    "body_timeout",
    "busy",
    "invalid_json",
    "empty_batch",
    "batch_too_large",
    "overloaded",
    "timeout",
    "not_ready",
    "inference",
];

const IMAGE_ERRORS: &[&str] = &[
    "bad_multipart",
    "bad_base64",
    "not_an_image",
    "image_too_large",
    "invalid",
];

/// A 2 x 2 RGB PNG: the documented example image, so that generated requests reach
/// inference.
const TINY_PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEElEQVR4nGM4IWcDRAwQCgAh9gSJHoU67gAAAABJRU5ErkJggg==";

fn error_ref() -> Value {
    json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
}

/// Responses for the error kinds `kinds`, grouped by status.
fn errors(kinds: &[&str]) -> BTreeMap<String, Value> {
    let examples = ServerError::examples();
    let mut by_status: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for k in kinds {
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
            let retry = status == "429" || status == "503";
            let mut r = json!({
                "description": format!("error kinds: {}", kinds.join(", ")),
                "content": error_ref(),
            });
            if retry {
                r["headers"] = retry_after();
            }
            (status, r)
        })
        .collect()
}

fn retry_after() -> Value {
    json!({"Retry-After": {"required": true, "description": "seconds to wait before retrying",
        "schema": {"type": "string"}}})
}

fn ok(desc: &str, schema: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// Which token a route asks for (the open routes are written out by hand below).
#[derive(Clone, Copy, PartialEq)]
enum Guard {
    Inference,
    Admin,
}

struct Op<'a> {
    summary: &'a str,
    guard: Guard,
    /// Whether the path has the `{name}` parameter.
    named: bool,
    ok: Value,
    errors: Vec<&'a str>,
    body: Option<Value>,
    extra_params: Vec<Value>,
}

fn operation(cfg: &Config, names: &[String], op: Op) -> Value {
    let mut kinds = op.errors.clone();
    let (secured, scheme) = match op.guard {
        Guard::Inference => (cfg.api_key.is_some(), "bearer"),
        Guard::Admin => {
            if cfg.disable_admin || (cfg.admin_api_key.is_none() && cfg.api_key.is_some()) {
                kinds.push("forbidden");
            }
            (cfg.admin_api_key.is_some(), "adminBearer")
        }
    };
    if secured {
        kinds.push("unauthorized");
    }
    let mut responses = serde_json::Map::new();
    responses.insert("200".into(), op.ok);
    for (k, v) in errors(&kinds) {
        responses.insert(k, v);
    }
    let mut params = op.extra_params;
    if op.named {
        params.insert(
            0,
            json!({"name": "name", "in": "path", "required": true,
                   "schema": {"type": "string", "enum": names},
                   "description": "a served model's name (GET /v1/models lists them; others are 404)"}),
        );
    }
    let mut o = json!({"summary": op.summary, "responses": responses});
    if !params.is_empty() {
        o["parameters"] = Value::Array(params);
    }
    o["security"] = if secured {
        json!([{ scheme: [] }])
    } else {
        json!([])
    };
    if let Some(b) = op.body {
        o["requestBody"] = b;
    }
    o
}

fn schemas(cfg: &Config) -> Value {
    // The most images per request is not a maxItems: past it the answer is 413 (too
    // large), where a schema violation would be 400.
    let limit = format!("at most {} (413 beyond)", cfg.max_request_images);
    let images = |desc: &str| {
        json!({"type": "array", "minItems": 1, "description": limit,
               "items": {"type": "string", "format": "byte", "description": desc},
               "example": [TINY_PNG_BASE64]})
    };
    let files = json!({"type": "array", "minItems": 1,
        "items": {"type": "string", "format": "binary"},
        "description": format!("PNG or JPEG files, in order (any part with a filename counts); {limit}")});
    let reduce = json!({"type": "string", "enum": ["voxel", "roi"], "default": "voxel"});
    let reduce_or_null = json!({"type": "string", "enum": ["voxel", "roi", null], "nullable": true,
        "description": "voxel (default) or roi; null is the default"});
    let top_k = json!({"type": "integer", "default": 10, "minimum": 1});
    let one = |key: &str, v: Value| {
        json!({"type": "object", "required": [key], "additionalProperties": false,
               "properties": {key: v}})
    };
    let roi_means = json!({"type": "array", "items": {"type": "number"}});
    let tensor_meta = json!({"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}});
    json!({
        "Error": {"type": "object", "required": ["error", "status", "kind"], "properties": {
            "error": {"type": "string"}, "status": {"type": "integer"}, "kind": {"type": "string"}}},
        "PredictRequest": {"type": "object", "required": ["images"], "additionalProperties": false,
            "properties": {"images": images("base64 PNG or JPEG (data URLs accepted)"), "reduce": reduce_or_null}},
        "PredictForm": {"type": "object", "required": ["images"], "additionalProperties": false,
            "properties": {"images": files, "reduce": reduce}},
        "PredictResponse": {"type": "object", "required": ["model", "version", "reduce", "rois", "predictions"],
            "properties": {
                "model": {"type": "string"}, "version": {"type": "integer"},
                "reduce": {"type": "string", "enum": ["voxel", "roi"]},
                "rois": {"type": "array", "items": {"type": "object", "required": ["name", "start", "end"],
                    "properties": {"name": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}}}},
                "predictions": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
        "Objective": {"oneOf": [
            one("maximize_roi", json!({"type": "string"})),
            one("minimize_roi", json!({"type": "string"})),
            one("match_pattern", json!({"type": "array", "minItems": 1, "items": {"type": "number"}})),
            one("contrast", json!({"type": "object", "required": ["high", "low"], "additionalProperties": false,
                "properties": {"high": {"type": "string"}, "low": {"type": "string"}}})),
        ]},
        "RankRequest": {"type": "object", "required": ["images", "objective"], "additionalProperties": false,
            "properties": {"images": images("base64 PNG or JPEG"), "top_k": top_k,
                "objective": {"$ref": "#/components/schemas/Objective"}}},
        "RankForm": {"type": "object", "required": ["images", "objective"], "additionalProperties": false,
            "properties": {"images": files, "top_k": top_k,
                "objective": {"type": "string", "description": "the objective as JSON (see Objective)"}}},
        "RankResponse": {"type": "object", "required": ["model", "version", "objective", "rois", "candidates", "top"],
            "properties": {"model": {"type": "string"}, "version": {"type": "integer"},
                "objective": {"$ref": "#/components/schemas/Objective"},
                "rois": {"type": "array", "items": {"type": "string"}},
                "candidates": {"type": "integer"},
                "top": {"type": "array", "items": {"type": "object", "required": ["index", "score", "roi_means"],
                    "properties": {"index": {"type": "integer"}, "score": {"type": "number"}, "roi_means": roi_means}}}}},
        "ModelSummary": {"type": "object", "required": ["name", "version", "versions", "provider", "ready", "voxels", "rois"],
            "properties": {"name": {"type": "string"}, "version": {"type": "integer"},
                "versions": {"type": "array", "items": {"type": "integer"}},
                "provider": {"type": "string", "enum": ["cpu", "cuda"]}, "ready": {"type": "boolean"},
                "voxels": {"type": "integer"}, "rois": {"type": "array", "items": {"type": "string"}},
                "manifest": {"type": "object", "description": "the model's manifest.json"}}},
        "ModelList": {"type": "object", "required": ["models"], "properties": {
            "models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelSummary"}}}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Readiness": {"type": "object", "required": ["status", "models", "failed", "unserved"], "properties": {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "models": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "failed": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "model -> why its newest versions (or its backend) failed"},
            "unserved": {"type": "array", "items": {"type": "string"}}}},
        "ReloadReport": {"type": "object", "required": ["added", "updated", "removed", "kept", "reopened", "failed"],
            "properties": {"added": {"type": "array", "items": {"type": "string"}},
                "updated": {"type": "array", "items": {"type": "string"}},
                "removed": {"type": "array", "items": {"type": "string"}},
                "kept": {"type": "array", "items": {"type": "string"}},
                "reopened": {"type": "array", "items": {"type": "string"}},
                "failed": {"type": "array", "items": {"type": "string"}}}},
        "V2Server": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "V2Metadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"], "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": tensor_meta}, "outputs": {"type": "array", "items": tensor_meta}}},
        "V2Ready": {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "ready": {"type": "boolean"}}},
        "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string", "nullable": true},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "object",
                "required": ["name", "shape", "datatype"], "properties": {
                    "name": {"type": "string", "enum": ["images"]},
                    "shape": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": ["FP32"]},
                    "data": {"type": "array", "description": "row-major numbers (nested or flat)"},
                    "parameters": {"type": "object", "properties": {
                        "binary_data_size": {"type": "integer", "minimum": 0}}}}}},
            "outputs": {"type": "array", "nullable": true, "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "enum": ["voxels", "roi_means"]},
                "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}}}},
        "V2InferResponse": {"type": "object", "required": ["model_name", "model_version", "outputs"], "properties": {
            "id": {"type": "string"}, "model_name": {"type": "string"}, "model_version": {"type": "string"},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"]}}}},
    })
}

/// The document for a server with `cfg` serving the models `names` (they become the
/// `{name}` parameter's values).
pub fn document(cfg: &Config, names: &[String]) -> Value {
    let with = |a: &[&'static str], b: &[&'static str]| -> Vec<&'static str> {
        a.iter().chain(b).copied().collect()
    };
    let lookup = vec!["invalid_model_name", "model_not_found"];
    let npy = json!({"type": "string", "format": "binary",
        "description": "float32 little-endian .npy, shape [N, 3, H, W], RGB in the manifest's input.value_range ([0, 1])"});
    let predict_body = json!({"required": true, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        "application/x-npy": {"schema": npy},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PredictForm"}},
    }});
    let mut predict_ok = ok(
        "predictions (JSON, or .npy float32 [N, V|R] with Accept: application/x-npy)",
        "PredictResponse",
    );
    predict_ok["content"]["application/x-npy"] =
        json!({"schema": {"type": "string", "format": "binary"}});
    let reduce_query = json!({"name": "reduce", "in": "query", "required": false,
        "schema": {"type": "string", "enum": ["voxel", "roi"]},
        "description": "voxel (default) or roi means; the body's reduce wins"});
    let rank_body = json!({"required": true, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/RankRequest"}},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/RankForm"}}}});
    let infer_body = json!({"required": true, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
            "description": "binary tensor data extension: the JSON request in the first \
                            Inference-Header-Content-Length bytes, then exactly binary_data_size bytes of float32"}}}});
    let json_len = json!({"name": "Inference-Header-Content-Length", "in": "header", "required": false,
        "schema": {"type": "integer", "minimum": 0},
        "description": "binary tensor data extension: length of the JSON part"});
    let mut infer_ok = ok("outputs voxels and roi_means", "V2InferResponse");
    infer_ok["content"]["application/octet-stream"] =
        json!({"schema": {"type": "string", "format": "binary"}});
    let readiness = |summary: &str| {
        json!({"get": {"summary": summary, "security": [], "responses": {
            "200": ok("ready: every served model warmed up (and, with --strict-readiness, every model folder serving)", "Readiness"),
            "503": {"description": "not ready (with Retry-After)", "headers": retry_after(),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}}}})
    };
    let health = |summary: &str| json!({"get": {"summary": summary, "security": [], "responses": {"200": ok("live", "Health")}}});
    let get = |op: Op| json!({"get": operation(cfg, names, op)});
    let post = |op: Op| json!({"post": operation(cfg, names, op)});
    let mut security_schemes = serde_json::Map::new();
    if cfg.api_key.is_some() {
        security_schemes.insert("bearer".into(), json!({"type": "http", "scheme": "bearer"}));
    }
    if cfg.admin_api_key.is_some() {
        security_schemes.insert(
            "adminBearer".into(),
            json!({"type": "http", "scheme": "bearer",
                   "description": "the administration key (--admin-api-key)"}),
        );
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "vcl-serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Voxel predictions of exported vcl encoders. Limits: {} images per request, \
                 {} bytes per body, {} pixels per image, batches of up to {} images. \
                 Errors: JSON {{error, status, kind}}; a wrong method is 405 with Allow.",
                cfg.max_request_images, cfg.max_body_bytes, cfg.max_image_pixels, cfg.max_batch_size),
        },
        "components": {"securitySchemes": security_schemes, "schemas": schemas(cfg)},
        "paths": {
            "/healthz": health("liveness"),
            "/readyz": readiness("readiness, with the models that failed and why"),
            "/v2/health/live": health("KServe v2 liveness"),
            "/v2/health/ready": readiness("KServe v2 readiness"),
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {
                "description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "this document", "security": [], "responses": {"200": {
                "description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/v1/models": get(Op { summary: "served models", guard: Guard::Inference, named: false,
                ok: ok("models", "ModelList"), errors: vec![], body: None, extra_params: vec![] }),
            "/v1/models/{name}": get(Op { summary: "a model: summary and manifest", guard: Guard::Inference,
                named: true, ok: ok("model", "ModelSummary"), errors: lookup.clone(), body: None, extra_params: vec![] }),
            "/v1/models/{name}/predict": post(Op { summary: "voxel or ROI predictions", guard: Guard::Inference,
                named: true, ok: predict_ok, errors: with(INPUT_ERRORS, &[IMAGE_ERRORS, &["bad_tensor", "out_of_range"]].concat()),
                body: Some(predict_body), extra_params: vec![reduce_query] }),
            "/v1/models/{name}/rank": post(Op { summary: "top k candidate images for an objective (JSON or multipart only)",
                guard: Guard::Inference, named: true, ok: ok("ranking", "RankResponse"),
                errors: with(INPUT_ERRORS, IMAGE_ERRORS), body: Some(rank_body), extra_params: vec![] }),
            "/v1/repository/reload": post(Op { summary: "rescan the model repository; new versions warm up, then swap in whole (as on SIGHUP)",
                guard: Guard::Admin, named: false, ok: ok("what changed", "ReloadReport"),
                errors: vec!["repository_unavailable", "inference"], body: None, extra_params: vec![] }),
            "/v2": get(Op { summary: "KServe v2 server metadata", guard: Guard::Inference, named: false,
                ok: ok("server", "V2Server"), errors: vec![], body: None, extra_params: vec![] }),
            "/v2/models/{name}": get(Op { summary: "KServe v2 model metadata", guard: Guard::Inference, named: true,
                ok: ok("metadata", "V2Metadata"), errors: lookup.clone(), body: None, extra_params: vec![] }),
            "/v2/models/{name}/ready": get(Op { summary: "KServe v2 model readiness", guard: Guard::Inference, named: true,
                ok: ok("ready", "V2Ready"), errors: with(&lookup, &["not_ready"]), body: None, extra_params: vec![] }),
            "/v2/models/{name}/infer": post(Op { summary: "KServe v2 inference (JSON tensors or the binary tensor data extension)",
                guard: Guard::Inference, named: true, ok: infer_ok,
                errors: with(INPUT_ERRORS, &["bad_tensor", "out_of_range", "invalid"]),
                body: Some(infer_body), extra_params: vec![json_len] }),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_documents_every_input_status() {
        let doc = document(&Config::defaults(), &[]);
        let p = &doc["paths"]["/v1/models/{name}/predict"]["post"]["responses"];
        for s in [
            "200", "400", "404", "408", "413", "415", "422", "429", "500", "503",
        ] {
            assert!(p.get(s).is_some(), "predict lacks {s}: {p}");
        }
        assert!(p.get("401").is_none(), "no key, no 401: {p}");
    }

    /// Without a key nothing asks for a token; with one, only the guarded routes do.
    #[test]
    fn security_follows_the_configuration() {
        let open = document(&Config::defaults(), &[]);
        for (path, ops) in open["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                assert_eq!(op["security"], json!([]), "{method} {path}");
            }
        }
        let mut cfg = Config::defaults();
        cfg.api_key = Some("k".into());
        let keyed = document(&cfg, &["m".into()]);
        assert_eq!(keyed["paths"]["/healthz"]["get"]["security"], json!([]));
        assert_eq!(keyed["paths"]["/metrics"]["get"]["security"], json!([]));
        let predict = &keyed["paths"]["/v1/models/{name}/predict"]["post"];
        assert_eq!(predict["security"], json!([{"bearer": []}]));
        assert!(predict["responses"].get("401").is_some());
        let reload = &keyed["paths"]["/v1/repository/reload"]["post"];
        assert!(reload["responses"].get("403").is_some(), "{reload}");
        let rank = keyed["paths"]["/v1/models/{name}/rank"]["post"]["requestBody"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(rank, ["application/json", "multipart/form-data"]);
        let images = &keyed["components"]["schemas"]["PredictRequest"]["properties"]["images"];
        assert_eq!(
            images["minItems"], 1,
            "an empty list is refused by the schema too"
        );
        let name = &predict["parameters"][0];
        assert_eq!(name["schema"]["enum"], json!(["m"]));
    }

    /// The documented example image decodes.
    #[test]
    fn the_example_image_is_a_png() {
        let bytes = crate::decode::base64_files(&[TINY_PNG_BASE64.to_string()]).unwrap();
        let pre = crate::decode::Preprocess::of(&vcl_contract::manifest::InputSpec::rgb_square(2));
        let limits = crate::decode::ImageLimits {
            max_side: 8,
            max_pixels: 64,
        };
        assert_eq!(
            crate::decode::files_to_pixels(&bytes, &pre, limits, None)
                .unwrap()
                .len(),
            12
        );
    }
}
