#!/usr/bin/env bash
# The encoder pipeline at growing sizes: `vcl fit --evaluate` (MobileNetV2 at 224 px,
# untuned, both hemispheres, early + three higher ROIs) against the Python pipeline a
# user would write (torchvision features, scikit-learn PCA, himalaya RidgeCV) on the
# same images, rows and folds, in one run. Per stage (decode, features, PCA, ridge,
# evaluation): wall time, peak resident memory, their ratios and how each grows; as
# docs/scale/scale.md (+ .csv) and scale_time.png / scale_memory.png (--quick: data/scale/quick).
#
#   scripts/bench_scale.sh                 the demo preset, then 2500, 5000 and 9841
#                                          images of one nsd-preset subject (58 min
#                                          on 2 cores; 9 GB of data + up to 5.3 GB of caches)
#   scripts/bench_scale.sh --quick         the demo preset and a 400-image cut of it
#   scripts/bench_scale.sh --sizes "2500 9841"
#
# It synthesizes its own data (data/scale/), gives each run a fresh cache so that
# decoding and features are really computed, and removes each cache when done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh

SIZES="2500 5000 9841" QUICK=0
ROIS="early,FFA-1,PPA,EBA"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --sizes) SIZES="$2"; shift ;;
    --rois) ROIS="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

python -c "import himalaya" 2>/dev/null || python -m pip install --quiet himalaya==0.4.11
cargo build --quiet --release --bin vcl
cargo build --quiet --release -p vcl-trainer --example bench_scale
TARGET="${CARGO_TARGET_DIR:-target}/release"
VCL="$TARGET/vcl"
DATA=data/scale
OUT=docs/scale
[[ $QUICK == 0 ]] || OUT="$DATA/quick"
WORK="$DATA/work"
mkdir -p "$DATA" "$WORK"
export VCL_WEIGHTS_DIR="${VCL_WEIGHTS_DIR:-$PWD/.cache/weights}"
WEIGHTS="$VCL_WEIGHTS_DIR/mobilenet_v2.safetensors"

[[ -f "$DATA/demo/in_silico.json" ]] || "$VCL" synth --preset demo --subjects 1 --out "$DATA/demo"
if [[ $QUICK == 0 ]]; then
  [[ -f "$DATA/nsd/in_silico.json" ]] || "$VCL" synth --preset nsd --subjects 1 --out "$DATA/nsd"
  SOURCE="$DATA/nsd"
else
  SOURCE="$DATA/demo"
  SIZES="400"
fi

# cut_subject SRC DST N: the first N training images of SRC's subj01, with their rows of every
# training-indexed array; everything else linked.
cut_subject() {
  python - "$1" "$2" "$3" <<'PY'
import os, sys
from pathlib import Path
import numpy as np
src, dst, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
if (dst / "in_silico.json").exists():
    sys.exit(0)
s, d = src / "subj01", dst / "subj01"
imgs = sorted((s / "training_split" / "training_images").iterdir())
if n > len(imgs):
    sys.exit(f"{src} has {len(imgs)} training images, fewer than {n}")
(d / "training_split" / "training_images").mkdir(parents=True)
(d / "training_split" / "training_fmri").mkdir()
for p in imgs[:n]:
    os.symlink(p.resolve(), d / "training_split" / "training_images" / p.name)
for p in (s / "training_split" / "training_fmri").iterdir():
    np.save(d / "training_split" / "training_fmri" / p.name, np.load(p, mmap_mode="r")[:n])
for entry in s.iterdir():
    if entry.name == "training_split":
        continue
    if entry.name == "ground_truth":
        (d / "ground_truth").mkdir()
        for p in entry.iterdir():
            arr = np.load(p, mmap_mode="r")
            np.save(d / "ground_truth" / p.name, arr[:n] if "training" in p.name else arr)
        continue
    os.symlink(entry.resolve(), d / entry.name)
os.symlink((src / "in_silico.json").resolve(), dst / "in_silico.json")
PY
}

RUNS_JSON="$WORK/runs.json"
echo "[" > "$RUNS_JSON"
first=1
run_size() {  # run_size NAME DATASET IMAGES PRESET
  local name="$1" data="$2" images="$3" preset="$4"
  local run="$WORK/vcl_$name" cache="$WORK/cache_$name" ref="$WORK/reference_$name.json"
  rm -rf "$run" "$cache"
  echo "== $name: $images images, vcl fit --evaluate" >&2
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  VCL_CACHE_DIR="$cache" /usr/bin/time -v -o "$WORK/time_$name.txt" \
    "$VCL" fit --data "$data" --subjects subj01 --hemispheres lh,rh --rois "$ROIS" \
    --out "$run" --evaluate > "$WORK/vcl_$name.md"
  cat "$WORK/vcl_$name.md" >&2
  rm -rf "$cache"
  local peak
  peak=$(awk -F: '/Maximum resident set size/ {printf "%.1f", $2 / 1024}' "$WORK/time_$name.txt")
  echo "== $name: the Python reference" >&2
  python scripts/bench_scale_reference.py --data "$data/subj01" --split "$run/splits/subj01.json" \
    --weights "$WEIGHTS" --rois "$ROIS" > "$ref"
  [[ $first == 1 ]] || echo "," >> "$RUNS_JSON"
  first=0
  printf '{"images": %s, "preset": "%s", "vcl_run": "%s", "reference": "%s", "vcl_process_peak_mb": %s}\n' \
    "$images" "$preset" "$run" "$ref" "${peak:-null}" >> "$RUNS_JSON"
}

demo_images=$(find "$DATA/demo/subj01/training_split/training_images" -name "*.png" | wc -l)
run_size demo "$DATA/demo" "$demo_images" demo
PRESET=nsd
[[ $QUICK == 0 ]] || PRESET=demo
for n in $SIZES; do
  total=$(find "$SOURCE/subj01/training_split/training_images" -name "*.png" | wc -l)
  if [[ "$n" == "$total" ]]; then
    run_size "n$n" "$SOURCE" "$n" "$PRESET"
  else
    cut_subject "$SOURCE" "$DATA/cut_$n" "$n"
    run_size "n$n" "$DATA/cut_$n" "$n" "$PRESET"
  fi
done
echo "]" >> "$RUNS_JSON"

"$TARGET/examples/bench_scale" --runs "$RUNS_JSON" --out "$OUT"
