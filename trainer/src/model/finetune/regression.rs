//! The paper's regression-tuning baseline: backbone logits -> Linear(1000 -> V, with
//! bias) -> MSE on the (z-scored) responses. Pooled subjects get one map each. With
//! `image_tap` (beyond the paper) the map reads that tap's F features instead.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::readout::{ImageMap, ImageShape};

#[derive(Debug)]
pub struct RegressionHeads {
    maps: Vec<ImageMap>,
}

impl RegressionHeads {
    /// Variables `regression.<subject>.{weight,bias}` under `p`, one per subject with
    /// its voxel count, PyTorch's default initialization drawn from `seed`.
    /// `image`: the image features' shape (width 1000 for the logits).
    pub fn new(
        p: &nn::Path,
        image: ImageShape,
        subjects: &[String],
        voxels: &[i64],
        seed: u64,
    ) -> Self {
        let maps = subjects
            .iter()
            .zip(voxels)
            .map(|(s, &v)| ImageMap::new(&(p / "regression" / s.as_str()), image, v, true, seed))
            .collect();
        RegressionHeads { maps }
    }

    /// Predicted responses [B, V_s] of subject `s` from image features [B, F].
    pub fn predict(&self, s: usize, features: &Tensor) -> Tensor {
        self.maps[s].forward(features)
    }

    /// Mean squared error over images and voxels (`nn.MSELoss()`).
    pub fn loss(&self, features: &Tensor, s: usize, fmri: &Tensor) -> Tensor {
        self.predict(s, features)
            .to_kind(Kind::Float)
            .mse_loss(fmri, tch::Reduction::Mean)
    }
}
