//! `vcl run`: one job of a plan, start to finish, in its own folder: fine-tune (tuned
//! jobs; resumed from the newest checkpoint when a killed attempt left one), then fit
//! and score the encoders. A finished job is a no-op; a job whose data changed since
//! planning is refused before anything is computed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tch::Device;

use super::state::{self, Attempt, JobRecord, Phase, RoiMean};
use super::{Job, Plan, PlanError};
use crate::model::{encoding, finetune};
use vcl_dataset::algonauts::Dataset;

/// What `vcl run` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct RunConfig {
    #[arg(long)]
    pub plan: PathBuf,
    /// The job's index; default: SLURM_ARRAY_TASK_ID (a Slurm array), else
    /// JOB_COMPLETION_INDEX (a Kubernetes Indexed Job).
    #[arg(long)]
    pub index: Option<usize>,
}

/// The schedulers' names for the index of an array task.
const INDEX_VARIABLES: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

impl RunConfig {
    pub fn index(&self) -> Result<usize, PlanError> {
        if let Some(i) = self.index {
            return Ok(i);
        }
        for var in INDEX_VARIABLES {
            if let Ok(v) = std::env::var(var) {
                return v
                    .trim()
                    .parse()
                    .map_err(|_| PlanError::Invalid(format!("{var}={v:?} is not a job index")));
            }
        }
        Err(PlanError::Invalid(format!(
            "no job index: pass --index N, or run under a scheduler that sets {}",
            INDEX_VARIABLES.join(" or ")
        )))
    }
}

/// Where a job runs.
pub struct JobEnv<'a> {
    pub cache_dir: &'a Path,
    pub device: Device,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// The job had finished before: nothing was computed.
    AlreadyDone(Vec<RoiMean>),
    Done {
        results: Vec<RoiMean>,
        resumed_from_epoch: Option<usize>,
    },
}

/// The job's state file, shared with the signal thread: whoever writes last under the
/// mutex wins, and a signal after `done` changes nothing.
#[derive(Clone)]
struct Tracker {
    job: Job,
    record: Arc<Mutex<JobRecord>>,
}

impl Tracker {
    fn update(&self, f: impl FnOnce(&mut JobRecord)) -> Result<(), PlanError> {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r);
        state::write_record(&self.job, &r)
    }

    fn end(&self, phase: Phase, outcome: String) -> Result<(), PlanError> {
        self.update(|r| {
            r.phase = phase;
            if let Some(a) = r.attempts.last_mut() {
                a.ended_unix = Some(state::now_unix());
                a.outcome = Some(outcome);
            }
        })
    }

    /// Records a termination signal (scancel, a time limit, preemption, a pod
    /// eviction), unless the job already ended, then dies of the signal as it would
    /// have (the scheduler sees the true cause; no exit handlers run under libtorch's
    /// feet). The checkpoints on disk are whole (each one a rename), so the next
    /// attempt resumes from the newest.
    fn interrupted(&self, signal: i32) {
        let name = match signal {
            signal_hook::consts::SIGTERM => "SIGTERM",
            signal_hook::consts::SIGINT => "SIGINT",
            _ => "a signal",
        };
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if r.phase == Phase::Running {
            r.phase = Phase::Interrupted;
            if let Some(a) = r.attempts.last_mut() {
                a.ended_unix = Some(state::now_unix());
                a.outcome = Some(format!("interrupted by {name}"));
            }
            if let Err(e) = state::write_record(&self.job, &r) {
                tracing::error!("{e}");
            }
            tracing::warn!(job = %self.job.id, "interrupted by {name}: run it again to resume");
        }
        if let Err(e) = signal_hook::low_level::emulate_default_handler(signal) {
            tracing::error!("{e}");
        }
        std::process::exit(128 + signal);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn scheduler_id() -> Option<String> {
    match (
        std::env::var("SLURM_ARRAY_JOB_ID"),
        std::env::var("SLURM_ARRAY_TASK_ID"),
    ) {
        (Ok(j), Ok(t)) => Some(format!("slurm {j}_{t}")),
        _ => std::env::var("SLURM_JOB_ID")
            .map(|j| format!("slurm {j}"))
            .or_else(|_| {
                std::env::var("JOB_COMPLETION_INDEX").map(|_| format!("pod {}", hostname()))
            })
            .ok(),
    }
}

/// The lock, waiting a little: `vcl status` takes it for an instant to tell a live job
/// from a dead one.
fn lock(job: &Job) -> Result<std::fs::File, PlanError> {
    for _ in 0..20 {
        if let Some(f) = state::acquire(&job.folder)? {
            return Ok(f);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(PlanError::Invalid(format!(
        "job {} ({}) is running already: another process holds {}",
        job.index,
        job.id,
        job.folder.join(".lock").display()
    )))
}

/// Refuses data that changed since the plan was made: the results would not be the
/// planned study's.
fn check_data(plan: &Plan, job: &Job) -> Result<(), PlanError> {
    let ds = Dataset::open(&plan.data_dir).map_err(crate::Error::from)?;
    let subject = ds.subject(&job.subject).map_err(crate::Error::from)?;
    for (&h, planned) in &job.dataset_fingerprint {
        let now = crate::export::dataset_fingerprint(&subject, h).map_err(crate::Error::from)?;
        if &now != planned {
            return Err(PlanError::file(
                &subject.layout.fmri(h),
                format!(
                    "the data changed since the plan was made (fingerprint {planned} then, {now} \
                     now): plan the study again"
                ),
            ));
        }
    }
    Ok(())
}

/// Runs job `index` of `plan` (see the module docs). With `signals`, SIGTERM and
/// SIGINT mark the job interrupted before the process exits.
pub fn run_job(
    plan: &Plan,
    index: usize,
    env: &JobEnv,
    signals: bool,
) -> Result<Outcome, PlanError> {
    let job = plan.job(index)?;
    std::fs::create_dir_all(&job.folder).map_err(|e| PlanError::file(&job.folder, e))?;
    let _lock = lock(job)?;
    let spec_hash = job.spec_hash();
    let before = state::read_record(job)?;
    if let Some(r) = &before {
        if r.spec_hash != spec_hash {
            return Err(PlanError::file(
                &job.folder,
                "holds a job of another specification (the plan was made anew since?): remove \
                 the folder or plan into other --runs",
            ));
        }
        if r.phase == Phase::Done && job.fit_dir().join("evaluation/results.json").exists() {
            tracing::info!(job = %job.id, "done already: nothing to do");
            return Ok(Outcome::AlreadyDone(r.results.clone()));
        }
    }
    let spec = serde_json::to_string_pretty(job).map_err(|e| PlanError::file(&job.folder, e))?;
    super::write_atomic(&job.folder.join("job.json"), spec.as_bytes())?;

    let mut record = before.unwrap_or(JobRecord {
        id: job.id.clone(),
        spec_hash,
        phase: Phase::Running,
        attempts: Vec::new(),
        results: Vec::new(),
    });
    record.phase = Phase::Running;
    record.attempts.push(Attempt {
        host: hostname(),
        pid: std::process::id(),
        scheduler_id: scheduler_id(),
        started_unix: state::now_unix(),
        ended_unix: None,
        outcome: None,
        resumed_from_epoch: None,
    });
    let tracker = Tracker {
        job: job.clone(),
        record: Arc::new(Mutex::new(record)),
    };
    tracker.update(|_| ())?;
    if signals {
        watch_signals(&tracker)?;
    }
    match check_data(plan, job).and_then(|()| work(job, env, &tracker)) {
        Ok((results, resumed_from_epoch)) => {
            tracker.update(|r| r.results = results.clone())?;
            tracker.end(Phase::Done, "done".into())?;
            Ok(Outcome::Done {
                results,
                resumed_from_epoch,
            })
        }
        Err(e) => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(&format!(": {s}"));
                source = s.source();
            }
            tracker.end(Phase::Failed, format!("failed: {chain}"))?;
            Err(e)
        }
    }
}

fn watch_signals(tracker: &Tracker) -> Result<(), PlanError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| PlanError::Invalid(format!("cannot watch SIGTERM: {e}")))?;
    let tracker = tracker.clone();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracker.interrupted(sig);
        }
    });
    Ok(())
}

fn work(
    job: &Job,
    env: &JobEnv,
    tracker: &Tracker,
) -> Result<(Vec<RoiMean>, Option<usize>), PlanError> {
    let mut resumed = None;
    if let Some(ft) = &job.finetune {
        let dir = job.finetune_dir();
        if !dir.join("backbone.safetensors").exists() {
            // A folder left by a killed attempt resumes from its newest good checkpoint
            // (or starts fresh when it has none).
            let resume = dir.exists();
            let s = finetune::finetune(ft, &dir, resume, env.cache_dir, env.device)
                .map_err(crate::Error::from)?;
            if !s.completed {
                return Err(PlanError::file(
                    &dir,
                    format!(
                        "fine-tuning stopped after {} of {} epochs (see its history.csv)",
                        s.epochs_completed, s.epochs
                    ),
                ));
            }
            resumed = s.resumed_from_epoch;
            tracker.update(|r| {
                if let Some(a) = r.attempts.last_mut() {
                    a.resumed_from_epoch = resumed;
                }
            })?;
        }
    }
    let fit_dir = job.fit_dir();
    // A fit is minutes, not hours: one cut short is redone whole rather than resumed.
    if fit_dir.exists() {
        std::fs::remove_dir_all(&fit_dir).map_err(|e| PlanError::file(&fit_dir, e))?;
    }
    encoding::fit(&job.fit, &fit_dir, env.cache_dir, env.device).map_err(crate::Error::from)?;
    let eval =
        encoding::evaluate(&fit_dir, env.cache_dir, env.device).map_err(crate::Error::from)?;
    let results = eval
        .results
        .iter()
        .map(|r| RoiMean {
            subject: r.subject.clone(),
            hemisphere: r.hemisphere,
            roi: r.roi.clone(),
            voxels: r.scores.voxels,
            mean_r: r.scores.mean_r,
        })
        .collect();
    Ok((results, resumed))
}
