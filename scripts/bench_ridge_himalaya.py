"""himalaya's side of scripts/bench_ridge.sh: RidgeCV with per-voxel alphas on the
x.npy / y.npy that vcl fits, same alphas (logspace(-1, 7, 9)), same folds (KFold(5),
contiguous), same score (R^2), with an intercept. Writes alphas_himalaya.npy and prints
one JSON line: the fit's wall time and the process's peak resident memory."""

import argparse
import json
import resource
import time

import numpy as np


def vm_rss_mb():
    """Current resident set in MB (0 where /proc is unavailable)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backend", default="torch", choices=["torch", "numpy", "torch_cuda"])
    ap.add_argument("--targets-batch", type=int, default=4096)
    args = ap.parse_args()

    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import r2_score
    from sklearn.model_selection import KFold

    backend = set_backend(args.backend)
    t0 = time.perf_counter()
    x = np.load(f"{args.data}/x.npy")
    y = np.load(f"{args.data}/y.npy")
    load_s = time.perf_counter() - t0
    rss_loaded = vm_rss_mb()

    model = RidgeCV(
        alphas=np.logspace(-1, 7, 9),
        fit_intercept=True,
        cv=KFold(5),
        solver_params=dict(
            local_alpha=True,
            score_func=r2_score,
            n_targets_batch=args.targets_batch,
            n_targets_batch_refit=args.targets_batch,
            n_alphas_batch=9,
        ),
    )
    t1 = time.perf_counter()
    model.fit(x, y)
    alphas = backend.to_numpy(model.best_alphas_)
    fit_s = time.perf_counter() - t1
    np.save(f"{args.data}/alphas_himalaya.npy", alphas.astype(np.float64))

    import torch

    print(json.dumps({
        "tool": "himalaya",
        "backend": args.backend,
        "fit_s": round(fit_s, 3),
        "load_s": round(load_s, 3),
        # Linux reports ru_maxrss in kB
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
