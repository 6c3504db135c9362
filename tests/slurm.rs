//! A study on a real Slurm: scripts/slurm.sh starts a one-node cluster on this machine
//! (munge, slurmctld, slurmd), `vcl plan --sbatch` writes the array script, `sbatch`
//! runs the 4-job tiny study; one fine-tuning job is cancelled with scancel mid-run
//! (Slurm's SIGTERM, which the job records), its resubmission resumes from the
//! checkpoint, a resubmitted finished array is all no-ops, and the results merge.
//! Skipped, with the script's reason printed, only where Slurm cannot start.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};
use vcl_tests::{output_text as text, plan_status as status};

/// A running cluster; stopped (by the PIDs the script recorded) when dropped.
struct Cluster {
    state: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn start(state: &Path) -> Result<Cluster, String> {
        let out = Command::new(vcl_tests::repo_root().join("scripts/slurm.sh"))
            .arg("start")
            .arg(state)
            .output()
            .expect("scripts/slurm.sh runs");
        if !out.status.success() {
            return Err(text(&out));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .unwrap_or_else(|| panic!("no SLURM_CONF line in:\n{}", text(&out)));
        Ok(Cluster {
            state: state.to_path_buf(),
            conf: PathBuf::from(conf.trim().trim_matches('"').trim_matches('\'')),
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `sbatch --parsable args...`: the array's job id.
    fn sbatch(&self, args: &[&str]) -> String {
        let out = self
            .cmd("sbatch")
            .arg("--parsable")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "sbatch {args:?}: {}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout);
        id.trim().split(';').next().unwrap_or_default().to_string()
    }

    /// Whether squeue still lists `job` (an array, or one task `ID_N`).
    fn queued(&self, job: &str) -> bool {
        let out = self.cmd("squeue").args(["-h", "-j", job]).output().unwrap();
        out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    fn wait_gone(&self, job: &str, limit: Duration) {
        let t = Instant::now();
        while self.queued(job) {
            assert!(
                t.elapsed() < limit,
                "Slurm job {job} still queued after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(vcl_tests::repo_root().join("scripts/slurm.sh"))
            .arg("stop")
            .arg(&self.state)
            .status();
    }
}

#[test]
fn a_study_runs_as_a_slurm_array_and_a_cancelled_job_resumes() {
    let t0 = Instant::now();
    let slurm_state = tempfile::tempdir().unwrap();
    let cluster = match Cluster::start(slurm_state.path()) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: Slurm cannot start here: {}", why.trim());
            return;
        }
    };
    eprintln!("slurm: cluster up in {:.1} s", t0.elapsed().as_secs_f64());
    // Array tasks need the binary before they start: build it first.
    let vcl = vcl_tests::vcl_bin();
    let (_guard, data) = vcl_tests::tiny_dataset(7, 2);
    let runs = tempfile::tempdir().unwrap();
    let script = runs.path().join("plan.sbatch");
    let plan = vcl_tests::plan_tiny_study(
        &data,
        runs.path(),
        &[
            "--sbatch",
            script.to_str().unwrap(),
            "--cpus",
            "1",
            "--mem",
            "1G",
            "--time",
            "10",
            "--vcl",
            vcl.to_str().unwrap(),
        ],
    );
    let script_text = std::fs::read_to_string(&script).unwrap();
    assert!(script_text.contains("#SBATCH --array=0-3"), "{script_text}");

    let t_array = Instant::now();
    let array = cluster.sbatch(&[script.to_str().unwrap()]);
    let job1 = runs.path().join("subj01-lh-V1v+V1d-cl");
    let t = Instant::now();
    while vcl_tests::checkpoints(&job1.join("finetune")) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "job 1 wrote no checkpoint in 300 s; its log:\n{}",
            std::fs::read_to_string(runs.path().join("logs/job-1.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&plan)[1]["state"], "running");
    let task1 = format!("{array}_1");
    let out = cluster.cmd("scancel").arg(&task1).output().unwrap();
    assert!(out.status.success(), "scancel: {}", text(&out));
    cluster.wait_gone(&task1, Duration::from_secs(60));
    let st = &status(&plan)[1];
    assert_eq!(st["state"], "interrupted", "{st}");
    assert!(
        st["reason"].as_str().unwrap().contains("SIGTERM"),
        "Slurm's SIGTERM was not recorded: {st}"
    );

    cluster.wait_gone(&array, Duration::from_secs(600));
    let array_s = t_array.elapsed().as_secs_f64();
    let states: Vec<String> = status(&plan)
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["done", "interrupted", "done", "done"]);
    let table = text(&vcl_tests::vcl(&[
        "status",
        "--plan",
        plan.to_str().unwrap(),
    ]));
    let hint = format!("sbatch --array=1 {}", script.display());
    assert!(table.contains(&hint), "{table}");

    // The resubmission `vcl status` gives, to the letter.
    let t_resume = Instant::now();
    let again = cluster.sbatch(&["--array=1", script.to_str().unwrap()]);
    cluster.wait_gone(&again, Duration::from_secs(300));
    let resume_s = t_resume.elapsed().as_secs_f64();
    assert!(status(&plan).iter().all(|s| s["state"] == "done"));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job1.join("state.json")).unwrap()).unwrap();
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{record}");
    assert_eq!(attempts[0]["outcome"], "interrupted by SIGTERM");
    assert_eq!(attempts[0]["scheduler_id"], format!("slurm {array}_1"));
    let resumed = attempts[1]["resumed_from_epoch"].as_u64().unwrap_or(0);
    assert!(resumed >= 1, "{record}");
    let log = std::fs::read_to_string(runs.path().join("logs/job-1.log")).unwrap();
    assert_eq!(
        log.matches("vcl: job 1 of 4").count(),
        2,
        "both attempts append:\n{log}"
    );
    assert!(
        log.contains("resumed from the checkpoint of epoch"),
        "{log}"
    );

    // The whole array again: every job finds its result and does nothing.
    let results = job1.join("fit/evaluation/results.json");
    let before = std::fs::metadata(&results).unwrap().modified().unwrap();
    let t_noop = Instant::now();
    let noop = cluster.sbatch(&[script.to_str().unwrap()]);
    cluster.wait_gone(&noop, Duration::from_secs(300));
    let noop_s = t_noop.elapsed().as_secs_f64();
    for i in 0..4 {
        let log = std::fs::read_to_string(runs.path().join(format!("logs/job-{i}.log"))).unwrap();
        assert!(log.contains("done already"), "job {i}:\n{log}");
    }
    assert_eq!(
        std::fs::metadata(&results).unwrap().modified().unwrap(),
        before
    );

    vcl_tests::compare_tiny_study(&plan, &runs.path().join("compare"));
    eprintln!(
        "slurm: array of 4 (one cancelled) {array_s:.1} s, resumed job {resume_s:.1} s (from \
         epoch {resumed}), no-op array {noop_s:.1} s, whole test {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    drop(cluster);
}
