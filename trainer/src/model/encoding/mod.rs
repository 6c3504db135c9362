//! Voxel encoders: tap features -> PCA -> ridge, fitted inside the training split and
//! scored once on the held-out split.

pub mod error;
pub mod evaluate;
pub mod fit;
pub mod metrics;
pub mod store;

pub use error::EncodingError;
pub use evaluate::{evaluate, heldout_images, Evaluation};
pub use fit::fit;
pub use store::{AlphaMode, FitConfig, Method};
