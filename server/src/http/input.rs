//! What every inference route reads from a request, with its bounds: the body (size
//! limit, timeouts, the server-wide budget of body bytes, a buffer that grows as bytes
//! arrive rather than on the client's Content-Length), the media type, JSON,
//! multipart forms, and images decoded on a bounded number of threads within the
//! request's deadline.

use std::collections::BTreeMap;
use std::time::Instant;

use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::{AppState, NPY};
use crate::decode::{self, ImageLimits};
use crate::error::ServerError;
use crate::infer::Model;

/// A request body, and its share of the server's body budget (released on drop).
pub struct Body {
    pub bytes: web::Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// The first buffer of a body; it grows as bytes arrive.
const FIRST_BUFFER: usize = 64 * 1024;

/// The body, at most `max_body_bytes` (413 beyond, before reading it when the client
/// announced as much), within the client timeouts (408), and within the server's
/// budget of body bytes (429).
pub async fn read_body(
    state: &AppState,
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<Body, ServerError> {
    let cfg = &state.cfg;
    let limit = cfg.max_body_bytes;
    let announced = match req.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ServerError::BadHeader("Content-Length is not a number".into()))?,
        ),
    };
    if announced.is_some_and(|n| n > limit) {
        return Err(ServerError::BodyTooLarge { limit });
    }
    let mut buf = web::BytesMut::with_capacity(announced.unwrap_or(0).min(FIRST_BUFFER));
    let mut budget: Option<OwnedSemaphorePermit> = None;
    let whole_by = Instant::now() + cfg.body_timeout();
    // Which clock ran out: the whole body's, or the pause between two pieces.
    let timed_out = || ServerError::BodyTimeout {
        ms: if Instant::now() >= whole_by {
            cfg.body_timeout_ms
        } else {
            cfg.client_timeout_ms
        },
    };
    loop {
        let next_by = (Instant::now() + cfg.client_timeout()).min(whole_by);
        let chunk = match tokio::time::timeout_at(next_by.into(), payload.next()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => break,
            Ok(Some(chunk)) => {
                chunk.map_err(|e| ServerError::Invalid(format!("reading the body: {e}")))?
            }
        };
        if buf.len() + chunk.len() > limit {
            return Err(ServerError::BodyTooLarge { limit });
        }
        let more = u32::try_from(chunk.len()).map_err(|_| ServerError::Busy)?;
        let permit = state
            .body_budget
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| ServerError::Busy)?;
        match budget.as_mut() {
            Some(b) => b.merge(permit),
            None => budget = Some(permit),
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Body {
        bytes: buf.freeze(),
        _budget: budget,
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Media {
    Json,
    Npy,
    Multipart,
    Missing,
}

/// What the prediction route takes (rank and KServe say their own).
pub const PREDICT_MEDIA: &str = "application/json, application/x-npy or multipart/form-data";

/// The request's media type; `accepted` names what the route takes, for the 415.
pub fn media(req: &HttpRequest, accepted: &'static str) -> Result<Media, ServerError> {
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
        _ => Err(ServerError::UnsupportedMediaType {
            found: ct,
            accepted,
        }),
    }
}

/// The 415 for this request: the media type it sent, and what the route takes.
pub fn unsupported(req: &HttpRequest, accepted: &'static str) -> ServerError {
    let found = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_string();
    ServerError::UnsupportedMediaType { found, accepted }
}

pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServerError> {
    serde_json::from_slice(body).map_err(|e| ServerError::InvalidJson(e.to_string()))
}

/// A multipart/form-data body: its image files in order (parts with a filename, or
/// named `image`/`images`) and its text fields by name.
#[derive(Default, Debug)]
pub struct Form {
    pub files: Vec<web::Bytes>,
    pub fields: BTreeMap<String, String>,
}

impl Form {
    /// Refuses text fields other than `allowed` (as JSON bodies refuse unknown keys).
    pub fn only(&self, allowed: &[&str]) -> Result<(), ServerError> {
        match self.fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(ServerError::BadMultipart(format!(
                "unknown form field '{k}' (fields: {}; images as file parts)",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

/// Parses a multipart body already read under the limit (`headers` carry its
/// boundary), off the async workers. actix-multipart 0.7.2 has two failure modes on
/// hostile forms, both found by the fuzz target and pinned by tests/decoders.rs: it
/// panics on some bodies whose boundary is under 4 characters, and it never completes
/// on a form whose last part misses its closing boundary. The whole body is in
/// memory, so the parse is driven to the end here ([`drive`]): a parse that stops
/// without asking to be woken is stuck for good, and a panic is caught; both are 400,
/// rather than a request that never ends or a worker that dies.
pub async fn read_form(headers: &HeaderMap, body: web::Bytes) -> Result<Form, ServerError> {
    let headers = headers.clone();
    web::block(move || parse_form_now(&headers, body))
        .await
        .map_err(|e| ServerError::Inference(format!("form parsing thread: {e}")))?
}

/// [`read_form`] on the calling thread.
pub fn parse_form_now(headers: &HeaderMap, body: web::Bytes) -> Result<Form, ServerError> {
    let malformed =
        |why: &str| ServerError::BadMultipart(format!("the form could not be parsed: {why}"));
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drive(parse_form(headers, body))
    }));
    match parsed {
        Ok(Some(form)) => form,
        Ok(None) => Err(malformed("it ends before its closing boundary")),
        Err(_) => {
            tracing::warn!("the multipart parser panicked on a request body: answered 400");
            Err(malformed("malformed multipart body or boundary"))
        }
    }
}

/// Most polls of one parse: far more than any form under the body limit needs.
const MAX_POLLS: usize = 1 << 24;

/// Polls `f`, whose input is all in memory, to completion on this thread: None when it
/// returns Pending without having asked to be woken (nothing can wake it any more).
fn drive<F: std::future::Future>(f: F) -> Option<F::Output> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    for _ in 0..MAX_POLLS {
        flag.0.store(false, Ordering::SeqCst);
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return Some(v),
            Poll::Pending if !flag.0.load(Ordering::SeqCst) => return None,
            Poll::Pending => {}
        }
    }
    None
}

async fn parse_form(headers: &HeaderMap, body: web::Bytes) -> Result<Form, ServerError> {
    let bad = |e: &dyn std::fmt::Display| ServerError::BadMultipart(e.to_string());
    let stream =
        futures_util::stream::once(async move { Ok::<_, actix_web::error::PayloadError>(body) });
    let mut parts = actix_multipart::Multipart::new(headers, stream);
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

/// Images of a request, still encoded.
pub enum Images {
    /// base64 strings (JSON bodies).
    Base64(Vec<String>),
    /// Raw PNG/JPEG bytes (multipart uploads).
    Raw(Vec<web::Bytes>),
}

impl Images {
    pub fn len(&self) -> usize {
        match self {
            Images::Base64(v) => v.len(),
            Images::Raw(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes an admitted request's images as the model's manifest says, on one of the
/// server's decoding turns, before `deadline` (503 past it: the wait for a turn and
/// the decoding both count).
pub async fn decode_images(
    state: &AppState,
    model: &Model,
    images: Images,
    deadline: Instant,
) -> Result<Vec<f32>, ServerError> {
    let pre = model.preprocess.clone();
    let limits = ImageLimits {
        max_side: state.cfg.max_image_side,
        max_pixels: state.cfg.max_image_pixels,
    };
    let work = async {
        let _turn = state
            .decoders
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServerError::NotReady("the decoder pool is closed".into()))?;
        web::block(move || match images {
            Images::Base64(b64) => {
                let files = decode::base64_files(&b64)?;
                drop(b64);
                decode::files_to_pixels(&files, &pre, limits, Some(deadline))
            }
            Images::Raw(files) => decode::files_to_pixels(&files, &pre, limits, Some(deadline)),
        })
        .await
        .map_err(|e| ServerError::Inference(format!("decoding thread: {e}")))?
    };
    match tokio::time::timeout_at(deadline.into(), work).await {
        Err(_) | Ok(Err(ServerError::Timeout { .. })) => Err(model.timeout_error()),
        Ok(r) => r,
    }
}

/// Checks a tensor's shape against the model ([N, 3, H, W]) and returns N.
pub fn check_shape(model: &Model, shape: &[usize]) -> Result<usize, ServerError> {
    let [c, h, w] = model.chw();
    if shape.len() != 4 || shape[1..] != [c, h, w] {
        return Err(ServerError::BadTensor(format!(
            "shape {shape:?}; this model takes [N, {c}, {h}, {w}]"
        )));
    }
    model.check_count(shape[0])?;
    Ok(shape[0])
}

/// Refuses tensor values the model cannot take (non-finite, outside its input range).
pub fn check_tensor(model: &Model, values: &[f32]) -> Result<(), ServerError> {
    decode::check_values(values, model.manifest.input.value_range)
}
