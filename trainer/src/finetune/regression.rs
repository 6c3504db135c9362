//! The paper's regression-tuning baseline: backbone logits -> Linear(1000 -> V, with
//! bias) -> MSE on the (z-scored) responses. Pooled subjects get one map each.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::contrastive::linear;
use crate::backbones::IMAGENET_CLASSES;

#[derive(Debug)]
pub struct RegressionHeads {
    maps: Vec<nn::Linear>,
}

impl RegressionHeads {
    /// Variables `regression.<subject>.{weight,bias}` under `p`, one per subject with
    /// its voxel count, PyTorch's default initialization drawn from `seed`.
    pub fn new(p: &nn::Path, subjects: &[String], voxels: &[i64], seed: u64) -> Self {
        let maps = subjects
            .iter()
            .zip(voxels)
            .map(|(s, &v)| {
                linear(
                    &(p / "regression" / s.as_str()),
                    IMAGENET_CLASSES,
                    v,
                    true,
                    seed,
                )
            })
            .collect();
        RegressionHeads { maps }
    }

    /// Predicted responses [B, V_s] of subject `s` from logits [B, 1000].
    pub fn predict(&self, s: usize, logits: &Tensor) -> Tensor {
        self.maps[s].forward(logits)
    }

    /// Mean squared error over images and voxels (`nn.MSELoss()`).
    pub fn loss(&self, logits: &Tensor, s: usize, fmri: &Tensor) -> Tensor {
        self.predict(s, logits)
            .to_kind(Kind::Float)
            .mse_loss(fmri, tch::Reduction::Mean)
    }
}
