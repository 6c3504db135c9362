//! The backbones as ONNX nodes, read from a tch VarStore by torchvision's names.
//!
//! Each architecture is walked in forward order exactly as `backbones/` computes it in
//! eval mode: batch-norm (running statistics) folded into the preceding convolution,
//! ReLU6 as Clip(0, 6), dropout omitted, AlexNet's adaptive 6x6 pool expressed for the
//! actual map size. The walk stops at the deepest tap asked for and returns each
//! tap's value with its per-image shape, tracked statically from the input size so
//! that pooling can be written with fixed kernels.
//!
//! The block tables below repeat torchvision's (as `backbones/` does); the parity
//! tests against libtorch catch any drift between the two.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tch::{Device, Kind, Tensor};

use super::error::ExportError;
use super::graph::{ConvAttrs, GraphBuilder, Window};
use crate::features::backbones::{Arch, Backbone};
use crate::features::Pooling;

/// torchvision's batch-norm epsilon (every BatchNorm2d of these networks).
const BN_EPS: f64 = 1e-5;

/// MobileNetV2's inverted-residual groups, the table the tch model is built from.
use crate::features::backbones::mobilenet_v2::INVERTED_RESIDUAL_SETTING as MOBILENET_V2_GROUPS;

/// A graph value and its per-image shape: [C, H, W] for maps, [D] for vectors.
#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub shape: Vec<i64>,
}

impl Value {
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// The backbone's variables as float32 CPU tensors, by torchvision name.
struct Weights {
    arch: Arch,
    vars: HashMap<String, Tensor>,
}

impl Weights {
    fn new(backbone: &Backbone) -> Self {
        Weights {
            arch: backbone.arch(),
            vars: backbone.var_store().variables(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// (shape, row-major values) of variable `name`.
    fn get(&self, name: &str) -> Result<(Vec<i64>, Vec<f32>), ExportError> {
        let t = self.vars.get(name).ok_or_else(|| {
            ExportError::Invalid(format!(
                "{} has no variable '{name}': the exporter and backbones/ disagree on its layout",
                self.arch
            ))
        })?;
        let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let shape = t.size();
        let flat = t.view([-1]);
        let values = Vec::<f32>::try_from(&flat).map_err(|e| ExportError::Tch {
            what: format!("reading variable {name}"),
            source: e,
        })?;
        Ok((shape, values))
    }
}

/// Which taps are still wanted and what has been emitted for them.
struct Taps {
    wanted: BTreeSet<String>,
    got: BTreeMap<String, Value>,
}

impl Taps {
    /// Records `v` as `tap` if wanted; true once every wanted tap is recorded.
    fn record(&mut self, tap: &str, v: &Value) -> bool {
        if self.wanted.contains(tap) {
            self.got.insert(tap.to_string(), v.clone());
        }
        self.got.len() == self.wanted.len()
    }
}

struct Emitter<'a> {
    g: &'a mut GraphBuilder,
    w: Weights,
    input_size: i64,
}

/// One block of MobileNetV2's table: where it is and what it does.
#[derive(Clone, Copy)]
struct InvertedResidual {
    index: usize,
    expansion: i64,
    c_out: i64,
    stride: i64,
}

impl Emitter<'_> {
    /// Output side of a conv/pool window, or the error naming the input size.
    fn out_side(&self, side: i64, window: Window, at: &str) -> Result<i64, ExportError> {
        let Window {
            kernel: k,
            stride,
            padding: pad,
        } = window;
        let span = side + 2 * pad - k;
        if span < 0 {
            return Err(ExportError::InputTooSmall {
                arch: self.w.arch,
                size: self.input_size,
                at: at.to_string(),
                side,
            });
        }
        Ok(span / stride + 1)
    }

    /// Conv `prefix` (`.weight`, optional `.bias`) with batch-norm `bn` (`.weight`,
    /// `.bias`, `.running_mean`, `.running_var`) folded in: w' = w s, b' = (b - mu) s + beta
    /// with s = gamma / sqrt(var + eps), computed in f64.
    /// `(stride, padding)` as torchvision's `Conv2d` takes them.
    fn conv(
        &mut self,
        x: &Value,
        prefix: &str,
        bn: Option<&str>,
        (stride, padding): (i64, i64),
    ) -> Result<Value, ExportError> {
        let (wshape, mut w) = self.w.get(&format!("{prefix}.weight"))?;
        let [c_out, c_in_per_group, kh, kw] = wshape[..] else {
            return Err(ExportError::Invalid(format!(
                "{prefix}.weight has shape {wshape:?}, expected [out, in/groups, k, k]"
            )));
        };
        let [c_in, h, wd] = x.shape[..] else {
            return Err(ExportError::Invalid(format!(
                "{prefix} expects a [C, H, W] map, got {:?}",
                x.shape
            )));
        };
        if kh != kw || c_in_per_group <= 0 || c_in % c_in_per_group != 0 {
            return Err(ExportError::Invalid(format!(
                "{prefix}.weight {wshape:?} does not fit an input of {c_in} channels"
            )));
        }
        let groups = c_in / c_in_per_group;
        let bias_name = format!("{prefix}.bias");
        let mut b: Vec<f64> = if self.w.has(&bias_name) {
            self.w
                .get(&bias_name)?
                .1
                .iter()
                .map(|&v| v as f64)
                .collect()
        } else {
            vec![0.0; c_out as usize]
        };
        let has_bias = self.w.has(&bias_name) || bn.is_some();
        if let Some(bn) = bn {
            let gamma = self.w.get(&format!("{bn}.weight"))?.1;
            let beta = self.w.get(&format!("{bn}.bias"))?.1;
            let mean = self.w.get(&format!("{bn}.running_mean"))?.1;
            let var = self.w.get(&format!("{bn}.running_var"))?.1;
            let per_out = w.len() / c_out as usize;
            for o in 0..c_out as usize {
                let s = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
                for v in &mut w[o * per_out..(o + 1) * per_out] {
                    *v = (*v as f64 * s) as f32;
                }
                b[o] = (b[o] - mean[o] as f64) * s + beta[o] as f64;
            }
        }
        let w_name = self.g.constant(
            &format!(
                "{prefix}.weight{}",
                if bn.is_some() { "_bn_folded" } else { "" }
            ),
            &wshape,
            &w,
        );
        let b_name = has_bias.then(|| {
            let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
            self.g.constant(
                &format!(
                    "{prefix}.bias{}",
                    if bn.is_some() { "_bn_folded" } else { "" }
                ),
                &[c_out],
                &b32,
            )
        });
        let window = |kernel| Window {
            kernel,
            stride,
            padding,
        };
        let attrs = ConvAttrs {
            window: window(kh),
            groups,
        };
        let oh = self.out_side(h, window(kh), prefix)?;
        let ow = self.out_side(wd, window(kw), prefix)?;
        let mut inputs = vec![x.name.as_str(), w_name.as_str()];
        inputs.extend(b_name.as_deref());
        let name = self.g.conv(&inputs, attrs, &format!("{prefix}/conv"));
        Ok(Value {
            name,
            shape: vec![c_out, oh, ow],
        })
    }

    fn relu(&mut self, x: &Value, stem: &str) -> Value {
        Value {
            name: self.g.relu(&x.name, &format!("{stem}/relu")),
            shape: x.shape.clone(),
        }
    }

    fn relu6(&mut self, x: &Value, stem: &str) -> Value {
        Value {
            name: self.g.relu6(&x.name, &format!("{stem}/relu6")),
            shape: x.shape.clone(),
        }
    }

    fn max_pool_3x3_s2(
        &mut self,
        x: &Value,
        padding: i64,
        stem: &str,
    ) -> Result<Value, ExportError> {
        let [c, h, w] = x.shape[..] else {
            return Err(ExportError::Invalid(format!(
                "{stem}: max-pool of a non-map {:?}",
                x.shape
            )));
        };
        let window = Window {
            kernel: 3,
            stride: 2,
            padding,
        };
        let oh = self.out_side(h, window, stem)?;
        let ow = self.out_side(w, window, stem)?;
        Ok(Value {
            name: self.g.max_pool(&x.name, window, &format!("{stem}/maxpool")),
            shape: vec![c, oh, ow],
        })
    }

    fn add(&mut self, a: &Value, b: &Value, stem: &str) -> Result<Value, ExportError> {
        if a.shape != b.shape {
            return Err(ExportError::Invalid(format!(
                "{stem}: residual shapes differ, {:?} vs {:?}",
                a.shape, b.shape
            )));
        }
        Ok(Value {
            name: self.g.add(&a.name, &b.name, &format!("{stem}/add")),
            shape: a.shape.clone(),
        })
    }

    /// `adaptive_avg_pool2d(x, (1, 1)).flatten(1)`.
    fn global_pool_flat(&mut self, x: &Value, stem: &str) -> Value {
        let pooled = self.g.global_avg_pool(&x.name, &format!("{stem}/gap"));
        Value {
            name: self.g.flatten(&pooled, &format!("{stem}/flatten")),
            shape: vec![x.shape[0]],
        }
    }

    /// torch's Linear `prefix` on a vector.
    fn linear(&mut self, x: &Value, prefix: &str) -> Result<Value, ExportError> {
        let (wshape, w) = self.w.get(&format!("{prefix}.weight"))?;
        let (_, b) = self.w.get(&format!("{prefix}.bias"))?;
        let (&[out, inp], &[d]) = (&wshape[..], &x.shape[..]) else {
            return Err(ExportError::Invalid(format!(
                "{prefix}: weight {wshape:?} on input {:?}",
                x.shape
            )));
        };
        if inp != d {
            return Err(ExportError::Invalid(format!(
                "{prefix}: weight {wshape:?} expects {inp} features, the graph gives {d}"
            )));
        }
        let wn = self.g.constant(&format!("{prefix}.weight"), &wshape, &w);
        let bn = self.g.constant(&format!("{prefix}.bias"), &[out], &b);
        Ok(Value {
            name: self.g.linear(&x.name, &wn, &bn, &format!("{prefix}/gemm")),
            shape: vec![out],
        })
    }

    fn alexnet(&mut self, x: Value, taps: &mut Taps) -> Result<(), ExportError> {
        // (conv index, kernel-independent stride, padding, max-pool after, tap)
        let convs: [(usize, i64, i64, bool, &str); 5] = [
            (0, 4, 2, true, "features.2"),
            (3, 1, 2, true, "features.5"),
            (6, 1, 1, false, "features.7"),
            (8, 1, 1, false, "features.9"),
            (10, 1, 1, true, "features.12"),
        ];
        let mut h = x;
        for (i, stride, pad, pool, tap) in convs {
            let prefix = format!("features.{i}");
            h = self.conv(&h, &prefix, None, (stride, pad))?;
            h = self.relu(&h, &prefix);
            if pool {
                h = self.max_pool_3x3_s2(&h, 0, tap)?;
            }
            if taps.record(tap, &h) {
                return Ok(());
            }
        }
        // The adaptive 6x6 pool that lets any input size reach the 9216-wide fc.
        h = adaptive_avg_pool(self.g, &h, 6, "avgpool")?;
        h = flatten(self.g, &h, "avgpool");
        for (i, tap) in [(1, "classifier.2"), (4, "classifier.5")] {
            let prefix = format!("classifier.{i}");
            h = self.linear(&h, &prefix)?;
            h = self.relu(&h, &prefix);
            if taps.record(tap, &h) {
                return Ok(());
            }
        }
        h = self.linear(&h, "classifier.6")?;
        taps.record("classifier.6", &h);
        Ok(())
    }

    fn mobilenet_v2(&mut self, x: Value, taps: &mut Taps) -> Result<(), ExportError> {
        let mut h = self.conv(&x, "features.0.0", Some("features.0.1"), (2, 1))?;
        h = self.relu6(&h, "features.0");
        let mut index = 1;
        for (t, c, n, s, tap) in MOBILENET_V2_GROUPS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let block = InvertedResidual {
                    index,
                    expansion: t,
                    c_out: c,
                    stride,
                };
                h = self.inverted_residual(&h, block)?;
                index += 1;
            }
            if taps.record(tap, &h) {
                return Ok(());
            }
        }
        let p = format!("features.{index}");
        h = self.conv(&h, &format!("{p}.0"), Some(&format!("{p}.1")), (1, 0))?;
        h = self.relu6(&h, &p);
        if taps.record("features.18", &h) {
            return Ok(());
        }
        h = self.global_pool_flat(&h, "avgpool");
        if taps.record("avgpool", &h) {
            return Ok(());
        }
        h = self.linear(&h, "classifier.1")?;
        taps.record("classifier.1", &h);
        Ok(())
    }

    /// torchvision's `InvertedResidual` at `features.{index}`.
    fn inverted_residual(
        &mut self,
        x: &Value,
        block: InvertedResidual,
    ) -> Result<Value, ExportError> {
        let InvertedResidual {
            index,
            expansion,
            c_out,
            stride,
        } = block;
        let p = format!("features.{index}.conv");
        let mut j = 0;
        let mut h = x.clone();
        if expansion != 1 {
            h = self.conv(&h, &format!("{p}.0.0"), Some(&format!("{p}.0.1")), (1, 0))?;
            h = self.relu6(&h, &format!("{p}.0"));
            j = 1;
        }
        h = self.conv(
            &h,
            &format!("{p}.{j}.0"),
            Some(&format!("{p}.{j}.1")),
            (stride, 1),
        )?;
        h = self.relu6(&h, &format!("{p}.{j}"));
        h = self.conv(
            &h,
            &format!("{p}.{}", j + 1),
            Some(&format!("{p}.{}", j + 2)),
            (1, 0),
        )?;
        if stride == 1 && x.shape[0] == c_out {
            h = self.add(x, &h, &format!("features.{index}"))?;
        }
        Ok(h)
    }

    fn resnet(&mut self, x: Value, taps: &mut Taps) -> Result<(), ExportError> {
        let mut h = self.conv(&x, "conv1", Some("bn1"), (2, 3))?;
        h = self.relu(&h, "conv1");
        h = self.max_pool_3x3_s2(&h, 1, "maxpool")?;
        for (li, layer) in ["layer1", "layer2", "layer3", "layer4"]
            .into_iter()
            .enumerate()
        {
            let mut b = 0;
            // Blocks are found by name, so one walk serves basic blocks (ResNet-18) and
            // bottlenecks (ResNet-50) at any depth.
            while self.w.has(&format!("{layer}.{b}.conv1.weight")) {
                let stride = if li > 0 && b == 0 { 2 } else { 1 };
                h = self.resnet_block(&h, &format!("{layer}.{b}"), stride)?;
                b += 1;
            }
            if b == 0 {
                return Err(ExportError::Invalid(format!(
                    "{} has no {layer}.0.conv1.weight",
                    self.w.arch
                )));
            }
            if taps.record(layer, &h) {
                return Ok(());
            }
        }
        h = self.global_pool_flat(&h, "avgpool");
        if taps.record("avgpool", &h) {
            return Ok(());
        }
        h = self.linear(&h, "fc")?;
        taps.record("fc", &h);
        Ok(())
    }

    /// A basic block (conv1, conv2) or a bottleneck (conv1..conv3, stride on conv2:
    /// torchvision's v1.5), plus the identity or its 1x1 downsample, then ReLU.
    fn resnet_block(&mut self, x: &Value, p: &str, stride: i64) -> Result<Value, ExportError> {
        let bottleneck = self.w.has(&format!("{p}.conv3.weight"));
        let mut h;
        if bottleneck {
            h = self.conv(x, &format!("{p}.conv1"), Some(&format!("{p}.bn1")), (1, 0))?;
            h = self.relu(&h, &format!("{p}.conv1"));
            h = self.conv(
                &h,
                &format!("{p}.conv2"),
                Some(&format!("{p}.bn2")),
                (stride, 1),
            )?;
            h = self.relu(&h, &format!("{p}.conv2"));
            h = self.conv(&h, &format!("{p}.conv3"), Some(&format!("{p}.bn3")), (1, 0))?;
        } else {
            h = self.conv(
                x,
                &format!("{p}.conv1"),
                Some(&format!("{p}.bn1")),
                (stride, 1),
            )?;
            h = self.relu(&h, &format!("{p}.conv1"));
            h = self.conv(&h, &format!("{p}.conv2"), Some(&format!("{p}.bn2")), (1, 1))?;
        }
        let identity = if self.w.has(&format!("{p}.downsample.0.weight")) {
            self.conv(
                x,
                &format!("{p}.downsample.0"),
                Some(&format!("{p}.downsample.1")),
                (stride, 0),
            )?
        } else {
            x.clone()
        };
        let sum = self.add(&h, &identity, p)?;
        Ok(self.relu(&sum, p))
    }
}

/// Emits `backbone` on `input` ([C, H, W] = [3, S, S], ImageNet-normalized) as far as
/// the deepest of `taps`; returns each tap's value. Unknown taps are refused with the
/// list of valid ones.
pub fn emit(
    g: &mut GraphBuilder,
    backbone: &Backbone,
    input: Value,
    taps: &[&str],
) -> Result<BTreeMap<String, Value>, ExportError> {
    for t in taps {
        backbone.tap_index(t)?;
    }
    let mut sink = Taps {
        wanted: taps.iter().map(|t| t.to_string()).collect(),
        got: BTreeMap::new(),
    };
    if sink.wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let input_size = input.shape.get(1).copied().unwrap_or(0);
    let mut e = Emitter {
        g,
        w: Weights::new(backbone),
        input_size,
    };
    match backbone.arch() {
        Arch::AlexNet => e.alexnet(input, &mut sink)?,
        Arch::MobileNetV2 => e.mobilenet_v2(input, &mut sink)?,
        Arch::ResNet18 | Arch::ResNet50 => e.resnet(input, &mut sink)?,
    }
    if let Some(missing) = sink.wanted.iter().find(|t| !sink.got.contains_key(*t)) {
        return Err(ExportError::Invalid(format!(
            "the {} walk never reached tap {missing}",
            backbone.arch()
        )));
    }
    Ok(sink.got)
}

/// Bins of torch's adaptive pooling of `input` cells into `out`: [floor(i*in/out),
/// ceil((i+1)*in/out)).
fn adaptive_bins(input: i64, out: i64) -> Vec<(i64, i64)> {
    (0..out)
        .map(|i| ((i * input) / out, ((i + 1) * input + out - 1) / out))
        .collect()
}

/// `adaptive_avg_pool2d(x, (grid, grid))` for a map of known size, exactly: identity
/// when the map already is grid x grid, GlobalAveragePool for 1 x 1, AveragePool when
/// the grid divides the map, otherwise two MatMuls with the bins' averaging matrices
/// (the pool is separable: each output cell averages a rectangle of rows x columns).
pub fn adaptive_avg_pool(
    g: &mut GraphBuilder,
    x: &Value,
    grid: i64,
    stem: &str,
) -> Result<Value, ExportError> {
    let [c, h, w] = x.shape[..] else {
        return Err(ExportError::Invalid(format!(
            "{stem}: adaptive pooling needs a [C, H, W] map, got {:?}",
            x.shape
        )));
    };
    if grid < 1 || h < 1 || w < 1 {
        return Err(ExportError::Invalid(format!(
            "{stem}: cannot pool a {h}x{w} map to {grid}x{grid}"
        )));
    }
    if h == grid && w == grid {
        return Ok(x.clone());
    }
    let shape = vec![c, grid, grid];
    let name = if grid == 1 {
        g.global_avg_pool(&x.name, &format!("{stem}/gap"))
    } else if h % grid == 0 && w % grid == 0 {
        g.avg_pool(&x.name, h / grid, w / grid, &format!("{stem}/avgpool"))
    } else {
        // Columns: [.., W] x [W, grid]; rows: [grid, H] x [.., H, grid].
        let mut pw = vec![0f32; (w * grid) as usize];
        for (j, (s, e)) in adaptive_bins(w, grid).into_iter().enumerate() {
            for col in s..e {
                pw[col as usize * grid as usize + j] = 1.0 / (e - s) as f32;
            }
        }
        let mut ph = vec![0f32; (grid * h) as usize];
        for (i, (s, e)) in adaptive_bins(h, grid).into_iter().enumerate() {
            for row in s..e {
                ph[i * h as usize + row as usize] = 1.0 / (e - s) as f32;
            }
        }
        let pw = g.constant(&format!("{stem}/pool_columns"), &[w, grid], &pw);
        let ph = g.constant(&format!("{stem}/pool_rows"), &[grid, h], &ph);
        let cols = g.matmul(&x.name, &pw, &format!("{stem}/pool_w"));
        g.matmul(&ph, &cols, &format!("{stem}/pool_h"))
    };
    Ok(Value { name, shape })
}

/// [C, H, W] -> [C*H*W] (vectors pass through).
pub fn flatten(g: &mut GraphBuilder, x: &Value, stem: &str) -> Value {
    if x.shape.len() <= 1 {
        return x.clone();
    }
    Value {
        name: g.flatten(&x.name, &format!("{stem}/flatten")),
        shape: vec![x.numel()],
    }
}

/// A tap's features as `features.rs` makes them: optional adaptive pooling, flatten.
pub fn pool_and_flatten(
    g: &mut GraphBuilder,
    x: &Value,
    pooling: Pooling,
    stem: &str,
) -> Result<Value, ExportError> {
    let pooled = match pooling {
        Pooling::None => x.clone(),
        Pooling::AdaptiveAvg { grid } => adaptive_avg_pool(g, x, grid, stem)?,
    };
    Ok(flatten(g, &pooled, stem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_match_torch() {
        // torch: adaptive pooling of 3 cells to 6 repeats each cell twice.
        assert_eq!(
            adaptive_bins(3, 6),
            vec![(0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3)]
        );
        // 5 -> 3: [0,2) [1,4) [3,5)
        assert_eq!(adaptive_bins(5, 3), vec![(0, 2), (1, 4), (3, 5)]);
        assert_eq!(adaptive_bins(8, 4), vec![(0, 2), (2, 4), (4, 6), (6, 8)]);
    }
}
