//! vcl-serve end to end on a real exported model: a tiny in-silico fit exported at
//! 64 px is loaded from a model repository (beside a corrupt model, which is refused
//! while the others serve, and a `.partial-*` folder, which is skipped), served over
//! HTTP with ONNX Runtime, and queried from Python: base64 images, .npy tensors
//! (compared with Python's onnxruntime on the same file), the official `tritonclient`
//! over KServe v2, and 16 concurrent requests that must batch (seen in /metrics).
//! Then the `vcl-serve` binary itself: a new version swaps in on SIGHUP while requests
//! keep being answered, and SIGTERM drains a request in flight before it exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vcl_server::http::{start_background, AppState};
use vcl_server::repository::{self, Live};
use vcl_server::runtime::DeviceChoice;
use vcl_server::Config;
use vcl_tests::{python, run_python, serve_bin};
use vcl_trainer::export::{export, ExportOptions};
use vcl_trainer::features::backbones::Device;
use vcl_trainer::model::encoding::{self, FitConfig};

/// The tiny fit's repository, made once per test process under target/tmp; each test
/// copies what it changes.
fn shared_export() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve_e2e");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        exported(&dir)
    })
}

/// A model repository with the tiny fit's two hemisphere models (64 px).
fn exported(dir: &Path) -> PathBuf {
    // Dropped at the end of this function: the data is only read while fitting.
    let (_data_dir, data) = vcl_tests::tiny_dataset(11, 1);
    let run = dir.join("run");
    let cfg = FitConfig {
        rois: vec!["V1".into(), "early".into()],
        taps: vec!["features.6".into()],
        max_feature_dim: Some(1000),
        ..vcl_tests::fit_config(&data)
    };
    encoding::fit(&cfg, &run, &dir.join("cache"), Device::Cpu).expect("fit");
    let repo = dir.join("exports");
    export(&run, &repo, &ExportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    repo
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

const CLIENT: &str = r#"
import base64, glob, io, json, subprocess, sys, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor
import numpy as np
url, model, onnx_path, photos = sys.argv[1:5]
try:
    import tritonclient.http as th
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "tritonclient[http]==2.73.0"], check=True)
    import tritonclient.http as th

def post(path, body, ctype="application/json", accept=None):
    h = {"content-type": ctype}
    if accept: h["accept"] = accept
    req = urllib.request.Request(url + path, data=body, headers=h)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

def get(path):
    with urllib.request.urlopen(url + path) as r:
        return json.loads(r.read())

models = [m["name"] for m in get("/v1/models")["models"]]
assert model in models and "corrupt-model" not in models, models
meta = get(f"/v1/models/{model}")
assert meta["manifest"]["input"]["height"] == 64 and meta["provider"] == "cpu", meta
n_vox = meta["voxels"]

# Base64 photos, ROI means and voxels.
files = sorted(glob.glob(photos + "/*"))[:4]
imgs = [base64.b64encode(open(f, "rb").read()).decode() for f in files]
s, body = post(f"/v1/models/{model}/predict", json.dumps({"images": imgs, "reduce": "roi"}).encode())
assert s == 200, body
ans = json.loads(body)
assert len(ans["predictions"]) == len(files) and len(ans["predictions"][0]) == len(meta["rois"]), ans

# .npy in and out equals Python's onnxruntime on the same model file.
import onnxruntime as ort
x = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
buf = io.BytesIO(); np.save(buf, x)
s, body = post(f"/v1/models/{model}/predict", buf.getvalue(), "application/x-npy", "application/x-npy")
assert s == 200, body
y = np.load(io.BytesIO(body))
ref = ort.InferenceSession(onnx_path).run(["voxels"], {"images": x})[0]
assert y.shape == (5, n_vox) and np.abs(y - ref).max() < 1e-4, np.abs(y - ref).max()

# A bad request among good ones disturbs nothing.
s, body = post(f"/v1/models/{model}/predict", b'{"images": ["%%%"]}')
assert s == 400 and json.loads(body)["status"] == 400, body

# Rank.
s, body = post(f"/v1/models/{model}/rank", json.dumps({"images": imgs, "objective": {"maximize_roi": meta["rois"][0]}, "top_k": 2}).encode())
assert s == 200, body
top = json.loads(body)["top"]
assert len(top) == 2 and top[0]["score"] >= top[1]["score"], top

# The official KServe v2 client.
c = th.InferenceServerClient(url.split("://")[1])
assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(model)
md = c.get_model_metadata(model)
assert md["inputs"][0]["shape"] == [-1, 3, 64, 64], md
inp = th.InferInput("images", list(x.shape), "FP32"); inp.set_data_from_numpy(x, binary_data=False)
outs = [th.InferRequestedOutput(n, binary_data=False) for n in ("voxels", "roi_means")]
r = c.infer(model, [inp], outputs=outs)
assert np.abs(r.as_numpy("voxels") - ref).max() < 1e-4
assert r.as_numpy("roi_means").shape == (5, len(meta["rois"]))
# tritonclient's defaults: the binary tensor data extension both ways.
inp = th.InferInput("images", list(x.shape), "FP32"); inp.set_data_from_numpy(x)
r = c.infer(model, [inp])
assert np.abs(r.as_numpy("voxels") - ref).max() < 1e-4
r = c.infer(model, [inp], outputs=[th.InferRequestedOutput("roi_means")])
assert r.as_numpy("roi_means").shape == (5, len(meta["rois"])) and r.as_numpy("voxels") is None

# 16 concurrent single-image requests: no errors, and batches over 1.
def one(i):
    return post(f"/v1/models/{model}/predict", json.dumps({"images": [imgs[i % len(imgs)]], "reduce": "roi"}).encode())
with ThreadPoolExecutor(16) as ex:
    got = list(ex.map(one, range(64)))
assert all(s == 200 for s, _ in got), [s for s, _ in got]
for i, (s, body) in enumerate(got):
    want = ans["predictions"][i % len(imgs)]
    assert np.allclose(json.loads(body)["predictions"][0], want, atol=1e-4), i
text = urllib.request.urlopen(url + "/metrics").read().decode()
def metric(name):
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name) and f'model="{model}"' in l)
bsum, bcount = metric("vcl_batch_size_sum"), metric("vcl_batch_size_count")
assert bsum > bcount, f"no batch over one image: sum {bsum} count {bcount}"
assert 'provider="cpu"' in text and "vcl_requests_total" in text
print(f"ok: {bcount:.0f} batches for {bsum:.0f} images")
"#;

#[test]
fn serves_an_exported_repository_to_python_and_tritonclient() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("exports");
    copy_dir(shared_export(), &repo);
    let model = "subj01-lh-untuned-mobilenet_v2";
    // A corrupt model (its file changed after export) and an unfinished version.
    let corrupt = repo.join("corrupt-model/1");
    copy_dir(&repo.join(model).join("1"), &corrupt);
    std::fs::write(corrupt.join("model.onnx"), b"not a model").unwrap();
    std::fs::create_dir_all(repo.join(model).join(".partial-2")).unwrap();

    let handle = vcl_server::metrics::prometheus_builder()
        .install_recorder()
        .unwrap();
    let mut cfg = Config::defaults();
    cfg.model_repository = repo.clone();
    cfg.device = DeviceChoice::Cpu;
    cfg.max_queue_delay_ms = 20;
    cfg.intra_threads = 2;
    // The corrupt model is refused and listed; the others serve and the server is
    // ready (strict readiness would answer 503 while a model folder serves nothing).
    cfg.strict_readiness = false;
    let rt = repository::runtime(&cfg).unwrap();
    let live = Live::load(&cfg, repository::ort_opener(&cfg, rt).unwrap()).unwrap();
    let loaded = live.snapshot();
    assert!(
        loaded.failed["corrupt-model"].contains("SHA-256"),
        "{:?}",
        loaded.failed
    );
    let names: Vec<&String> = loaded.models.keys().collect();
    assert_eq!(
        names,
        [
            "subj01-lh-untuned-mobilenet_v2",
            "subj01-rh-untuned-mobilenet_v2"
        ]
    );
    for _ in 0..500 {
        if loaded.all_ready() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let state = AppState::new(
        Arc::new(live),
        Arc::new(cfg),
        Arc::new(move || handle.render()),
    );
    let (addr, server) = start_background(state, "127.0.0.1", 0).unwrap();
    let onnx = repo.join(model).join("1/model.onnx");
    let url = PathBuf::from(format!("http://{addr}"));
    assert!(python().exists());
    let out = run_python(
        CLIENT,
        &[
            &url,
            Path::new(model),
            &onnx,
            &vcl_dataset::paths::photos_dir(),
        ],
    );
    eprintln!("{out}");
    assert!(out.contains("ok:"), "{out}");
    drop(server);
}

/// Drives a running `vcl-serve` (pid, url): a SIGHUP reload under load, then a SIGTERM
/// while a long request is in flight.
const SIGNALS: &str = r#"
import io, json, os, shutil, signal, sys, threading, time, urllib.request, urllib.error
import numpy as np
url, model, repo, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def get(path):
    try:
        with urllib.request.urlopen(url + path, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, str(e).encode()

def predict(x):
    buf = io.BytesIO(); np.save(buf, x.astype(np.float32))
    req = urllib.request.Request(url + f"/v1/models/{model}/predict", data=buf.getvalue(),
        headers={"content-type": "application/x-npy"})
    with urllib.request.urlopen(req, timeout=120) as r:
        v = json.loads(r.read())
    return v["version"], np.asarray(v["predictions"], dtype=np.float32)

def metric(name, **labels):
    text = get("/metrics")[1].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            if line[len(name)] in "{ ":
                total += float(line.rsplit(" ", 1)[1])
    return total

for _ in range(600):
    if get("/readyz")[0] == 200: break
    time.sleep(0.1)
else:
    sys.exit("never ready")
info = json.loads(get(f"/v1/models/{model}")[1])
h, w = info["input"]["height"], info["input"]["width"]
x = np.random.default_rng(0).random((3, 3, h, w), dtype=np.float32)
v, before = predict(x)
assert v == 1, v

# A second version (the same weights) published the way vcl export publishes: written
# aside, then renamed into place.
part = f"{repo}/{model}/.partial-2"
shutil.copytree(f"{repo}/{model}/1", part)
with open(f"{part}/manifest.json") as f: mf = json.load(f)
mf["model"]["version"] = 2
with open(f"{part}/manifest.json", "w") as f: json.dump(mf, f)
os.rename(part, f"{repo}/{model}/2")

seen, errors, stop = [], [], threading.Event()
def load():
    while not stop.is_set():
        try:
            ver, y = predict(x)
            seen.append(ver)
            if not np.allclose(y, before, atol=1e-5): errors.append(f"v{ver} differs")
        except Exception as e:
            errors.append(repr(e))
threads = [threading.Thread(target=load) for _ in range(4)]
for t in threads: t.start()
time.sleep(0.3)
os.kill(pid, signal.SIGHUP)
t0 = time.time()
while json.loads(get(f"/v1/models/{model}")[1])["version"] != 2:
    assert time.time() - t0 < 120, "version 2 never served"
    time.sleep(0.05)
time.sleep(0.3)
stop.set()
for t in threads: t.join()
assert not errors, errors[:5]
assert 1 in seen and 2 in seen, sorted(set(seen))
assert metric("vcl_repository_reloads_total", result="ok") >= 1
assert metric("vcl_model_info", model=model, version="1") == 0
assert metric("vcl_model_info", model=model, version="2") == 1
print(f"reload ok: {len(seen)} answers during the swap, versions {sorted(set(seen))}")

# SIGTERM while a long request runs: it must still be answered in full.
big = np.random.default_rng(1).random((384, 3, h, w), dtype=np.float32)
answer = {}
def long_request():
    try: answer["rows"] = predict(big)[1].shape[0]
    except Exception as e: answer["error"] = repr(e)
t = threading.Thread(target=long_request); t.start()
t0 = time.time()
while metric("vcl_queue_depth", model=model) <= 0:
    assert time.time() - t0 < 60 and t.is_alive(), f"the request never queued: {answer}"
    time.sleep(0.005)
os.kill(pid, signal.SIGTERM)
t.join()
assert answer.get("rows") == 384, answer
print("drain ok: 384 rows after SIGTERM")
"#;

#[test]
fn vcl_serve_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("exports");
    let model = "subj01-lh-untuned-mobilenet_v2";
    copy_dir(&shared_export().join(model), &repo.join(model));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("serve.log");
    let logfile = std::fs::File::create(&log).unwrap();
    // Batches of one image make the drained request long enough to be caught in flight.
    let mut child = Command::new(serve_bin())
        .args(["--model-repository", repo.to_str().unwrap()])
        .args(["--port", &port.to_string(), "--device", "cpu"])
        .args(["--max-batch-size", "1", "--intra-threads", "1"])
        .env("RUST_LOG", "info")
        .stdout(logfile.try_clone().unwrap())
        .stderr(logfile)
        .spawn()
        .expect("vcl-serve starts");
    let url = PathBuf::from(format!("http://127.0.0.1:{port}"));
    let pid = PathBuf::from(child.id().to_string());
    let out = Command::new(python())
        .arg("-c")
        .arg(SIGNALS)
        .args([
            url.as_os_str(),
            model.as_ref(),
            repo.as_os_str(),
            pid.as_os_str(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    if !out.status.success() {
        let _ = child.kill();
        panic!(
            "client failed:\n{stdout}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            read_log()
        );
    }
    eprintln!("{stdout}");
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("vcl-serve did not stop after SIGTERM:\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = read_log();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("repository reloaded"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

/// The Dockerfile cannot be built here (no Docker engine); what can drift from the
/// workspace is checked instead: the ONNX Runtime release (the CPU wheel's pin), every
/// workspace member in the build stage, a toolchain no older than `rust-version`, and
/// the heavy local folders kept out of the build context.
#[test]
fn dockerfile_follows_the_workspace() {
    let root = vcl_tests::repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let docker = read("Dockerfile");
    let ort = read("scripts/requirements.txt")
        .lines()
        .find_map(|l| l.trim().strip_prefix("onnxruntime==").map(str::to_string))
        .expect("requirements.txt pins onnxruntime");
    assert!(
        docker.contains(&format!("ARG ONNXRUNTIME_VERSION={ort}")),
        "the Dockerfile's ONNX Runtime is not the pinned {ort}"
    );
    assert!(docker.contains("\"onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_VERSION}\""));
    assert!(
        docker.contains("\"onnxruntime==${ONNXRUNTIME_VERSION}\""),
        "the CPU variant"
    );
    let cargo = read("Cargo.toml");
    let members = cargo
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .expect("workspace members");
    let members: Vec<&str> = members.split('"').skip(1).step_by(2).collect();
    assert!(members.len() >= 4, "{members:?}");
    for m in members.iter().chain(&["build-support"]) {
        assert!(
            docker.lines().any(|l| l.trim() == format!("COPY {m} {m}")),
            "the Dockerfile does not copy {m}"
        );
    }
    let version = |s: &str| -> (u32, u32) {
        let mut it = s.split('.').map(|x| x.parse::<u32>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    let wanted = cargo
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .expect("rust-version")
        .trim_matches('"');
    let image = docker
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("a rust build stage");
    let image = image.split(['-', ' ']).next().unwrap();
    assert!(
        version(image) >= version(wanted),
        "rust:{image} is older than rust-version {wanted}"
    );
    let ignore = read(".dockerignore");
    for p in ["target", ".venv", ".cache", "exports"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore lacks {p}"
        );
    }
}

/// A `vcl-serve` child process on a free port, killed on drop.
struct Served {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(repo: &Path, dir: &Path, env: &[(&str, &str)]) -> Served {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.join(format!("serve-{port}.log"));
    let logfile = std::fs::File::create(&log).unwrap();
    let child = Command::new(serve_bin())
        .args(["--model-repository", repo.to_str().unwrap()])
        .args(["--port", &port.to_string(), "--device", "cpu"])
        .args(["--intra-threads", "1"])
        .envs(env.iter().copied())
        .stdout(logfile.try_clone().unwrap())
        .stderr(logfile)
        .spawn()
        .expect("vcl-serve starts");
    let url = format!("http://127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Served { child, url, log }
}

/// schemathesis (pinned, scripts/setup_tools.sh) against the real `vcl-serve` on a real
/// export and its own /openapi.json: every operation, every check but positive-data
/// acceptance (a schema cannot say "a PNG the model can take"), with and without an
/// API key: no 5xx, no response off the schema, every schema-violating request refused.
#[test]
fn vcl_serve_conforms_to_its_openapi_document() {
    let setup = Command::new(vcl_tests::repo_root().join("scripts/setup_tools.sh"))
        .status()
        .unwrap();
    assert!(setup.success(), "scripts/setup_tools.sh failed");
    let st = vcl_tests::repo_root().join(".cache/tools-venv/bin/schemathesis");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("exports");
    copy_dir(shared_export(), &repo);
    for (label, env, header) in [
        ("no key", vec![], None),
        (
            "with a key",
            vec![("VCL_API_KEY", "k3y"), ("VCL_ADMIN_API_KEY", "adm1n")],
            Some("Authorization: Bearer k3y"),
        ),
    ] {
        let served = spawn_serve(&repo, dir.path(), &env);
        let mut cmd = Command::new(&st);
        cmd.current_dir(dir.path())
            .args(["run", &format!("{}/openapi.json", served.url)])
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args(["--max-examples", "60", "--workers", "2", "--seed", "7"])
            .args(["--generation-database", "none", "--request-timeout", "30"]);
        if let Some(h) = header {
            cmd.args(["-H", h]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains("generated") || l.contains("passed") || l.contains("failed"))
            .collect();
        eprintln!("schemathesis ({label}): {}", summary.join(" | "));
        if !out.status.success() {
            let tail: String = stdout
                .chars()
                .rev()
                .take(20_000)
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            panic!(
                "schemathesis ({label}) failed:\n{tail}\n{}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&served.log).unwrap_or_default()
            );
        }
        assert!(
            stdout.contains("passed") && !stdout.contains("failure"),
            "{stdout}"
        );
        let log = std::fs::read_to_string(&served.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "{log}");
    }
}
