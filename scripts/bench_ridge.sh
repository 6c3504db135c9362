#!/usr/bin/env bash
# Per-voxel-alpha ridge CV, vcl vs himalaya 0.4.11, on the same data and folds.
#
#   scripts/bench_ridge.sh            NSD scale: n 8000, p 1000, v 20000 (minutes)
#   scripts/bench_ridge.sh --quick    n 2000, p 300, v 3000 (sanity run)
#   scripts/bench_ridge.sh --n 8365 --v 39548
#                                     NSD subj01 whole: both hemispheres at once
#
# Options: --himalaya-backend torch|numpy (default torch), --device cpu|cuda (vcl; with
# cuda himalaya uses torch_cuda), --keep (leave the data in data/bench_ridge_*).
# Each tool runs in its own process; peak memory is that process's peak resident set
# (/proc VmHWM for vcl, getrusage for Python), and /usr/bin/time -v's maximum resident
# set size is printed for both when available.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

N=8000 P=1000 V=20000 TAG=full HBACKEND=torch DEVICE=cpu KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) N=2000 P=300 V=3000 TAG=quick ;;
    --n) N="$2"; TAG=custom; shift ;;
    --p) P="$2"; TAG=custom; shift ;;
    --v) V="$2"; TAG=custom; shift ;;
    --himalaya-backend) HBACKEND="$2"; shift ;;
    --device) DEVICE="$2"; shift ;;
    --keep) KEEP=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ "$DEVICE" == cuda && "$HBACKEND" == torch ]]; then HBACKEND=torch_cuda; fi

python -c "import himalaya" 2>/dev/null || python -m pip install --quiet himalaya==0.4.11

cargo build --quiet -p vcl-trainer --example bench_ridge
BIN="${CARGO_TARGET_DIR:-target}/debug/examples/bench_ridge"
[[ "$TAG" != custom ]] || TAG="n${N}_p${P}_v${V}"
DATA="data/bench_ridge_${TAG}"
mkdir -p "$DATA"
[[ -f "$DATA/y.npy" ]] || "$BIN" gen --out "$DATA" --n "$N" --p "$P" --v "$V" --seed 0

TIME=()
[[ -x /usr/bin/time ]] && TIME=(/usr/bin/time -v)

run() {  # run LOG CMD...: the command's JSON line on stdout, time -v's report in LOG
  local log="$1"; shift
  if ((${#TIME[@]})); then "${TIME[@]}" -o "$log" "$@"; else "$@"; fi
}

echo "load average before vcl: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores; other jobs slow both tools)"
echo "== vcl (n $N, p $P, v $V, 9 alphas, 5 folds, per-voxel alpha, device $DEVICE)"
VCL_JSON=$(run "$DATA/time_vcl.txt" "$BIN" fit --data "$DATA" --device "$DEVICE")
echo "$VCL_JSON"
echo "load average before himalaya: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== himalaya 0.4.11 (backend $HBACKEND)"
HIM_JSON=$(run "$DATA/time_himalaya.txt" python scripts/bench_ridge_himalaya.py --data "$DATA" --backend "$HBACKEND")
echo "$HIM_JSON"
echo "load average after himalaya: $(cut -d' ' -f1-3 /proc/loadavg)"

python - "$DATA" "$VCL_JSON" "$HIM_JSON" <<'PY'
import json, re, sys
import numpy as np
data, vcl, him = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def time_v(name):
    try:
        txt = open(f"{data}/time_{name}.txt").read()
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt).group(1)) / 1024
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", txt).group(1)
        return f"{rss:.0f} MB max RSS, process wall {wall}"
    except (OSError, AttributeError):
        return "n/a"
a, b = np.load(f"{data}/alphas_vcl.npy"), np.load(f"{data}/alphas_himalaya.npy")
same = np.isclose(a, b, rtol=1e-6)
print(f"fit time     vcl {vcl['fit_s']:8.2f} s   himalaya {him['fit_s']:8.2f} s   "
      f"ratio vcl/himalaya {vcl['fit_s'] / him['fit_s']:.3f}")
print(f"peak RSS     vcl {vcl['peak_rss_mb']:8.0f} MB  himalaya {him['peak_rss_mb']:8.0f} MB  "
      f"ratio {vcl['peak_rss_mb'] / him['peak_rss_mb']:.3f}")
print(f"after loading vcl {vcl['rss_after_load_mb']:8.0f} MB  himalaya {him['rss_after_load_mb']:8.0f} MB  "
      f"(libraries + x + y); fit's increment: vcl {vcl['peak_rss_mb'] - vcl['rss_after_load_mb']:.0f} MB, "
      f"himalaya {him['peak_rss_mb'] - him['rss_after_load_mb']:.0f} MB")
print(f"time -v      vcl: {time_v('vcl')};  himalaya: {time_v('himalaya')}")
print(f"same alpha on {100 * same.mean():.2f}% of {len(a)} voxels "
      f"({len(a) - same.sum()} differ); distinct alphas chosen: {len(np.unique(b))}")
if not same.all():
    d = np.abs(np.log10(a[~same]) - np.log10(b[~same]))
    print(f"  disagreements are {d.min():.0f} to {d.max():.0f} grid steps apart")
PY
[[ "$KEEP" == 1 ]] || rm -f "$DATA"/x.npy "$DATA"/y.npy
