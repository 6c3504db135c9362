//! KServe v2 / Open Inference Protocol: server and model metadata, readiness, and
//! inference with JSON tensors or the binary tensor data extension (JSON of
//! `Inference-Header-Content-Length` bytes, then the raw float32 data, exactly
//! `binary_data_size` bytes per input).

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use vcl_contract::manifest::Manifest;

use super::input::{self, Media};
use super::{finish, label, model, AppState, Res};
use crate::decode;
use crate::error::ServerError;

pub async fn server() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "vcl-serve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

fn tensor(name: &str, shape: Vec<i64>) -> Value {
    json!({"name": name, "datatype": "FP32", "shape": shape})
}

pub async fn model_metadata(state: web::Data<AppState>, name: web::Path<String>) -> Res {
    let model = model(&state, &name)?;
    let mf = &model.manifest;
    let [c, h, w] = model.chw();
    Ok(HttpResponse::Ok().json(json!({
        "name": model.name(),
        "versions": model.versions.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": [tensor(&mf.input.tensor.name, vec![-1, c as i64, h as i64, w as i64])],
        "outputs": [
            tensor(&mf.outputs.voxels.name, vec![-1, mf.n_voxels() as i64]),
            tensor(&mf.outputs.roi_means.name, vec![-1, mf.rois.len() as i64]),
        ],
    })))
}

pub async fn model_ready(state: web::Data<AppState>, name: web::Path<String>) -> Res {
    let model = model(&state, &name)?;
    if model.is_ready() {
        Ok(HttpResponse::Ok().json(json!({"name": model.name(), "ready": true})))
    } else {
        Err(ServerError::NotReady(model.name().to_string()))
    }
}

type Parameters = serde_json::Map<String, Value>;

#[derive(Deserialize)]
struct V2Input {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
struct V2Output {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
struct V2Request {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<V2Input>,
    #[serde(default)]
    outputs: Option<Vec<V2Output>>,
    #[serde(default)]
    parameters: Parameters,
}

/// A boolean parameter: absent, or true/false (anything else is refused).
fn flag(params: &Parameters, key: &str) -> Result<Option<bool>, ServerError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ServerError::InvalidJson(format!(
            "parameter {key} is {other}, not true or false"
        ))),
    }
}

/// The binary tensor data extension's header: the JSON part's length.
pub const JSON_LEN_HEADER: &str = "inference-header-content-length";

/// An inference request checked against a model: `n` images of float32 `data`
/// (finite, in the model's input range), the outputs wanted (name, as binary).
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub n: usize,
    pub data: Vec<f32>,
    pub outputs: Vec<(String, bool)>,
}

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

/// The input's values: JSON `data`, or exactly `binary_data_size` bytes of float32,
/// which must be all the bytes after the JSON part.
fn values(input: &V2Input, binary: &[u8], count: usize) -> Result<Vec<f32>, ServerError> {
    let values = match input.parameters.get("binary_data_size") {
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| {
                ServerError::BadTensor(format!(
                    "binary_data_size {size}: a non-negative whole number of bytes"
                ))
            })?;
            if size != binary.len() as u64 {
                return Err(ServerError::BadTensor(format!(
                    "binary_data_size {size}, but {} bytes follow the JSON part",
                    binary.len()
                )));
            }
            if size % 4 != 0 {
                return Err(ServerError::BadTensor(format!(
                    "binary_data_size {size} is not a whole number of FP32 values"
                )));
            }
            binary
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        None if !binary.is_empty() => {
            return Err(ServerError::BadTensor(format!(
                "{} bytes follow the JSON part, but input '{}' has no binary_data_size",
                binary.len(),
                input.name
            )))
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

/// Parses and checks an inference request for a model of `manifest` that takes
/// `max_images` images at most: the JSON part, and the bytes after it.
pub fn parse_infer(
    manifest: &Manifest,
    max_images: usize,
    json_part: &[u8],
    binary: &[u8],
) -> Result<InferRequest, ServerError> {
    let r: V2Request = input::json_body(json_part)?;
    let mf = manifest;
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
    let (h, w) = (mf.input.height as i64, mf.input.width as i64);
    if input.shape.len() != 4 || input.shape[1..] != [3, h, w] || input.shape[0] < 0 {
        return Err(ServerError::BadTensor(format!(
            "shape {:?}; this model takes [N, 3, {h}, {w}]",
            input.shape
        )));
    }
    let n = input.shape[0] as usize;
    if n == 0 {
        return Err(ServerError::EmptyBatch);
    }
    if n > max_images {
        return Err(ServerError::BatchTooLarge { n, max: max_images });
    }
    let data = values(input, binary, n * 3 * (h * w) as usize)?;
    decode::check_values(&data, mf.input.value_range)?;
    let binary_default = flag(&r.parameters, "binary_data_output")?.unwrap_or(false);
    let outputs: Vec<(String, bool)> = match &r.outputs {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|o| {
                let bin = flag(&o.parameters, "binary_data")?;
                Ok((o.name.clone(), bin.unwrap_or(binary_default)))
            })
            .collect::<Result<_, ServerError>>()?,
        _ => vec![
            (mf.outputs.voxels.name.clone(), binary_default),
            (mf.outputs.roi_means.name.clone(), binary_default),
        ],
    };
    for (o, _) in &outputs {
        if *o != mf.outputs.voxels.name && *o != mf.outputs.roi_means.name {
            return Err(ServerError::Invalid(format!("unknown output '{o}'")));
        }
    }
    Ok(InferRequest {
        id: r.id,
        n,
        data,
        outputs,
    })
}

/// The JSON part's length from the extension's header, if sent.
fn json_len(req: &HttpRequest) -> Result<Option<usize>, ServerError> {
    let Some(v) = req.headers().get(JSON_LEN_HEADER) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| ServerError::BadHeader(format!("{JSON_LEN_HEADER} is not a number")))
}

pub async fn infer(
    state: web::Data<AppState>,
    name: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let start = Instant::now();
    let res = async {
        let model = model(&state, &name)?;
        let json_len = json_len(&req)?;
        // JSON, or the binary extension's JSON + bytes (which clients send untyped or
        // as octet-stream).
        const INFER_MEDIA: &str =
            "application/json, or the binary tensor data extension (with Inference-Header-Content-Length)";
        match input::media(&req, INFER_MEDIA)? {
            Media::Json | Media::Missing => {}
            Media::Npy if json_len.is_some() => {}
            Media::Npy | Media::Multipart => {
                return Err(input::unsupported(&req, INFER_MEDIA))
            }
        }
        let body = input::read_body(&state, &req, payload).await?;
        let (json_part, binary) = match json_len {
            Some(l) if l <= body.bytes.len() => body.bytes.split_at(l),
            Some(l) => {
                return Err(ServerError::BadHeader(format!(
                    "{JSON_LEN_HEADER} {l} is over the body's {} bytes",
                    body.bytes.len()
                )))
            }
            None => (&body.bytes[..], &[][..]),
        };
        let r = parse_infer(
            &model.manifest,
            state.cfg.max_request_images,
            json_part,
            binary,
        )?;
        drop(body);
        let mf = &model.manifest;
        let admission = model.admit(r.n, model.deadline())?;
        let out = model.run(admission, r.data).await?;
        let n = r.n;
        let mut blobs: Vec<u8> = Vec::new();
        let outputs: Vec<Value> = r
            .outputs
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
        let mut bytes = resp.to_string().into_bytes();
        let json_len = bytes.len();
        bytes.extend_from_slice(&blobs);
        Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((JSON_LEN_HEADER, json_len.to_string()))
            .body(bytes))
    }
    .await;
    finish(&label(&state, &name), "v2_infer", start, res)
}
