//! ImageNet CNNs (torchvision's AlexNet, MobileNetV2, ResNet-18/50) as tch networks cut
//! at named taps, so that one forward pass yields the features the encoders regress on.
//!
//! Every parameter and buffer carries torchvision's `state_dict` name (including
//! `num_batches_tracked`), so torchvision weights load unchanged and a fine-tuned
//! backbone saved here loads into torchvision with `load_state_dict(strict=True)`.
//!
//! Inputs are ImageNet-normalized float32 [B, 3, H, W] (see `images::normalize`); any
//! H, W that survive the strides work (128 px and up), because every head pools
//! adaptively.

mod alexnet;
mod layers;
pub mod mobilenet_v2;
mod resnet;
mod weights;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tch::nn::{self, ModuleT};
use tch::Tensor;

pub use alexnet::alexnet;
pub use mobilenet_v2::mobilenet_v2;
pub use resnet::{resnet18, resnet50};
/// Where a backbone lives; re-exported so that callers need not depend on tch to pick
/// one (`Device::cuda_if_available()`).
pub use tch::Device;
pub use weights::ShapeMismatch;

/// ImageNet's number of classes: every head here is torchvision's 1000-way classifier.
pub const IMAGENET_CLASSES: i64 = 1000;

/// The torchvision classifiers vcl can fine-tune.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Arch {
    #[value(name = "alexnet")]
    #[serde(rename = "alexnet")]
    AlexNet,
    #[value(name = "mobilenet_v2")]
    #[serde(rename = "mobilenet_v2")]
    MobileNetV2,
    #[value(name = "resnet18")]
    #[serde(rename = "resnet18")]
    ResNet18,
    #[value(name = "resnet50")]
    #[serde(rename = "resnet50")]
    ResNet50,
}

const ALEXNET_TAPS: &[&str] = &[
    "features.2",
    "features.5",
    "features.7",
    "features.9",
    "features.12",
    "classifier.2",
    "classifier.5",
    "classifier.6",
];

const MOBILENET_V2_TAPS: &[&str] = &[
    "features.1",
    "features.3",
    "features.6",
    "features.10",
    "features.13",
    "features.16",
    "features.17",
    "features.18",
    "avgpool",
    "classifier.1",
];

const RESNET_TAPS: &[&str] = &["layer1", "layer2", "layer3", "layer4", "avgpool", "fc"];

impl Arch {
    pub const ALL: [Arch; 4] = [
        Arch::AlexNet,
        Arch::MobileNetV2,
        Arch::ResNet18,
        Arch::ResNet50,
    ];

    /// The name used on the command line, in manifests and in torchvision
    /// (`torchvision.models.<name>()`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::AlexNet => "alexnet",
            Arch::MobileNetV2 => "mobilenet_v2",
            Arch::ResNet18 => "resnet18",
            Arch::ResNet50 => "resnet50",
        }
    }

    /// Tap names in forward order; the last one is the 1000-way logits.
    pub fn taps(self) -> &'static [&'static str] {
        match self {
            Arch::AlexNet => ALEXNET_TAPS,
            Arch::MobileNetV2 => MOBILENET_V2_TAPS,
            Arch::ResNet18 | Arch::ResNet50 => RESNET_TAPS,
        }
    }

    /// The penultimate representation: the deepest tap that is not yet class scores.
    pub fn default_tap(self) -> &'static str {
        match self {
            Arch::AlexNet => "classifier.5",
            Arch::MobileNetV2 | Arch::ResNet18 | Arch::ResNet50 => "avgpool",
        }
    }

    /// File name of the converted ImageNet weights under `paths::weights_dir()`.
    pub fn weights_file(self) -> &'static str {
        match self {
            Arch::AlexNet => "alexnet.safetensors",
            Arch::MobileNetV2 => "mobilenet_v2.safetensors",
            Arch::ResNet18 => "resnet18.safetensors",
            Arch::ResNet50 => "resnet50.safetensors",
        }
    }

    /// Builds the network's variables under `p` with torchvision's initialization.
    pub fn build(self, p: &nn::Path) -> Staged {
        match self {
            Arch::AlexNet => alexnet(p, IMAGENET_CLASSES),
            Arch::MobileNetV2 => mobilenet_v2(p, IMAGENET_CLASSES),
            Arch::ResNet18 => resnet18(p, IMAGENET_CLASSES),
            Arch::ResNet50 => resnet50(p, IMAGENET_CLASSES),
        }
    }

    fn names() -> Vec<String> {
        Arch::ALL.iter().map(|a| a.name().to_string()).collect()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = BackboneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| BackboneError::UnknownArch {
                name: s.to_string(),
                valid: Arch::names(),
            })
    }
}

/// What can go wrong building, loading or running a backbone (and caching its features).
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("weights file {path} does not exist")]
    WeightsMissing { path: PathBuf },

    #[error("cannot read weights file {path}: {reason}")]
    WeightsUnreadable { path: PathBuf, reason: String },

    #[error("{}", weights::mismatch_message(.arch, .path, .missing, .unexpected, .shapes))]
    ArchMismatch {
        arch: Arch,
        path: PathBuf,
        /// Names the network has and the file lacks, sorted.
        missing: Vec<String>,
        /// Names the file has and the network lacks, sorted.
        unexpected: Vec<String>,
        shapes: Vec<ShapeMismatch>,
    },

    #[error("unknown tap '{tap}' for {arch}; valid taps: {}", valid.join(", "))]
    UnknownTap {
        tap: String,
        arch: Arch,
        valid: Vec<String>,
    },

    #[error("unknown backbone '{name}'; valid backbones: {}", valid.join(", "))]
    UnknownArch { name: String, valid: Vec<String> },

    #[error("cannot save weights to {path}: {reason}")]
    Save { path: PathBuf, reason: String },

    #[error("feature cache {path}: {reason}")]
    FeatureCache { path: PathBuf, reason: String },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Data(#[from] vcl_dataset::DataError),
}

/// One piece of a network: maps the previous stage's output (or the image) to the
/// output of the torchvision submodule the stage is named after.
#[derive(Debug)]
struct Stage {
    tap: &'static str,
    module: Box<dyn ModuleT>,
}

/// A network cut at its taps. Running all stages is the whole classifier; running
/// the first k is a headless feature extractor, without a separate model definition.
#[derive(Debug, Default)]
pub struct Staged {
    stages: Vec<Stage>,
}

impl Staged {
    pub(crate) fn new() -> Self {
        Staged::default()
    }

    pub(crate) fn stage(mut self, tap: &'static str, module: impl ModuleT + 'static) -> Self {
        self.stages.push(Stage {
            tap,
            module: Box::new(module),
        });
        self
    }

    /// Tap names in forward order.
    pub fn tap_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.tap).collect()
    }

    /// Runs stages 0..=last and returns the output of each stage listed in `wanted`
    /// (indices into the stages), in the order of `wanted`.
    fn run(&self, xs: &Tensor, wanted: &[usize], train: bool) -> Vec<Tensor> {
        let last = wanted.iter().copied().max();
        let mut out: Vec<Option<Tensor>> = (0..wanted.len()).map(|_| None).collect();
        if let Some(last) = last {
            let mut h = xs.shallow_clone();
            for (i, stage) in self.stages.iter().enumerate().take(last + 1) {
                h = stage.module.forward_t(&h, train);
                for (slot, &w) in out.iter_mut().zip(wanted) {
                    if w == i {
                        *slot = Some(h.shallow_clone());
                    }
                }
            }
        }
        out.into_iter().flatten().collect()
    }
}

impl ModuleT for Staged {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.stages
            .iter()
            .fold(xs.shallow_clone(), |h, s| s.module.forward_t(&h, train))
    }
}

/// A torchvision classifier with its variables: what gets fine-tuned, saved and
/// used as a feature extractor.
#[derive(Debug)]
pub struct Backbone {
    arch: Arch,
    var_store: nn::VarStore,
    net: Staged,
}

impl Backbone {
    /// torchvision's initialization for `arch`, drawn from `seed`. Each variable's
    /// values come from its own stream keyed by (seed, name), drawn on the CPU, so a seed
    /// gives the same weights on every device and regardless of what other threads do
    /// with libtorch's global generator (which `tch::manual_seed` would not guarantee).
    pub fn random(arch: Arch, device: Device, seed: i64) -> Self {
        let mut var_store = nn::VarStore::new(Device::Cpu);
        let source = layers::InitSource::Seeded(seed as u64);
        let net = layers::with_init(source, || arch.build(&var_store.root()));
        if device != Device::Cpu {
            var_store.set_device(device);
        }
        Backbone {
            arch,
            var_store,
            net,
        }
    }

    /// Loads torchvision weights: a `.safetensors` file with torchvision's key names,
    /// or a `torch.save`d state_dict (`.pth`, `.pt`, `.bin`) in the zip format torch
    /// has written since 1.6. Every key must match by name and shape (a missing
    /// `num_batches_tracked` is tolerated: it does not change what the network computes).
    pub fn load(arch: Arch, weights: &Path, device: Device) -> Result<Self, BackboneError> {
        let tensors = weights::read(weights)?;
        let mut var_store = nn::VarStore::new(Device::Cpu);
        // Every value is overwritten below (assign checks that first), so drawing
        // random ones would only cost time.
        let net = layers::with_init(layers::InitSource::Skip, || arch.build(&var_store.root()));
        weights::assign(&var_store, arch, weights, tensors)?;
        if device != Device::Cpu {
            var_store.set_device(device);
        }
        tracing::info!(arch = %arch, path = %weights.display(), "loaded backbone weights");
        Ok(Backbone {
            arch,
            var_store,
            net,
        })
    }

    /// The ImageNet weights set-up installed, `paths::weights_dir()/<arch>.safetensors`.
    pub fn pretrained(arch: Arch, device: Device) -> Result<Self, BackboneError> {
        Backbone::load(
            arch,
            &vcl_dataset::paths::weights_dir().join(arch.weights_file()),
            device,
        )
    }

    /// Writes the variables as safetensors with torchvision's names, atomically, so a
    /// reader never sees a half-written file.
    pub fn save(&self, path: &Path) -> Result<(), BackboneError> {
        weights::save(&self.var_store, path)
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn device(&self) -> Device {
        self.var_store.device()
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.var_store
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.var_store
    }

    /// The whole network as one module (e.g. to compose with heads).
    pub fn module(&self) -> &Staged {
        &self.net
    }

    /// Class scores float32 [B, 1000] for ImageNet-normalized x [B, 3, H, W].
    /// `train` switches batch-norm to batch statistics and turns dropout on.
    pub fn logits(&self, x: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(x, train)
    }

    /// Outputs at the named taps, in the order asked, running the network only as far
    /// as the deepest one. Conv taps are [B, C, H', W'], the others [B, D].
    pub fn taps(
        &self,
        x: &Tensor,
        taps: &[&str],
        train: bool,
    ) -> Result<Vec<Tensor>, BackboneError> {
        let wanted = taps
            .iter()
            .map(|t| self.tap_index(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.net.run(x, &wanted, train))
    }

    /// Position of `tap` in forward order, or the error listing the valid taps.
    pub fn tap_index(&self, tap: &str) -> Result<usize, BackboneError> {
        self.arch
            .taps()
            .iter()
            .position(|t| *t == tap)
            .ok_or_else(|| BackboneError::UnknownTap {
                tap: tap.to_string(),
                arch: self.arch,
                valid: self.arch.taps().iter().map(|s| s.to_string()).collect(),
            })
    }

    /// Every variable's torchvision name and shape, sorted by name: the state_dict's
    /// keys (buffers and `num_batches_tracked` included).
    pub fn state_dict_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        self.var_store
            .variables()
            .into_iter()
            .map(|(k, t)| (k, t.size()))
            .collect()
    }

    /// SHA-256 (hex) over the sorted variable names, kinds, shapes and bytes: equal
    /// hashes mean equal networks, so feature caches and manifests key on it.
    pub fn weights_hash(&self) -> String {
        weights::hash(&self.var_store)
    }
}

#[cfg(test)]
mod tests;
