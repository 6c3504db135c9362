//! A study fanned out as independent jobs: `vcl plan` writes PLAN.json (every job fully
//! specified), `vcl run --plan PLAN.json --index N` runs one job (N from Slurm's array
//! index or a Kubernetes Indexed Job's completion index), `vcl status` tells where each
//! job is. The schedulers stay the existing engines: [`scheduler`] writes an sbatch
//! array script and a Kubernetes Indexed Job for a plan.
//!
//! A job is what one machine does without talking to any other:
//! - an **untuned** job fits one subject's encoders for every hemisphere and ROI of the
//!   study on the ImageNet backbone: the backbone is the same for every ROI, so its
//!   features and PCA are computed once per subject instead of once per ROI;
//! - a **tuned** job (cl or regression) fine-tunes the backbone for one subject,
//!   hemisphere and ROI, as the paper does, then fits and scores that ROI's encoder on
//!   the tuned backbone.
//!
//! Each job writes only its own folder (`RUNS/<id>/`), so any number run at once; the
//! shared feature cache is written through unique temporary files
//! ([`vcl_dataset::paths::partial`]). A finished job is a no-op when run again; a
//! killed one resumes from its last fine-tuning checkpoint.

pub mod job;
pub mod scheduler;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::features::backbones::Arch;
use crate::model::encoding::fit::all_rois;
use crate::model::encoding::FitConfig;
use crate::model::finetune::{FinetuneConfig, Objective};
use vcl_contract::manifest::Method;
use vcl_dataset::algonauts::{Dataset, Hemisphere, Subject};

pub use job::{run_job, JobEnv, Outcome, RunConfig};
pub use scheduler::Resources;
pub use state::{status, JobState, JobStatus, StatusConfig};

/// What can go wrong planning, running or inspecting a study; every message names the
/// plan, job, file or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Stage(#[from] Box<crate::Error>),
}

impl PlanError {
    pub fn file(path: &Path, reason: impl std::fmt::Display) -> Self {
        PlanError::File {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

impl From<crate::Error> for PlanError {
    fn from(e: crate::Error) -> Self {
        PlanError::Stage(Box::new(e))
    }
}

/// The plan file's format; a reader refuses any other.
pub const PLAN_VERSION: u32 = 1;

/// What `vcl plan` asks for: the study's axes, the flags every job shares, and where
/// the jobs write.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanConfig {
    /// Dataset folder (Algonauts 2023 layout).
    #[arg(long = "data")]
    pub data_dir: PathBuf,
    /// Subjects (1,2 or subj01,subj02); default: all.
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "lh,rh")]
    pub hemispheres: Vec<Hemisphere>,
    /// ROIs (`+` joins a union); default: every non-empty ROI of each subject and
    /// hemisphere.
    #[arg(long, value_delimiter = ',')]
    pub rois: Vec<String>,
    /// untuned: one fit per subject; cl, regression: one fine-tuning + fit per subject,
    /// hemisphere and ROI.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "untuned,cl,regression"
    )]
    pub methods: Vec<Method>,
    #[arg(long = "backbone", default_value = "mobilenet_v2")]
    pub arch: Arch,
    /// Initial backbone weights; default: the installed ImageNet ones.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, default_value_t = 224)]
    pub input_size: u32,
    #[arg(long = "heldout", default_value_t = 0.15)]
    pub heldout_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// More `vcl finetune` flags for every tuned job, space-separated, e.g.
    /// "--epochs 10 --micro-batch 64 --augment".
    #[arg(long = "finetune", allow_hyphen_values = true, default_value = "")]
    pub finetune_flags: String,
    /// More `vcl fit` flags for every job, space-separated, e.g. "--pca 500".
    #[arg(long = "fit", allow_hyphen_values = true, default_value = "")]
    pub fit_flags: String,
    /// Folder the jobs write into (one folder per job, and logs/).
    #[arg(long)]
    pub runs: PathBuf,
    /// The plan file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a Slurm array script for the plan.
    #[arg(long)]
    pub sbatch: Option<PathBuf>,
    /// Also write a Kubernetes Indexed Job manifest for the plan.
    #[arg(long)]
    pub k8s: Option<PathBuf>,
    #[command(flatten)]
    pub resources: Resources,
}

/// A study: its jobs in a stable order (subject, then method, hemisphere, ROI).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub vcl_version: String,
    pub git_commit: Option<String>,
    pub data_dir: PathBuf,
    pub runs: PathBuf,
    /// The Slurm script written with the plan, for the resubmit hint of `vcl status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbatch: Option<PathBuf>,
    pub jobs: Vec<Job>,
}

/// One job, fully specified: what it trains and fits, on which data, into which folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub index: usize,
    /// The job's folder name under the plan's runs: subj01-untuned, subj01-lh-V1v-cl.
    pub id: String,
    pub method: Method,
    pub subject: String,
    pub hemispheres: Vec<Hemisphere>,
    /// Empty: every non-empty ROI (untuned jobs without `--rois`).
    pub rois: Vec<String>,
    /// The export manifest's dataset fingerprint of each hemisphere the job reads
    /// (fMRI bytes, training image names and sizes): a job refuses changed data.
    pub dataset_fingerprint: BTreeMap<Hemisphere, String>,
    pub folder: PathBuf,
    /// Where the sbatch script sends the job's output.
    pub log: PathBuf,
    /// The fine-tuning run (tuned jobs), written to `folder/finetune`.
    pub finetune: Option<FinetuneConfig>,
    /// The encoder fit, written to `folder/fit` and evaluated there.
    pub fit: FitConfig,
}

impl Job {
    pub fn finetune_dir(&self) -> PathBuf {
        self.folder.join("finetune")
    }

    pub fn fit_dir(&self) -> PathBuf {
        self.folder.join("fit")
    }

    /// SHA-256 of what the job computes (not its index or log): a folder finished by a
    /// job of another specification is never taken as this job's result.
    pub fn spec_hash(&self) -> String {
        let spec = serde_json::json!({
            "id": self.id,
            "method": self.method,
            "subject": self.subject,
            "hemispheres": self.hemispheres,
            "rois": self.rois,
            "dataset_fingerprint": self.dataset_fingerprint,
            "finetune": self.finetune,
            "fit": self.fit,
        });
        hex::encode(Sha256::digest(spec.to_string().as_bytes()))
    }
}

impl Plan {
    pub fn read(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::file(path, e))?;
        let plan: Plan = serde_json::from_str(&text)
            .map_err(|e| PlanError::file(path, format!("not a vcl plan: {e}")))?;
        if plan.version != PLAN_VERSION {
            return Err(PlanError::file(
                path,
                format!(
                    "plan version {} (this vcl reads version {PLAN_VERSION}): re-plan with this vcl",
                    plan.version
                ),
            ));
        }
        if let Some(j) = plan.jobs.iter().enumerate().find(|(i, j)| j.index != *i) {
            return Err(PlanError::file(
                path,
                format!(
                    "jobs[{}] has index {}: the list was edited out of order",
                    j.0, j.1.index
                ),
            ));
        }
        Ok(plan)
    }

    pub fn write(&self, path: &Path) -> Result<(), PlanError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| PlanError::file(path, e))?;
        write_atomic(path, text.as_bytes())
    }

    pub fn job(&self, index: usize) -> Result<&Job, PlanError> {
        self.jobs.get(index).ok_or_else(|| {
            PlanError::Invalid(format!(
                "job index {index}: the plan has {} jobs (0..={})",
                self.jobs.len(),
                self.jobs.len().saturating_sub(1)
            ))
        })
    }

    /// The fit folders of the finished jobs: what `vcl compare --plan` merges.
    pub fn finished_fits(&self) -> Result<Vec<PathBuf>, PlanError> {
        Ok(status(self)?
            .into_iter()
            .filter(|s| matches!(s.state, JobState::Done { .. }))
            .map(|s| self.jobs[s.index].fit_dir())
            .collect())
    }
}

/// Writes through a unique temporary file and a rename, so that a reader (another job,
/// `vcl status`) sees the old file or the new one, never half of one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PlanError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| PlanError::file(dir, e))?;
    }
    let tmp = vcl_dataset::paths::partial(path);
    std::fs::write(&tmp, bytes).map_err(|e| PlanError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| PlanError::file(path, e))
}

/// Flags the plan sets itself, from its own axes and shared flags.
const PLANNED_FLAGS: &[&str] = &[
    "--data",
    "--subjects",
    "--hemisphere",
    "--hemispheres",
    "--roi",
    "--rois",
    "--method",
    "--backbone",
    "--weights",
    "--input-size",
    "--heldout",
    "--split-seed",
    "--out",
    "--resume",
    "--evaluate",
    "--label",
];

/// `--finetune` / `--fit`'s words, refusing the flags the plan owns.
fn extra_flags(which: &str, flags: &str) -> Result<Vec<String>, PlanError> {
    let words: Vec<String> = flags.split_whitespace().map(str::to_string).collect();
    for w in &words {
        let name = w.split('=').next().unwrap_or(w);
        if PLANNED_FLAGS.contains(&name) {
            return Err(PlanError::Invalid(format!(
                "--{which} \"{flags}\": {name} is set by the plan itself (use vcl plan's own flags)"
            )));
        }
    }
    Ok(words)
}

fn parse<T: clap::Args>(which: &str, words: Vec<String>) -> Result<T, PlanError> {
    crate::config::from_flags::<T, _>(words).map_err(|e| {
        PlanError::Invalid(format!(
            "--{which}: {}",
            e.render().to_string().lines().next().unwrap_or_default()
        ))
    })
}

/// Characters a job's folder name keeps; others (the `:` of `streams:early`) become `_`.
fn folder_name(parts: &[&str]) -> String {
    parts
        .join("-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What every job of a study shares while the plan is made.
struct Planner<'a> {
    cfg: &'a PlanConfig,
    data_dir: PathBuf,
    runs: PathBuf,
    fit_words: Vec<String>,
    finetune_words: Vec<String>,
    /// (subject, hemisphere) -> the export manifest's dataset fingerprint
    fingerprints: BTreeMap<(String, Hemisphere), String>,
}

impl Planner<'_> {
    /// The flags every job of `subject` shares between its fine-tuning and its fit.
    fn shared(&self, subject: &str) -> Vec<String> {
        let cfg = self.cfg;
        let mut w = vec![
            format!("--data={}", self.data_dir.display()),
            format!("--backbone={}", cfg.arch.name()),
            format!("--input-size={}", cfg.input_size),
            format!("--heldout={}", cfg.heldout_fraction),
            format!("--split-seed={}", cfg.split_seed),
            format!("--subjects={subject}"),
        ];
        if let Some(wt) = &cfg.weights {
            w.push(format!("--weights={}", wt.display()));
        }
        w
    }

    fn fingerprints_of(&self, subject: &str, hemis: &[Hemisphere]) -> BTreeMap<Hemisphere, String> {
        hemis
            .iter()
            .map(|&h| (h, self.fingerprints[&(subject.to_string(), h)].clone()))
            .collect()
    }

    /// One subject's fit of every hemisphere and ROI on the initial backbone.
    fn untuned(&self, subject: &str) -> Result<Job, PlanError> {
        let cfg = self.cfg;
        let id = folder_name(&[subject, "untuned"]);
        let mut words = self.shared(subject);
        let hemis: Vec<&str> = cfg.hemispheres.iter().map(|h| h.prefix()).collect();
        words.push(format!("--hemispheres={}", hemis.join(",")));
        if !cfg.rois.is_empty() {
            words.push(format!("--rois={}", cfg.rois.join(",")));
        }
        words.push("--method=untuned".into());
        words.extend(self.fit_words.iter().cloned());
        let fit: FitConfig = parse("fit", words)?;
        Ok(Job {
            index: 0,
            folder: self.runs.join(&id),
            id,
            method: Method::Untuned,
            subject: subject.to_string(),
            hemispheres: cfg.hemispheres.clone(),
            rois: cfg.rois.clone(),
            dataset_fingerprint: self.fingerprints_of(subject, &cfg.hemispheres),
            log: PathBuf::new(),
            finetune: None,
            fit: fit.resolved().map_err(crate::Error::from)?,
        })
    }

    /// Fine-tuning for one ROI, then that ROI's fit on the tuned backbone.
    fn tuned(
        &self,
        subject: &str,
        h: Hemisphere,
        roi: &str,
        method: Method,
    ) -> Result<Job, PlanError> {
        let objective = match method {
            Method::Regression => Objective::Regression,
            _ => Objective::Cl,
        };
        let id = folder_name(&[subject, h.prefix(), roi, objective.name()]);
        let folder = self.runs.join(&id);
        let mut words = self.shared(subject);
        words.extend([
            format!("--hemisphere={}", h.prefix()),
            format!("--roi={roi}"),
            format!("--method={}", objective.name()),
        ]);
        words.extend(self.finetune_words.iter().cloned());
        let ft: FinetuneConfig = parse("finetune", words)?;
        let ft = ft.resolved().map_err(crate::Error::from)?;
        ft.validate().map_err(crate::Error::from)?;
        let mut words = self.shared(subject);
        words.retain(|w| !w.starts_with("--weights="));
        words.extend([
            format!("--hemispheres={}", h.prefix()),
            format!("--rois={roi}"),
            format!("--method={}", method.name()),
            format!(
                "--weights={}",
                folder.join("finetune/backbone.safetensors").display()
            ),
        ]);
        words.extend(self.fit_words.iter().cloned());
        let fit: FitConfig = parse("fit", words)?;
        Ok(Job {
            index: 0,
            id,
            method,
            subject: subject.to_string(),
            hemispheres: vec![h],
            rois: vec![roi.to_string()],
            dataset_fingerprint: self.fingerprints_of(subject, &[h]),
            folder,
            log: PathBuf::new(),
            finetune: Some(ft),
            fit: fit.resolved().map_err(crate::Error::from)?,
        })
    }
}

fn check_axes(cfg: &PlanConfig) -> Result<(), PlanError> {
    if cfg.methods.contains(&Method::Pooled) {
        return Err(PlanError::Invalid(
            "--methods pooled: a pooled backbone is tuned on several subjects at once, not one \
             job per subject; train it with vcl finetune --subjects 1,2,..."
                .into(),
        ));
    }
    if cfg.methods.is_empty() || cfg.hemispheres.is_empty() {
        return Err(PlanError::Invalid(
            "--methods and --hemispheres need at least one value each".into(),
        ));
    }
    Ok(())
}

/// What the study reads of each (subject, hemisphere): its fingerprint and the ROIs its
/// tuned jobs train on (the ones asked for, each checked to exist, or every non-empty
/// one). A missing ROI fails here, not hours later in one job of many.
#[derive(Default)]
struct Survey {
    fingerprints: BTreeMap<(String, Hemisphere), String>,
    rois: BTreeMap<(String, Hemisphere), Vec<String>>,
}

fn survey(cfg: &PlanConfig, subjects: &[Subject]) -> Result<Survey, PlanError> {
    let bar = indicatif::ProgressBar::new((subjects.len() * cfg.hemispheres.len()) as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "fingerprinting {pos}/{len} fMRI files {wide_bar} eta {eta}",
    ) {
        bar.set_style(style);
    }
    let mut out = Survey::default();
    for subject in subjects {
        for &h in &cfg.hemispheres {
            let key = (subject.name.clone(), h);
            let atlas = subject.rois(h).map_err(crate::Error::from)?;
            for roi in &cfg.rois {
                atlas
                    .select(roi, &subject.name)
                    .map_err(crate::Error::from)?;
            }
            let rois = if cfg.rois.is_empty() {
                all_rois(&atlas)
            } else {
                cfg.rois.clone()
            };
            out.rois.insert(key.clone(), rois);
            let fp = crate::export::dataset_fingerprint(subject, h).map_err(crate::Error::from)?;
            out.fingerprints.insert(key, fp);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The jobs of a study, each fully specified, in a stable order (subject, then method,
/// hemisphere, ROI). Nothing is written but the runs folder and its `logs/` (Slurm does
/// not create the folder of `--output`: a task would fail before starting).
pub fn plan(cfg: &PlanConfig) -> Result<Plan, PlanError> {
    check_axes(cfg)?;
    let data_dir =
        std::fs::canonicalize(&cfg.data_dir).map_err(|e| PlanError::file(&cfg.data_dir, e))?;
    // Real paths where they exist (a pod mounts them; links would not resolve there).
    let runs = std::fs::canonicalize(&cfg.runs)
        .or_else(|_| std::path::absolute(&cfg.runs))
        .map_err(|e| PlanError::file(&cfg.runs, e))?;
    let ds = Dataset::open(&data_dir).map_err(crate::Error::from)?;
    let names = if cfg.subjects.is_empty() {
        ds.subjects.clone()
    } else {
        cfg.subjects.clone()
    };
    let subjects: Vec<Subject> = names
        .iter()
        .map(|s| ds.subject(s))
        .collect::<Result<_, _>>()
        .map_err(crate::Error::from)?;
    let Survey { fingerprints, rois } = survey(cfg, &subjects)?;
    let planner = Planner {
        cfg,
        fit_words: extra_flags("fit", &cfg.fit_flags)?,
        finetune_words: extra_flags("finetune", &cfg.finetune_flags)?,
        fingerprints,
        data_dir,
        runs,
    };
    let mut jobs = Vec::new();
    for subject in &subjects {
        let s = &subject.name;
        for &method in &cfg.methods {
            if method == Method::Untuned {
                jobs.push(planner.untuned(s)?);
                continue;
            }
            for &h in &cfg.hemispheres {
                for roi in &rois[&(s.clone(), h)] {
                    jobs.push(planner.tuned(s, h, roi, method)?);
                }
            }
        }
    }
    let mut ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(PlanError::Invalid(format!(
            "two jobs would share the folder {}: an ROI or subject is listed twice",
            w[0]
        )));
    }
    let Planner { data_dir, runs, .. } = planner;
    let logs = runs.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| PlanError::file(&logs, e))?;
    for (i, job) in jobs.iter_mut().enumerate() {
        job.index = i;
        job.log = logs.join(format!("job-{i}.log"));
    }
    Ok(Plan {
        version: PLAN_VERSION,
        vcl_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: crate::provenance::git_commit(),
        data_dir,
        runs,
        sbatch: None,
        jobs,
    })
}
