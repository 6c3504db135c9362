"""The reference side of scripts/bench_scale.sh: the encoder pipeline a user would write
in Python, stage by stage, on the same data as `vcl fit --evaluate`:

  decode      PIL decode + resize to 224 px (bilinear, antialiased; no crop), uint8,
              in a DataLoader with one worker per core
  features    torchvision MobileNetV2 with forward hooks on vcl's ten taps, conv taps
              average-pooled to vcl's --max-feature-dim grid, every tap kept in memory
  pca         scikit-learn PCA(1000) per tap (its default solver: randomized here)
  ridge       himalaya RidgeCV per tap and hemisphere, per-voxel alphas, vcl's alpha grid
              and folds (KFold(5) over the same training rows), best tap per ROI
  evaluation  held-out images through the same network, PCA and ridge; Pearson r

It reads vcl's split (RUN/splits/<subject>.json) so that both fit and score the same
rows. Each stage's wall time and peak resident set (VmHWM, reset at the stage's start)
are printed as one JSON line.
"""

import argparse
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TAPS = ["features.1", "features.3", "features.6", "features.10", "features.13",
        "features.16", "features.17", "features.18", "avgpool", "classifier.1"]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def vm_hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stages:
    def __init__(self):
        self.stages = {}

    @contextmanager
    def time(self, name):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        t = time.perf_counter()
        yield
        s = self.stages.setdefault(name, {"stage": name, "seconds": 0.0, "calls": 0, "peak_rss_mb": 0.0})
        s["seconds"] += time.perf_counter() - t
        s["calls"] += 1
        s["peak_rss_mb"] = max(s["peak_rss_mb"], vm_hwm_mb())


def pooling_grid(c, h, w, max_dim):
    """vcl's rule (features::pooling_for): the largest g with c*g*g <= max_dim."""
    if c * h * w <= max_dim:
        return None
    g = max(1, int(math.floor(math.sqrt(max_dim / c))))
    while g > 1 and c * g * g > max_dim:
        g -= 1
    while c * (g + 1) * (g + 1) <= max_dim:
        g += 1
    return min(g, h, w)


def decode(paths, size, workers):
    import torch
    from PIL import Image

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            img = Image.open(paths[i]).convert("RGB").resize((size, size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    loader = torch.utils.data.DataLoader(Images(), batch_size=64, num_workers=workers)
    i = 0
    for batch in loader:
        out[i:i + len(batch)] = batch.numpy()
        i += len(batch)
    return out


def features(model, pixels, max_dim, batch=32):
    """{tap: float32 [N, D]}: every tap held in memory, as a notebook would."""
    import torch
    import torch.nn.functional as F

    modules = dict(model.named_modules())
    modules["avgpool"] = None  # torchvision's MobileNetV2 pools functionally
    grabbed = {}

    def hook(name):
        def f(_mod, _inp, out):
            grabbed[name] = out
        return f

    handles = [modules[t].register_forward_hook(hook(t)) for t in TAPS if modules.get(t) is not None]
    feats = {t: [] for t in TAPS}
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(pixels[i:i + batch]).float() / 255.0
            x = (x - torch.from_numpy(MEAN).view(1, 3, 1, 1)) / torch.from_numpy(STD).view(1, 3, 1, 1)
            model(x)
            grabbed["avgpool"] = F.adaptive_avg_pool2d(grabbed["features.18"], 1)
            for t in TAPS:
                out = grabbed[t]
                if out.dim() == 4:
                    g = pooling_grid(*out.shape[1:], max_dim)
                    if g is not None:
                        out = F.adaptive_avg_pool2d(out, g)
                feats[t].append(out.flatten(1).numpy().astype(np.float32))
    for h in handles:
        h.remove()
    return {t: np.concatenate(v) for t, v in feats.items()}


def roi_vertices(roi_dir, hemi, rois):
    """vertex indices per ROI name, from the Algonauts masks and mappings."""
    out = {}
    for fam in ["prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams"]:
        mask_path = roi_dir / f"{hemi}.{fam}_challenge_space.npy"
        if not mask_path.exists():
            continue
        mask = np.load(mask_path)
        mapping = np.load(roi_dir / f"mapping_{fam}.npy", allow_pickle=True).item()
        for label, name in mapping.items():
            # Plain `early` is the prf-visualrois union, as in vcl, not the streams label.
            if label != 0 and name in rois and not (fam == "streams" and name == "early"):
                out[name] = np.flatnonzero(mask == label)
        if fam == "prf-visualrois" and "early" in rois:
            out["early"] = np.flatnonzero(mask > 0)
    missing = [r for r in rois if r not in out]
    if missing:
        raise SystemExit(f"{roi_dir}: no ROI named {missing} in {hemi}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path, help="subject folder (…/subj01)")
    ap.add_argument("--split", required=True, type=Path, help="vcl's RUN/splits/<subject>.json")
    ap.add_argument("--weights", required=True, type=Path, help="mobilenet_v2.safetensors")
    ap.add_argument("--rois", default="early")
    ap.add_argument("--hemispheres", default="lh,rh")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--pca", type=int, default=1000)
    ap.add_argument("--max-feature-dim", type=int, default=16384)
    args = ap.parse_args()

    import torch
    import torchvision
    from safetensors.torch import load_file
    from sklearn.decomposition import PCA
    from sklearn.model_selection import KFold
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import r2_score

    backend = set_backend("torch")
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    st = Stages()
    split = json.load(open(args.split))
    train, held = np.array(split["train"]), np.array(split["heldout"])
    images = sorted((args.data / "training_split" / "training_images").glob("*.png"))
    rois = args.rois.split(",")
    hemis = args.hemispheres.split(",")

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(load_file(str(args.weights)))
    model.eval()

    with st.time("decode"):
        px = decode([images[i] for i in train], args.size, cores)
    with st.time("features"):
        feats = features(model, px, args.max_feature_dim)
    del px
    pcas, z = {}, {}
    for t in TAPS:
        with st.time("pca"):
            k = min(args.pca, len(train) - 1)
            pcas[t] = PCA(k).fit(feats[t])
            z[t] = pcas[t].transform(feats[t]).astype(np.float32)
            del feats[t]

    alphas = np.logspace(-1, 7, 9)
    models, chosen, verts = {}, {}, {}
    for h in hemis:
        with st.time("ridge"):
            verts[h] = roi_vertices(args.data / "roi_masks", h, rois)
            union = np.unique(np.concatenate(list(verts[h].values())))
            y = np.load(args.data / "training_split" / "training_fmri" / f"{h}_training_fmri.npy", mmap_mode="r")
            y_train = np.ascontiguousarray(y[train][:, union], dtype=np.float32)
            pos = {v: i for i, v in enumerate(union)}
            best = {}
            for t in TAPS:
                m = RidgeCV(alphas=alphas, fit_intercept=True, cv=KFold(5),
                            solver_params=dict(local_alpha=True, score_func=r2_score,
                                               n_targets_batch=4096, n_targets_batch_refit=4096))
                m.fit(z[t], y_train)
                cv = backend.to_numpy(m.cv_scores_)
                for r, vs in verts[h].items():
                    score = float(cv[[pos[v] for v in vs]].mean())
                    if r not in best or score >= best[r][0]:
                        best[r] = (score, t)
                models[(h, t)] = m
            chosen[h] = {r: (t, s) for r, (s, t) in best.items()}
            models = {k: v for k, v in models.items()
                      if k[0] != h or k[1] in {t for t, _ in chosen[h].values()}}
            verts[h] = (verts[h], pos)

    results = {}
    with st.time("evaluation"):
        px = decode([images[i] for i in held], args.size, cores)
        hf = features(model, px, args.max_feature_dim)
        del px
        for h in hemis:
            (vs_by_roi, pos) = verts[h]
            y = np.load(args.data / "training_split" / "training_fmri" / f"{h}_training_fmri.npy", mmap_mode="r")
            y_held = np.asarray(y[held], dtype=np.float32)
            for r, (t, cv) in chosen[h].items():
                zh = pcas[t].transform(hf[t]).astype(np.float32)
                cols = [pos[v] for v in vs_by_roi[r]]
                pred = backend.to_numpy(models[(h, t)].predict(zh))[:, cols]
                truth = y_held[:, vs_by_roi[r]]
                pc, tc = pred - pred.mean(0), truth - truth.mean(0)
                rr = (pc * tc).sum(0) / np.sqrt((pc ** 2).sum(0) * (tc ** 2).sum(0))
                results[f"{h}/{r}"] = {"tap": t, "cv_r2": round(cv, 4), "mean_r": round(float(np.nanmean(rr)), 4)}

    import himalaya
    import sklearn
    print(json.dumps({
        "tool": f"torchvision {torchvision.__version__} + scikit-learn {sklearn.__version__} + himalaya {himalaya.__version__}",
        "images": len(train) + len(held),
        "train_images": len(train),
        "stages": list(st.stages.values()),
        "results": results,
    }))


if __name__ == "__main__":
    main()
