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

/// Posts a .npy batch to an fwRF model and compares the answer with libtorch's.
const FWRF_CLIENT: &str = r#"
import io, json, sys, urllib.request
import numpy as np
url, model, x_path, want_path = sys.argv[1:5]
meta = json.loads(urllib.request.urlopen(url + f"/v1/models/{model}").read())
assert all(r["encoder"] == "fwrf" and r["pca_components"] == 0 for r in meta["manifest"]["rois"]), meta
buf = io.BytesIO(); np.save(buf, np.load(x_path))
req = urllib.request.Request(url + f"/v1/models/{model}/predict", data=buf.getvalue(),
    headers={"content-type": "application/x-npy", "accept": "application/x-npy"})
y = np.load(io.BytesIO(urllib.request.urlopen(req).read()))
want = np.load(want_path)
rel = np.abs(y - want).max() / max(np.sqrt((want ** 2).mean()), 1e-12)
assert y.shape == want.shape and rel < 1e-4, (y.shape, want.shape, rel)
print("ok: fwrf served, max rel diff", rel)
"#;

/// An fwRF fit's export serves as PCA + ridge models do: the manifest says `fwrf`, and
/// the server's voxels are libtorch's for the same images.
#[test]
fn serves_an_fwrf_export_as_libtorch_predicts_it() {
    use vcl_trainer::export::contract::manifest::Encoder;
    use vcl_trainer::export::{heldout_images, load_run, predict_libtorch};
    let dir = tempfile::tempdir().unwrap();
    let (_data_dir, data) = vcl_tests::tiny_dataset(11, 1);
    let run = dir.path().join("run");
    let cfg = FitConfig {
        hemispheres: vec![vcl_dataset::algonauts::Hemisphere::Left],
        rois: vec!["V1".into(), "floc-faces".into()],
        taps: vec!["features.6".into()],
        encoder: Encoder::Fwrf,
        fwrf_positions: 6,
        ..vcl_tests::fit_config(&data)
    };
    encoding::fit(&cfg, &run, &dir.path().join("cache"), Device::Cpu).expect("fwrf fit");
    let repo = dir.path().join("exports");
    export(&run, &repo, &ExportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let contents = load_run(&run, false).unwrap();
    let subject = vcl_dataset::algonauts::Dataset::open(&data)
        .unwrap()
        .subject("subj01")
        .unwrap();
    let (_, x) = heldout_images(&contents.record.config, &subject, 4).unwrap();
    let want = predict_libtorch(&contents.backbone, &contents.bundles[0].set, &x).unwrap();
    let (xp, wp) = (dir.path().join("x.npy"), dir.path().join("want.npy"));
    let to_vec = |t: &vcl_trainer::model::ridge::Tensor| {
        Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap()
    };
    let xs: Vec<usize> = x.size().iter().map(|&d| d as usize).collect();
    let x4 = ndarray::Array4::from_shape_vec((xs[0], xs[1], xs[2], xs[3]), to_vec(&x)).unwrap();
    vcl_dataset::npy::write(&xp, &x4).unwrap();
    let ws: Vec<usize> = want.voxels.size().iter().map(|&d| d as usize).collect();
    let w2 = ndarray::Array2::from_shape_vec((ws[0], ws[1]), to_vec(&want.voxels)).unwrap();
    vcl_dataset::npy::write(&wp, &w2).unwrap();

    let mut cfg = Config::defaults();
    cfg.model_repository = repo;
    cfg.device = DeviceChoice::Cpu;
    cfg.intra_threads = 2;
    let rt = repository::runtime(&cfg).unwrap();
    let live = Live::load(&cfg, repository::ort_opener(&cfg, rt).unwrap()).unwrap();
    for _ in 0..500 {
        if live.snapshot().all_ready() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let state = AppState::new(Arc::new(live), Arc::new(cfg), Arc::new(String::new));
    let (addr, server) = start_background(state, "127.0.0.1", 0).unwrap();
    let url = PathBuf::from(format!("http://{addr}"));
    let model = Path::new("subj01-lh-untuned-mobilenet_v2");
    let out = run_python(FWRF_CLIENT, &[&url, model, &xp, &wp]);
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_serve(repo: &Path, dir: &Path, env: &[(&str, &str)]) -> Served {
    spawn_serve_on(repo, dir, env, free_port())
}

fn spawn_serve_on(repo: &Path, dir: &Path, env: &[(&str, &str)], port: u16) -> Served {
    let log = dir.join(format!("serve-{port}.log"));
    let logfile = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
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

/// The image's client: the container against the host's vcl-serve on the same models,
/// a version published while it runs, a corrupt model beside the good ones, and a stop
/// while a long request is in flight.
const IMAGE_CLIENT: &str = r#"
import io, json, os, shutil, subprocess, sys, threading, time, urllib.request, urllib.error
import numpy as np
host, box, model, repo, name = sys.argv[1:6]

def call(url, path, body=None, ctype="application/x-npy"):
    req = urllib.request.Request(url + path, data=body, headers={"content-type": ctype, "accept": "application/x-npy"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

def npy(x):
    buf = io.BytesIO(); np.save(buf, x); return buf.getvalue()

until = time.time() + 90
while True:
    try:
        if call(box, "/readyz")[0] == 200: break
    except OSError: pass
    assert time.time() < until, "the container never turned ready"
    time.sleep(0.3)

x = np.random.default_rng(7).random((5, 3, 64, 64), dtype=np.float32)
answers = []
for url in (host, box):
    s, body = call(url, f"/v1/models/{model}/predict", npy(x))
    assert s == 200, body
    answers.append(np.load(io.BytesIO(body)))
diff = float(np.abs(answers[0] - answers[1]).max())
assert answers[0].shape == answers[1].shape and diff <= 1e-5, diff
print(f"image vs host: max abs diff {diff:.2e} over {answers[0].size} values")

# Version 2 published on the host into the read-only mount as an export does (staged,
# then renamed), a corrupt model beside it, then SIGHUP to the container.
v1 = f"{repo}/{model}/1"
staged = f"{repo}/{model}/.partial-1-test"
shutil.copytree(v1, staged)
with open(f"{staged}/manifest.json") as f: m = json.load(f)
m["model"]["version"] = 2
with open(f"{staged}/manifest.json", "w") as f: json.dump(m, f, indent=2)
os.rename(staged, f"{repo}/{model}/2")
shutil.copytree(v1, f"{repo}/corrupt-model/1")
with open(f"{repo}/corrupt-model/1/model.onnx", "wb") as f: f.write(b"not an onnx model")
subprocess.run(["podman", "--runtime", "runc", "kill", "-s", "HUP", name], check=True, capture_output=True)
until = time.time() + 60
while True:
    meta = json.loads(call(box, f"/v1/models/{model}")[1])
    if meta.get("version") == 2: break
    assert time.time() < until, meta
    time.sleep(0.2)
ready = json.loads(call(box, "/readyz")[1])
assert "corrupt-model" in ready["failed"], ready
served = [m["name"] for m in json.loads(call(box, "/v1/models")[1])["models"]]
assert model in served and "corrupt-model" not in served, served
assert call(box, f"/v1/models/{model}/predict", npy(x))[0] == 200
print(f"after SIGHUP: version 2 serves; corrupt-model refused ({ready['failed']['corrupt-model'][:60]}...)")

# podman stop while a long request is in flight: every row comes back.
big = np.random.default_rng(8).random((192, 3, 64, 64), dtype=np.float32)
got = {}
t = threading.Thread(target=lambda: got.update(r=call(box, f"/v1/models/{model}/predict", npy(big))))
t.start(); time.sleep(0.5)
subprocess.run(["podman", "--runtime", "runc", "stop", "-t", "60", name], check=True, capture_output=True)
t.join()
s, body = got["r"]
assert s == 200, body[:200]
assert np.load(io.BytesIO(body)).shape[0] == 192
code = subprocess.run(["podman", "--runtime", "runc", "inspect", name, "--format", "{{.State.ExitCode}}"], check=True, capture_output=True, text=True).stdout.strip()
assert code == "0", code
print("podman stop: 192 of 192 rows answered, exit code 0")
"#;

/// Removes the container when the test ends, however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["--runtime", "runc", "rm", "-f", &self.0])
            .output();
    }
}

/// Why podman cannot build and run images here, if it cannot.
fn podman_unavailable() -> Option<String> {
    let out = Command::new("podman")
        .args(["--runtime", "runc", "info"])
        .output();
    match out {
        Err(e) => Some(format!(
            "podman is not installed ({e}); scripts/setup_deploy.sh installs it"
        )),
        Ok(o) if !o.status.success() => Some(format!(
            "podman cannot run here: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or_default()
        )),
        Ok(_) => None,
    }
}

/// The CPU image built from the Dockerfile (scripts/image.sh) and run with podman on
/// the tiny export, root filesystem read-only: ready, non-root, the host binary's answers to 1e-5, a new version
/// picked up on SIGHUP, a corrupt model refused while the others serve, and a stop
/// that drains a long request and exits 0.
#[test]
fn the_cpu_image_serves_as_the_host_binary_does() {
    if let Some(why) = podman_unavailable() {
        eprintln!("SKIPPED the image test: {why}");
        return;
    }
    let root = vcl_tests::repo_root();
    let tag = "localhost/vcl-serve:test-cpu";
    // The test suite's own vcl-serve goes in: no release build needed.
    let bin = serve_bin()
        .strip_prefix(&root)
        .expect("the workspace's target folder is inside the repository")
        .to_path_buf();
    let built = Command::new(root.join("scripts/image.sh"))
        .args(["cpu", tag])
        .env("VCL_SERVE_BIN", &bin)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "scripts/image.sh failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&built.stdout));

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("exports");
    let model = "subj01-lh-untuned-mobilenet_v2";
    copy_dir(&shared_export().join(model), &repo.join(model));
    let host = spawn_serve(&repo, dir.path(), &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = Container(format!("vcl-serve-test-{}", std::process::id()));
    let started = Command::new("podman")
        .args(["--runtime", "runc", "run", "-d", "--name", &name.0])
        .args(["-p", &format!("127.0.0.1:{port}:8080")])
        .args(["-v", &format!("{}:/models:ro", repo.display())])
        // As the Kubernetes manifest runs it: nothing writes to the image.
        .arg("--read-only")
        // Batches of one image keep the drained request in flight long enough.
        .args(["-e", "VCL_MAX_BATCH_SIZE=1", "-e", "VCL_INTRA_THREADS=1"])
        .arg(tag)
        .env(
            "CONTAINERS_CONF",
            root.join(".cache/podman/containers.conf"),
        )
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );

    let user = Command::new("podman")
        .args(["--runtime", "runc", "exec", &name.0, "id", "-u"])
        .env(
            "CONTAINERS_CONF",
            root.join(".cache/podman/containers.conf"),
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&user.stdout).trim(),
        "10001",
        "{user:?}"
    );

    let out = Command::new(python())
        .arg("-c")
        .arg(IMAGE_CLIENT)
        .args([&host.url, &format!("http://127.0.0.1:{port}"), model])
        .arg(&repo)
        .arg(&name.0)
        .env(
            "CONTAINERS_CONF",
            root.join(".cache/podman/containers.conf"),
        )
        .output()
        .unwrap();
    let logs = || {
        let l = Command::new("podman")
            .args(["--runtime", "runc", "logs", &name.0])
            .env(
                "CONTAINERS_CONF",
                root.join(".cache/podman/containers.conf"),
            )
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        l.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    };
    assert!(
        out.status.success(),
        "client failed:\n{}\n{}\ncontainer log (last lines, newest first):\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

/// Load through nginx for a few seconds: 4 clients, 2 images per request; prints the
/// counts as JSON.
const FAILOVER_CLIENT: &str = r#"
import io, json, sys, threading, time, urllib.request, urllib.error
import numpy as np
url, model, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
buf = io.BytesIO(); np.save(buf, np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32))
body = buf.getvalue()
counts = {"sent": 0, "answered": 0, "failed": 0}
errors = []
lock = threading.Lock()
def client():
    end = time.time() + seconds
    while time.time() < end:
        req = urllib.request.Request(f"{url}/v1/models/{model}/predict", data=body, headers={"content-type": "application/x-npy"})
        ok = False
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                ok = r.status == 200 and len(json.loads(r.read())["predictions"]) == 2
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(repr(e)[:120])
        with lock:
            counts["sent"] += 1
            counts["answered" if ok else "failed"] += 1
threads = [threading.Thread(target=client) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
counts["errors"] = errors[:5]
print(json.dumps(counts))
"#;

/// nginx in front, stopped on drop: SIGTERM to the master, which stops its workers
/// (SIGKILL would leave them orphaned).
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two replicas behind Debian's nginx (round-robin, passive health checks, retries on
/// the other replica): one is killed with SIGKILL mid-load and restarted, and no
/// request fails.
#[test]
fn two_replicas_behind_nginx_survive_a_sigkill() {
    let Ok(nginx) = which_nginx() else {
        eprintln!("SKIPPED the failover test: nginx is not installed (scripts/setup_deploy.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("exports");
    let model = "subj01-lh-untuned-mobilenet_v2";
    copy_dir(&shared_export().join(model), &repo.join(model));
    let (port_a, port_b, front) = (free_port(), free_port(), free_port());
    let a = spawn_serve_on(&repo, dir.path(), &[], port_a);
    let _b = spawn_serve_on(&repo, dir.path(), &[], port_b);
    let prefix = dir.path().join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = format!(
        r#"
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$upstream_addr $status';
    access_log {p}/logs/access.log upstreams;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    client_body_buffer_size 1m;
    upstream vcl {{
        server 127.0.0.1:{port_a} max_fails=1 fail_timeout=2s;
        server 127.0.0.1:{port_b} max_fails=1 fail_timeout=2s;
    }}
    server {{
        listen 127.0.0.1:{front};
        location / {{
            proxy_pass http://vcl;
            # A predict changes nothing: safe to send again to the other replica.
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 1s;
        }}
    }}
}}
"#,
        p = prefix.display()
    );
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    let conf_path = prefix.join("nginx.conf");
    let _nginx = Nginx(
        Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .spawn()
            .expect("nginx starts"),
    );
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", front)).is_err() {
        assert!(Instant::now() < until, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    let client = Command::new(python())
        .arg("-c")
        .arg(FAILOVER_CLIENT)
        .args([&format!("http://127.0.0.1:{front}"), model, "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(a); // SIGKILL: no drain, connections reset mid-request
    std::thread::sleep(Duration::from_millis(1500));
    let _a = spawn_serve_on(&repo, dir.path(), &[], port_a);
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("nginx failover (SIGKILL of one of two replicas): {counts}");
    let access = std::fs::read_to_string(prefix.join("logs/access.log")).unwrap_or_default();
    let (sent, failed) = (
        counts["sent"].as_u64().unwrap(),
        counts["failed"].as_u64().unwrap(),
    );
    assert!(sent > 50, "{counts}");
    assert_eq!(
        failed,
        0,
        "{counts}\nnginx error log:\n{}",
        std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
    );
    assert_eq!(counts["answered"].as_u64(), Some(sent));
    assert!(
        access.lines().count() as u64 >= sent,
        "{} access lines",
        access.lines().count()
    );
    // nginx did see the replica die and sent those requests on (its log names both
    // upstreams for a retried request), and the restarted replica served again.
    let a_addr = format!("127.0.0.1:{port_a}");
    let retried = access.lines().filter(|l| l.contains(", ")).count();
    let error_log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
    let lines: Vec<&str> = access.lines().collect();
    let last_a = lines
        .iter()
        .rposition(|l| l.starts_with(&a_addr) && !l.contains(", "))
        .unwrap_or(0);
    eprintln!(
        "nginx: {retried} requests retried on the other replica, {} upstream errors logged, \
         replica A served again up to line {last_a} of {}",
        error_log.lines().filter(|l| l.contains(&a_addr)).count(),
        access.lines().count()
    );
    assert!(
        retried > 0 || error_log.contains(&a_addr),
        "no sign that nginx saw replica A die:\n{error_log}"
    );
    assert!(
        last_a > access.lines().count() / 2,
        "the restarted replica A did not serve again"
    );
}

fn which_nginx() -> Result<PathBuf, ()> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(())
}
