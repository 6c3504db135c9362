#!/usr/bin/env bash
# The end of `make demo`: serve the demo export, ask for a prediction and a ranking
# with curl, print both answers, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="${1:-exports}"
MODEL="${2:-subj01-lh-untuned-mobilenet_v2}"
PORT="${VCL_DEMO_PORT:-18080}"
PY=.venv/bin/python
TMP="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$TMP"' EXIT

target/release/vcl-serve --model-repository "$REPO" --port "$PORT" --host 127.0.0.1 >"$TMP/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 120); do
  if curl -fs "localhost:$PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then cat "$TMP/serve.log"; echo "vcl-serve exited" >&2; exit 1; fi
  sleep 0.5
done
curl -fs "localhost:$PORT/readyz" >/dev/null || { cat "$TMP/serve.log"; echo "vcl-serve never became ready" >&2; exit 1; }

# Real photos as base64 PNG/JPEG, as an analysis script would send them.
"$PY" - "$TMP" <<'PYEOF'
import base64, glob, json, sys
tmp = sys.argv[1]
paths = sorted(glob.glob(".cache/photos/*"))
imgs = [base64.b64encode(open(p, "rb").read()).decode() for p in paths]
json.dump({"images": imgs[:3], "reduce": "roi"}, open(f"{tmp}/predict.json", "w"))
json.dump({"images": imgs, "objective": {"maximize_roi": "V1v"}, "top_k": 3}, open(f"{tmp}/rank.json", "w"))
json.dump(paths, open(f"{tmp}/names.json", "w"))
PYEOF

echo "== POST /v1/models/$MODEL/predict (3 photos, ROI means)"
curl -fs -H 'content-type: application/json' --data @"$TMP/predict.json" \
  "localhost:$PORT/v1/models/$MODEL/predict" > "$TMP/predict.out"
"$PY" - "$TMP/predict.out" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
names = [x["name"] for x in r["rois"]]
print(f"model {r['model']} v{r['version']}, {len(names)} ROIs")
for i, row in enumerate(r["predictions"]):
    print(f"  image {i}: " + ", ".join(f"{n} {v:+.2f}" for n, v in list(zip(names, row))[:8]) + ", ...")
PYEOF
echo "== POST /v1/models/$MODEL/rank (which photos drive V1v most)"
curl -fs -H 'content-type: application/json' --data @"$TMP/rank.json" \
  "localhost:$PORT/v1/models/$MODEL/rank" > "$TMP/rank.out"
"$PY" - "$TMP/rank.out" "$TMP/names.json" <<'PYEOF'
import json, sys, os
r = json.load(open(sys.argv[1])); names = json.load(open(sys.argv[2]))
for t in r["top"]:
    print(f"  {os.path.basename(names[t['index']]):24s} predicted V1v mean {t['score']:+.3f}")
PYEOF
