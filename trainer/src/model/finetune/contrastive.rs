//! The paper's contrastive model (METHOD.md): an image branch on the backbone's 1000
//! logits, one fMRI branch per subject, one projection MLP g shared by both branches,
//! and the one-directional InfoNCE loss with the image as anchor.
//!
//! ```text
//! image  [B,F]    -> image_map Linear(F -> h, no bias) -> g -> z_img  [B, z]
//! fmri   [B,V_s]  -> fmri_map.<s> Linear(V_s -> h, no bias) -> g -> z_fmri [B, z]
//! g = Linear(h,h)+BN+ReLU, Linear(h,h)+BN+ReLU, Linear(h,z, no bias)
//! ```
//! g is applied to each branch in its own call, so batch-norm statistics are per
//! modality (both calls update the same running averages, as in PyTorch).
//! F = 1000 in the paper; with `image_tap` (beyond the paper) F is that tap's channels.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Uniform};
use sha2::{Digest, Sha256};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use super::readout::{ImageMap, ImageShape};
use super::{FinetuneConfig, FinetuneError};

/// Sizes of the contrastive model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClDims {
    /// Voxels of the ROI, per subject (V_s).
    pub voxels: Vec<i64>,
    /// Hidden width h.
    pub h: i64,
    /// Embedding width z.
    pub z: i64,
}

impl ClDims {
    /// METHOD.md: one subject h = int(h_ratio V), z = int(z_ratio V); pooled subjects
    /// h = int(mean V_s), z = int(pooled_z_ratio h). Both at least 1.
    pub fn paper(
        voxels: &[usize],
        h_ratio: f64,
        z_ratio: f64,
        pooled_z_ratio: f64,
    ) -> Result<Self, FinetuneError> {
        let (h, z) = match voxels {
            [] => {
                return Err(FinetuneError::Config(
                    "the contrastive model needs at least one subject".into(),
                ))
            }
            [v] => (
                (h_ratio * *v as f64).floor() as i64,
                (z_ratio * *v as f64).floor() as i64,
            ),
            vs => {
                let mean = vs.iter().sum::<usize>() as f64 / vs.len() as f64;
                let h = mean.floor() as i64;
                (h, (pooled_z_ratio * h as f64).floor() as i64)
            }
        };
        if h < 1 || z < 1 {
            return Err(FinetuneError::Config(format!(
                "the ROI is too small for the contrastive model: V = {voxels:?} voxels give \
                 h = {h}, z = {z} (both must be >= 1)"
            )));
        }
        Ok(ClDims {
            voxels: voxels.iter().map(|&v| v as i64).collect(),
            h,
            z,
        })
    }
}

/// Options of the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClLoss {
    /// Temperature (initial value if learnable).
    pub tau: f64,
    pub learnable_tau: bool,
    /// Two-way InfoNCE instead of the paper's image-anchored one.
    pub symmetric: bool,
}

impl ClLoss {
    /// The loss a fine-tuning configuration asks for.
    pub fn of(cfg: &FinetuneConfig) -> Self {
        ClLoss {
            tau: cfg.tau,
            learnable_tau: cfg.learnable_tau,
            symmetric: cfg.symmetric,
        }
    }
}

/// Draws PyTorch's default `nn.Linear` initialization, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
/// from a stream keyed by (seed, variable name): the same heads for the same seed
/// whatever else uses libtorch's global generator.
pub(crate) fn seeded_uniform(seed: u64, name: &str, dims: &[i64], fan_in: i64) -> Tensor {
    let mut h = Sha256::new();
    h.update(b"vcl-finetune-heads");
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(h.finalize().into());
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    let n = dims.iter().product::<i64>().max(0) as usize;
    let values: Vec<f32> = match Uniform::new(-bound, bound) {
        Ok(u) => u.sample_iter(&mut rng).take(n).collect(),
        Err(_) => vec![0.0; n],
    };
    Tensor::from_slice(&values).view(dims)
}

/// A `Linear(c_in -> c_out)` under `p`, initialized as PyTorch does from `seed`.
pub(crate) fn linear(p: &nn::Path, c_in: i64, c_out: i64, bias: bool, seed: u64) -> nn::Linear {
    let ws = p.var_copy(
        "weight",
        &seeded_uniform(seed, &p.path("weight"), &[c_out, c_in], c_in),
    );
    let bs = bias.then(|| {
        p.var_copy(
            "bias",
            &seeded_uniform(seed, &p.path("bias"), &[c_out], c_in),
        )
    });
    nn::Linear { ws, bs }
}

/// The projection MLP g, with PyTorch `nn.Sequential` indices as names.
#[derive(Debug)]
pub struct Projection {
    lin1: nn::Linear,
    bn1: nn::BatchNorm,
    lin2: nn::Linear,
    bn2: nn::BatchNorm,
    out: nn::Linear,
}

impl Projection {
    pub fn new(p: &nn::Path, h: i64, z: i64, seed: u64) -> Self {
        let bn = |p: nn::Path| {
            nn::batch_norm1d(
                p,
                h,
                nn::BatchNormConfig {
                    ws_init: nn::Init::Const(1.0),
                    bs_init: nn::Init::Const(0.0),
                    ..Default::default()
                },
            )
        };
        Projection {
            lin1: linear(&(p / 0), h, h, true, seed),
            bn1: bn(p / 1),
            lin2: linear(&(p / 3), h, h, true, seed),
            bn2: bn(p / 4),
            out: linear(&(p / 6), h, z, false, seed),
        }
    }
}

impl ModuleT for Projection {
    /// [B, h] -> [B, z]; `train` uses batch statistics (B >= 2) and updates the running ones.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.lin1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.lin2)
            .apply_t(&self.bn2, train)
            .relu()
            .apply(&self.out)
    }
}

/// The contrastive heads of one model: what trains with the backbone and is then
/// dropped (only the backbone is kept).
#[derive(Debug)]
pub struct ContrastiveHeads {
    image_map: ImageMap,
    fmri_maps: Vec<nn::Linear>,
    g: Projection,
    loss: ClLoss,
    /// log(tau) when the temperature is learned.
    log_tau: Option<Tensor>,
}

impl ContrastiveHeads {
    /// Variables under `p`: `image_map.weight`, `fmri_map.<subject>.weight` (in the
    /// order of `subjects`), `g.{0,1,3,4,6}.*` and, if learnable, `log_tau`.
    /// `image`: the image features' shape (width 1000 for the logits; a conv map for a
    /// spatial readout). The loss and the initialization's seed come from `cfg`.
    pub fn new(
        p: &nn::Path,
        dims: &ClDims,
        image: ImageShape,
        subjects: &[String],
        cfg: &FinetuneConfig,
    ) -> Self {
        let (loss, seed) = (ClLoss::of(cfg), cfg.seed);
        let image_map = ImageMap::new(&(p / "image_map"), image, dims.h, false, seed);
        let fmri_maps = subjects
            .iter()
            .zip(&dims.voxels)
            .map(|(s, &v)| linear(&(p / "fmri_map" / s.as_str()), v, dims.h, false, seed))
            .collect();
        let g = Projection::new(&(p / "g"), dims.h, dims.z, seed);
        let log_tau = loss
            .learnable_tau
            .then(|| p.var_copy("log_tau", &Tensor::from(loss.tau.ln() as f32)));
        ContrastiveHeads {
            image_map,
            fmri_maps,
            g,
            loss,
            log_tau,
        }
    }

    /// z_img [B, z] from image features [B, F] (the backbone's logits in the paper).
    pub fn embed_images(&self, features: &Tensor, train: bool) -> Tensor {
        self.g.forward_t(&features.apply(&self.image_map), train)
    }

    /// z_fmri [B, z] from subject `s`'s responses [B, V_s].
    pub fn embed_fmri(&self, s: usize, fmri: &Tensor, train: bool) -> Tensor {
        self.g.forward_t(&self.fmri_maps[s].forward(fmri), train)
    }

    /// The temperature as a scalar tensor (a leaf of the graph when learnable).
    pub fn tau(&self) -> Tensor {
        match &self.log_tau {
            Some(l) => l.exp(),
            None => Tensor::from(self.loss.tau as f32),
        }
    }

    pub fn tau_value(&self) -> f64 {
        tch::no_grad(|| self.tau().double_value(&[]))
    }

    pub fn symmetric(&self) -> bool {
        self.loss.symmetric
    }

    /// The training loss on a batch: InfoNCE between subject `s`'s responses and the
    /// images' features (row i of both = the same image).
    pub fn loss(&self, features: &Tensor, s: usize, fmri: &Tensor, train: bool) -> Tensor {
        let z_img = self.embed_images(features, train);
        let z_fmri = self.embed_fmri(s, fmri, train);
        let tau = self.tau().to_device(z_img.device());
        info_nce(&z_fmri, &z_img, &tau, self.loss.symmetric)
    }
}

/// S[a, b] = cosine(z_fmri[a], z_img[b]), float32 [B, B], with PyTorch's
/// `F.normalize` convention (norms clamped at 1e-8).
pub fn similarity(z_fmri: &Tensor, z_img: &Tensor) -> Tensor {
    let unit = |z: &Tensor| {
        let z = z.to_kind(Kind::Float);
        let norm = z
            .pow_tensor_scalar(2)
            .sum_dim_intlist(1, true, Kind::Float)
            .sqrt()
            .clamp_min(1e-8);
        z / norm
    };
    unit(z_fmri).matmul(&unit(z_img).transpose(0, 1))
}

/// InfoNCE over a batch of B pairs (row i of both = image i), mean over anchors.
///
/// One-way (the paper): mean over images b of -log( exp(S[b,b]/tau) / sum_a exp(S[a,b]/tau) ),
/// the image as anchor and the batch's other responses as negatives. Symmetric: the mean
/// of that and the fMRI-anchored loss (sum over images b for each response a).
/// `tau`: scalar tensor (may require grad).
pub fn info_nce(z_fmri: &Tensor, z_img: &Tensor, tau: &Tensor, symmetric: bool) -> Tensor {
    let s = similarity(z_fmri, z_img) / tau;
    let b = s.size()[0];
    let target = Tensor::arange(b, (Kind::Int64, s.device()));
    // Row b of S^T holds S[., b]: the softmax over responses a for image b.
    let image_anchor = s.transpose(0, 1).cross_entropy_for_logits(&target);
    if symmetric {
        let fmri_anchor = s.cross_entropy_for_logits(&target);
        (image_anchor + fmri_anchor) * 0.5
    } else {
        image_anchor
    }
}

/// The contrastive objective's lower bound on mutual information (METHOD.md), in nats:
/// mean_i log( exp(c_ii) / ((1/K) sum_j exp(c_ij)) ), c = cosine / tau, with image i
/// as anchor and the K responses j of the set as candidates. Equals log K minus the
/// one-way InfoNCE over the same K pairs, so it is at most log K.
pub fn mi_lower_bound(z_fmri: &Tensor, z_img: &Tensor, tau: f64) -> f64 {
    tch::no_grad(|| {
        let c = similarity(z_fmri, z_img).transpose(0, 1) / tau; // c[i, j]: image i, response j
        let k = c.size()[0];
        let diag = c.diagonal(0, 0, 1);
        let lse = c.logsumexp([1i64], false);
        ((diag - lse).mean(Kind::Double) + (k as f64).ln()).double_value(&[])
    })
}
