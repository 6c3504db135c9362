//! Layers with torchvision's initializations and buffers, shared by the architectures.
//!
//! Random initial values are drawn either from libtorch's global generator (as tch
//! does) or, inside [`with_init`], from a ChaCha stream keyed by (seed, variable name):
//! the latter gives the same weights for a seed whatever other threads do with the
//! global generator meanwhile, on any device and libtorch version.

use std::borrow::Borrow;
use std::cell::Cell;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use sha2::{Digest, Sha256};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// Dropout (scaled by 1 / (1 - p)) with its mask drawn by libtorch's CPU generator on
/// every device: a run on CUDA draws the masks a CPU run of the same seed draws, so
/// the two train alike (CUDA's own generator is another stream). The draw and scaling
/// are those of libtorch's CPU `dropout` (not compared bit for bit); one mask value per
/// activation.
pub(crate) fn dropout(xs: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return xs.shallow_clone();
    }
    let keep = Tensor::empty(xs.size(), (Kind::Float, tch::Device::Cpu)).bernoulli_float_(1.0 - p)
        / (1.0 - p);
    xs * crate::device::upload(&keep, xs.device()).to_kind(xs.kind())
}

/// Where the random initial values of the networks being built come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InitSource {
    /// libtorch's global generator (tch's behaviour; also outside `with_init`).
    Global,
    /// A ChaCha stream per variable, keyed by (seed, full variable name).
    Seeded(u64),
    /// Leave weights and biases at zero: the caller overwrites them (loading).
    Skip,
}

thread_local! {
    static INIT_SOURCE: Cell<InitSource> = const { Cell::new(InitSource::Global) };
}

/// Runs `build` with random initializations drawn from `source` on this thread.
pub(crate) fn with_init<T>(source: InitSource, build: impl FnOnce() -> T) -> T {
    /// Restores the previous source even if `build` panics.
    struct Restore(InitSource);
    impl Drop for Restore {
        fn drop(&mut self) {
            INIT_SOURCE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(INIT_SOURCE.with(|s| s.replace(source)));
    build()
}

/// Overwrites variable `name` of `p` (already created, as `t`) with a draw from `init`.
fn initialize(p: &nn::Path, name: &str, t: &Tensor, init: nn::Init) {
    let dims = t.size();
    let values = match INIT_SOURCE.with(Cell::get) {
        InitSource::Seeded(seed) => seeded_draw(seed, &p.path(name), &dims, init),
        InitSource::Global => nn::init::init(init, &dims, tch::Device::Cpu),
        InitSource::Skip => return,
    };
    let mut dst = t.shallow_clone();
    tch::no_grad(|| dst.copy_(&values));
}

fn seeded_draw(seed: u64, full_name: &str, dims: &[i64], init: nn::Init) -> Tensor {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(full_name.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(h.finalize().into());
    let n: i64 = dims.iter().product();
    let n = n.max(0) as usize;
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f32> {
        match Uniform::new(lo as f32, up as f32) {
            Ok(u) => u.sample_iter(rng).take(n).collect(),
            // An empty range (lo == up) has one value.
            Err(_) => vec![lo as f32; n],
        }
    };
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(rng);
                (mean + std * z) as f32
            })
            .collect()
    };
    let values = match init {
        nn::Init::Const(c) => vec![c as f32; n],
        nn::Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
        nn::Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
        nn::Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_weight_dims(dims).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(&mut rng, -bound, bound)
                }
                NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
            }
        }
        // No torchvision classifier here uses it; libtorch's draw keeps it possible.
        nn::Init::Orthogonal { .. } => return nn::init::init(init, dims, tch::Device::Cpu),
    };
    Tensor::from_slice(&values).view(dims)
}

/// How torchvision initializes a layer (tch's defaults differ: its Kaiming-uniform uses
/// the ReLU gain, its conv bias starts at 0, its batch-norm scale is U(0, 1)).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init {
    /// PyTorch's `reset_parameters`: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    /// AlexNet everywhere, ResNet's `fc`.
    TorchDefault,
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, bias 0: the convs of
    /// ResNet and MobileNetV2.
    KaimingFanOut,
    /// `normal_(0, 0.01)`, bias 0: MobileNetV2's classifier.
    Normal001,
}

impl Init {
    fn weight(self) -> nn::Init {
        match self {
            // kaiming_uniform_(a=sqrt(5)) has gain 1/sqrt(3), so its bound is 1/sqrt(fan_in).
            Init::TorchDefault => nn::Init::Kaiming {
                dist: NormalOrUniform::Uniform,
                fan: FanInOut::FanIn,
                non_linearity: NonLinearity::ExplicitGain(1.0 / 3f64.sqrt()),
            },
            Init::KaimingFanOut => nn::Init::Kaiming {
                dist: NormalOrUniform::Normal,
                fan: FanInOut::FanOut,
                non_linearity: NonLinearity::ReLU,
            },
            Init::Normal001 => nn::Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        }
    }

    fn bias(self, fan_in: i64) -> nn::Init {
        match self {
            Init::TorchDefault => {
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                }
            }
            Init::KaimingFanOut | Init::Normal001 => nn::Init::Const(0.0),
        }
    }
}

/// A 2-D convolution, spelled with named fields because five adjacent integers are
/// too easy to swap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv {
    pub c_in: i64,
    pub c_out: i64,
    pub k: i64,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
    pub bias: bool,
    pub init: Init,
}

impl Conv {
    /// k x k, stride 1, no padding, no bias, Kaiming fan-out: override what differs.
    pub fn new(c_in: i64, c_out: i64, k: i64) -> Self {
        Conv {
            c_in,
            c_out,
            k,
            stride: 1,
            padding: 0,
            groups: 1,
            bias: false,
            init: Init::KaimingFanOut,
        }
    }

    pub fn build<'a>(self, p: impl Borrow<nn::Path<'a>>) -> nn::Conv2D {
        let p = p.borrow();
        let fan_in = self.c_in / self.groups * self.k * self.k;
        let cfg = nn::ConvConfig {
            stride: self.stride,
            padding: self.padding,
            groups: self.groups,
            bias: self.bias,
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let conv = nn::conv2d(p, self.c_in, self.c_out, self.k, cfg);
        initialize(p, "weight", &conv.ws, self.init.weight());
        if let Some(bs) = &conv.bs {
            initialize(p, "bias", bs, self.init.bias(fan_in));
        }
        conv
    }
}

pub(crate) fn linear<'a>(
    p: impl Borrow<nn::Path<'a>>,
    c_in: i64,
    c_out: i64,
    init: Init,
) -> nn::Linear {
    let p = p.borrow();
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    let lin = nn::linear(p, c_in, c_out, cfg);
    initialize(p, "weight", &lin.ws, init.weight());
    if let Some(bs) = &lin.bs {
        initialize(p, "bias", bs, init.bias(c_in));
    }
    lin
}

/// torchvision's `BatchNorm2d`: scale 1, shift 0, and the `num_batches_tracked`
/// buffer, kept so that state_dicts round-trip exactly (momentum is fixed at 0.1, so
/// the count never changes the arithmetic).
#[derive(Debug)]
pub(crate) struct BatchNorm2d {
    bn: nn::BatchNorm,
    num_batches_tracked: Tensor,
}

pub(crate) fn batch_norm2d<'a>(p: impl Borrow<nn::Path<'a>>, c: i64) -> BatchNorm2d {
    let p = p.borrow();
    let cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    let bn = nn::batch_norm2d(p, c, cfg);
    let zero = Tensor::zeros([], (Kind::Int64, p.device()));
    let num_batches_tracked = p.add("num_batches_tracked", zero, false);
    BatchNorm2d {
        bn,
        num_batches_tracked,
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            // Same storage as the var-store entry, so the count is what gets saved.
            let mut n = self.num_batches_tracked.shallow_clone();
            tch::no_grad(|| n += 1i64);
        }
        self.bn.forward_t(xs, train)
    }
}

/// torchvision's `MaxPool2d(kernel_size=3, stride=2, padding)`.
pub(crate) fn max_pool_3x3_s2(xs: &Tensor, padding: i64) -> Tensor {
    xs.max_pool2d([3, 3], [2, 2], [padding, padding], [1, 1], false)
}

/// `adaptive_avg_pool2d(x, (1, 1))` then `flatten(1)`: [B, C, H, W] -> [B, C].
pub(crate) fn global_avg_pool(xs: &Tensor) -> Tensor {
    xs.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}
