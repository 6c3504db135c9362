//! The deployment files a user applies as they are: the Kubernetes and KServe manifests
//! validate against Kubernetes' own schemas (kubernetes-validate, offline, pinned
//! version), name only environment variables vcl-serve reads, and give a pod the time
//! its drain needs; the Dockerfile passes hadolint, every ignored rule explained.

use std::path::Path;
use std::process::Command;

/// The Kubernetes release the manifests are validated against.
const KUBERNETES: &str = "1.33.0";

/// The tools venv's bin folder, set up once per test process.
fn tools() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let setup = Command::new(vcl_tests::repo_root().join("scripts/setup_tools.sh"))
            .status()
            .expect("scripts/setup_tools.sh runs");
        assert!(setup.success(), "scripts/setup_tools.sh failed");
        vcl_tests::repo_root().join(".cache/tools-venv/bin")
    })
}

/// The YAML documents of `path` as JSON values (PyYAML from the tools venv).
fn documents(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(tools().join("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn validate(file: &Path) -> (bool, String) {
    let out = Command::new(tools().join("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES])
        .arg(file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !text.contains("ERROR"), text)
}

/// Every container of the manifests, wherever it sits.
fn containers(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    let spec = &doc["spec"];
    let list = if doc["kind"] == "InferenceService" {
        &spec["predictor"]["containers"]
    } else {
        &spec["template"]["spec"]["containers"]
    };
    list.as_array().cloned().unwrap_or_default()
}

#[test]
fn kubernetes_and_kserve_manifests_validate_and_match_vcl_serve() {
    let root = vcl_tests::repo_root();
    let k8s = root.join("deploy/k8s/vcl-serve.yaml");
    let (ok, report) = validate(&k8s);
    assert!(ok, "{}:\n{report}", k8s.display());
    eprint!("{report}");
    let docs = documents(&k8s);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget"
        ]
    );

    // KServe's own kind has no schema here: its predictor is validated as the Pod it
    // becomes.
    let kserve = root.join("deploy/kserve/inferenceservice.yaml");
    let isvc = documents(&kserve).remove(0);
    assert_eq!(
        (isvc["apiVersion"].as_str(), isvc["kind"].as_str()),
        (Some("serving.kserve.io/v1beta1"), Some("InferenceService"))
    );
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor"},
        "spec": {
            "containers": isvc["spec"]["predictor"]["containers"],
            "volumes": isvc["spec"]["predictor"]["volumes"],
        },
    });
    let dir = tempfile::tempdir().unwrap();
    let pod_file = dir.path().join("predictor-pod.json");
    std::fs::write(&pod_file, pod.to_string()).unwrap();
    let (ok, report) = validate(&pod_file);
    assert!(
        ok,
        "{} (its predictor as a Pod):\n{report}",
        kserve.display()
    );

    // A broken manifest does fail: the validation is not a formality.
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&k8s).unwrap();
    std::fs::write(&broken, text.replacen("replicas: 2", "replicas: two", 1)).unwrap();
    assert!(
        !validate(&broken).0,
        "a Deployment with replicas: two validated"
    );

    // Every VCL_* variable the manifests set is one vcl-serve reads (a typo would
    // silently do nothing in a pod).
    let help = Command::new(vcl_tests::serve_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut all = docs.clone();
    all.push(isvc.clone());
    for doc in &all {
        for c in containers(doc) {
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default();
                if name.starts_with("VCL_") {
                    assert!(
                        help.contains(&format!("[env: {name}")),
                        "{} sets {name}, which vcl-serve does not read",
                        doc["kind"]
                    );
                }
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                let path = c[probe]["httpGet"]["path"].as_str().unwrap_or_default();
                assert!(
                    path.starts_with("/v2/health/"),
                    "{}: {probe} on {path}",
                    doc["kind"]
                );
            }
        }
    }

    // SIGTERM drains for the request timeout + 1 s after the preStop pause: the grace
    // period must cover both, or Kubernetes kills requests mid-answer.
    let deployment = &docs[0];
    let c = &containers(deployment)[0];
    let env = |name: &str| {
        c["env"]
            .as_array()
            .and_then(|v| v.iter().find(|e| e["name"] == name))
            .and_then(|e| e["value"].as_str())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let timeout_s = env("VCL_REQUEST_TIMEOUT_MS")
        .unwrap_or(30_000)
        .div_ceil(1000);
    let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(
        grace > pre_stop + timeout_s + 1,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} s + drain {} s",
        timeout_s + 1
    );
}

#[test]
fn dockerfile_passes_hadolint_with_every_ignore_explained() {
    let root = vcl_tests::repo_root();
    let out = Command::new(tools().join("hadolint"))
        .args(["--no-color", "--failure-threshold", "info"])
        .arg(root.join("Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("hadolint ignore=") {
            let why = i
                .checked_sub(1)
                .map(|j| lines[j].trim())
                .unwrap_or_default();
            assert!(
                why.starts_with('#') && why.len() > 20,
                "Dockerfile line {}: `{l}` without a reason on the line above",
                i + 1
            );
        }
    }
}

/// `vcl plan --k8s`: the Indexed Job of a tiny study validates against the same pinned
/// Kubernetes, has one completion per job, runs `vcl run --plan` with the plan's paths
/// mounted, asks for the GPUs, memory and time given; a plan whose files a pod could
/// not see is refused with the file named.
#[test]
fn a_plans_indexed_job_validates_and_asks_for_what_was_given() {
    let (_guard, data) = vcl_tests::tiny_dataset(8, 2);
    let runs = tempfile::tempdir().unwrap();
    let weights = vcl_dataset::paths::weights_dir().join("mobilenet_v2.safetensors");
    let outside = runs.path().join("refused.yaml");
    let out = vcl_tests::vcl(&[
        "plan",
        "--data",
        data.to_str().unwrap(),
        "--subjects",
        "1",
        "--hemispheres",
        "lh",
        "--rois",
        "V1v",
        "--methods",
        "cl",
        "--runs",
        runs.path().to_str().unwrap(),
        "--out",
        runs.path().join("plan.json").to_str().unwrap(),
        "--k8s",
        outside.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains("mobilenet_v2.safetensors")
            && said.contains("a pod sees only"),
        "{said}"
    );
    assert!(!outside.exists() && !runs.path().join("plan.json").exists());

    let local_weights = runs.path().join("mobilenet_v2.safetensors");
    std::fs::copy(&weights, &local_weights).unwrap();
    let manifest = runs.path().join("study.yaml");
    let plan = vcl_tests::plan_tiny_study(
        &data,
        runs.path(),
        &[
            "--weights",
            local_weights.to_str().unwrap(),
            "--k8s",
            manifest.to_str().unwrap(),
            "--gpus",
            "1",
            "--cpus",
            "8",
            "--mem",
            "32G",
            "--time",
            "1-00:00:00",
            "--max-parallel",
            "2",
            "--image",
            "registry.example/vcl-trainer:0.1",
        ],
    );
    let (ok, report) = validate(&manifest);
    assert!(ok, "{}:\n{report}", manifest.display());
    let docs = documents(&manifest);
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 4);
    assert_eq!(job["spec"]["parallelism"], 2);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["activeDeadlineSeconds"], 86_400);
    let c = &containers(job)[0];
    assert_eq!(c["image"], "registry.example/vcl-trainer:0.1");
    let plan_abs = std::fs::canonicalize(&plan).unwrap();
    assert_eq!(
        c["command"],
        serde_json::json!(["vcl", "run", "--plan", plan_abs.to_str().unwrap()])
    );
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(c["resources"]["requests"]["memory"], "32768Mi");
    assert_eq!(c["resources"]["requests"]["cpu"], "8");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let data_abs = std::fs::canonicalize(&data).unwrap();
    let runs_abs = std::fs::canonicalize(runs.path()).unwrap();
    assert_eq!(
        mounts,
        [data_abs.to_str().unwrap(), runs_abs.to_str().unwrap()]
    );
}
