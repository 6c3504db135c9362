#!/usr/bin/env bash
# The GPU check, run from a device kit (scripts/device_kit.sh) as one command:
#
#   KIT/scripts/device_check.sh OUT_DIR          on the lent GPU machine: CUDA, 224 px
#   KIT/scripts/device_check.sh --cpu OUT_DIR    anywhere: the same steps on the CPU on
#                                                the tiny brain (the tests run this)
#
# It uses only the kit and the machine's own python3 with torch (its libtorch serves the
# kit's binaries through LD_LIBRARY_PATH) and onnxruntime (libonnxruntime for vcl-serve):
#   env        GPU, driver, torch, CUDA, cuDNN, ONNX Runtime and its providers
#   synth      the in-silico brain from the kit's photos
#   parity     vcl finetune --method cl, one epoch, fp32, on the CPU and on the device:
#              the first steps' losses must agree to 1e-3 relative
#   train-P    fine-tuning in each precision P (fp32, bf16, fp16 autocast): images/s,
#              the loss must decrease; resume: the fp32 run continued from its checkpoint
#   step-*     one training step, vcl (finetune_bench) against the machine's PyTorch
#              (bench_cl_step.py), same model, batch and precision: seconds, ratio, TFLOP/s
#   fit-*      vcl fit --evaluate of the tuned backbone on the device and on the CPU:
#              time, held-out mean r per ROI equal within 1e-3
#   export     vcl export of the device fit (its ONNX Runtime parity check included)
#   serve      vcl-serve on ONNX Runtime's CUDA provider when the library has it (else
#              the CPU provider, said so), load at concurrency 1/8/32 and the in-process
#              limit (bench_ort), the figures of scripts/bench_serve.sh
# Writes OUT_DIR/results.json and results.md (and logs/); exits 1 if a check failed.
# Every phase runs even when an earlier one failed, so one run tells everything.
set -uo pipefail
KIT="$(cd "$(dirname "$0")/.." && pwd)"
MODE=cuda
if [[ "${1:-}" == "--cpu" ]]; then MODE=cpu; shift; fi
[[ $# -eq 1 ]] || { echo "usage: device_check.sh [--cpu] OUT_DIR" >&2; exit 2; }
mkdir -p "$1/logs" || exit 2
OUT="$(cd "$1" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vcl-check.XXXXXX")"
SERVER=""
trap '[[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"' EXIT

PY=""
for p in "${VCL_CHECK_PYTHON:-}" /opt/torch/.venv/bin/python python3; do
  if [[ -n "$p" ]] && "$p" -c "import torch" 2>/dev/null; then PY="$p"; break; fi
done
[[ -n "$PY" ]] || { echo "device_check: no python with torch (set VCL_CHECK_PYTHON)" >&2; exit 2; }
SITE="$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
LIBS="$SITE/torch/lib"
if [[ -d "$SITE/nvidia" ]]; then
  LIBS="$LIBS:$(find "$SITE/nvidia" -maxdepth 3 -type d -name lib | sort | paste -sd:)"
fi
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ORT_DYLIB_PATH="$("$PY" -c 'import glob, os, onnxruntime as o; print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so*")))[-1])' 2>/dev/null || true)"
export ORT_DYLIB_PATH
export VCL_CACHE_DIR="$WORK/cache" VCL_WEIGHTS_DIR="$KIT/weights" VCL_PHOTOS_DIR="$KIT/photos"
export VCL_DEVICE=cpu   # each command below names its device
BIN="$KIT/bin"
THREADS="$(nproc)"

if [[ "$MODE" == cuda ]]; then
  PRESET=demo; SIZE=224; BATCH=256; PARITY_BATCH=64; EPOCHS=6; STEPS=20; SERVE_S=10
  PRECISIONS="fp32 bf16 fp16"; DEV=cuda
else
  PRESET=tiny; SIZE=64; BATCH=16; PARITY_BATCH=8; EPOCHS=3; STEPS=2; SERVE_S=1
  PRECISIONS="fp32"; DEV=cpu
fi
DATA="$WORK/data"; RUNS="$WORK/runs"
ROI="V1v+V1d"; FIT_ROIS="V1v,V1d"
: > "$OUT/phases.jsonl"

# phase NAME CMD...: runs CMD with its output in logs/NAME.log and records rc and time.
phase() {
  local name="$1"; shift
  local t0; t0="$(date +%s.%N)"
  echo "device_check: $name" >&2
  "$@" >"$OUT/logs/$name.log" 2>&1
  local rc=$?
  "$PY" -c 'import json, sys, time; print(json.dumps({"phase": sys.argv[1], "rc": int(sys.argv[2]), "seconds": round(time.time() - float(sys.argv[3]), 2)}))' \
    "$name" "$rc" "$t0" >> "$OUT/phases.jsonl"
  [[ $rc -eq 0 ]] || echo "device_check: $name failed (rc $rc): see logs/$name.log" >&2
  return 0
}

finetune() {  # finetune DEVICE OUT [flags...]
  local dev="$1" out="$2"; shift 2
  "$BIN/vcl" --device "$dev" finetune --data "$DATA" --subjects 1 --hemisphere lh --roi "$ROI" \
    --method cl --input-size "$SIZE" --out "$out" "$@"
}

env_info() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader > "$WORK/smi.txt"
  fi
  "$PY" - "$WORK/smi.txt" "$KIT/kit.json" "$ORT_DYLIB_PATH" > "$OUT/env.json" <<'PY'
import json, os, sys, torch
smi, kit, ort_lib = sys.argv[1:4]
d = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
     "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
     "cpu_cores": os.cpu_count(), "libonnxruntime": ort_lib or None,
     "nvidia_smi": open(smi).read().strip() if os.path.exists(smi) else None}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
try:
    import onnxruntime as ort
    d.update(onnxruntime=ort.__version__, ort_providers=ort.get_available_providers())
except ImportError:
    d.update(onnxruntime=None, ort_providers=[])
d["kit"] = json.load(open(kit)) if os.path.exists(kit) else None
if d["kit"]:
    d["kit"].pop("files", None)
print(json.dumps(d, indent=1))
PY
  cat "$OUT/env.json"
}

phase env env_info
phase synth "$BIN/vcl" synth --preset "$PRESET" --out "$DATA" --seed 0
phase parity-cpu finetune cpu "$RUNS/parity-cpu" --batch-size "$PARITY_BATCH" --epochs 1
phase parity-device finetune "$DEV" "$RUNS/parity-device" --batch-size "$PARITY_BATCH" --epochs 1
for p in fp32 bf16 fp16; do
  if [[ " $PRECISIONS " == *" $p "* ]]; then
    phase "train-$p" finetune "$DEV" "$RUNS/train-$p" --batch-size "$BATCH" --epochs "$EPOCHS" --precision "$p"
  fi
done
phase resume finetune "$DEV" "$RUNS/train-fp32" --batch-size "$BATCH" --epochs "$((EPOCHS + 1))" --precision fp32 --resume
for p in $PRECISIONS; do
  phase "step-vcl-$p" "$BIN/finetune_bench" --device "$DEV" --precision "$p" --size "$SIZE" --batch "$BATCH" \
    --steps "$STEPS" --threads "$THREADS" --json
  phase "step-torch-$p" "$PY" "$KIT/scripts/bench_cl_step.py" --device "$DEV" --precision "$p" --size "$SIZE" \
    --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" --weights "$KIT/weights/mobilenet_v2.safetensors"
done
fit() {  # fit DEVICE NAME
  "$BIN/vcl" --device "$1" fit --data "$DATA" --subjects 1 --hemispheres lh --rois "$FIT_ROIS" \
    --backbone mobilenet_v2 --input-size "$SIZE" --weights "$RUNS/train-fp32/backbone.safetensors" \
    --method cl --out "$RUNS/$2" --evaluate
}
phase fit-device fit "$DEV" fit-device
phase fit-cpu fit cpu fit-cpu
phase export "$BIN/vcl" export --run "$RUNS/fit-device" --out "$WORK/exports"

serve() {
  local provider=cpu
  if [[ "$MODE" == cuda ]] && "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
    provider=cuda
  fi
  local model dir
  model="$(ls "$WORK/exports" | head -n1)"
  dir="$(ls -d "$WORK/exports/$model"/*/ | sort -V | tail -n1)"
  "$PY" - "$dir" "$WORK/one.npy" <<'PY'
import json, sys, numpy as np
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
np.save(sys.argv[2], np.random.default_rng(0).random((1, 3, m["input"]["height"], m["input"]["width"]), dtype=np.float32))
PY
  local port=18300
  "$BIN/vcl-serve" --model-repository "$WORK/exports" --port "$port" --device "$provider" \
    --intra-threads "$THREADS" --max-batch-size 32 > "$OUT/logs/vcl-serve.log" 2>&1 &
  SERVER=$!
  "$PY" - "$port" <<'PY' || return 1
import sys, time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1); sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("vcl-serve did not become ready in 60 s")
PY
  : > "$OUT/serve.jsonl"
  for c in 1 8 32; do
    echo "{\"concurrency\": $c, \"provider\": \"$provider\", \"load\": $("$BIN/load" --url "http://127.0.0.1:$port/v1/models/$model/predict" \
      --body "$WORK/one.npy" --concurrency "$c" --seconds "$SERVE_S")}" >> "$OUT/serve.jsonl"
  done
  kill "$SERVER"; wait "$SERVER" 2>/dev/null; SERVER=""
  "$BIN/bench_ort" --model-dir "$dir" --batch 1,8,32 --seconds "$SERVE_S" --intra-threads "$THREADS" \
    --device "$provider" > "$OUT/serve_limit.jsonl"
  cat "$OUT/serve.jsonl" "$OUT/serve_limit.jsonl"
}
phase serve serve

# Collect every phase's files into the results.
for r in "$RUNS"/*/; do
  n="$(basename "$r")"; mkdir -p "$OUT/runs/$n"
  cp "$r"/{summary.json,history.csv,steps.csv,fit.json} "$OUT/runs/$n/" 2>/dev/null
  [[ -f "$r/evaluation/results.json" ]] && cp "$r/evaluation/results.json" "$OUT/runs/$n/evaluation.json"
done
"$PY" - "$OUT" "$MODE" "$DEV" "$PRECISIONS" "$SIZE" "$BATCH" <<'PY'
import csv, json, os, statistics, sys
out, mode, dev, precisions, size, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), int(sys.argv[5]), int(sys.argv[6])
H200_BF16_DENSE_TFLOPS = 989.5  # NVIDIA's H200 SXM datasheet, dense (no sparsity)
phases = {p["phase"]: p for p in map(json.loads, open(f"{out}/phases.jsonl"))}
def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None
def steps(run):
    try:
        return [float(r["loss"]) for r in csv.DictReader(open(f"{out}/runs/{run}/steps.csv"))]
    except OSError:
        return []
def last_json(phase):
    try:
        return json.loads(open(f"{out}/logs/{phase}.log").read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
checks, res = [], {"mode": mode, "device": dev, "input_size": size, "batch": batch,
                   "env": load(f"{out}/env.json"), "phases": list(phases.values())}
def check(name, ok, detail):
    checks.append({"check": name, "ok": bool(ok), "detail": detail})

a, b = steps("parity-cpu"), steps("parity-device")
k = min(5, len(a), len(b))
rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a[:k], b[:k])]
res["parity"] = {"cpu": a[:k], dev: b[:k], "max_rel": max(rel) if rel else None}
check(f"first {k} CL losses, {dev} vs CPU float32, within 1e-3 relative", k >= 2 and max(rel) <= 1e-3,
      f"max relative difference {max(rel):.2e}" if rel else "no steps")

res["train"] = {}
for p in precisions:
    s = load(f"{out}/runs/train-{p}/summary.json")
    st = steps(f"train-{p}")
    if not s:
        check(f"training in {p}", False, "no summary (see logs)")
        continue
    hist = s["history"]
    ips = [h["images_per_s"] for h in hist[1:]] or [h["images_per_s"] for h in hist]
    third = max(1, len(st) // 3)
    first, last = statistics.mean(st[:third]), statistics.mean(st[-third:])
    res["train"][p] = {"images_per_s_median": statistics.median(ips), "epochs": len(hist),
                       "first_loss": first, "last_loss": last, "device": s["device"]}
    check(f"{p}: loss decreases", last < first, f"mean loss of the first third of steps {first:.4f}, last third {last:.4f}")
r = load(f"{out}/runs/train-fp32/summary.json")
check("a checkpoint resumes", bool(r) and r.get("resumed_from_epoch") is not None and r.get("completed"),
      f"resumed from epoch {r.get('resumed_from_epoch')}, {r.get('epochs_completed')} epochs" if r else "no summary")

res["step"] = {}
for p in precisions:
    v, t = last_json(f"step-vcl-{p}"), last_json(f"step-torch-{p}")
    if not (v and t):
        check(f"{p}: vcl and PyTorch steps ran", False, "see logs/step-*")
        continue
    row = {"vcl_s": v["seconds_per_step"], "torch_s": t["seconds_per_step"],
           "ratio": v["seconds_per_step"] / t["seconds_per_step"], "flops_per_step": t.get("flops_per_step"),
           "torch_model": t.get("model")}
    if t.get("flops_per_step"):
        row["vcl_tflops"] = t["flops_per_step"] / v["seconds_per_step"] / 1e12
        row["torch_tflops"] = t["flops_per_step"] / t["seconds_per_step"] / 1e12
        row["vcl_of_bf16_peak"] = row["vcl_tflops"] / H200_BF16_DENSE_TFLOPS
    res["step"][p] = row

def mean_r(run):
    e = load(f"{out}/runs/{run}/evaluation.json")
    return {f'{x["hemisphere"]} {x["roi"]}': x["scores"]["mean_r"] for x in e["results"]} if e else {}
fd, fc = mean_r("fit-device"), mean_r("fit-cpu")
res["fit"] = {dev: fd, "cpu": fc, "seconds": {dev: phases.get("fit-device", {}).get("seconds"),
                                              "cpu": phases.get("fit-cpu", {}).get("seconds")}}
diff = [abs(fd[k] - fc[k]) for k in fd if k in fc]
check(f"held-out mean r, fit on {dev} vs CPU, within 1e-3", bool(fd) and len(diff) == len(fd) and max(diff) <= 1e-3,
      f"max |difference| {max(diff):.2e} over {len(diff)} ROIs" if diff else "no scores")
check("export (with its ONNX Runtime parity check)", phases.get("export", {}).get("rc") == 0, "see logs/export.log")
try:
    served = [json.loads(l) for l in open(f"{out}/serve.jsonl")]
    limit = {d["batch"]: d for d in map(json.loads, open(f"{out}/serve_limit.jsonl"))}
    res["serve"] = []
    for s in served:
        l = s["load"]; bsz = min(s["concurrency"], 32)
        ips = l["requests"] / l["seconds"]
        res["serve"].append({"concurrency": s["concurrency"], "provider": s["provider"], "images_per_s": ips,
                             "p50_ms": l["p50_ms"], "p99_ms": l["p99_ms"], "errors": l["non_2xx"] + l["socket_errors"],
                             "limit_images_per_s": limit[bsz]["images_per_s"], "ratio": ips / limit[bsz]["images_per_s"]})
    check("serving answered every request", all(r["errors"] == 0 and r["images_per_s"] > 0 for r in res["serve"]),
          f"provider {served[0]['provider']}")
except (OSError, ValueError, KeyError) as e:
    check("serving", False, f"no serving figures ({e})")
for p in phases.values():
    if p["rc"] != 0:
        check(f"phase {p['phase']} exited 0", False, f"rc {p['rc']}, logs/{p['phase']}.log")
res["checks"] = checks
res["ok"] = all(c["ok"] for c in checks)
json.dump(res, open(f"{out}/results.json", "w"), indent=1)

env = res["env"] or {}
md = [f"# vcl device check ({mode})", "",
      f"{env.get('gpu', 'no GPU')} ({env.get('nvidia_smi') or 'no nvidia-smi'}); torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, "
      f"cuDNN {env.get('cudnn')}); ONNX Runtime {env.get('onnxruntime')} {env.get('ort_providers')}; {env.get('cpu_cores')} cores; "
      f"kit {((env.get('kit') or {}).get('git_commit') or '')[:10]}. MobileNetV2, {size} px.", "",
      "| check | ok | detail |", "|---|---|---|"] + [f"| {c['check']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |" for c in checks]
if res["train"]:
    md += ["", f"Fine-tuning (`vcl finetune --method cl`, batch {batch}, median over epochs 2..):", "",
           "| precision | images/s | first-third loss | last-third loss |", "|---|---:|---:|---:|"]
    md += [f"| {p} | {t['images_per_s_median']:.1f} | {t['first_loss']:.4f} | {t['last_loss']:.4f} |" for p, t in res["train"].items()]
if res["step"]:
    md += ["", f"One CL training step, batch {batch} (vcl: finetune_bench; PyTorch: bench_cl_step.py, the machine's torch):", "",
           "| precision | vcl s/step | PyTorch s/step | vcl / PyTorch | vcl TFLOP/s | PyTorch TFLOP/s | vcl of H200 bf16 peak |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for p, s in res["step"].items():
        tf = lambda k: f"{s[k]:.3g}" if k in s else "-"
        md.append(f"| {p} | {s['vcl_s']:.4f} | {s['torch_s']:.4f} | {s['ratio']:.2f} | {tf('vcl_tflops')} | {tf('torch_tflops')} | "
                  + (f"{100 * s['vcl_of_bf16_peak']:.1f}% |" if "vcl_of_bf16_peak" in s else "- |"))
if res["fit"][dev]:
    md += ["", "| ROI | held-out mean r, " + dev + (" | CPU |" if fc else " |"), "|---|---:|" + ("---:|" if fc else "")]
    md += [f"| {k} | {v:.4f} |" + (f" {fc.get(k, float('nan')):.4f} |" if fc else "") for k, v in fd.items()]
    md += ["", "fit seconds: " + ", ".join(f"{k} {v}" for k, v in res["fit"]["seconds"].items() if v is not None)]
if res.get("serve"):
    md += ["", "| concurrency | provider | served img/s | p50 ms | p99 ms | errors | in-process limit img/s | ratio |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {s['concurrency']} | {s['provider']} | {s['images_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
           f"{s['errors']} | {s['limit_images_per_s']:.1f} | {s['ratio']:.2f} |" for s in res["serve"]]
md += ["", "Phases (seconds): " + ", ".join(f"{p['phase']} {p['seconds']}" + ("" if p["rc"] == 0 else f" (rc {p['rc']})") for p in phases.values())]
open(f"{out}/results.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(0 if res["ok"] else 1)
PY
