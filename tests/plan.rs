//! A study fanned out as jobs, run by hand as a scheduler would run them (the real Slurm
//! run is tests/slurm.rs): `vcl run` takes its index from the schedulers' variables, a
//! job killed with SIGKILL is seen as interrupted and resumes from its checkpoint, a
//! finished job is a no-op, a second copy of a running job is refused, the results
//! merge with `vcl compare --plan` and `vcl report`, and bad plans, indices and changed
//! data are refused with the flag, index or file named.

use std::path::Path;
use std::process::{Command, Output};

use std::time::{Duration, Instant};
use vcl_tests::{output_text as text, plan_status as status};

fn run(plan: &Path, env: (&str, &str)) -> Output {
    Command::new(vcl_tests::vcl_bin())
        .args(["run", "--plan"])
        .arg(plan)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env(env.0, env.1)
        .output()
        .expect("vcl runs")
}

fn state_of(plan: &Path, index: usize) -> String {
    status(plan)[index]["state"].as_str().unwrap().to_string()
}

fn wait_for_checkpoint(finetune: &Path, child: &mut std::process::Child) {
    let t = Instant::now();
    loop {
        let n = vcl_tests::checkpoints(finetune);
        if n > 0 {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before its first checkpoint"
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint in 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn jobs_run_by_index_resume_after_sigkill_and_merge() {
    let (_guard, data) = vcl_tests::tiny_dataset(5, 2);
    let runs = tempfile::tempdir().unwrap();
    let plan = vcl_tests::plan_tiny_study(&data, runs.path(), &[]);
    let planned: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    let ids: Vec<&str> = planned["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "subj01-untuned",
            "subj01-lh-V1v+V1d-cl",
            "subj02-untuned",
            "subj02-lh-V1v+V1d-cl"
        ]
    );
    assert_eq!(planned["jobs"][1]["finetune"]["epochs"], 15);
    assert!(
        planned["jobs"][1]["dataset_fingerprint"]["lh"]
            .as_str()
            .unwrap()
            .len()
            == 64
    );
    assert!(status(&plan).iter().all(|s| s["state"] == "missing"));

    // Job 0 by Slurm's variable.
    let out = run(&plan, ("SLURM_ARRAY_TASK_ID", "0"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("job 0 (subj01-untuned): done"),
        "{}",
        text(&out)
    );

    // Job 1 by Kubernetes' variable, killed with SIGKILL after its first checkpoint:
    // no chance to say so, yet status sees the lock gone.
    let job1 = runs.path().join("subj01-lh-V1v+V1d-cl");
    let mut child = Command::new(vcl_tests::vcl_bin())
        .args(["run", "--plan"])
        .arg(&plan)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env("JOB_COMPLETION_INDEX", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&job1.join("finetune"), &mut child);
    assert_eq!(state_of(&plan, 1), "running");
    let twin = run(&plan, ("SLURM_ARRAY_TASK_ID", "1"));
    assert!(
        !twin.status.success() && text(&twin).contains("running already"),
        "{}",
        text(&twin)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let st = &status(&plan)[1];
    assert_eq!(st["state"], "interrupted", "{st}");
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .contains("gone without a word"),
        "{st}"
    );

    let out = run(&plan, ("SLURM_ARRAY_TASK_ID", "1"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("resumed from the checkpoint of epoch"),
        "{}",
        text(&out)
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job1.join("state.json")).unwrap()).unwrap();
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{record}");
    assert!(
        attempts[0]["outcome"].is_null(),
        "the killed attempt said nothing"
    );
    assert!(attempts[1]["resumed_from_epoch"].as_u64().unwrap() >= 1);
    let history = std::fs::read_to_string(job1.join("finetune/history.csv")).unwrap();
    assert_eq!(
        history.lines().count(),
        16,
        "15 epochs, each once:\n{history}"
    );

    // A finished job again: nothing recomputed.
    let results = job1.join("fit/evaluation/results.json");
    let before = std::fs::metadata(&results).unwrap().modified().unwrap();
    let out = run(&plan, ("SLURM_ARRAY_TASK_ID", "1"));
    assert!(text(&out).contains("done already"), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(&results).unwrap().modified().unwrap(),
        before
    );

    for i in ["2", "3"] {
        let out = run(&plan, ("JOB_COMPLETION_INDEX", i));
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(status(&plan).iter().all(|s| s["state"] == "done"));

    let c = vcl_tests::compare_tiny_study(&plan, &runs.path().join("compare"));
    assert_eq!(c["runs"].as_array().unwrap().len(), 4);
    let out = vcl_tests::vcl(&["report", runs.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let page = std::fs::read_to_string(runs.path().join("report/index.html")).unwrap();
    assert!(page.contains("Comparison of methods") && page.contains("Fine-tuning"));
}

#[test]
fn bad_plans_indices_and_changed_data_are_refused_by_name() {
    let (_guard, data) = vcl_tests::tiny_dataset(6, 2);
    let runs = tempfile::tempdir().unwrap();
    let d = data.to_str().unwrap();
    let r = runs.path().to_str().unwrap();
    let plan_with = |flags: &[&str]| {
        let out_file = runs.path().join("bad.json");
        let mut args = vec!["plan", "--data", d, "--runs", r, "--out"];
        args.push(out_file.to_str().unwrap());
        args.extend_from_slice(flags);
        let out = vcl_tests::vcl(&args);
        assert!(!out.status.success(), "{flags:?} was accepted");
        text(&out)
    };
    assert!(plan_with(&["--methods", "pooled"]).contains("--methods pooled"));
    assert!(plan_with(&["--finetune", "--data /elsewhere"]).contains("--data is set by the plan"));
    assert!(plan_with(&["--finetune", "--epochs many"]).contains("--epochs"));
    assert!(plan_with(&["--rois", "V9"]).contains("'V9'"));
    assert!(plan_with(&["--subjects", "7"]).contains("unknown subject '7'"));
    assert!(plan_with(&["--rois", "V1v,V1v", "--methods", "cl"]).contains("share the folder"));
    assert!(plan_with(&["--sbatch", "s.sh", "--mem", "lots"]).contains("--mem"));

    let plan = vcl_tests::plan_tiny_study(&data, runs.path(), &[]);
    let out = run(&plan, ("SLURM_ARRAY_TASK_ID", "9"));
    assert!(
        text(&out).contains("job index 9: the plan has 4 jobs"),
        "{}",
        text(&out)
    );
    let out = run(&plan, ("UNRELATED", "1"));
    assert!(
        text(&out).contains("SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX"),
        "{}",
        text(&out)
    );
    let out = run(&plan, ("SLURM_ARRAY_TASK_ID", "one"));
    assert!(
        text(&out).contains("SLURM_ARRAY_TASK_ID=\"one\""),
        "{}",
        text(&out)
    );

    // subj02's responses change after planning: its jobs refuse to run on them.
    let fmri = data.join("subj02/training_split/training_fmri/lh_training_fmri.npy");
    let mut bytes = std::fs::read(&fmri).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&fmri, bytes).unwrap();
    let out = run(&plan, ("SLURM_ARRAY_TASK_ID", "2"));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("lh_training_fmri.npy") && text(&out).contains("data changed"),
        "{}",
        text(&out)
    );
    let out = vcl_tests::vcl(&["status", "--plan", plan.to_str().unwrap()]);
    let table = text(&out);
    assert!(
        table.contains("| 2 | subj02-untuned | failed |") && table.contains("job-2.log"),
        "{table}"
    );
    assert!(table.contains("sbatch --array=0,1,2,3"), "{table}");
}
