//! torchvision's ResNet-18 (basic blocks) and ResNet-50 (bottlenecks, v1.5: the stride
//! sits on the 3x3 conv, not the first 1x1).
//!
//! Taps, for 224 px input (ResNet-18 / ResNet-50 channels): layer1 [B,64/256,56,56],
//! layer2 [B,128/512,28,28], layer3 [B,256/1024,14,14], layer4 [B,512/2048,7,7],
//! avgpool [B,512/2048], fc [B,classes]. The stem (conv1, bn1, maxpool) runs inside
//! the layer1 stage.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::layers::{
    batch_norm2d, global_avg_pool, linear, max_pool_3x3_s2, BatchNorm2d, Conv, Init,
};
use super::Staged;

/// 1x1 conv + norm on the identity path when a block changes shape: `<p>.downsample.{0,1}`.
#[derive(Debug)]
struct Downsample {
    conv: nn::Conv2D,
    bn: BatchNorm2d,
}

impl Downsample {
    fn maybe(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Option<Self> {
        (stride != 1 || c_in != c_out).then(|| {
            let p = p / "downsample";
            Downsample {
                conv: Conv {
                    stride,
                    ..Conv::new(c_in, c_out, 1)
                }
                .build(&p / 0),
                bn: batch_norm2d(&p / 1, c_out),
            }
        })
    }

    fn identity(ds: &Option<Self>, xs: &Tensor, train: bool) -> Tensor {
        match ds {
            Some(d) => xs.apply(&d.conv).apply_t(&d.bn, train),
            None => xs.shallow_clone(),
        }
    }
}

fn conv3x3(c_in: i64, c_out: i64, stride: i64) -> Conv {
    Conv {
        stride,
        padding: 1,
        ..Conv::new(c_in, c_out, 3)
    }
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    const EXPANSION: i64 = 1;

    fn new(p: &nn::Path, c_in: i64, planes: i64, stride: i64) -> Self {
        BasicBlock {
            conv1: conv3x3(c_in, planes, stride).build(p / "conv1"),
            bn1: batch_norm2d(p / "bn1", planes),
            conv2: conv3x3(planes, planes, 1).build(p / "conv2"),
            bn2: batch_norm2d(p / "bn2", planes),
            downsample: Downsample::maybe(p, c_in, planes * Self::EXPANSION, stride),
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        (ys + Downsample::identity(&self.downsample, xs, train)).relu()
    }
}

#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    conv3: nn::Conv2D,
    bn3: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl Bottleneck {
    const EXPANSION: i64 = 4;

    fn new(p: &nn::Path, c_in: i64, planes: i64, stride: i64) -> Self {
        let c_out = planes * Self::EXPANSION;
        Bottleneck {
            conv1: Conv::new(c_in, planes, 1).build(p / "conv1"),
            bn1: batch_norm2d(p / "bn1", planes),
            conv2: conv3x3(planes, planes, stride).build(p / "conv2"),
            bn2: batch_norm2d(p / "bn2", planes),
            conv3: Conv::new(planes, c_out, 1).build(p / "conv3"),
            bn3: batch_norm2d(p / "bn3", c_out),
            downsample: Downsample::maybe(p, c_in, c_out, stride),
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train)
            .relu()
            .apply(&self.conv3)
            .apply_t(&self.bn3, train);
        (ys + Downsample::identity(&self.downsample, xs, train)).relu()
    }
}

#[derive(Clone, Copy, Debug)]
enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    fn expansion(self) -> i64 {
        match self {
            Block::Basic => BasicBlock::EXPANSION,
            Block::Bottleneck => Bottleneck::EXPANSION,
        }
    }

    fn build(self, p: &nn::Path, c_in: i64, planes: i64, stride: i64) -> Box<dyn ModuleT> {
        match self {
            Block::Basic => Box::new(BasicBlock::new(p, c_in, planes, stride)),
            Block::Bottleneck => Box::new(Bottleneck::new(p, c_in, planes, stride)),
        }
    }
}

/// A sequence of boxed modules (tch's `SequentialT` takes only concrete types).
#[derive(Debug)]
struct Blocks(Vec<Box<dyn ModuleT>>);

impl ModuleT for Blocks {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.0
            .iter()
            .fold(xs.shallow_clone(), |h, b| b.forward_t(&h, train))
    }
}

const LAYER_TAPS: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];
const PLANES: [i64; 4] = [64, 128, 256, 512];

fn resnet(p: &nn::Path, block: Block, depths: [i64; 4], num_classes: i64) -> Staged {
    let conv1 = Conv {
        stride: 2,
        padding: 3,
        ..Conv::new(3, 64, 7)
    }
    .build(p / "conv1");
    let bn1 = batch_norm2d(p / "bn1", 64);
    // The stem runs inside the layer1 stage: conv1/bn1/maxpool are no taps.
    let mut stem = Some((conv1, bn1));
    let mut net = Staged::new();
    let mut c_in = 64;
    for (li, (&planes, &depth)) in PLANES.iter().zip(depths.iter()).enumerate() {
        let lp = p / LAYER_TAPS[li];
        let mut blocks = Vec::with_capacity(depth as usize);
        for b in 0..depth {
            let stride = if li > 0 && b == 0 { 2 } else { 1 };
            blocks.push(block.build(&(&lp / b), c_in, planes, stride));
            c_in = planes * block.expansion();
        }
        let layer = Blocks(blocks);
        net = match stem.take() {
            Some((conv1, bn1)) => net.stage(
                LAYER_TAPS[li],
                nn::func_t(move |xs, train| {
                    let h = xs.apply(&conv1).apply_t(&bn1, train).relu();
                    max_pool_3x3_s2(&h, 1).apply_t(&layer, train)
                }),
            ),
            None => net.stage(LAYER_TAPS[li], layer),
        };
    }
    let fc = linear(p / "fc", c_in, num_classes, Init::TorchDefault);
    net.stage("avgpool", nn::func(global_avg_pool))
        .stage("fc", nn::func(move |xs| xs.apply(&fc)))
}

/// Variables `conv1.*`, `bn1.*`, `layer{1..4}.{i}.*` and `fc.*`, as in torchvision.
pub fn resnet18(p: &nn::Path, num_classes: i64) -> Staged {
    resnet(p, Block::Basic, [2, 2, 2, 2], num_classes)
}

/// Variables as `torchvision.models.resnet50()`'s state_dict.
pub fn resnet50(p: &nn::Path, num_classes: i64) -> Staged {
    resnet(p, Block::Bottleneck, [3, 4, 6, 3], num_classes)
}
