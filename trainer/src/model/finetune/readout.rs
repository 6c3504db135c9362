//! How the heads read the image features: a linear map of a feature vector (the
//! paper's logits, or a tap averaged over space), or a factorized spatial readout of a
//! conv tap's maps (Klindt et al. 2017): each output unit u has its own spatial mask
//! m_u over the map's positions (a softmax, so a weighting that sums to 1) and its own
//! channel weights w_u,
//!
//! ```text
//! out[b, u] = sum_c w[u, c] * sum_p softmax(m_u)[p] * F[b, c, p]  (+ bias[u])
//! ```
//!
//! so that the objective can align where in the image a response comes from. The masks
//! start uniform: at initialization the spatial readout is the averaged tap's linear map.
//! They learn at the run's learning rate: Adam moves a logit by about that much a step,
//! so under the paper's recipe (1e-4, 30 steps) they stay nearly uniform (measured: the
//! averaged tap's held-out r to 3 decimals). Scaling the logits (by 100 or 1000) made
//! them collapse onto a wrong place on a planted target; a schedule of their own is
//! still to find.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::contrastive::{linear, seeded_uniform};

/// The shape of the features the heads read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// F: per-image feature values (C*H*W for a spatial readout).
    pub width: i64,
    /// C, when the features are a conv map flattened for a spatial readout.
    pub spatial_channels: Option<i64>,
}

impl ImageShape {
    /// A feature vector of `width` values (the logits, an averaged tap).
    pub fn vector(width: i64) -> Self {
        ImageShape {
            width,
            spatial_channels: None,
        }
    }
}

/// A factorized spatial readout: masks [out, P], channel weights [out, C].
#[derive(Debug)]
pub struct SpatialReadout {
    masks: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    channels: i64,
}

impl Module for SpatialReadout {
    /// [B, C*P] -> [B, out].
    fn forward(&self, xs: &Tensor) -> Tensor {
        let b = xs.size()[0];
        let maps = xs.view([b, self.channels, -1]);
        let masks = self.masks.softmax(-1, Kind::Float).to_kind(maps.kind());
        // [B, C, P] x [P, out] -> [B, C, out]: each unit's pooled channels.
        let pooled = maps.matmul(&masks.tr());
        let out =
            (pooled * self.weight.tr().to_kind(maps.kind())).sum_dim_intlist(1, false, maps.kind());
        match &self.bias {
            Some(bias) => out + bias,
            None => out,
        }
    }
}

/// What maps image features to a head's `out` units.
#[derive(Debug)]
pub enum ImageMap {
    Linear(nn::Linear),
    Spatial(SpatialReadout),
}

impl ImageMap {
    /// `weight` [out, F] (and `bias`) under `p` for a vector; `masks` [out, P] and
    /// `weight` [out, C] (and `bias`) for a spatial readout; PyTorch's Linear
    /// initialization of the weights from `seed`.
    pub fn new(p: &nn::Path, image: ImageShape, out: i64, bias: bool, seed: u64) -> Self {
        let Some(c) = image.spatial_channels else {
            return ImageMap::Linear(linear(p, image.width, out, bias, seed));
        };
        let positions = image.width / c.max(1);
        let masks = p.var_copy(
            "masks",
            &Tensor::zeros([out, positions], (Kind::Float, tch::Device::Cpu)),
        );
        let weight = p.var_copy(
            "weight",
            &seeded_uniform(seed, &p.path("weight"), &[out, c], c),
        );
        let bias =
            bias.then(|| p.var_copy("bias", &seeded_uniform(seed, &p.path("bias"), &[out], c)));
        ImageMap::Spatial(SpatialReadout {
            masks,
            weight,
            bias,
            channels: c,
        })
    }
}

impl Module for ImageMap {
    fn forward(&self, xs: &Tensor) -> Tensor {
        match self {
            ImageMap::Linear(l) => l.forward(xs),
            ImageMap::Spatial(s) => s.forward(xs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform masks read the map's spatial mean; a mask trained towards one position
    /// reads that position.
    #[test]
    fn spatial_readout_starts_as_the_mean_and_learns_a_place() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let shape = ImageShape {
            width: 3 * 16,
            spatial_channels: Some(3),
        };
        let map = ImageMap::new(&(vs.root() / "m"), shape, 2, false, 1);
        tch::manual_seed(0);
        let x = Tensor::randn([64, 3, 4, 4], (Kind::Float, tch::Device::Cpu));
        let ImageMap::Spatial(s) = &map else {
            panic!("a spatial map")
        };
        let mean = x
            .mean_dim([2i64, 3].as_slice(), false, None)
            .matmul(&s.weight.tr());
        let got = map.forward(&x.view([64, -1]));
        assert!((got - &mean).abs().max().double_value(&[]) < 1e-5);
        // Fit unit 0 to position 5 of channel 0.
        let target = x.view([64, 3, 16]).select(2, 5).select(1, 0);
        use tch::nn::OptimizerConfig;
        let mut opt = nn::Adam::default().build(&vs, 0.1).unwrap();
        for _ in 0..300 {
            let y = map.forward(&x.view([64, -1])).select(1, 0);
            opt.backward_step(&(y - &target).square().mean(Kind::Float));
        }
        let peak = s.masks.get(0).argmax(0, false).int64_value(&[]);
        assert_eq!(peak, 5);
    }
}
