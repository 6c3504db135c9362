#!/usr/bin/env bash
# Soak test (not in the test command): vcl-serve at a share of its measured capacity
# for SOAK_MINUTES, with a mix of good requests and client mistakes
# (scripts/soak_load.py), the server's RSS sampled every 10 s, every unexpected status
# and connection error counted. Writes runs/bench/soak.{md,json,svg}.
#
#   SOAK_MINUTES=60 SOAK_SHARE=0.5 scripts/soak.sh [REPOSITORY [MODEL]]   (default: the demo export)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/serve_lib.sh
REPO="${1:-exports}"
MODEL="${2:-subj01-lh-untuned-mobilenet_v2}"
MINUTES="${SOAK_MINUTES:-10}"
SHARE="${SOAK_SHARE:-0.5}"
PORT="${SOAK_PORT:-18282}"
OUT=runs/bench
mkdir -p "$OUT"
[[ -d "$REPO/$MODEL" ]] || { echo "soak: no model $REPO/$MODEL (run make demo, or name one)" >&2; exit 1; }
need_wrk
VERSION="$(latest_version "$REPO" "$MODEL")"
cargo build --release --quiet -p vcl-server --bin vcl-serve
TMP="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$TMP"' EXIT
python - "$REPO/$MODEL/$VERSION" "$TMP" <<'PY'
import json, sys, numpy as np, zlib, struct
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
h, w = m["input"]["height"], m["input"]["width"]
rng = np.random.default_rng(0)
np.save(f"{sys.argv[2]}/one.npy", rng.random((1, 3, h, w), dtype=np.float32))
img = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
raw = b"".join(b"\0" + img[y].tobytes() for y in range(96))
c = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
open(f"{sys.argv[2]}/one.png", "wb").write(b"\x89PNG\r\n\x1a\n" + c(b"IHDR", struct.pack(">IIBBBBB", 96, 96, 8, 2, 0, 0, 0))
    + c(b"IDAT", zlib.compress(raw)) + c(b"IEND", b""))
PY
target/release/vcl-serve --model-repository "$REPO" --port "$PORT" --device cpu >"$TMP/serve.log" 2>&1 &
SERVER=$!
wait_ready "localhost:$PORT/readyz" "$SERVER" "$TMP/serve.log"
cat > "$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/x-npy"
local f = assert(io.open(os.getenv("BODY"), "rb")); wrk.body = f:read("*a"); f:close()
function done(s) io.write(string.format("%.1f\n", s.requests / (s.duration / 1e6))) end
LUA
CAPACITY="$(BODY="$TMP/one.npy" wrk -t2 -c8 -d10s -s "$TMP/post.lua" "http://127.0.0.1:$PORT/v1/models/$MODEL/predict" | tail -n1)"
RATE="$(python -c "print(round($CAPACITY * $SHARE, 1))")"
echo "soak: capacity $CAPACITY img/s at concurrency 8; soaking at $RATE req/s for $MINUTES min"
python scripts/soak_load.py "http://127.0.0.1:$PORT" "$MODEL" "$SERVER" "$RATE" "$(( MINUTES * 60 ))" \
  "$TMP/one.npy" "$TMP/one.png" > "$TMP/soak.json"
kill -0 "$SERVER" || { echo "soak: vcl-serve died"; cat "$TMP/serve.log"; exit 1; }
curl -fs "localhost:$PORT/metrics" | grep -c . > "$TMP/metric_lines"
python - "$TMP/soak.json" "$OUT" "$CAPACITY" "$SHARE" "$MINUTES" "$(cat "$TMP/metric_lines")" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); out = sys.argv[2]
d.update(capacity_img_s=float(sys.argv[3]), share=float(sys.argv[4]), minutes=float(sys.argv[5]), metrics_lines=int(sys.argv[6]))
rss = [r for _, r in d["rss_mb"] if r is not None]
by_status = {}
for k, n in d["counts"].items():
    s = k.split(":", 1)[1]
    by_status[s] = by_status.get(s, 0) + n
md = [f"vcl-serve soak: {d['minutes']:.0f} min at {d['share']:.0%} of capacity ({d['capacity_img_s']:.0f} img/s at concurrency 8)", "",
      "| requests | req/s | statuses | unexpected | npy p50 / p99 ms | RSS start / max / end MB | /metrics lines |",
      "|---:|---:|---|---:|---|---|---:|",
      f"| {d['requests']} | {d['rate_done']:.1f} | {', '.join(f'{k}: {v}' for k, v in sorted(by_status.items()))} | {d['unexpected']} | "
      f"{d['npy_p50_ms']:.1f} / {d['npy_p99_ms']:.1f} | {rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} | {d['metrics_lines']} |"]
open(f"{out}/soak.md", "w").write("\n".join(md) + "\n")
json.dump(d, open(f"{out}/soak.json", "w"), indent=1)
# RSS over time as SVG.
W, H, pad = 640, 240, 40
ts = [t for t, r in d["rss_mb"] if r is not None]; t1 = max(ts) or 1
lo, hi = 0, max(rss) * 1.2
pts = " ".join(f"{pad + (W - 2 * pad) * t / t1:.1f},{H - pad - (H - 2 * pad) * (r - lo) / (hi - lo):.1f}" for t, r in zip(ts, rss))
svg = f'''<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/><polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{pts}"/>
<line x1="{pad}" y1="{H-pad}" x2="{W-pad}" y2="{H-pad}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{H-pad}" stroke="black"/>
<text x="{W/2}" y="{H-8}" text-anchor="middle">minutes (0 to {t1/60:.0f})</text>
<text x="12" y="{pad-10}">RSS MB (0 to {hi:.0f})</text>
<text x="{W/2}" y="20" text-anchor="middle">vcl-serve RSS during the soak: {rss[0]:.0f} -> {rss[-1]:.0f} MB, {d['requests']} requests</text></svg>'''
open(f"{out}/soak.svg", "w").write(svg)
print("\n".join(md))
PY
