//! A fit's run directory as export reads it: the record, the encoders, the backbone
//! they were fitted on (checked by hash), grouped into the bundles that become models.
//! Untuned runs share one backbone across all ROIs, so each (subject, hemisphere)
//! becomes one bundle with every ROI's voxels side by side; runs of tuned backbones
//! (CL, regression, pooled) become one model per ROI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::Device;

use super::error::ExportError;
use super::model::{EncoderSet, Readout, RoiHead, TapProjection};
use crate::features::backbones::Backbone;
use crate::model::encoding::evaluate::Evaluation;
use crate::model::encoding::fit::FitRecord;
use crate::model::encoding::store::{self, StoredEncoder};
use vcl_contract::manifest::{self as contract, Method};
use vcl_dataset::algonauts::{Hemisphere, Subject};

/// The ROI encoders that go into one model.
#[derive(Debug)]
pub struct Bundle {
    /// Model name, e.g. `subj01-lh-untuned-mobilenet_v2` or `subj01-lh-V1-cl-alexnet`.
    pub name: String,
    pub subject: String,
    pub hemisphere: Hemisphere,
    /// Indices into `RunContents::encoders`, in output order.
    pub encoders: Vec<usize>,
    pub set: EncoderSet,
}

/// Everything of a run that export needs, checked.
pub struct RunContents {
    pub run: PathBuf,
    pub record: FitRecord,
    pub method: Method,
    pub encoders: Vec<StoredEncoder>,
    pub evaluation: Option<Evaluation>,
    /// On the CPU: the graph is read from it and the check runs there (a GPU's TF32
    /// convolutions would blur a 1e-4 comparison).
    pub backbone: Backbone,
    pub bundles: Vec<Bundle>,
}

pub(super) fn encoder_json(run: &Path, e: &StoredEncoder) -> PathBuf {
    run.join(store::encoder_rel_path(
        &e.meta.subject,
        e.meta.hemisphere,
        &e.meta.roi,
    ))
    .with_extension("json")
}

/// Reads and checks a run directory and groups its encoders into models.
pub fn load_run(run: &Path, per_roi: bool) -> Result<RunContents, ExportError> {
    if !run.is_dir() {
        return Err(ExportError::MissingRun {
            path: run.to_path_buf(),
        });
    }
    let fit_json = run.join("fit.json");
    if !fit_json.is_file() {
        return Err(ExportError::file(
            &fit_json,
            "missing: is this the --out folder of a `vcl fit`?",
        ));
    }
    let record: FitRecord = store::read_json(&fit_json)?;
    let cfg = &record.config;
    let method = cfg.method;
    let mut encoders = store::load_encoders(run)?;
    if encoders.is_empty() {
        return Err(ExportError::file(
            &run.join("encoders"),
            "holds no encoders",
        ));
    }
    let backbone = Backbone::load(cfg.arch, &cfg.weights(), Device::Cpu)?;
    let hash = backbone.weights_hash();
    for e in &encoders {
        let path = encoder_json(run, e);
        if e.meta.arch != cfg.arch {
            return Err(ExportError::file(
                &path,
                format!(
                    "arch {} but the run's backbone is {}",
                    e.meta.arch, cfg.arch
                ),
            ));
        }
        if e.meta.weights_hash != hash {
            return Err(ExportError::file(
                &path,
                format!(
                    "fitted on weights with hash {}, but {} now hashes to {hash}",
                    e.meta.weights_hash,
                    cfg.weights().display()
                ),
            ));
        }
        backbone
            .tap_index(&e.meta.tap)
            .map_err(|source| ExportError::Encoder {
                encoder: path.clone(),
                source: Box::new(source),
            })?;
    }

    // Output order: the fit's own order (its ROI list, families in release order),
    // which `fit.json`'s selections record; encoders it does not list go last.
    let rank = |e: &StoredEncoder| {
        record
            .selections
            .iter()
            .position(|s| {
                s.subject == e.meta.subject
                    && s.hemisphere == e.meta.hemisphere
                    && s.roi == e.meta.roi
            })
            .unwrap_or(usize::MAX)
    };
    encoders.sort_by_key(|e| (e.meta.subject.clone(), e.meta.hemisphere, rank(e)));

    let evaluation_path = run.join("evaluation/results.json");
    let evaluation: Option<Evaluation> = if evaluation_path.is_file() {
        Some(store::read_json(&evaluation_path)?)
    } else {
        None
    };

    let bundle_all = method == Method::Untuned && !per_roi;
    let mut groups: BTreeMap<(String, Hemisphere, usize), Vec<usize>> = BTreeMap::new();
    for (i, e) in encoders.iter().enumerate() {
        let key = if bundle_all { 0 } else { i };
        groups
            .entry((e.meta.subject.clone(), e.meta.hemisphere, key))
            .or_default()
            .push(i);
    }
    let label = store::safe_name(&cfg.label());
    let mut bundles = Vec::new();
    for ((subject, hemisphere, _), members) in groups {
        let name = if bundle_all {
            format!("{subject}-{hemisphere}-{label}-{}", cfg.arch)
        } else {
            let roi = store::safe_name(&encoders[members[0]].meta.roi);
            format!("{subject}-{hemisphere}-{roi}-{label}-{}", cfg.arch)
        };
        let set = encoder_set(run, &encoders, &members)?;
        bundles.push(Bundle {
            name,
            subject,
            hemisphere,
            encoders: members,
            set,
        });
    }
    Ok(RunContents {
        run: run.to_path_buf(),
        record,
        method,
        encoders,
        evaluation,
        backbone,
        bundles,
    })
}

/// PCA per tap (one file per subject and tap) and ridge per ROI, for `members`.
fn encoder_set(
    run: &Path,
    encoders: &[StoredEncoder],
    members: &[usize],
) -> Result<EncoderSet, ExportError> {
    let mut set = EncoderSet::default();
    let mut by_file: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for &i in members {
        let m = &encoders[i].meta;
        if let Some(layout) = &m.fields {
            set.heads.push(RoiHead {
                roi: m.roi.clone(),
                readout: Readout::Field {
                    tap: m.tap.clone(),
                    pooling: m.pooling,
                    map: layout.map,
                    field: layout.matrix(Device::Cpu),
                },
                coef: encoders[i].coef.shallow_clone(),
                intercept: encoders[i].intercept.shallow_clone(),
            });
            continue;
        }
        let projection = match by_file.get(&m.pca_file) {
            Some(&p) => {
                let proj: &TapProjection = &set.projections[p];
                if proj.tap != m.tap || proj.pooling != m.pooling {
                    return Err(ExportError::file(
                        &encoder_json(run, &encoders[i]),
                        format!(
                            "tap {} / pooling {:?} with PCA {}, which another encoder uses with \
                             tap {} / pooling {:?}",
                            m.tap,
                            m.pooling,
                            m.pca_file.display(),
                            proj.tap,
                            proj.pooling
                        ),
                    ));
                }
                p
            }
            None => {
                let pca = store::load_pca(run, &m.pca_file)?;
                set.projections.push(TapProjection {
                    tap: m.tap.clone(),
                    pooling: m.pooling,
                    mean: pca.mean,
                    components: pca.components,
                });
                by_file.insert(m.pca_file.clone(), set.projections.len() - 1);
                set.projections.len() - 1
            }
        };
        set.heads.push(RoiHead {
            roi: m.roi.clone(),
            readout: Readout::Ridge { projection },
            coef: encoders[i].coef.shallow_clone(),
            intercept: encoders[i].intercept.shallow_clone(),
        });
    }
    Ok(set)
}

/// SHA-256 over what a model's training data was: the subject, the hemisphere's fMRI
/// file (its bytes) and the training images' names and sizes in row order. Image
/// contents are left out: hashing every image would cost more than the export.
pub fn dataset_fingerprint(subject: &Subject, h: Hemisphere) -> Result<String, ExportError> {
    let mut hasher = Sha256::new();
    hasher.update(b"vcl-dataset-fingerprint-v1\0");
    hasher.update(subject.name.as_bytes());
    hasher.update([0u8]);
    hasher.update(h.prefix().as_bytes());
    contract::hash_file(&mut hasher, &subject.layout.fmri(h))?;
    for e in &subject.train_images {
        let len = std::fs::metadata(&e.path)
            .map_err(|err| ExportError::file(&e.path, err))?
            .len();
        let name = e.path.file_name().map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        hasher.update(len.to_le_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}
