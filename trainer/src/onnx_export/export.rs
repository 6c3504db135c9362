//! `vcl export`: a fit's run directory -> verified models in the model repository.
//!
//! Untuned runs share one backbone across all ROIs, so each (subject, hemisphere)
//! becomes one bundle model with every ROI's voxels side by side; runs of tuned
//! backbones (CL, regression, pooled) become one model per ROI. Each model is written
//! into a hidden folder next to its final place, run through ONNX Runtime on held-out
//! images and compared with libtorch, described by its manifest, re-read through the
//! contract, and only then renamed to `exports/<name>/<version>`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::error::ExportError;
use super::graph::{IR_VERSION, OPSET};
use super::model::{self, BuiltModel, Comparison, EncoderSet, RoiHead, TapProjection};
use crate::backbones::{Arch, Backbone};
use crate::encoding::evaluate::{Evaluation, RoiResult};
use crate::encoding::fit::FitRecord;
use crate::encoding::store::{self, StoredEncoder};
use vcl_contract::manifest::{
    self as contract, AlphaSummary, BackboneSpec, Dim, InputSpec, Manifest, Method, ModelInfo,
    OutputsSpec, Provenance, RoiEvaluation, RoiSpec, TensorSpec, TrainingSpec, Verification,
    VoxelSlice,
};
use vcl_contract::repository as contract_repo;
use vcl_contract::runtime::{self, DeviceChoice, Runtime};
use vcl_dataset::algonauts::{Dataset, Hemisphere, Subject};

/// How to export: `vcl export`'s flags besides the runs and the repository.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportOptions {
    /// Held-out images each model is checked on (ONNX Runtime against libtorch).
    #[arg(long, default_value_t = 8)]
    pub verify_images: usize,
    /// Largest relative difference accepted (see `model::compare`).
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// libonnxruntime.so to verify with (default: the venv's onnxruntime wheel).
    #[arg(long = "ort-dylib-path", env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// Commit recorded as provenance (default: asks git about the current directory).
    #[arg(long)]
    pub git_commit: Option<String>,
    /// One model per ROI even where ROIs could share a backbone in one model.
    #[arg(long)]
    pub per_roi: bool,
    /// ONNX Runtime intra-op threads for the check (0: ORT decides).
    #[arg(long = "verify-threads", default_value_t = 0)]
    pub threads: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        crate::config::from_flags(std::iter::empty::<&str>())
            .expect("the flags' own defaults parse")
    }
}

/// One published model.
#[derive(Debug, Clone)]
pub struct ExportedModel {
    pub name: String,
    pub version: u32,
    /// `exports/<name>/<version>`.
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// ONNX operator types the graph uses.
    pub op_types: Vec<String>,
    /// ONNX Runtime against libtorch on the held-out images.
    pub comparison: Comparison,
}

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

fn encoder_json(run: &Path, e: &StoredEncoder) -> PathBuf {
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
            projection,
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
    let fmri = subject.layout.fmri(h);
    let mut f = std::fs::File::open(&fmri).map_err(|e| ExportError::file(&fmri, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ExportError::file(&fmri, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
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

/// `git rev-parse HEAD` of the current directory's checkout, `+dirty` with tracked
/// changes; None outside git.
pub fn git_commit() -> Option<String> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = run(&["rev-parse", "HEAD"]).filter(|s| !s.is_empty())?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}+dirty") } else { head })
}

/// A staging folder: dropped before it is published, it removes itself, and its model
/// folder if that is left empty.
struct Staging {
    model_dir: PathBuf,
    tmp: Option<PathBuf>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(p);
        }
        contract_repo::remove_if_empty(&self.model_dir);
    }
}

/// A model written and checked in its staging folder, not yet published.
struct Staged {
    staging: Staging,
    name: String,
    manifest: Manifest,
    op_types: Vec<String>,
    comparison: Comparison,
}

fn to_u32(v: &[usize], what: &str) -> Result<Vec<u32>, ExportError> {
    v.iter()
        .map(|&i| {
            u32::try_from(i)
                .map_err(|_| ExportError::Invalid(format!("{what} index {i} exceeds u32")))
        })
        .collect()
}

/// Held-out scores of an ROI, if the run was evaluated and they are all finite (a
/// manifest stores numbers, and JSON has no NaN).
fn roi_evaluation(r: &RoiResult) -> Option<RoiEvaluation> {
    let s = &r.scores;
    let finite = |v: Option<f32>| v.filter(|x| x.is_finite());
    (s.mean_r.is_finite() && s.median_r.is_finite() && s.frac_significant.is_finite()).then(|| {
        RoiEvaluation {
            heldout_images: r.heldout_images,
            mean_r: s.mean_r,
            median_r: s.median_r,
            frac_significant: s.frac_significant,
            algonauts_mean: finite(s.algonauts_mean),
            algonauts_median: finite(s.algonauts_median),
            mean_noise_ceiling: finite(s.mean_noise_ceiling),
            mean_r_truth: finite(s.mean_r_truth),
        }
    })
}

/// What the manifest needs beyond the bundle and the built model.
struct ManifestParts<'a> {
    contents: &'a RunContents,
    bundle: &'a Bundle,
    built: &'a BuiltModel,
    comparison: &'a Comparison,
    images: usize,
    fingerprint: String,
    git_commit: Option<String>,
    model_sha256: String,
    tolerance: f64,
    runtime: String,
}

fn manifest(p: &ManifestParts) -> Result<Manifest, ExportError> {
    let cfg = &p.contents.record.config;
    let float = TensorSpec::float32;
    let mut rois = Vec::with_capacity(p.bundle.encoders.len());
    for (j, &i) in p.bundle.encoders.iter().enumerate() {
        let e = &p.contents.encoders[i];
        let m = &e.meta;
        let head = &p.bundle.set.heads[j];
        let sl = &p.built.slices[j];
        let alpha = AlphaSummary::of(m.alpha_mode, &m.alphas).ok_or_else(|| {
            ExportError::file(&encoder_json(&p.contents.run, e), "alphas is empty")
        })?;
        let evaluation = p.contents.evaluation.as_ref().and_then(|ev| {
            ev.results
                .iter()
                .find(|r| r.subject == m.subject && r.hemisphere == m.hemisphere && r.roi == m.roi)
                .and_then(roi_evaluation)
        });
        rois.push(RoiSpec {
            name: m.roi.clone(),
            slice: VoxelSlice {
                start: sl.start,
                end: sl.end,
            },
            vertices: to_u32(&m.vertices, "vertex")?,
            fsaverage: m
                .fsaverage
                .as_deref()
                .map(|f| to_u32(f, "fsaverage"))
                .transpose()?,
            tap: m.tap.clone(),
            pooling: m.pooling,
            feature_dim: p.built.feature_dims[head.projection],
            pca_components: m.pca_components,
            alpha,
            cv_score: m.cv_score,
            evaluation,
        });
    }
    let size = cfg.input_size;
    let first = &p.contents.encoders[p.bundle.encoders[0]].meta;
    Ok(Manifest {
        schema_version: contract::SCHEMA_VERSION,
        model: ModelInfo {
            name: p.bundle.name.clone(),
            // Set when the folder is published.
            version: 1,
            opset: OPSET,
            ir_version: IR_VERSION,
        },
        subject: p.bundle.subject.clone(),
        hemisphere: p.bundle.hemisphere,
        input: InputSpec::rgb_square(size),
        outputs: OutputsSpec {
            voxels: float(
                contract::VOXELS_OUTPUT,
                vec![Dim::batch(), Dim::Fixed(p.built.n_voxels() as u64)],
            ),
            roi_means: float(
                contract::ROI_MEANS_OUTPUT,
                vec![Dim::batch(), Dim::Fixed(rois.len() as u64)],
            ),
        },
        rois,
        backbone: BackboneSpec {
            arch: cfg.arch.name().into(),
            weights_hash: first.weights_hash.clone(),
            weights_file: cfg.weights().display().to_string(),
            batchnorm_folded: cfg.arch != Arch::AlexNet,
        },
        training: TrainingSpec {
            method: p.contents.method,
            method_label: cfg.label(),
            heldout_fraction: cfg.heldout_fraction,
            split_seed: cfg.split_seed,
            n_train_images: first.n_train_images,
            config: serde_json::to_value(cfg).map_err(|e| ExportError::Invalid(e.to_string()))?,
        },
        provenance: Provenance {
            git_commit: p.git_commit.clone(),
            dataset_fingerprint: p.fingerprint.clone(),
            seed: cfg.split_seed,
            run: p.contents.run.display().to_string(),
            exporter: format!("vcl {}", env!("CARGO_PKG_VERSION")),
            exported_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
        verification: Verification {
            images: p.images,
            max_abs_diff: p.comparison.max_abs,
            max_rel_diff: p.comparison.max_rel,
            tolerance: p.tolerance,
            runtime: p.runtime.clone(),
        },
        model_sha256: p.model_sha256.clone(),
    })
}

/// Runs `model` with ONNX Runtime on `images` and compares with libtorch's `reference`;
/// fails naming the worst element when the relative difference exceeds `tolerance`.
pub fn verify_with_ort(
    rt: &Runtime,
    model: &Path,
    name: &str,
    images: &Tensor,
    reference: &model::Prediction,
    opts: &ExportOptions,
) -> Result<Comparison, ExportError> {
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

/// Exports every model of `run` into the model repository `out_repo`: all of them, or
/// none (see [`export_runs`]).
pub fn export(
    run: &Path,
    out_repo: &Path,
    opts: &ExportOptions,
) -> Result<Vec<ExportedModel>, ExportError> {
    export_runs(&[run.to_path_buf()], out_repo, opts)
}

/// Exports every model of every run into `out_repo`, all or none: each model is
/// written, checked against libtorch and re-read in a staging folder first, and only
/// when every one of them is ready are they published (renamed to their version
/// numbers); should a publication fail, the versions this call published are taken
/// back out. Staging folders that exports killed earlier left behind are removed
/// first (and logged).
pub fn export_runs(
    runs: &[PathBuf],
    out_repo: &Path,
    opts: &ExportOptions,
) -> Result<Vec<ExportedModel>, ExportError> {
    let leftovers = contract_repo::clean_stale(out_repo)?;
    for p in &leftovers.removed {
        tracing::warn!(dir = %p.display(), "removed a half-written version that an interrupted export left behind");
    }
    for p in &leftovers.in_progress {
        tracing::warn!(dir = %p.display(), "another export is writing here (its process runs): left alone");
    }
    let dylib = match &opts.ort_dylib {
        Some(p) => p.clone(),
        None => runtime::default_dylib_path()?,
    };
    let rt = Runtime::shared(&dylib)?;
    let mut staged = Vec::new();
    for run in runs {
        staged.extend(stage_run(rt, run, out_repo, opts)?);
    }
    publish_all(staged)
}

/// Writes and checks every model of one run in staging folders.
fn stage_run(
    rt: &Runtime,
    run: &Path,
    out_repo: &Path,
    opts: &ExportOptions,
) -> Result<Vec<Staged>, ExportError> {
    let contents = load_run(run, opts.per_roi)?;
    let cfg = &contents.record.config;
    let runtime_name = rt
        .dylib
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let git = opts.git_commit.clone().or_else(git_commit);
    let ds = Dataset::open(&cfg.data_dir)?;
    let mut staged = Vec::with_capacity(contents.bundles.len());
    for bundle in &contents.bundles {
        let subject = ds.subject(&bundle.subject)?;
        let (rows, x) = crate::encoding::heldout_images(cfg, &subject, opts.verify_images)?;
        let built = model::build_model(&contents.backbone, cfg.input_size, &bundle.set)?;
        let reference = model::predict_libtorch(&contents.backbone, &bundle.set, &x)?;

        let model_dir = out_repo.join(&bundle.name);
        std::fs::create_dir_all(&model_dir).map_err(|e| ExportError::file(&model_dir, e))?;
        let tmp_path = model_dir.join(contract_repo::partial_name());
        let mut staging = Staging {
            model_dir: model_dir.clone(),
            tmp: None,
        };
        std::fs::create_dir(&tmp_path).map_err(|e| ExportError::file(&tmp_path, e))?;
        staging.tmp = Some(tmp_path.clone());
        let onnx = tmp_path.join(contract::MODEL_FILE);
        std::fs::write(&onnx, &built.bytes).map_err(|e| ExportError::file(&onnx, e))?;

        let comparison = verify_with_ort(rt, &onnx, &bundle.name, &x, &reference, opts)?;
        tracing::info!(
            model = %bundle.name,
            images = rows.len(),
            max_abs_diff = comparison.max_abs,
            max_rel_diff = comparison.max_rel,
            "ONNX Runtime agrees with libtorch"
        );
        let m = manifest(&ManifestParts {
            contents: &contents,
            bundle,
            built: &built,
            comparison: &comparison,
            images: rows.len(),
            fingerprint: dataset_fingerprint(&subject, bundle.hemisphere)?,
            git_commit: git.clone(),
            model_sha256: contract::sha256_file(&onnx)?,
            tolerance: opts.tolerance,
            runtime: runtime_name.clone(),
        })?;

        // The contract's own check, as the server will run it: the session's input and
        // outputs are the manifest's; the manifest is written and read back once here
        // (version 1 stands in) so that a full disk or a bad field fails before any
        // model of the export is published.
        let (session, _) = rt.session(&onnx, DeviceChoice::Cpu, opts.threads)?;
        runtime::check_session(&m, &session, &onnx)?;
        drop(session);
        m.write(&tmp_path)?;
        Manifest::load(&tmp_path)?;
        staged.push(Staged {
            staging,
            name: bundle.name.clone(),
            manifest: m,
            op_types: built.op_types.clone(),
            comparison,
        });
    }
    Ok(staged)
}

/// Publishes every staged model, or none: on a failure the versions published so far
/// are taken back out (and the staged rest removed as they drop).
fn publish_all(staged: Vec<Staged>) -> Result<Vec<ExportedModel>, ExportError> {
    let mut exported: Vec<ExportedModel> = Vec::with_capacity(staged.len());
    for mut s in staged {
        let Some(tmp) = s.staging.tmp.clone() else {
            continue;
        };
        let mut m = s.manifest.clone();
        let published = contract_repo::publish(&tmp, &s.staging.model_dir, |v| {
            m.model.version = v;
            m.write(&tmp)?;
            // The model file was hashed and checked at staging; only the manifest is new.
            Manifest::read(&tmp.join(contract::MANIFEST_FILE)).map(|_| ())
        });
        let (version, dir) = match published {
            Ok(p) => p,
            Err(e) => {
                for done in &exported {
                    if let Err(undo) = contract_repo::unpublish(&done.dir) {
                        tracing::error!(dir = %done.dir.display(), error = %undo, "could not take a published version back out");
                    }
                }
                return Err(e.into());
            }
        };
        s.staging.tmp = None;
        tracing::info!(model = %s.name, version, dir = %dir.display(), rois = m.rois.len(), voxels = m.n_voxels(), "model exported");
        exported.push(ExportedModel {
            name: s.name.clone(),
            version,
            dir,
            manifest: m,
            op_types: std::mem::take(&mut s.op_types),
            comparison: s.comparison,
        });
    }
    Ok(exported)
}
