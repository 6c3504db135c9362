//! The server's one error type and its one status table ([`ServerError::status`]).
//! Every error answers a JSON body `{"error": message, "status": code, "kind": name}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Loading ONNX Runtime or a model, or reading a manifest (the contract crate's
    /// errors, which name the file and field).
    #[error(transparent)]
    Contract(#[from] vcl_contract::ContractError),

    /// A model's files disagree with where they are in the repository.
    #[error("{0}")]
    Repository(String),

    #[error("request body is not valid JSON for this endpoint: {0}")]
    InvalidJson(String),

    /// A multipart/form-data body that does not parse, or a form field that is unknown
    /// or not text.
    #[error("bad multipart/form-data body: {0}")]
    BadMultipart(String),

    #[error("images[{index}] is not valid base64: {reason}")]
    BadBase64 { index: usize, reason: String },

    #[error("images[{index}] is not a PNG or JPEG image: {reason}")]
    NotAnImage { index: usize, reason: String },

    #[error("images[{index}] is too large to decode: {reason}")]
    ImageTooLarge { index: usize, reason: String },

    #[error("the request holds no images")]
    EmptyBatch,

    #[error("the request holds {n} images; the limit is {max}")]
    BatchTooLarge { n: usize, max: usize },

    #[error("the request body is over the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },

    #[error("unsupported content type '{found}': this route takes {accepted}")]
    UnsupportedMediaType {
        found: String,
        accepted: &'static str,
    },

    /// A tensor of the wrong shape, dtype or length (.npy body or KServe input).
    #[error("bad tensor: {0}")]
    BadTensor(String),

    /// Well-formed request with values that cannot be served (unknown ROI, top_k 0, ...).
    #[error("invalid request: {0}")]
    Invalid(String),

    #[error("model '{0}' not found")]
    ModelNotFound(String),

    #[error("'{0}' is not a model name")]
    InvalidModelName(String),

    #[error("model '{model}' is overloaded (queue full): retry later")]
    Overloaded { model: String },

    #[error("the request did not complete within {ms} ms")]
    Timeout { ms: u64 },

    #[error("model '{0}' is not ready")]
    NotReady(String),

    #[error("missing or wrong bearer token")]
    Unauthorized,

    #[error("inference failed: {0}")]
    Inference(String),

    #[error("route not found")]
    RouteNotFound,

    #[error("method {method} is not allowed here (allowed: {allowed})")]
    MethodNotAllowed {
        method: String,
        allowed: &'static str,
    },

    #[error("the request body did not arrive within {ms} ms")]
    BodyTimeout { ms: u64 },

    /// Numbers a model cannot be given: NaN, infinities, values outside the manifest's
    /// input range.
    #[error("values out of range: {0}")]
    OutOfRange(String),

    #[error("bad header: {0}")]
    BadHeader(String),

    /// The server is holding as many request bodies in memory as it allows.
    #[error("the server is busy receiving other requests: retry later")]
    Busy,

    #[error("{0}")]
    Forbidden(String),

    /// The repository folder cannot be read; the models served before still serve.
    #[error("the model repository is unavailable: {0}")]
    RepositoryUnavailable(String),
}

/// Seconds a client should wait after a 429 or 503.
pub const RETRY_AFTER_SECS: u32 = 1;

impl ServerError {
    /// The one status table.
    pub fn status(&self) -> StatusCode {
        use ServerError::*;
        match self {
            InvalidJson(_)
            | BadMultipart(_)
            | BadBase64 { .. }
            | EmptyBatch
            | BadHeader(_)
            | InvalidModelName(_) => StatusCode::BAD_REQUEST,
            Forbidden(_) => StatusCode::FORBIDDEN,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Unauthorized => StatusCode::UNAUTHORIZED,
            ModelNotFound(_) | RouteNotFound => StatusCode::NOT_FOUND,
            BatchTooLarge { .. } | BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NotAnImage { .. }
            | ImageTooLarge { .. }
            | BadTensor(_)
            | OutOfRange(_)
            | Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Overloaded { .. } | Busy => StatusCode::TOO_MANY_REQUESTS,
            Timeout { .. } | NotReady(_) | RepositoryUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Contract(_) | Repository(_) | Inference(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable name of the variant.
    pub fn kind(&self) -> &'static str {
        use ServerError::*;
        match self {
            Contract(_) => "contract",
            Repository(_) => "repository",
            InvalidJson(_) => "invalid_json",
            BadMultipart(_) => "bad_multipart",
            BadBase64 { .. } => "bad_base64",
            NotAnImage { .. } => "not_an_image",
            ImageTooLarge { .. } => "image_too_large",
            EmptyBatch => "empty_batch",
            BatchTooLarge { .. } => "batch_too_large",
            BodyTooLarge { .. } => "body_too_large",
            UnsupportedMediaType { .. } => "unsupported_media_type",
            BadTensor(_) => "bad_tensor",
            Invalid(_) => "invalid",
            ModelNotFound(_) => "model_not_found",
            InvalidModelName(_) => "invalid_model_name",
            Overloaded { .. } => "overloaded",
            Timeout { .. } => "timeout",
            NotReady(_) => "not_ready",
            Unauthorized => "unauthorized",
            Inference(_) => "inference",
            RouteNotFound => "route_not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            BodyTimeout { .. } => "body_timeout",
            OutOfRange(_) => "out_of_range",
            BadHeader(_) => "bad_header",
            Busy => "busy",
            Forbidden(_) => "forbidden",
            RepositoryUnavailable(_) => "repository_unavailable",
        }
    }

    /// One example of each variant, for the status test and the OpenAPI document.
    pub fn examples() -> Vec<ServerError> {
        use ServerError::*;
        vec![
            Contract(vcl_contract::ContractError::Inference("x".into())),
            Repository("x".into()),
            InvalidJson("x".into()),
            BadMultipart("x".into()),
            BadBase64 {
                index: 0,
                reason: "x".into(),
            },
            NotAnImage {
                index: 0,
                reason: "x".into(),
            },
            ImageTooLarge {
                index: 0,
                reason: "x".into(),
            },
            EmptyBatch,
            BatchTooLarge { n: 2, max: 1 },
            BodyTooLarge { limit: 1 },
            UnsupportedMediaType {
                found: "x".into(),
                accepted: "y",
            },
            BadTensor("x".into()),
            Invalid("x".into()),
            ModelNotFound("x".into()),
            InvalidModelName("x".into()),
            Overloaded { model: "x".into() },
            Timeout { ms: 1 },
            NotReady("x".into()),
            Unauthorized,
            Inference("x".into()),
            RouteNotFound,
            MethodNotAllowed {
                method: "PUT".into(),
                allowed: "GET",
            },
            BodyTimeout { ms: 1 },
            OutOfRange("x".into()),
            BadHeader("x".into()),
            Busy,
            Forbidden("x".into()),
            RepositoryUnavailable("x".into()),
        ]
    }
}

impl ResponseError for ServerError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status();
        let mut resp = HttpResponse::build(status);
        if matches!(status.as_u16(), 429 | 503) {
            resp.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ServerError::MethodNotAllowed { allowed, .. } = self {
            resp.insert_header((header::ALLOW, *allowed));
        }
        if matches!(
            self,
            ServerError::BodyTimeout { .. } | ServerError::BodyTooLarge { .. }
        ) {
            // The rest of the body is not read: the connection cannot carry another
            // request.
            resp.force_close();
        }
        resp.json(serde_json::json!({
            "error": self.to_string(),
            "status": status.as_u16(),
            "kind": self.kind(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins every variant's status: changing one is a visible API change.
    #[test]
    fn status_table() {
        let got: Vec<(&str, u16)> = ServerError::examples()
            .iter()
            .map(|e| (e.kind(), e.status().as_u16()))
            .collect();
        let want = vec![
            ("contract", 500),
            ("repository", 500),
            ("invalid_json", 400),
            ("bad_multipart", 400),
            ("bad_base64", 400),
            ("not_an_image", 422),
            ("image_too_large", 422),
            ("empty_batch", 400),
            ("batch_too_large", 413),
            ("body_too_large", 413),
            ("unsupported_media_type", 415),
            ("bad_tensor", 422),
            ("invalid", 422),
            ("model_not_found", 404),
            ("invalid_model_name", 400),
            ("overloaded", 429),
            ("timeout", 503),
            ("not_ready", 503),
            ("unauthorized", 401),
            ("inference", 500),
            ("route_not_found", 404),
            ("method_not_allowed", 405),
            ("body_timeout", 408),
            ("out_of_range", 422),
            ("bad_header", 400),
            ("busy", 429),
            ("forbidden", 403),
            ("repository_unavailable", 503),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn overload_carries_retry_after_and_json() {
        let r = ServerError::Overloaded { model: "m".into() }.error_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }
}
