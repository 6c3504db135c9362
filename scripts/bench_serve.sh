#!/usr/bin/env bash
# vcl-serve under load against its limit, in one run: throughput (images/s) and p50/p99
# latency at each concurrency with wrk, each request one image as a float32 .npy (what
# a stimulus-selection loop sends), and the same model run in-process by ONNX Runtime
# at the batch size that concurrency allows (bench_ort). Prints a Markdown table and
# writes it, with the raw JSON, to runs/bench/serve.{md,json}.
#
#   scripts/bench_serve.sh [REPOSITORY [MODEL]]     (default: the demo export; make demo)
#   BENCH_SECONDS=10 BENCH_CONCURRENCY="1 8 32" BENCH_QUEUE_DELAY_MS=0 scripts/bench_serve.sh
#
# wrk runs on the same machine and takes CPU from the server: on few cores the ratio
# is a floor, not the server's own overhead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
REPO="${1:-exports}"
MODEL="${2:-subj01-lh-untuned-mobilenet_v2}"
SECONDS_EACH="${BENCH_SECONDS:-10}"
CONCURRENCY="${BENCH_CONCURRENCY:-1 8 32}"
THREADS="${BENCH_INTRA_THREADS:-$(nproc)}"
MAX_BATCH="${BENCH_MAX_BATCH:-32}"
PORT="${BENCH_PORT:-18181}"
DELAY_MS="${BENCH_QUEUE_DELAY_MS:-0}"
OUT=runs/bench
mkdir -p "$OUT"

[[ -d "$REPO/$MODEL" ]] || { echo "bench_serve: no model $REPO/$MODEL (run make demo, or name one)" >&2; exit 1; }
VERSION="$(ls "$REPO/$MODEL" | grep -E '^[0-9]+$' | sort -n | tail -n1)"
DIR="$REPO/$MODEL/$VERSION"

if ! command -v wrk >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "bench_serve: installing wrk (Debian package)"
    apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
  else
    echo "bench_serve: needs wrk (apt-get install wrk)" >&2; exit 1
  fi
fi

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
for _ in $(seq 1 240); do
  curl -fs "localhost:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$TMP/serve.log"; exit 1; }
  sleep 0.25
done
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

python - "$TMP/served.jsonl" "$TMP/limit.jsonl" "$OUT" "$MODEL" "$MAX_BATCH" <<'PY'
import json, sys
served = [json.loads(l) for l in open(sys.argv[1])]
limit = {d["batch"]: d for d in map(json.loads, open(sys.argv[2]))}
out, model, max_batch = sys.argv[3], sys.argv[4], int(sys.argv[5])
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
open(f"{out}/serve.md", "w").write("\n".join(md) + "\n")
json.dump({"served": served, "limit": list(limit.values()), "rows": rows}, open(f"{out}/serve.json", "w"), indent=1)
print("\n".join(md))
PY
