//! `vcl export`: fitted runs -> verified models in the model repository, all or none.
//! Each model is written into a hidden folder next to its final place, run through
//! ONNX Runtime on held-out images and compared with libtorch, described by its
//! manifest, re-read through the contract, and only then renamed to
//! `exports/<name>/<version>`.

use std::path::{Path, PathBuf};

use super::error::ExportError;
use super::manifest::{manifest, ManifestParts};
use super::model::{self, Comparison};
use super::run::{dataset_fingerprint, load_run};
use super::verify::{verify_with_ort, OrtCheck};
use vcl_contract::manifest::{self as contract, Manifest};
use vcl_contract::repository as contract_repo;
use vcl_contract::runtime::{self, DeviceChoice, Runtime};
use vcl_dataset::algonauts::Dataset;

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
    let git = opts
        .git_commit
        .clone()
        .or_else(crate::provenance::git_commit);
    let ds = Dataset::open(&cfg.data_dir)?;
    let mut staged = Vec::with_capacity(contents.bundles.len());
    for bundle in &contents.bundles {
        let subject = ds.subject(&bundle.subject)?;
        let (rows, x) = crate::model::encoding::heldout_images(cfg, &subject, opts.verify_images)?;
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

        let check = OrtCheck {
            model: &onnx,
            name: &bundle.name,
            images: &x,
            reference: &reference,
        };
        let comparison = verify_with_ort(rt, &check, opts)?;
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
