//! A fit run's ROI encoders as differentiable functions of the image: backbone up to
//! the encoder's tap, the fit's pooling, PCA and ridge, then the mean over the ROI's
//! voxels. The same arithmetic as `encoding::evaluate` and the export's libtorch check,
//! kept in the graph so that gradients reach the pixels.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::features::backbones::Backbone;
use crate::features::images;
use crate::features::Pooling;
use crate::model::encoding::error::EncodingError;
use crate::model::encoding::fit::{self, FitRecord};
use crate::model::encoding::store::{self, EncoderMeta, StoredPca};
use crate::model::fwrf;
use crate::Result;
use vcl_dataset::algonauts::Hemisphere;

/// What an ROI encoder reads off the pooled, flattened tap.
pub enum Features {
    /// PCA + ridge: the tap's PCA.
    Pca(StoredPca),
    /// fwRF: [H*W, V] the voxels' fields on the tap's pooled map, which holds `dim`
    /// values per image.
    Fields { matrix: Tensor, dim: i64 },
}

/// One ROI encoder with what it reads.
pub struct RoiEncoder {
    pub meta: EncoderMeta,
    pub features: Features,
    /// [k, V]
    pub coef: Tensor,
    /// [V]
    pub intercept: Tensor,
}

impl RoiEncoder {
    /// `subj01 lh V1v`: how reports name the model.
    pub fn label(&self) -> String {
        format!(
            "{} {} {}",
            self.meta.subject,
            self.meta.hemisphere.prefix(),
            self.meta.roi
        )
    }
}

/// A fit run's backbone (one per run) and its encoders, on one device.
pub struct FitModels {
    pub record: FitRecord,
    pub backbone: Backbone,
    pub encoders: Vec<RoiEncoder>,
}

impl FitModels {
    /// Loads the encoders of `run` whose subject, hemisphere and ROI `keep` accepts.
    pub fn load(
        run: &Path,
        device: Device,
        keep: impl Fn(&str, Hemisphere, &str) -> bool,
    ) -> Result<Self> {
        let fit_json = run.join("fit.json");
        if !fit_json.is_file() {
            return Err(EncodingError::file(
                &fit_json,
                "missing: is this the --out folder of a `vcl fit`?",
            )
            .into());
        }
        let record: FitRecord = store::read_json(&fit_json)?;
        let backbone = fit::load_backbone(&record.config, device)?;
        let hash = backbone.weights_hash();
        let mut encoders = Vec::new();
        for e in store::load_encoders(run)? {
            let m = &e.meta;
            if !keep(&m.subject, m.hemisphere, &m.roi) {
                continue;
            }
            if m.weights_hash != hash {
                return Err(EncodingError::file(
                    &record.config.weights(),
                    format!(
                        "these weights are not the ones encoder {} {} {} was fitted with",
                        m.subject,
                        m.hemisphere.prefix(),
                        m.roi
                    ),
                )
                .into());
            }
            let features = match &m.fields {
                Some(layout) => Features::Fields {
                    matrix: layout.matrix(device),
                    dim: layout.map.iter().product(),
                },
                None => {
                    let pca = store::load_pca(run, &m.pca_file)?;
                    Features::Pca(StoredPca {
                        mean: pca.mean.to_device(device),
                        components: pca.components.to_device(device),
                    })
                }
            };
            encoders.push(RoiEncoder {
                features,
                coef: e.coef.to_device(device),
                intercept: e.intercept.to_device(device),
                meta: e.meta,
            });
        }
        Ok(FitModels {
            record,
            backbone,
            encoders,
        })
    }

    /// The ROI's mean predicted response [N] to unit-range images x [N, 3, S, S], and,
    /// when `layer` names a tap, that tap's output in the same graph (for Grad-CAM).
    /// Batch-norm uses running statistics (evaluation mode), as at fit time.
    pub fn roi_response(
        &self,
        e: &RoiEncoder,
        x_unit: &Tensor,
        layer: Option<&str>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let x = images::normalize(x_unit);
        let mut taps = vec![e.meta.tap.as_str()];
        taps.extend(layer);
        let mut outs = self.backbone.taps(&x, &taps, false)?.into_iter();
        let out = outs
            .next()
            .ok_or_else(|| EncodingError::Invalid(format!("no output at tap {}", e.meta.tap)))?;
        let pooled = match e.meta.pooling {
            Pooling::None => out,
            Pooling::AdaptiveAvg { grid } => out.adaptive_avg_pool2d([grid, grid]),
        };
        let flat = pooled.flatten(1, -1);
        let expected = match &e.features {
            Features::Pca(pca) => pca.mean.size()[0],
            Features::Fields { dim, .. } => *dim,
        };
        if flat.size()[1] != expected {
            return Err(EncodingError::Invalid(format!(
                "{}: the encoder expects {expected} features, tap {} gives {} at {} px",
                e.label(),
                e.meta.tap,
                flat.size()[1],
                x_unit.size().last().copied().unwrap_or(0)
            ))
            .into());
        }
        let y = match &e.features {
            Features::Pca(pca) => {
                (flat - &pca.mean).matmul(&pca.components).matmul(&e.coef) + &e.intercept
            }
            Features::Fields { matrix, .. } => fwrf::predict(&flat, matrix, &e.coef, &e.intercept),
        };
        Ok((y.mean_dim(1, false, Kind::Float), outs.next()))
    }
}
