//! `vcl-data`, the torch-free binary: synthesizes a tiny brain and inspects it.

use std::process::Command;

#[test]
fn vcl_data_synthesizes_and_inspects_without_libtorch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tiny");
    let bin = env!("CARGO_BIN_EXE_vcl-data");
    let out = Command::new(bin)
        .args([
            "synth",
            "--preset",
            "tiny",
            "--seed",
            "3",
            "--subjects",
            "1",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("subj01"), "{said}");

    let out = Command::new(bin)
        .arg("inspect")
        .arg(&data)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["subjects"].as_array().map(Vec::len), Some(1));
    assert_eq!(summary["subjects"][0]["subject"], "subj01");

    // A folder that is not a dataset is named in the error.
    let out = Command::new(bin)
        .arg("inspect")
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere"), "{err}");
}
