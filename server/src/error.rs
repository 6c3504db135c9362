//! The server's error type at its library boundary.

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Loading ONNX Runtime or a model, or reading a manifest (the contract crate's
    /// errors, which name the file and field).
    #[error(transparent)]
    Contract(#[from] vcl_contract::ContractError),

    #[error("inference failed: {0}")]
    Inference(String),

    #[error("bad input: {0}")]
    BadInput(String),
}
