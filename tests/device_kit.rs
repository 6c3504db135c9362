//! The device kit and the GPU check's `--cpu` mode, so that neither rots between the
//! sessions that are lent a GPU: the kit is built (from the tests' own binaries, which
//! are larger than release ones, so its size bounds the release kit's), moved to a
//! fresh folder, and its check run there with none of this machine's library paths,
//! with the venv's python standing in for the GPU machine's.

use std::path::Path;
use std::process::Command;

use vcl_tests::{python, repo_root};

const KIT_LIMIT_BYTES: u64 = 60 << 20;

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable kit") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn the_kit_is_small_self_contained_and_its_cpu_check_passes() {
    let root = repo_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let built = tmp.path().join("built");
    let out = Command::new(root.join("scripts/device_kit.sh"))
        .args(["--profile", "dev", "--out"])
        .arg(&built)
        .current_dir(&root)
        .output()
        .expect("device_kit.sh runs");
    assert!(
        out.status.success(),
        "device_kit.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Elsewhere, as on the GPU machine: nothing may point back at the build's folder.
    let kit = tmp.path().join("elsewhere/kit");
    std::fs::create_dir_all(kit.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&built, &kit).expect("move the kit");

    let mut all = Vec::new();
    files(&kit, &mut all);
    let bytes: u64 = all
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert!(
        bytes < KIT_LIMIT_BYTES,
        "the kit is {bytes} bytes, over {KIT_LIMIT_BYTES}"
    );
    for name in ["vcl", "vcl-serve", "finetune_bench", "bench_ort", "load"] {
        let bin = kit.join("bin").join(name);
        let d = Command::new("readelf")
            .arg("-d")
            .arg(&bin)
            .output()
            .expect("readelf runs");
        let dynamic = String::from_utf8_lossy(&d.stdout);
        assert!(
            d.status.success() && dynamic.contains("NEEDED"),
            "{name}: {dynamic}"
        );
        assert!(
            !dynamic.contains("RUNPATH") && !dynamic.contains("RPATH"),
            "{name} keeps a library path of this machine:\n{dynamic}"
        );
    }
    let here = root.to_string_lossy().into_owned();
    for p in &all {
        let is_text = matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("sh" | "py" | "json")
        );
        if is_text {
            let text = std::fs::read_to_string(p).expect("text file");
            assert!(!text.contains(&here), "{} names {here}", p.display());
        }
    }
    assert!(kit.join("weights/mobilenet_v2.safetensors").is_file());
    assert!(
        std::fs::read_dir(kit.join("photos"))
            .expect("photos")
            .count()
            >= 8
    );

    let results = tmp.path().join("results");
    let mut check = Command::new(kit.join("scripts/device_check.sh"));
    check
        .arg("--cpu")
        .arg(&results)
        .env("VCL_CHECK_PYTHON", python())
        .env("TMPDIR", tmp.path())
        .current_dir(tmp.path());
    for v in [
        "LD_LIBRARY_PATH",
        "ORT_DYLIB_PATH",
        "LIBTORCH",
        "VCL_CACHE_DIR",
        "VCL_WEIGHTS_DIR",
        "VCL_PHOTOS_DIR",
        "VCL_DEVICE",
    ] {
        check.env_remove(v);
    }
    let out = check.output().expect("device_check.sh runs");
    let md = std::fs::read_to_string(results.join("results.md")).unwrap_or_default();
    assert!(
        out.status.success(),
        "device_check.sh --cpu failed:\n{md}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("results.json")).expect("results.json"),
    )
    .expect("results.json parses");
    assert_eq!(r["ok"], true, "{md}");
    let checks: Vec<&str> = r["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["check"].as_str())
        .collect();
    for want in [
        "CL losses, cpu vs CPU",
        "fp32: loss decreases",
        "a checkpoint resumes",
        "held-out mean r",
        "export",
        "serving answered",
    ] {
        assert!(
            checks.iter().any(|c| c.contains(want)),
            "no check '{want}' in {checks:?}"
        );
    }
    let step = &r["step"]["fp32"];
    assert!(step["vcl_s"].as_f64().unwrap_or(0.0) > 0.0, "{step}");
    assert!(step["ratio"].as_f64().unwrap_or(0.0) > 0.0, "{step}");
    assert_eq!(r["serve"].as_array().map(Vec::len), Some(3), "{md}");
    // What the runs wrote names the kit's and the work folder's paths, never this
    // repository's, but for the stand-in machine's python (the venv): the check
    // depends on nothing else here.
    let venv = format!("{here}/.venv/");
    let mut written = Vec::new();
    files(&results, &mut written);
    for p in written {
        let text = std::fs::read_to_string(&p)
            .unwrap_or_default()
            .replace(&venv, "");
        assert!(!text.contains(&here), "{} names {here}", p.display());
    }
}
