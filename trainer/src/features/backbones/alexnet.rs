//! torchvision's AlexNet (the "one weird trick" variant: 64-192-384-256-256 channels).
//!
//! Taps, for 224 px input: features.2 [B,64,27,27], features.5 [B,192,13,13],
//! features.7 [B,384,13,13], features.9 [B,256,13,13], features.12 [B,256,6,6],
//! classifier.2 [B,4096], classifier.5 [B,4096], classifier.6 [B,classes].

use tch::nn;

use super::layers::{self, linear, max_pool_3x3_s2, Conv, Init};
use super::Staged;

fn conv(c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Conv {
    Conv {
        stride,
        padding,
        bias: true,
        init: Init::TorchDefault,
        ..Conv::new(c_in, c_out, k)
    }
}

/// Variables `features.{0,3,6,8,10}.*` and `classifier.{1,4,6}.*`, as in torchvision.
pub fn alexnet(p: &nn::Path, num_classes: i64) -> Staged {
    let f = p / "features";
    let c = p / "classifier";
    let conv0 = conv(3, 64, 11, 4, 2).build(&f / 0);
    let conv3 = conv(64, 192, 5, 1, 2).build(&f / 3);
    let conv6 = conv(192, 384, 3, 1, 1).build(&f / 6);
    let conv8 = conv(384, 256, 3, 1, 1).build(&f / 8);
    let conv10 = conv(256, 256, 3, 1, 1).build(&f / 10);
    let fc1 = linear(&c / 1, 256 * 6 * 6, 4096, Init::TorchDefault);
    let fc4 = linear(&c / 4, 4096, 4096, Init::TorchDefault);
    let fc6 = linear(&c / 6, 4096, num_classes, Init::TorchDefault);

    Staged::new()
        .stage(
            "features.2",
            nn::func_t(move |xs, _| max_pool_3x3_s2(&xs.apply(&conv0).relu(), 0)),
        )
        .stage(
            "features.5",
            nn::func_t(move |xs, _| max_pool_3x3_s2(&xs.apply(&conv3).relu(), 0)),
        )
        .stage(
            "features.7",
            nn::func_t(move |xs, _| xs.apply(&conv6).relu()),
        )
        .stage(
            "features.9",
            nn::func_t(move |xs, _| xs.apply(&conv8).relu()),
        )
        .stage(
            "features.12",
            nn::func_t(move |xs, _| max_pool_3x3_s2(&xs.apply(&conv10).relu(), 0)),
        )
        // The adaptive 6x6 pool is what lets 128 px (3x3 maps) reach the 9216-wide fc.
        .stage(
            "classifier.2",
            nn::func_t(move |xs, train| {
                let pooled = xs.adaptive_avg_pool2d([6, 6]).flatten(1, -1);
                layers::dropout(&pooled, 0.5, train).apply(&fc1).relu()
            }),
        )
        .stage(
            "classifier.5",
            nn::func_t(move |xs, train| layers::dropout(xs, 0.5, train).apply(&fc4).relu()),
        )
        .stage("classifier.6", nn::func_t(move |xs, _| xs.apply(&fc6)))
}
