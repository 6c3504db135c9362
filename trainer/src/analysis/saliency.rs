//! Where an ROI model looks: the gradient of its mean predicted response with respect
//! to the pixels (absolute, summed over colour channels); Grad-CAM (Selvaraju et al.
//! 2017) at a convolutional layer: the layer's channels weighted by their mean
//! gradient, rectified, upsampled to the image; and HiResCAM (Draelos & Carin 2020):
//! gradient times activation, position by position, summed over channels, rectified.
//!
//! Why both CAMs: an encoder reads its tap through ridge weights that differ from one
//! position of the map to the next (a receptive field). Grad-CAM averages the gradient
//! over positions before weighting the activations, which throws that spatial weighting
//! away: its map follows where the activations are strong (image content), not where
//! the model reads. HiResCAM keeps the position-wise gradient and so shows the
//! receptive field; on the in-silico brain, where the fields are known, it does.

use std::path::Path;

use image::{Rgb, RgbImage};
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
use tch::{Kind, Tensor};

use super::roi_model::{FitModels, RoiEncoder};
use crate::model::encoding::error::EncodingError;
use crate::Result;

/// Non-negative saliency maps, float32 [N, S, S] each.
pub struct Maps {
    pub gradient: Tensor,
    pub gradcam: Tensor,
    pub hirescam: Tensor,
    /// The layer Grad-CAM read.
    pub layer: String,
}

/// The Grad-CAM layer for `e`: `wanted`, or else the encoder's own tap when it is a
/// convolutional map, else the deepest convolutional tap before it. Grad-CAM needs a
/// spatial map the response depends on, so a layer after the tap, or one whose output
/// is a vector (pooling, classifier), is refused.
pub fn gradcam_layer(models: &FitModels, e: &RoiEncoder, wanted: Option<&str>) -> Result<String> {
    let b = &models.backbone;
    let tap_at = b.tap_index(&e.meta.tap)?;
    let size = e.meta.input_size as i64;
    let probe = Tensor::zeros([1, 3, size, size], (Kind::Float, b.device()));
    let is_map = |t: &str| -> Result<bool> {
        let out = tch::no_grad(|| b.taps(&probe, &[t], false))?;
        Ok(out.first().is_some_and(|o| o.dim() == 4))
    };
    if let Some(w) = wanted {
        if b.tap_index(w)? > tap_at {
            return Err(EncodingError::Invalid(format!(
                "Grad-CAM layer {w} comes after {}'s tap {}: the response does not depend on it",
                e.label(),
                e.meta.tap
            ))
            .into());
        }
        if !is_map(w)? {
            return Err(EncodingError::Invalid(format!(
                "Grad-CAM layer {w} is not a convolutional map (pick one of the features.* taps)"
            ))
            .into());
        }
        return Ok(w.to_string());
    }
    let taps = b.arch().taps();
    for t in taps[..=tap_at].iter().rev() {
        if is_map(t)? {
            return Ok(t.to_string());
        }
    }
    Err(EncodingError::Invalid(format!(
        "{}: no convolutional tap at or before {}",
        e.label(),
        e.meta.tap
    ))
    .into())
}

/// Gradient and Grad-CAM maps of `e` on unit-range images x [N, 3, S, S].
pub fn maps(models: &FitModels, e: &RoiEncoder, x_unit: &Tensor, layer: &str) -> Result<Maps> {
    let x = x_unit.detach().set_requires_grad(true);
    let (y, act) = models.roi_response(e, &x, Some(layer))?;
    let act = act.ok_or_else(|| EncodingError::Invalid(format!("no output at layer {layer}")))?;
    // Each image's response depends on that image only (evaluation-mode batch-norm),
    // so the gradient of the sum is every image's own gradient.
    let grads = Tensor::run_backward(&[y.sum(Kind::Float)], &[&x, &act], false, false);
    let (gx, ga) = (&grads[0], &grads[1]);
    let gradient = gx.abs().sum_dim_intlist(1, false, Kind::Float);
    let act = act.detach();
    let s = x_unit.size();
    let to_image = |cam: Tensor| {
        cam.sum_dim_intlist(1, true, Kind::Float)
            .relu()
            .upsample_bilinear2d([s[2], s[3]], false, None, None)
            .squeeze_dim(1)
    };
    let weights = ga.mean_dim([2i64, 3].as_slice(), true, Kind::Float);
    let gradcam = to_image(weights * &act);
    let hirescam = to_image(ga * &act);
    Ok(Maps {
        gradient: gradient.detach(),
        gradcam: gradcam.detach(),
        hirescam: hirescam.detach(),
        layer: layer.to_string(),
    })
}

/// One row per image: the image, then its gradient, Grad-CAM and HiResCAM maps, each
/// overlaid on the image (viridis, normalized per map), scaled up to at least 128 px.
pub fn write_overlays(path: &Path, x_unit: &Tensor, maps: &Maps, n: usize) -> Result<()> {
    let size = x_unit.size();
    let (count, s) = ((size[0] as usize).min(n), size[2] as usize);
    let scale = (128 / s).max(1);
    let cell = s * scale;
    let pad = 4;
    let width = 4 * cell + 5 * pad;
    let height = count * cell + (count + 1) * pad;
    let mut out = RgbImage::from_pixel(width as u32, height.max(1) as u32, Rgb([255, 255, 255]));
    let x = x_unit.to_device(tch::Device::Cpu).to_kind(Kind::Float);
    let values = |t: &Tensor| -> Vec<f32> {
        Vec::<f32>::try_from(
            t.to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .flatten(0, -1),
        )
        .unwrap_or_default()
    };
    // Pixel gradients are speckled: a box blur (about 1/16 of the side) shows where
    // they concentrate. Display only; the indices use the raw map.
    let k = ((s / 16) | 1).max(3) as i64;
    let blurred = maps
        .gradient
        .unsqueeze(1)
        .avg_pool2d([k, k], [1, 1], [k / 2, k / 2], false, true, None::<i64>)
        .squeeze_dim(1);
    for i in 0..count {
        let img = values(&x.get(i as i64));
        let grad = values(&blurred.get(i as i64));
        let cam = values(&maps.gradcam.get(i as i64));
        let hires = values(&maps.hirescam.get(i as i64));
        if img.len() != 3 * s * s || [&grad, &cam, &hires].iter().any(|m| m.len() != s * s) {
            return Err(EncodingError::Invalid("saliency map sizes".into()).into());
        }
        // Scaled to the 99th percentile so that one hot pixel does not dim the rest.
        let norm = |m: &[f32]| {
            let mut sorted = m.to_vec();
            sorted.sort_by(f32::total_cmp);
            let hi = sorted[(sorted.len() - 1) * 99 / 100];
            let hi = if hi > 0.0 { hi } else { 1.0 };
            m.iter().map(|v| (v / hi).min(1.0)).collect::<Vec<_>>()
        };
        let (grad, cam, hires) = (norm(&grad), norm(&cam), norm(&hires));
        let top = pad + i * (cell + pad);
        for (col, heat) in [None, Some(&grad), Some(&cam), Some(&hires)]
            .into_iter()
            .enumerate()
        {
            let left = pad + col * (cell + pad);
            for py in 0..cell {
                for px in 0..cell {
                    let (r, c) = (py / scale, px / scale);
                    let at = r * s + c;
                    let rgb = [img[at], img[s * s + at], img[2 * s * s + at]];
                    let pixel = match heat {
                        None => rgb.map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8),
                        Some(h) => {
                            let hc = ViridisRGB.get_color_normalized(h[at], 0.0, 1.0);
                            let grey = (rgb[0] + rgb[1] + rgb[2]) / 3.0;
                            let a = 0.35 + 0.6 * h[at];
                            [hc.0, hc.1, hc.2].map(|v| {
                                ((1.0 - a) * grey * 255.0 + a * v as f32).clamp(0.0, 255.0) as u8
                            })
                        }
                    };
                    out.put_pixel((left + px) as u32, (top + py) as u32, Rgb(pixel));
                }
            }
        }
    }
    out.save(path)
        .map_err(|e| EncodingError::file(path, format!("writing PNG: {e}")))?;
    Ok(())
}
