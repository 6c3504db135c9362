//! What the heads read of images, and the held-out validation pass (loss and the MI
//! bound) after each epoch.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{Heads, Trainer};
use crate::features::backbones::{Backbone, IMAGENET_CLASSES};
use crate::model::finetune::contrastive::{info_nce, mi_lower_bound};
use crate::model::finetune::{FinetuneConfig, FinetuneError, ImageReadout, ImageShape};

/// What the heads read: the logits (`tap` None, the paper) or a tap, averaged over
/// space or kept whole for a spatial readout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageInput<'a> {
    pub tap: Option<&'a str>,
    pub spatial: bool,
}

impl<'a> ImageInput<'a> {
    pub fn of(cfg: &'a FinetuneConfig) -> Self {
        ImageInput {
            tap: cfg.image_tap.as_deref(),
            spatial: cfg.image_readout == ImageReadout::Spatial,
        }
    }

    /// A tap averaged over space (or the logits): the probe's features.
    pub fn mean(tap: Option<&'a str>) -> Self {
        ImageInput {
            tap,
            spatial: false,
        }
    }
}

/// What the heads read of ImageNet-normalized images x [B, 3, S, S]: the logits (the
/// paper), or the output of the tap with conv maps [B, C, H, W] averaged over space to
/// [B, C], so that the heads' width does not depend on the input size, or flattened
/// whole to [B, C*H*W] for a spatial readout. The one place every pass (training,
/// GradCache, validation) gets its features, so that they agree.
pub(crate) fn image_features(
    backbone: &Backbone,
    x: &Tensor,
    input: ImageInput,
    train: bool,
) -> Result<Tensor, FinetuneError> {
    let Some(tap) = input.tap else {
        return Ok(backbone.logits(x, train));
    };
    let out = backbone
        .taps(x, &[tap], train)?
        .pop()
        .ok_or_else(|| FinetuneError::Config(format!("image_tap: {tap} gave no output")))?;
    Ok(match out.dim() {
        4 if input.spatial => out.flatten(1, -1),
        4 => out.mean_dim([2i64, 3].as_slice(), false, None),
        2 if input.spatial => {
            return Err(FinetuneError::Config(format!(
                "image_readout spatial: tap {tap} gives a vector per image; choose a conv tap"
            )))
        }
        2 => out,
        _ => out.flatten(1, -1),
    })
}

/// The shape of [`image_features`]: the heads' input. A tap's is read off one blank
/// image in evaluation mode, which leaves batch-norm statistics untouched.
pub(crate) fn image_width(
    backbone: &Backbone,
    input: ImageInput,
    input_size: u32,
    device: Device,
) -> Result<ImageShape, FinetuneError> {
    let Some(tap) = input.tap else {
        return Ok(ImageShape {
            width: IMAGENET_CLASSES,
            spatial_channels: None,
        });
    };
    let s = i64::from(input_size);
    let x = Tensor::zeros([1, 3, s, s], (Kind::Float, device));
    let bad = |shape: Vec<i64>| {
        FinetuneError::Config(format!("image_tap: {tap} gave features of shape {shape:?}"))
    };
    let f = tch::no_grad(|| image_features(backbone, &x, input, false))?;
    let width = f.size().get(1).copied().ok_or_else(|| bad(f.size()))?;
    let spatial_channels = if input.spatial {
        let out = tch::no_grad(|| backbone.taps(&x, &[tap], false))?;
        let shape = out.first().map(|o| o.size()).unwrap_or_default();
        Some(*shape.get(1).ok_or_else(|| bad(shape.clone()))?)
    } else {
        None
    };
    Ok(ImageShape {
        width,
        spatial_channels,
    })
}

impl Trainer<'_> {
    /// Validation loss and (CL) MI lower bound, mean over subjects with a validation
    /// part; the model in evaluation mode (running batch-norm statistics, no dropout).
    pub(super) fn validate(
        &mut self,
        epoch: usize,
        last_good: Option<&Path>,
    ) -> Result<(Option<f64>, Option<f64>), FinetuneError> {
        let cfg = self.cfg;
        let device = self.opts.device;
        let precision = self.precision;
        let tap = ImageInput::of(cfg);
        let (mut losses, mut mis) = (Vec::new(), Vec::new());
        for si in 0..self.data.len() {
            if self.data[si].val.is_empty() {
                continue;
            }
            self.data[si].pixels(cfg.input_size, self.opts.cache_dir)?;
            let sd = &self.data[si];
            let px = sd
                .loaded_pixels()
                .ok_or_else(|| FinetuneError::Config("pixels not loaded".into()))?;
            let (backbone, heads) = (&self.backbone, &self.heads);
            let (loss, mi) = tch::no_grad(|| {
                precision.autocast(|| {
                    let features = sd
                        .val
                        .chunks(cfg.eval_batch_size)
                        .map(|rows| {
                            image_features(backbone, &px.batch(rows, device)?, tap, false)
                                .map(|f| f.to_kind(Kind::Float))
                        })
                        .collect::<Result<Vec<Tensor>, FinetuneError>>()?;
                    let features = Tensor::cat(&features, 0);
                    let y = sd.responses(&sd.val, device);
                    Ok::<_, FinetuneError>(match heads {
                        Heads::Cl(h) => {
                            let z_img = h.embed_images(&features, false);
                            let z_fmri = h.embed_fmri(si, &y, false);
                            let tau = h.tau();
                            let loss =
                                info_nce(&z_fmri, &z_img, &tau.to_device(device), h.symmetric())
                                    .double_value(&[]);
                            (loss, Some(mi_lower_bound(&z_fmri, &z_img, h.tau_value())))
                        }
                        Heads::Regression(h) => (h.loss(&features, si, &y).double_value(&[]), None),
                    })
                })
            })?;
            if !loss.is_finite() {
                let place = format!("validation of {}", sd.info.subject);
                return Err(FinetuneError::NonFinite {
                    what: "validation",
                    value: loss,
                    epoch,
                    place,
                    batch: None,
                    last_good: last_good.map(Path::to_path_buf),
                });
            }
            losses.push(loss);
            mis.extend(mi);
            if !self.resident_pixels {
                self.data[si].release_pixels();
            }
        }
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Ok((mean(&losses), mean(&mis)))
    }
}
