//! The check every model passes before it is published: ONNX Runtime's answer on
//! held-out images against libtorch's.

use std::path::Path;

use tch::{Kind, Tensor};

use super::error::ExportError;
use super::model::{self, Comparison};
use super::publish::ExportOptions;
use vcl_contract::manifest as contract;
use vcl_contract::runtime::{self, DeviceChoice, Runtime};

/// A model file to check, the images it runs on and libtorch's answer on them.
pub struct OrtCheck<'a> {
    pub model: &'a Path,
    /// How errors name the model.
    pub name: &'a str,
    pub images: &'a Tensor,
    pub reference: &'a model::Prediction,
}

/// Runs the model with ONNX Runtime on the check's images and compares with libtorch's
/// reference; fails naming the worst element when the relative difference exceeds
/// `opts.tolerance`.
pub fn verify_with_ort(
    rt: &Runtime,
    check: &OrtCheck,
    opts: &ExportOptions,
) -> Result<Comparison, ExportError> {
    let OrtCheck {
        model,
        name,
        images,
        reference,
    } = *check;
    let (mut session, _) = rt.session(model, DeviceChoice::Cpu, opts.threads)?;
    let shape: Vec<usize> = images.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(&images.to_kind(Kind::Float).contiguous().view([-1])).map_err(
        |e| ExportError::Tch {
            what: "copying check images".into(),
            source: e,
        },
    )?;
    let outs = runtime::run_f32_all(&mut session, &shape, data)?;
    let get = |n: &str| {
        outs.iter().find(|o| o.name == n).ok_or_else(|| {
            ExportError::file(model, format!("ONNX Runtime returned no output '{n}'"))
        })
    };
    let (ov, om) = (
        get(contract::VOXELS_OUTPUT)?,
        get(contract::ROI_MEANS_OUTPUT)?,
    );
    let tv = tensor_values(&reference.voxels)?;
    let tm = tensor_values(&reference.roi_means)?;
    let (v, r) = (reference.voxels.size()[1], reference.roi_means.size()[1]);
    for (o, want) in [(ov, &reference.voxels), (om, &reference.roi_means)] {
        if o.shape != want.size() {
            return Err(ExportError::file(
                model,
                format!(
                    "output {} has shape {:?}, libtorch gives {:?}",
                    o.name,
                    o.shape,
                    want.size()
                ),
            ));
        }
    }
    let c = model::compare(&[(&ov.values, &tv, v as usize), (&om.values, &tm, r as usize)]);
    if c.max_rel > opts.tolerance || !c.max_rel.is_finite() {
        let w = c
            .worst
            .ok_or_else(|| ExportError::Invalid("empty outputs".into()))?;
        return Err(ExportError::Mismatch {
            model: name.to_string(),
            output: [contract::VOXELS_OUTPUT, contract::ROI_MEANS_OUTPUT][w.output].to_string(),
            row: w.row,
            col: w.col,
            ort: w.ort,
            torch: w.torch,
            rel: w.rel,
            tolerance: opts.tolerance,
        });
    }
    Ok(c)
}

fn tensor_values(t: &Tensor) -> Result<Vec<f32>, ExportError> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float).contiguous().view([-1])).map_err(|e| {
        ExportError::Tch {
            what: "copying libtorch predictions".into(),
            source: e,
        }
    })
}
