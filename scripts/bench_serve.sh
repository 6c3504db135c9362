#!/usr/bin/env bash
# vcl-serve under load against its limit and against the servers a user would pick
# instead, in one run, on the same model and images: throughput (images/s) and p50/p99
# latency at each concurrency with wrk, each request one image (what a
# stimulus-selection loop sends); the same model run in-process by ONNX Runtime at the
# batch size that concurrency allows (bench_ort, the limit); a FastAPI + onnxruntime
# server written the way a user would (one request, one inference; .npy in and out)
# and LitServe with its batching on (JSON with base64 .npy in and out: LitServe reads
# no raw bodies), both from scripts/bench_peers/ in a pinned venv (.cache/bench-venv).
# Prints a Markdown table and writes it, with the raw JSON, to runs/bench/serve.{md,json}.
#
#   scripts/bench_serve.sh [REPOSITORY [MODEL]]     (default: the demo export; make demo)
#   BENCH_SECONDS=10 BENCH_CONCURRENCY="1 8 32" BENCH_QUEUE_DELAY_MS=0 BENCH_PEERS="fastapi litserve" scripts/bench_serve.sh
#
# wrk runs on the same machine and takes CPU from the server: on few cores the ratio
# is a floor, not the server's own overhead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/serve_lib.sh
REPO="${1:-exports}"
MODEL="${2:-subj01-lh-untuned-mobilenet_v2}"
SECONDS_EACH="${BENCH_SECONDS:-10}"
CONCURRENCY="${BENCH_CONCURRENCY:-1 8 32}"
THREADS="${BENCH_INTRA_THREADS:-$(nproc)}"
MAX_BATCH="${BENCH_MAX_BATCH:-32}"
PORT="${BENCH_PORT:-18181}"
DELAY_MS="${BENCH_QUEUE_DELAY_MS:-0}"
PEERS="${BENCH_PEERS:-fastapi litserve}"
LITSERVE_TIMEOUT_S="${BENCH_LITSERVE_BATCH_TIMEOUT_S:-0.005}"
OUT=runs/bench
mkdir -p "$OUT"

[[ -d "$REPO/$MODEL" ]] || { echo "bench_serve: no model $REPO/$MODEL (run make demo, or name one)" >&2; exit 1; }
VERSION="$(latest_version "$REPO" "$MODEL")"
DIR="$REPO/$MODEL/$VERSION"

need_wrk

cargo build --release --quiet -p vcl-server --bin vcl-serve --example bench_ort
TMP="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$TMP"' EXIT

python - "$DIR" "$TMP/one.npy" <<'PY'
import json, sys, numpy as np
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
h, w = m["input"]["height"], m["input"]["width"]
np.save(sys.argv[2], np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32))
PY
cat > "$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/x-npy"
wrk.headers["accept"] = "application/x-npy"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"seconds":%.3f,"p50_ms":%.3f,"p99_ms":%.3f,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    e.status, e.connect + e.read + e.write + e.timeout))
end
LUA

target/release/vcl-serve --model-repository "$REPO" --port "$PORT" --device cpu \
  --intra-threads "$THREADS" --max-batch-size "$MAX_BATCH" --max-queue-delay-ms "$DELAY_MS" \
  >"$TMP/serve.log" 2>&1 &
SERVER=$!
wait_ready "localhost:$PORT/readyz" "$SERVER" "$TMP/serve.log"
URL="http://127.0.0.1:$PORT/v1/models/$MODEL/predict"
batches() { curl -fs "localhost:$PORT/metrics" | awk -v m="$MODEL" '
  $1 ~ "^vcl_batch_size_sum" && index($1, m) {s=$2} $1 ~ "^vcl_batch_size_count" && index($1, m) {c=$2}
  END {printf "%s %s\n", s+0, c+0}'; }

: > "$TMP/served.jsonl"
for c in $CONCURRENCY; do
  read -r s0 c0 < <(batches)
  t=$(( c < 2 ? 1 : 2 ))
  line="$(BENCH_BODY="$TMP/one.npy" wrk -t"$t" -c"$c" -d"${SECONDS_EACH}s" --timeout 30s -s "$TMP/post.lua" "$URL" | tail -n1)"
  read -r s1 c1 < <(batches)
  echo "$line" | python -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(concurrency=$c, mean_batch=($s1-$s0)/max($c1-$c0,1)); print(json.dumps(d))" >> "$TMP/served.jsonl"
  echo "bench_serve: concurrency $c: $(tail -n1 "$TMP/served.jsonl")"
done
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

SIZES="$(for c in $CONCURRENCY; do echo $(( c < MAX_BATCH ? c : MAX_BATCH )); done | sort -un | paste -sd,)"
target/release/examples/bench_ort --model-dir "$DIR" --batch "$SIZES" --seconds "$SECONDS_EACH" \
  --intra-threads "$THREADS" --device cpu > "$TMP/limit.jsonl"


# The peers, one after the other, on the same cores.
BENCH_VENV=.cache/bench-venv
if [[ -n "$PEERS" ]] && ! "$BENCH_VENV/bin/python" -c "import litserve, fastapi, onnxruntime" 2>/dev/null; then
  echo "bench_serve: installing the peers' pinned packages into $BENCH_VENV"
  python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install --no-cache-dir -q onnxruntime==1.31.1 numpy==2.4.6 fastapi==0.115.14 \
    "uvicorn[standard]==0.54.0" litserve==0.2.19
fi
python - "$TMP/one.npy" "$TMP/one.json" <<'PY'
import base64, json, sys
json.dump({"npy": base64.b64encode(open(sys.argv[1], "rb").read()).decode()}, open(sys.argv[2], "w"))
PY
sed -e 's|application/x-npy|application/json|g' "$TMP/post.lua" > "$TMP/post_json.lua"
: > "$TMP/peers.jsonl"
for peer in $PEERS; do
  case "$peer" in
    fastapi) setsid "$BENCH_VENV/bin/python" scripts/bench_peers/fastapi_server.py "$DIR" "$((PORT + 1))" "$THREADS" \
               >"$TMP/$peer.log" 2>&1 & body="$TMP/one.npy"; lua="$TMP/post.lua"; ready=/health ;;
    litserve) setsid "$BENCH_VENV/bin/python" scripts/bench_peers/litserve_server.py "$DIR" "$((PORT + 1))" "$THREADS" \
               "$MAX_BATCH" "$LITSERVE_TIMEOUT_S" >"$TMP/$peer.log" 2>&1 & body="$TMP/one.json"; lua="$TMP/post_json.lua"; ready=/health ;;
    *) echo "bench_serve: unknown peer $peer" >&2; exit 1 ;;
  esac
  PEER=$!
  wait_ready "localhost:$((PORT + 1))$ready" "$PEER" "$TMP/$peer.log"
  for c in $CONCURRENCY; do
    t=$(( c < 2 ? 1 : 2 ))
    line="$(BENCH_BODY="$body" wrk -t"$t" -c"$c" -d"${SECONDS_EACH}s" --timeout 30s -s "$lua" "http://127.0.0.1:$((PORT + 1))/predict" | tail -n1)"
    echo "$line" | python -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(concurrency=$c, server='$peer'); print(json.dumps(d))" >> "$TMP/peers.jsonl"
    echo "bench_serve: $peer concurrency $c: $(tail -n1 "$TMP/peers.jsonl")"
  done
  # The whole process group: LitServe runs its workers as child processes.
  kill -- "-$PEER" 2>/dev/null || true; wait "$PEER" 2>/dev/null || true
  while pgrep -g "$PEER" >/dev/null 2>&1; do sleep 0.2; done
done

python - "$TMP/served.jsonl" "$TMP/limit.jsonl" "$OUT" "$MODEL" "$MAX_BATCH" "$TMP/peers.jsonl" <<'PY'
import json, sys
served = [json.loads(l) for l in open(sys.argv[1])]
limit = {d["batch"]: d for d in map(json.loads, open(sys.argv[2]))}
out, model, max_batch = sys.argv[3], sys.argv[4], int(sys.argv[5])
peers = [json.loads(l) for l in open(sys.argv[6])]
rows = []
for s in served:
    b = min(s["concurrency"], max_batch)
    ips = s["requests"] / s["seconds"]  # one image per request
    rows.append({**s, "images_per_s": ips, "limit_batch": b, "limit_images_per_s": limit[b]["images_per_s"],
                 "limit_p50_ms": limit[b]["p50_ms"], "ratio": ips / limit[b]["images_per_s"]})
md = [f"vcl-serve on {model}, one image per request (.npy), CPU; limit: in-process ONNX Runtime at the same batch size",
      "", "| concurrency | served img/s | p50 ms | p99 ms | mean batch | errors | limit batch | limit img/s | ratio |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    md.append(f"| {r['concurrency']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['mean_batch']:.1f} | {r['non_2xx'] + r['socket_errors']} | {r['limit_batch']} | "
              f"{r['limit_images_per_s']:.1f} | {r['ratio']:.2f} |")
if peers:
    md += ["", "The same load on the servers a user would pick instead (img/s, p50 / p99 ms; ratio to the in-process limit):", "",
           "| concurrency | vcl-serve | " + " | ".join(sorted({p["server"] for p in peers})) + " |",
           "|---:|---|" + "---|" * len({p["server"] for p in peers})]
    for r in rows:
        c = r["concurrency"]
        cell = lambda ips, p50, p99: f"{ips:.1f} ({p50:.1f} / {p99:.1f}; {ips / r['limit_images_per_s']:.2f})"
        cells = [cell(r["images_per_s"], r["p50_ms"], r["p99_ms"])]
        for name in sorted({p["server"] for p in peers}):
            p = next((p for p in peers if p["server"] == name and p["concurrency"] == c), None)
            errs = f", {p['non_2xx'] + p['socket_errors']} errors" if p and p["non_2xx"] + p["socket_errors"] else ""
            cells.append(cell(p["requests"] / p["seconds"], p["p50_ms"], p["p99_ms"]) + errs if p else "-")
        md.append(f"| {c} | " + " | ".join(cells) + " |")
open(f"{out}/serve.md", "w").write("\n".join(md) + "\n")
json.dump({"served": served, "limit": list(limit.values()), "rows": rows, "peers": peers}, open(f"{out}/serve.json", "w"), indent=1)
print("\n".join(md))
PY
