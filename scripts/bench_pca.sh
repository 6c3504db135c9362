#!/usr/bin/env bash
# PCA at NSD size: vcl's randomized solver (what `vcl fit` takes there), vcl's exact
# route (the n x n Gram eigendecomposition it took before), and scikit-learn's
# PCA(1000) (its default solver for this shape, randomized) on the same float32 matrix,
# in one run: wall time, peak RSS, their ratios, and how well each approximate
# subspace matches the exact one (principal-angle cosines, explained variance).
#
#   scripts/bench_pca.sh            n 8365 (NSD subj01's training images), d 16384, k 1000
#   scripts/bench_pca.sh --quick    n 2000, d 4096, k 300 (sanity run)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

N=8365 D=16384 K=1000 TAG=full KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) N=2000 D=4096 K=300 TAG=quick ;;
    --keep) KEEP=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

cargo build --quiet --release -p vcl-trainer --example bench_pca
BIN="${CARGO_TARGET_DIR:-target}/release/examples/bench_pca"
DATA="data/bench_pca_${TAG}"
mkdir -p "$DATA"
[[ -f "$DATA/x.npy" ]] || "$BIN" gen --out "$DATA" --n "$N" --d "$D" --seed 0

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs slow every tool)"
RAND_JSON=$("$BIN" fit --data "$DATA" --k "$K" --solver randomized)
echo "$RAND_JSON"
EXACT_JSON=$("$BIN" fit --data "$DATA" --k "$K" --solver row-gram)
echo "$EXACT_JSON"
SK_JSON=$(python - "$DATA" "$K" <<'PY'
import json, resource, sys, time
import numpy as np, sklearn
from sklearn.decomposition import PCA
data, k = sys.argv[1], int(sys.argv[2])
x = np.load(f"{data}/x.npy")
t = time.perf_counter()
p = PCA(k).fit(x)
fit_s = time.perf_counter() - t
np.save(f"{data}/components_sklearn.npy", p.components_.T.astype(np.float32))
np.save(f"{data}/variance_sklearn.npy", p.explained_variance_)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"tool": f"sklearn {sklearn.__version__} ({p._fit_svd_solver})", "fit_s": round(fit_s, 3), "peak_rss_mb": round(rss, 1)}))
PY
)
echo "$SK_JSON"

python - "$DATA" "$K" "$RAND_JSON" "$EXACT_JSON" "$SK_JSON" <<'PY'
import json, sys
import numpy as np
data, k = sys.argv[1], int(sys.argv[2])
r, e, s = (json.loads(a) for a in sys.argv[3:6])
exact = np.load(f"{data}/components_rowgram.npy").astype(np.float64)
ve = np.load(f"{data}/variance_rowgram.npy")
print(f"\n| n x d -> k | {r['tool']} | {e['tool']} | {s['tool']} | randomized / sklearn |")
print("|---|---:|---:|---:|---:|")
print(f"| fit time | {r['fit_s']:.1f} s | {e['fit_s']:.1f} s | {s['fit_s']:.1f} s | {r['fit_s'] / s['fit_s']:.2f} |")
print(f"| peak RSS | {r['peak_rss_mb']:.0f} MB | {e['peak_rss_mb']:.0f} MB | {s['peak_rss_mb']:.0f} MB | {r['peak_rss_mb'] / s['peak_rss_mb']:.2f} |")
for name in ["randomized", "sklearn"]:
    c = np.load(f"{data}/components_{name}.npy").astype(np.float64)
    v = np.load(f"{data}/variance_{name}.npy")
    parts = []
    for m in (100, k // 2, k):
        cos = np.linalg.svd(exact[:, :m].T @ c, compute_uv=False)
        parts.append(f"top {m}: min cos {cos.min():.4f}")
    dv = np.abs(v / ve - 1)
    print(f"{name:>10}: subspace vs exact {'; '.join(parts)}; variance rel. err. max {dv[:k//2].max():.1e} (top {k//2}), {dv.max():.1e} (all)")
PY
[[ "$KEEP" == 1 ]] || rm -f "$DATA"/*.npy
