#!/usr/bin/env bash
# One contrastive training step (MobileNetV2, CL heads, InfoNCE, backward, Adam), vcl
# (libtorch through tch) against PyTorch on the same shapes and threads, each in its
# own process, in one run:
#   vcl        malloc tuned at start (what `vcl finetune` does)
#   vcl        glibc malloc defaults (VCL_MALLOC_TUNING=0 / --no-tune)
#   PyTorch    glibc malloc defaults
#   PyTorch    the same malloc settings as vcl, through glibc's environment variables
# Prints a Markdown table with ratios (vcl seconds / PyTorch seconds) and writes it to
# runs/bench/cl_step.{md,json}.
#
#   scripts/bench_cl_step.sh                      (224 px, batch 64, 2 threads, 5 steps)
#   BENCH_SIZE=128 BENCH_BATCH=64 BENCH_THREADS=2 BENCH_STEPS=5 scripts/bench_cl_step.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
SIZE="${BENCH_SIZE:-224}"; BATCH="${BENCH_BATCH:-64}"; THREADS="${BENCH_THREADS:-2}"; STEPS="${BENCH_STEPS:-5}"
OUT=runs/bench
mkdir -p "$OUT"
scripts/setup.sh
cargo build --release --quiet -p vcl-trainer --example finetune_bench
VCL=target/release/examples/finetune_bench
ARGS=(--size "$SIZE" --batch "$BATCH" --steps "$STEPS")
# vcl's tune_allocator, spelled as glibc's environment variables for the PyTorch
# process (a 64 GiB trim threshold: never trims, as mallopt's -1).
TUNED=(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824)

run() { echo "bench_cl_step: $1" >&2; shift; "$@" | tail -n1; }
{
  run "vcl, malloc tuned" "$VCL" "${ARGS[@]}" --threads "$THREADS" --json
  run "vcl, glibc defaults" env VCL_MALLOC_TUNING=0 "$VCL" "${ARGS[@]}" --threads "$THREADS" --no-tune --json
  run "PyTorch, glibc defaults" python scripts/bench_cl_step.py "${ARGS[@]}" --threads "$THREADS"
  run "PyTorch, malloc tuned" env "${TUNED[@]}" python scripts/bench_cl_step.py "${ARGS[@]}" --threads "$THREADS"
} > "$OUT/cl_step.jsonl"

python - "$OUT" "$SIZE" "$BATCH" "$THREADS" <<'PY'
import json, sys
out, size, batch, threads = sys.argv[1:5]
names = ["vcl, malloc tuned", "vcl, glibc defaults", "PyTorch, glibc defaults", "PyTorch, malloc tuned"]
rows = [json.loads(l) for l in open(f"{out}/cl_step.jsonl")]
r = dict(zip(names, rows))
md = [f"One CL step, MobileNetV2, {size} px, batch {batch}, {threads} threads (CPU)", "",
      "| run | s/step | images/s | page faults/step | peak RSS GiB |", "|---|---:|---:|---:|---:|"]
for n in names:
    d = r[n]
    md.append(f"| {n} | {d['seconds_per_step']:.3f} | {d['images_per_s']:.1f} | {d['page_faults_per_step']:.0f} | {d['peak_rss_gib']:.2f} |")
vt = r["vcl, malloc tuned"]["seconds_per_step"]
ratios = {
    "vcl tuned / PyTorch default": vt / r["PyTorch, glibc defaults"]["seconds_per_step"],
    "vcl tuned / PyTorch tuned": vt / r["PyTorch, malloc tuned"]["seconds_per_step"],
    "vcl default / PyTorch default": r["vcl, glibc defaults"]["seconds_per_step"] / r["PyTorch, glibc defaults"]["seconds_per_step"],
}
md += ["", "| ratio (seconds per step) | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
open(f"{out}/cl_step.md", "w").write("\n".join(md) + "\n")
json.dump({"runs": r, "ratios": ratios}, open(f"{out}/cl_step.json", "w"), indent=1)
print("\n".join(md))
PY
