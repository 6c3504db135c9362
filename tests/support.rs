//! Helpers shared by the end-to-end tests: the repository's paths, the venv's
//! Python, and the `vcl` binary built from this workspace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// The project's venv python (set-up makes it); tests that need numpy, sklearn or
/// onnx run their checks through it.
pub fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// Runs `python -c code args...` and returns stdout, panicking with stderr on failure.
pub fn run_python(code: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("the venv's python runs (scripts/setup.sh makes it)");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `vcl` binary of this workspace, built once per test process with the same
/// profile as the tests.
pub fn vcl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("vcl-trainer", "vcl"))
}

/// The `vcl-serve` binary of this workspace, built once per test process.
pub fn serve_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("vcl-server", "vcl-serve"))
}

/// Builds `package`'s binary `bin` in the debug profile (a no-op when `cargo build
/// --workspace --bins` ran first) and returns its path.
fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(repo_root())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(bin)
}

/// Runs `vcl args...` and returns its output, whatever its exit status.
pub fn vcl(args: &[&str]) -> Output {
    Command::new(vcl_bin())
        .args(args)
        .output()
        .expect("vcl starts")
}

/// A tiny in-silico dataset in a fresh temporary folder: (the folder's guard, the
/// dataset root). Seconds to make; the tests' common ground.
pub fn tiny_dataset(seed: u64, subjects: u32) -> (tempfile::TempDir, PathBuf) {
    preset_dataset(vcl_dataset::synth::Preset::Tiny, seed, subjects)
}

/// An in-silico dataset of `preset` in a fresh temporary folder, as [`tiny_dataset`].
/// The demo preset (900 images a subject) takes some seconds more; for the tests whose
/// claim needs encoders fitted on more than tiny's 36 training images.
pub fn preset_dataset(
    preset: vcl_dataset::synth::Preset,
    seed: u64,
    subjects: u32,
) -> (tempfile::TempDir, PathBuf) {
    use vcl_dataset::{paths, synth};
    let dir = tempfile::tempdir().expect("a temporary folder");
    let out = dir.path().join("data");
    synth::synthesize(&synth::SynthConfig {
        preset,
        out: out.clone(),
        seed,
        subjects: Some(subjects),
        photos_dir: paths::photos_dir(),
    })
    .expect("synthesis (scripts/setup.sh installs the photos)");
    (dir, out)
}

/// The test suite's fit: `vcl fit`'s own defaults (as `FitConfig`'s flags define them)
/// for subj01 of `data` at 64 px, a quarter held out, batches of 16, conv taps capped
/// at 8192 values. Tests change the fields they are about.
pub fn fit_config(data: &Path) -> vcl_trainer::model::encoding::FitConfig {
    let flags = [
        "--subjects=subj01",
        "--input-size=64",
        "--heldout=0.25",
        "--batch-size=16",
        "--max-feature-dim=8192",
    ];
    let args = [std::ffi::OsStr::new("--data"), data.as_os_str()]
        .into_iter()
        .chain(flags.iter().map(std::ffi::OsStr::new));
    vcl_trainer::config::from_flags(args).expect("the test suite's fit flags parse")
}

/// `vcl plan` of the suite's 4-job study on a 2-subject tiny dataset: subj01 and subj02,
/// left V1v+V1d, untuned and cl (15 epochs at 64 px, one checkpoint every ~0.5 s), into
/// `runs`; `extra` adds flags (--sbatch, resources). Returns RUNS/plan.json.
pub fn plan_tiny_study(data: &Path, runs: &Path, extra: &[&str]) -> PathBuf {
    let plan = runs.join("plan.json");
    let (d, r, p) = (data.to_str(), runs.to_str(), plan.to_str());
    let (Some(d), Some(r), Some(p)) = (d, r, p) else {
        panic!("test paths are UTF-8");
    };
    let mut args = vec![
        "plan",
        "--data",
        d,
        "--subjects",
        "1,2",
        "--hemispheres",
        "lh",
        "--rois",
        "V1v+V1d",
        "--methods",
        "untuned,cl",
        "--input-size",
        "64",
        "--heldout",
        "0.25",
        "--finetune",
        "--epochs 15 --batch-size 8",
        "--fit",
        "--batch-size 16 --max-feature-dim 8192",
        "--runs",
        r,
        "--out",
        p,
    ];
    args.extend_from_slice(extra);
    let out = vcl(&args);
    assert!(
        out.status.success(),
        "vcl plan failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    plan
}

/// A command's stdout and stderr, for assertions and their messages.
pub fn output_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `vcl status --json --plan PLAN`: one object per job, in plan order.
pub fn plan_status(plan: &Path) -> Vec<serde_json::Value> {
    let out = vcl(&["status", "--json", "--plan", &plan.to_string_lossy()]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("vcl status --json prints JSON")
}

/// Checkpoint files a fine-tuning run folder holds so far.
pub fn checkpoints(finetune: &Path) -> usize {
    std::fs::read_dir(finetune.join("checkpoints"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// `vcl compare --plan PLAN --out OUT`, then the tiny study's merge checked: both
/// subjects under untuned and cl. Returns comparison.json.
pub fn compare_tiny_study(plan: &Path, out: &Path) -> serde_json::Value {
    let done = vcl(&[
        "compare",
        "--plan",
        &plan.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]);
    assert!(done.status.success(), "{}", output_text(&done));
    let text = std::fs::read_to_string(out.join("comparison.json")).expect("comparison.json");
    let c: serde_json::Value = serde_json::from_str(&text).expect("comparison.json is JSON");
    assert_eq!(c["methods"], serde_json::json!(["untuned", "cl"]));
    assert_eq!(
        c["rois"][0]["subjects"],
        serde_json::json!(["subj01", "subj02"])
    );
    c
}
