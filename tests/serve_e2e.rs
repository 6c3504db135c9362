//! vcl-serve end to end on a real exported model: a tiny in-silico fit exported at
//! 64 px is loaded from a model repository (beside a corrupt model, which is refused
//! while the others serve, and a `.partial-*` folder, which is skipped), served over
//! HTTP with ONNX Runtime, and queried from Python: base64 images, .npy tensors
//! (compared with Python's onnxruntime on the same file), the official `tritonclient`
//! over KServe v2, and 16 concurrent requests that must batch (seen in /metrics).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vcl_server::http::{start_background, AppState};
use vcl_server::repository::{self, Repository};
use vcl_server::runtime::DeviceChoice;
use vcl_server::Config;
use vcl_tests::{python, run_python};
use vcl_trainer::algonauts::Hemisphere;
use vcl_trainer::backbones::{Arch, Device};
use vcl_trainer::encoding::{self, AlphaMode, FitConfig};
use vcl_trainer::onnx_export::{export, ExportOptions};
use vcl_trainer::{paths, ridge};

/// A model repository with the tiny fit's two hemisphere models (64 px).
fn exported(dir: &Path) -> PathBuf {
    // Dropped at the end of this function: the data is only read while fitting.
    let (_data_dir, data) = vcl_tests::tiny_dataset(11, 1);
    let run = dir.join("run");
    let cfg = FitConfig {
        data_dir: data,
        subjects: vec!["subj01".into()],
        hemispheres: vec![Hemisphere::Left, Hemisphere::Right],
        rois: vec!["V1".into(), "early".into()],
        arch: Arch::MobileNetV2,
        weights: paths::weights_dir().join("mobilenet_v2.safetensors"),
        taps: vec!["features.6".into()],
        input_size: 64,
        pca_components: 1000,
        alphas: ridge::default_alphas(),
        folds: 5,
        alpha_mode: AlphaMode::Voxel,
        heldout_fraction: 0.25,
        split_seed: 0,
        max_feature_dim: Some(1000),
        batch_size: 16,
        method: "untuned".into(),
    };
    encoding::fit(&cfg, &run, &dir.join("cache"), Device::Cpu).expect("fit");
    let repo = dir.join("exports");
    export(&run, &repo, &ExportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    repo
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
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
    let repo = exported(dir.path());
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
    let rt = repository::runtime(&cfg).unwrap();
    let loaded = Repository::load_ort(&cfg, rt).unwrap();
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
    let state = AppState {
        repo: Arc::new(loaded),
        cfg: Arc::new(cfg),
        render_metrics: Arc::new(move || handle.render()),
    };
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
            &vcl_trainer::paths::photos_dir(),
        ],
    );
    eprintln!("{out}");
    assert!(out.contains("ok:"), "{out}");
    drop(server);
}
