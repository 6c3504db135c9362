//! torchvision's MobileNetV2 (width 1.0): ReLU6, inverted residuals, dropout 0.2.
//!
//! Taps (one per resolution/width group, in forward order), for 224 px input:
//! features.1 [B,16,112,112], features.3 [B,24,56,56], features.6 [B,32,28,28],
//! features.10 [B,64,14,14], features.13 [B,96,14,14], features.16 [B,160,7,7],
//! features.17 [B,320,7,7], features.18 [B,1280,7,7], avgpool [B,1280],
//! classifier.1 [B,classes].

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::layers::{self, batch_norm2d, global_avg_pool, linear, BatchNorm2d, Conv, Init};
use super::Staged;

/// (expansion t, output channels c, repeats n, first stride s): torchvision's table,
/// with the tap each group ends at (its last block's index in `features`). Public so
/// the ONNX exporter walks the very same table.
pub const INVERTED_RESIDUAL_SETTING: [(i64, i64, i64, i64, &str); 7] = [
    (1, 16, 1, 1, "features.1"),
    (6, 24, 2, 2, "features.3"),
    (6, 32, 3, 2, "features.6"),
    (6, 64, 4, 2, "features.10"),
    (6, 96, 3, 1, "features.13"),
    (6, 160, 3, 2, "features.16"),
    (6, 320, 1, 1, "features.17"),
];
const STEM_CHANNELS: i64 = 32;
const LAST_CHANNELS: i64 = 1280;

/// `Conv2dNormActivation(..., activation_layer=ReLU6)`: `<p>.0` conv, `<p>.1` norm.
#[derive(Debug)]
struct ConvBnReLU6 {
    conv: nn::Conv2D,
    bn: BatchNorm2d,
}

impl ConvBnReLU6 {
    fn new(p: &nn::Path, spec: Conv) -> Self {
        ConvBnReLU6 {
            conv: Conv {
                padding: (spec.k - 1) / 2,
                ..spec
            }
            .build(p / 0),
            bn: batch_norm2d(p / 1, spec.c_out),
        }
    }
}

impl ModuleT for ConvBnReLU6 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train).relu6()
    }
}

/// torchvision's `InvertedResidual`: `<p>.conv.{0..}` = [1x1 expand] -> 3x3 depthwise
/// -> 1x1 linear projection -> norm, with the identity added when shapes allow.
#[derive(Debug)]
struct InvertedResidual {
    expand: Option<ConvBnReLU6>,
    depthwise: ConvBnReLU6,
    project: nn::Conv2D,
    bn: BatchNorm2d,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, expansion: i64) -> Self {
        let p = p / "conv";
        let hidden = c_in * expansion;
        let mut i = 0;
        let expand = (expansion != 1).then(|| {
            i += 1;
            ConvBnReLU6::new(&(&p / 0), Conv::new(c_in, hidden, 1))
        });
        let depthwise = ConvBnReLU6::new(
            &(&p / i),
            Conv {
                stride,
                groups: hidden,
                ..Conv::new(hidden, hidden, 3)
            },
        );
        InvertedResidual {
            expand,
            depthwise,
            project: Conv::new(hidden, c_out, 1).build(&p / (i + 1)),
            bn: batch_norm2d(&p / (i + 2), c_out),
            residual: stride == 1 && c_in == c_out,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = match &self.expand {
            Some(e) => xs.apply_t(e, train),
            None => xs.shallow_clone(),
        };
        let ys = h
            .apply_t(&self.depthwise, train)
            .apply(&self.project)
            .apply_t(&self.bn, train);
        if self.residual {
            xs + ys
        } else {
            ys
        }
    }
}

/// Variables `features.{0..18}.*` and `classifier.1.*`, as in torchvision.
pub fn mobilenet_v2(p: &nn::Path, num_classes: i64) -> Staged {
    let f = p / "features";
    let stem = ConvBnReLU6::new(
        &(&f / 0),
        Conv {
            stride: 2,
            ..Conv::new(3, STEM_CHANNELS, 3)
        },
    );
    let mut net = Staged::new();
    let mut c_in = STEM_CHANNELS;
    let mut index = 1;
    let mut stem = Some(stem);
    for &(t, c, n, s, tap) in INVERTED_RESIDUAL_SETTING.iter() {
        // The stem runs inside the first group's stage, so features.0 is no tap.
        let mut group = nn::seq_t();
        if let Some(stem) = stem.take() {
            group = group.add(stem);
        }
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            group = group.add(InvertedResidual::new(&(&f / index), c_in, c, stride, t));
            c_in = c;
            index += 1;
        }
        net = net.stage(tap, group);
    }
    let last = ConvBnReLU6::new(&(&f / index), Conv::new(c_in, LAST_CHANNELS, 1));
    let classifier = linear(
        p / "classifier" / 1,
        LAST_CHANNELS,
        num_classes,
        Init::Normal001,
    );
    net.stage("features.18", last)
        .stage("avgpool", nn::func(global_avg_pool))
        .stage(
            "classifier.1",
            nn::func_t(move |xs, train| layers::dropout(xs, 0.2, train).apply(&classifier)),
        )
}
