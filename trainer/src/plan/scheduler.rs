//! A plan handed to an existing scheduler: a Slurm array script (`vcl plan --sbatch`)
//! and a Kubernetes Indexed Job (`vcl plan --k8s`). Both run `vcl run --plan PLAN`,
//! which reads its index from the scheduler (SLURM_ARRAY_TASK_ID,
//! JOB_COMPLETION_INDEX); resubmitting an array is safe, since finished jobs are
//! no-ops and interrupted ones resume.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{Plan, PlanError};

/// What each job gets from the scheduler.
#[derive(Debug, Clone, clap::Args)]
pub struct Resources {
    /// GPUs per job (Slurm --gres=gpu:N, Kubernetes nvidia.com/gpu).
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// CPU cores per job; also libtorch's thread count.
    #[arg(long, default_value_t = 4)]
    pub cpus: u32,
    /// Memory per job, as Slurm writes it: 16G, 512M (no unit: megabytes).
    #[arg(long, default_value = "16G")]
    pub mem: String,
    /// Wall-time limit per job, as Slurm writes it: MM, HH:MM:SS, D-HH:MM:SS.
    #[arg(long, default_value = "24:00:00")]
    pub time: String,
    /// Slurm partition; default: the cluster's.
    #[arg(long)]
    pub partition: Option<String>,
    /// At most this many jobs at once (Slurm's `%N`, the Job's parallelism).
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// The vcl binary the sbatch script runs; default: this one.
    #[arg(long = "vcl")]
    pub vcl_bin: Option<PathBuf>,
    /// Container image holding `vcl` for the Kubernetes Job.
    #[arg(long, default_value = "vcl-trainer:latest")]
    pub image: String,
    /// PersistentVolumeClaim holding the data (mounted read-only at the plan's data path).
    #[arg(long, default_value = "vcl-data")]
    pub data_claim: String,
    /// PersistentVolumeClaim holding the runs (mounted at the plan's runs path).
    #[arg(long, default_value = "vcl-runs")]
    pub runs_claim: String,
}

/// Megabytes of a Slurm memory value (`16G`, `512M`, `2048`).
pub fn memory_mb(mem: &str) -> Result<u64, PlanError> {
    let bad = || {
        PlanError::Invalid(format!(
            "--mem {mem:?}: write a whole number with an optional unit K, M, G or T (16G)"
        ))
    };
    let (digits, unit) = match mem.trim().char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => mem.trim().split_at(i),
        None => (mem.trim(), "M"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mb = match unit.to_ascii_uppercase().as_str() {
        "K" => n.div_ceil(1024),
        "M" => n,
        "G" => n * 1024,
        "T" => n * 1024 * 1024,
        _ => return Err(bad()),
    };
    if mb == 0 {
        return Err(bad());
    }
    Ok(mb)
}

/// Seconds of a Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
pub fn time_seconds(time: &str) -> Result<u64, PlanError> {
    let bad = || {
        PlanError::Invalid(format!(
            "--time {time:?}: write minutes, HH:MM:SS or D-HH:MM:SS (as sbatch does)"
        ))
    };
    let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let (days, rest) = match time.trim().split_once('-') {
        Some((d, r)) => (num(d)?, r),
        None => (0, time.trim()),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Result<_, _>>()?;
    let secs = match (days > 0 || time.contains('-'), parts.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, s]) => m * 60 + s,
        (false, [h, m, s]) | (true, [h, m, s]) => h * 3600 + m * 60 + s,
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        _ => return Err(bad()),
    };
    let total = days * 86_400 + secs;
    if total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// A path as one shell word.
fn shell_word(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// A name Slurm and Kubernetes both take: the runs folder's, lowercase letters, digits
/// and dashes, at most 50 characters (room for Kubernetes' suffixes).
fn job_name(plan: &Plan) -> String {
    let base = plan
        .runs
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').to_string();
    name.truncate(44);
    format!(
        "vcl-{}",
        if name.is_empty() { "study" } else { &name }.trim_end_matches('-')
    )
}

fn check_plan(plan: &Plan, res: &Resources) -> Result<(), PlanError> {
    if plan.jobs.is_empty() {
        return Err(PlanError::Invalid("the plan has no jobs".into()));
    }
    memory_mb(&res.mem)?;
    time_seconds(&res.time)?;
    if res.cpus == 0 {
        return Err(PlanError::Invalid("--cpus must be at least 1".into()));
    }
    Ok(())
}

/// The sbatch script of `plan` (written at `plan_path`): one array task per job, each
/// job's output appended to the job's log, so a resubmitted job's log tells both
/// attempts.
pub fn sbatch_script(plan: &Plan, plan_path: &Path, res: &Resources) -> Result<String, PlanError> {
    check_plan(plan, res)?;
    let logs = plan.runs.join("logs");
    if logs.display().to_string().contains(char::is_whitespace) {
        return Err(PlanError::file(
            &logs,
            "sbatch's --output cannot take a path with spaces: plan into other --runs",
        ));
    }
    let vcl = match &res.vcl_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| PlanError::file(Path::new("vcl"), e))?,
    };
    let n = plan.jobs.len();
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(
        s,
        "# {n} jobs of the vcl plan {}. Submit: sbatch THIS_FILE. `vcl status --plan` tells\n\
         # what is left; resubmitting is safe (finished jobs are no-ops, interrupted ones\n\
         # resume from their last checkpoint): sbatch --array=3,7 THIS_FILE.",
        plan_path.display()
    );
    let _ = writeln!(s, "#SBATCH --job-name={}", job_name(plan));
    let throttle = res
        .max_parallel
        .map(|m| format!("%{m}"))
        .unwrap_or_default();
    let _ = writeln!(s, "#SBATCH --array=0-{}{throttle}", n - 1);
    let _ = writeln!(s, "#SBATCH --ntasks=1");
    let _ = writeln!(s, "#SBATCH --cpus-per-task={}", res.cpus);
    let _ = writeln!(s, "#SBATCH --mem={}M", memory_mb(&res.mem)?);
    let _ = writeln!(s, "#SBATCH --time={}", res.time.trim());
    if res.gpus > 0 {
        let _ = writeln!(s, "#SBATCH --gres=gpu:{}", res.gpus);
    }
    if let Some(p) = &res.partition {
        let _ = writeln!(s, "#SBATCH --partition={p}");
    }
    let _ = writeln!(s, "#SBATCH --output={}/job-%a.log", logs.display());
    let _ = writeln!(s, "#SBATCH --open-mode=append");
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(s, "export OMP_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"");
    let _ = writeln!(
        s,
        "echo \"vcl: job ${{SLURM_ARRAY_TASK_ID}} of {n}, Slurm job ${{SLURM_JOB_ID}} on $(hostname), $(date -Is)\""
    );
    let _ = writeln!(
        s,
        "exec {} run --plan {}",
        shell_word(&vcl),
        shell_word(plan_path)
    );
    Ok(s)
}

/// A JSON string is a valid YAML scalar, quoted and escaped as YAML wants.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The Kubernetes Indexed Job of `plan`: completions = jobs, each pod `vcl run --plan`
/// with the data claim mounted read-only at the plan's data path and the runs claim at
/// its runs path (the plan's paths are absolute), the pixel and feature cache on the
/// runs volume.
pub fn k8s_job(plan: &Plan, plan_path: &Path, res: &Resources) -> Result<String, PlanError> {
    check_plan(plan, res)?;
    let plan_path = std::fs::canonicalize(plan_path).unwrap_or_else(|_| plan_path.to_path_buf());
    let visible = |p: &Path| p.starts_with(&plan.data_dir) || p.starts_with(&plan.runs);
    let mut read: Vec<PathBuf> = vec![plan_path.clone()];
    for job in &plan.jobs {
        if let Some(ft) = &job.finetune {
            read.push(ft.weights());
        } else {
            read.push(job.fit.weights());
        }
    }
    // The weights' default path runs through `..`: compare where files really are.
    let read: Vec<PathBuf> = read
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    if let Some(p) = read.iter().find(|p| !visible(p)) {
        return Err(PlanError::file(
            p,
            format!(
                "a pod sees only the data ({}) and runs ({}) volumes: put this file in one of \
                 them (the plan inside --runs; initial weights by --weights)",
                plan.data_dir.display(),
                plan.runs.display()
            ),
        ));
    }
    let n = plan.jobs.len();
    let parallel = res.max_parallel.unwrap_or(n).min(n);
    let mem = format!("{}Mi", memory_mb(&res.mem)?);
    let gpu = if res.gpus > 0 {
        format!("\n              nvidia.com/gpu: {}", res.gpus)
    } else {
        String::new()
    };
    let name = job_name(plan);
    let cache = plan.runs.join(".cache");
    Ok(format!(
        r#"# {n} jobs of the vcl plan {plan_file}, as a Kubernetes Indexed Job: pod i runs job i
# (JOB_COMPLETION_INDEX). A failed index is retried up to backoffLimitPerIndex times
# and resumes from its checkpoint; `vcl status --plan` reads the runs volume.
apiVersion: batch/v1
kind: Job
metadata:
  name: {name_q}
  labels:
    app.kubernetes.io/name: vcl-trainer
    app.kubernetes.io/instance: {name_q}
spec:
  completionMode: Indexed
  completions: {n}
  parallelism: {parallel}
  backoffLimitPerIndex: 3
  template:
    metadata:
      labels:
        app.kubernetes.io/name: vcl-trainer
        app.kubernetes.io/instance: {name_q}
    spec:
      restartPolicy: Never
      activeDeadlineSeconds: {deadline}
      # SIGTERM marks the job interrupted and it stops at once; the grace is for the
      # state file's write.
      terminationGracePeriodSeconds: 30
      containers:
        - name: vcl
          image: {image}
          command: ["vcl", "run", "--plan", {plan_q}]
          env:
            - name: OMP_NUM_THREADS
              value: "{cpus}"
            - name: VCL_CACHE_DIR
              value: {cache_q}
          resources:
            requests:
              cpu: "{cpus}"
              memory: {mem}{gpu}
            limits:
              memory: {mem}{gpu}
          volumeMounts:
            - name: data
              mountPath: {data_q}
              readOnly: true
            - name: runs
              mountPath: {runs_q}
      volumes:
        - name: data
          persistentVolumeClaim:
            claimName: {data_claim}
            readOnly: true
        - name: runs
          persistentVolumeClaim:
            claimName: {runs_claim}
"#,
        plan_file = plan_path.display(),
        name_q = q(&name),
        deadline = time_seconds(&res.time)?,
        image = q(&res.image),
        plan_q = q(&plan_path.display().to_string()),
        cpus = res.cpus,
        cache_q = q(&cache.display().to_string()),
        data_q = q(&plan.data_dir.display().to_string()),
        runs_q = q(&plan.runs.display().to_string()),
        data_claim = q(&res.data_claim),
        runs_claim = q(&res.runs_claim),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_values_convert_or_are_refused_by_name() {
        assert_eq!(memory_mb("16G").unwrap(), 16384);
        assert_eq!(memory_mb("512").unwrap(), 512);
        assert_eq!(memory_mb("2048K").unwrap(), 2);
        for bad in ["", "G", "16 GB", "0", "-1G"] {
            let e = memory_mb(bad).unwrap_err().to_string();
            assert!(e.contains("--mem"), "{bad}: {e}");
        }
        assert_eq!(time_seconds("90").unwrap(), 5400);
        assert_eq!(time_seconds("10:30").unwrap(), 630);
        assert_eq!(time_seconds("04:00:00").unwrap(), 14_400);
        assert_eq!(time_seconds("1-12").unwrap(), 129_600);
        assert_eq!(time_seconds("2-00:30:00").unwrap(), 174_600);
        for bad in ["", "0", "1:2:3:4", "a-1", "1h"] {
            let e = time_seconds(bad).unwrap_err().to_string();
            assert!(e.contains("--time"), "{bad}: {e}");
        }
    }
}
