//! Where a job is, read from its folder alone, so `vcl status` works from any machine
//! that sees the runs folder and needs no scheduler:
//!
//! ```text
//! RUNS/<id>/job.json     the job as planned
//! RUNS/<id>/state.json   running | done | failed | interrupted, and every attempt
//! RUNS/<id>/.lock        held (flock) by the process running the job
//! ```
//! A job whose state says running but whose lock nobody holds was killed without a
//! chance to say so (SIGKILL, out of memory, a lost node): it is interrupted, and runs
//! again from its last checkpoint.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{write_atomic, Job, Plan, PlanError};
use crate::model::finetune::checkpoint;
use vcl_dataset::algonauts::Hemisphere;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Running,
    Done,
    Failed,
    Interrupted,
}

/// One start of a job, by the scheduler or by hand.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub host: String,
    pub pid: u32,
    /// SLURM_JOB_ID, or the pod's name under Kubernetes.
    pub scheduler_id: Option<String>,
    pub started_unix: u64,
    pub ended_unix: Option<u64>,
    /// done, failed: <error>, interrupted: SIGTERM, ...
    pub outcome: Option<String>,
    /// The fine-tuning checkpoint this attempt continued from.
    pub resumed_from_epoch: Option<usize>,
}

/// One ROI's held-out score, as the job's evaluation gave it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoiMean {
    pub subject: String,
    pub hemisphere: Hemisphere,
    pub roi: String,
    pub voxels: usize,
    pub mean_r: f32,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub spec_hash: String,
    pub phase: Phase,
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub results: Vec<RoiMean>,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn state_path(job: &Job) -> PathBuf {
    job.folder.join("state.json")
}

pub(crate) fn read_record(job: &Job) -> Result<Option<JobRecord>, PlanError> {
    let path = state_path(job);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| PlanError::file(&path, format!("not a job state file: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PlanError::file(&path, e)),
    }
}

pub(crate) fn write_record(job: &Job, record: &JobRecord) -> Result<(), PlanError> {
    let path = state_path(job);
    let text = serde_json::to_string_pretty(record).map_err(|e| PlanError::file(&path, e))?;
    write_atomic(&path, text.as_bytes())
}

/// The job's lock, if no other process holds it; the lock goes with the file when it
/// is dropped, also when the process dies.
pub(crate) fn acquire(folder: &Path) -> Result<Option<File>, PlanError> {
    let path = folder.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| PlanError::file(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(PlanError::file(&path, e)),
    }
}

/// Whether a process holds the job's lock. Opened read-only: `vcl status` may look at
/// a runs folder it cannot write.
fn is_held(folder: &Path) -> Result<bool, PlanError> {
    let path = folder.join(".lock");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(PlanError::file(&path, e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(PlanError::file(&path, e)),
    }
}

/// Where a job is.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum JobState {
    Missing,
    Running {
        host: String,
        pid: u32,
        progress: String,
    },
    Interrupted {
        reason: String,
        progress: String,
    },
    Failed {
        error: String,
        log: PathBuf,
    },
    Done {
        results: Vec<RoiMean>,
        seconds: u64,
    },
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Missing => "missing",
            JobState::Running { .. } => "running",
            JobState::Interrupted { .. } => "interrupted",
            JobState::Failed { .. } => "failed",
            JobState::Done { .. } => "done",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub index: usize,
    pub id: String,
    #[serde(flatten)]
    pub state: JobState,
}

/// What `vcl status` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusConfig {
    #[arg(long)]
    pub plan: PathBuf,
    /// JSON instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// How far a job's fine-tuning got: its newest checkpoint of the planned epochs.
fn progress(job: &Job) -> String {
    let Some(ft) = &job.finetune else {
        return "fitting".into();
    };
    if job.finetune_dir().join("backbone.safetensors").exists() {
        return "fine-tuned; fitting".into();
    }
    match checkpoint::list(&job.finetune_dir()) {
        Ok(c) if !c.is_empty() => format!("checkpoint of epoch {}/{}", c[0].0, ft.epochs()),
        _ => format!("fine-tuning, no checkpoint yet (of {} epochs)", ft.epochs()),
    }
}

fn job_state(job: &Job) -> Result<JobState, PlanError> {
    let Some(record) = read_record(job)? else {
        return Ok(JobState::Missing);
    };
    if record.spec_hash != job.spec_hash() {
        return Ok(JobState::Failed {
            error: format!(
                "{} holds a job of another specification (planned anew since?): remove the \
                 folder or plan into other --runs",
                job.folder.display()
            ),
            log: job.log.clone(),
        });
    }
    let last = record.attempts.last();
    Ok(match record.phase {
        Phase::Done => JobState::Done {
            results: record.results.clone(),
            seconds: record
                .attempts
                .iter()
                .filter_map(|a| a.ended_unix.map(|e| e.saturating_sub(a.started_unix)))
                .sum(),
        },
        Phase::Failed => JobState::Failed {
            error: last
                .and_then(|a| a.outcome.clone())
                .unwrap_or_else(|| "failed".into()),
            log: job.log.clone(),
        },
        Phase::Interrupted => JobState::Interrupted {
            reason: last
                .and_then(|a| a.outcome.clone())
                .unwrap_or_else(|| "interrupted".into()),
            progress: progress(job),
        },
        Phase::Running => match is_held(&job.folder)? {
            true => JobState::Running {
                host: last.map(|a| a.host.clone()).unwrap_or_default(),
                pid: last.map(|a| a.pid).unwrap_or_default(),
                progress: progress(job),
            },
            false => JobState::Interrupted {
                reason: "the process is gone without a word (SIGKILL, out of memory or a lost \
                         node)"
                    .into(),
                progress: progress(job),
            },
        },
    })
}

/// Every job's state, in plan order.
pub fn status(plan: &Plan) -> Result<Vec<JobStatus>, PlanError> {
    plan.jobs
        .iter()
        .map(|j| {
            Ok(JobStatus {
                index: j.index,
                id: j.id.clone(),
                state: job_state(j)?,
            })
        })
        .collect()
}

/// The status table, the counts, and what to resubmit.
pub fn markdown(plan: &Plan, statuses: &[JobStatus]) -> String {
    let mut s = String::from("| # | job | state | detail |\n|---:|---|---|---|\n");
    for st in statuses {
        let detail = match &st.state {
            JobState::Missing => String::new(),
            JobState::Running {
                host,
                pid,
                progress,
            } => format!("{progress} (pid {pid} on {host})"),
            JobState::Interrupted { reason, progress } => format!("{reason}; {progress}"),
            JobState::Failed { error, log } => format!("{error} (log: {})", log.display()),
            JobState::Done { results, seconds } => {
                let r: Vec<String> = results
                    .iter()
                    .map(|r| format!("{} {} r={:.3}", r.hemisphere.prefix(), r.roi, r.mean_r))
                    .take(4)
                    .collect();
                let more = results.len().saturating_sub(4);
                let more = if more > 0 {
                    format!(" (+{more} ROIs)")
                } else {
                    String::new()
                };
                format!("{}{more}; {seconds} s", r.join(", "))
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            st.index,
            st.id,
            st.state.name(),
            detail.replace('|', "\\|")
        );
    }
    let count = |n: &str| statuses.iter().filter(|s| s.state.name() == n).count();
    let _ = writeln!(
        s,
        "\n{} jobs: {} done, {} running, {} interrupted, {} failed, {} missing",
        statuses.len(),
        count("done"),
        count("running"),
        count("interrupted"),
        count("failed"),
        count("missing")
    );
    let redo: Vec<String> = statuses
        .iter()
        .filter(|s| matches!(s.state.name(), "interrupted" | "failed" | "missing"))
        .map(|s| s.index.to_string())
        .collect();
    if !redo.is_empty() {
        let script = plan
            .sbatch
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "PLAN.sbatch".into());
        let _ = writeln!(
            s,
            "to run the rest (interrupted ones resume): sbatch --array={} {script}",
            redo.join(",")
        );
    }
    s
}
