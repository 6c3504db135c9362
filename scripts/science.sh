#!/usr/bin/env bash
# The contrastive issue's science table on the in-silico brain: the demo preset with 2
# simulated subjects, left hemisphere, early visual cortex. Per subject, the paper's CL
# recipe and the regression baseline tune MobileNetV2 on V1 (V1v+V1d); each tuned
# backbone then goes through the same encoder fit as the untuned one (taps, PCA, ridge,
# CV inside the training split) and is scored once on the held-out 15%. `vcl compare`
# makes the table (mean / median r, share of voxels CL beats each method, paired t test
# across subjects). With SCIENCE_RECIPES=1 it also trains, on subj01, the recipes the
# paper lacked (two-way InfoNCE, learnable temperature, retinotopy-safe augmentation,
# heads on a backbone tap instead of the logits) and compares them with the paper's,
# and gives the MI bound of the paper's recipe beside that of heads trained on the
# frozen untuned backbone. With SCIENCE_AUTO=1 it also tunes, per subject, CL and the
# regression baseline with `--recipe auto` and compares them with the paper's recipe
# (reference: CL with the auto recipe). SCIENCE_METHODS chooses the paper-recipe methods
# (default "cl regression"). With SCIENCE_GRIDS=1 every backbone of the table (untuned and
# each tuned one) is fitted again with the pooling grid a CV choice beside the tap
# (SCIENCE_GRID_LIST, default 1,2,4,8,cap) and compared with the cap-only fits
# (reference: cl-grids). With SCIENCE_FWRF=1 the same backbones are fitted with the fwRF
# encoder (per-voxel Gaussian pooling field on a conv tap, ridge over channels) and
# compared with the PCA + ridge fits (reference: cl-fwrf), on the conv taps of
# SCIENCE_FWRF_TAPS (default features.3,6,10,13,16: each field's ridge costs C^2, and the
# last taps' 320 and 1280 channels would take most of the time).
#
# With SCIENCE_SPATIAL=1 each subject's backbone is also tuned with CL heads on a tap
# (SCIENCE_SPATIAL_TAP, default features.10) read two ways, averaged over space and
# through a learned spatial mask per unit (--image-readout spatial), and compared with
# the logits heads (reference: cl-spatial).
# With --curve (or SCIENCE_CURVE=1) it also tunes and fits every method on nested subsets
# of each subject's training images (SCIENCE_CURVE_SIZES, default "200 400"; the full
# training part is the main table's point) and writes the data-size curve (`vcl curve`).
# SCIENCE_SEED (default 0) chooses the generator seed of the brain: seed N > 0 synthesizes
# its own data/demo-seedN and writes runs/science-seedN, so two seeds' runs never mix.
#
#   scripts/science.sh                 (about 35 min on 2 cores; +15 min with recipes)
#   scripts/science.sh --curve         (about 45 min more, with regression)
#   SCIENCE_SIZE=128 SCIENCE_OUT=runs/science SCIENCE_RECIPES=1 scripts/science.sh
#   SCIENCE_AUTO=1 SCIENCE_METHODS=cl scripts/science.sh     (about 40 min)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${1:-}" != --curve ]] || SCIENCE_CURVE=1
source scripts/env.sh
SEED="${SCIENCE_SEED:-0}"
SUFFIX=""; [[ "$SEED" == 0 ]] || SUFFIX="-seed$SEED"
DATA="${SCIENCE_DATA:-data/demo$SUFFIX}"
OUT="${SCIENCE_OUT:-runs/science$SUFFIX}"
SIZE="${SCIENCE_SIZE:-128}"
ROI="V1v+V1d"
FIT_ROIS="V1v+V1d,early"
SUBJECTS="${SCIENCE_SUBJECTS:-1 2}"
cargo build --release --quiet -p vcl-trainer --bin vcl
VCL=target/release/vcl
[[ -f "$DATA/in_silico.json" ]] || $VCL synth --preset demo --out "$DATA" --seed "$SEED"
# A brain of another seed under the same path would mix two brains' runs in one table.
have_seed="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seed"])' "$DATA/in_silico.json")"
[[ "$have_seed" == "$SEED" ]] || {
  echo "science: $DATA/in_silico.json is seed $have_seed, not SCIENCE_SEED=$SEED" >&2; exit 1; }
mkdir -p "$OUT"
log() { echo "science: $*" >&2; }

fit() {  # fit <label> <subject> <weights> <out> [extra fit flags]; the label starts with the method (cl-augment)
  local label="$1" s="$2" weights="$3" out="$4"; shift 4
  $VCL fit --data "$DATA" --subjects "$s" --hemispheres lh --rois "$FIT_ROIS" \
    --input-size "$SIZE" --weights "$weights" --method "${label%%-*}" --label "$label" --out "$out" --evaluate "$@"
}
tune() {  # tune <method> <subject> <out> [extra finetune flags]
  local method="$1" s="$2" out="$3"; shift 3
  if [[ ! -f "$out/backbone.safetensors" ]]; then
    $VCL finetune --data "$DATA" --subjects "$s" --hemisphere lh --roi "$ROI" --method "$method" \
      --micro-batch 64 --input-size "$SIZE" --out "$out" $([[ -d "$out" ]] && echo --resume) "$@"
  fi
}

UNTUNED_SUBJECTS="$(echo $SUBJECTS | tr ' ' ',')"
[[ -f "$OUT/untuned/evaluation/results.json" ]] || {
  log "untuned fit, subjects $UNTUNED_SUBJECTS"
  $VCL fit --data "$DATA" --subjects "$UNTUNED_SUBJECTS" --hemispheres lh --rois "$FIT_ROIS" \
    --input-size "$SIZE" --method untuned --out "$OUT/untuned" --evaluate
}
RUNS=("$OUT/untuned")
for s in $SUBJECTS; do
  sub="subj$(printf %02d "$s")"
  for m in ${SCIENCE_METHODS:-cl regression}; do
    log "$m on $sub"
    tune "$m" "$s" "$OUT/$m-$sub"
    [[ -f "$OUT/$m-fit-$sub/evaluation/results.json" ]] || fit "$m" "$s" "$OUT/$m-$sub/backbone.safetensors" "$OUT/$m-fit-$sub"
    RUNS+=("$OUT/$m-fit-$sub")
  done
done
$VCL compare "${RUNS[@]}" --out "$OUT/compare"

if [[ "${SCIENCE_AUTO:-0}" == 1 ]]; then
  AUTO_RUNS=("${RUNS[@]}")
  for s in $SUBJECTS; do
    sub="subj$(printf %02d "$s")"
    for m in cl regression; do
      log "$m --recipe auto on $sub"
      tune "$m" "$s" "$OUT/$m-auto-$sub" --recipe auto
      [[ -f "$OUT/$m-auto-fit-$sub/evaluation/results.json" ]] || fit "$m-auto" "$s" "$OUT/$m-auto-$sub/backbone.safetensors" "$OUT/$m-auto-fit-$sub"
      AUTO_RUNS+=("$OUT/$m-auto-fit-$sub")
    done
  done
  $VCL compare "${AUTO_RUNS[@]}" --reference cl-auto --out "$OUT/auto"
  log "auto recipe: $OUT/auto/comparison.md"
fi

if [[ "${SCIENCE_GRIDS:-0}" == 1 ]]; then
  GRIDS="${SCIENCE_GRID_LIST:-1,2,4,8,cap}"
  GRID_RUNS=("${RUNS[@]}")
  [[ -f "$OUT/untuned-grids/evaluation/results.json" ]] || {
    log "untuned fit with pooling grids $GRIDS"
    $VCL fit --data "$DATA" --subjects "$UNTUNED_SUBJECTS" --hemispheres lh --rois "$FIT_ROIS" \
      --input-size "$SIZE" --method untuned --label untuned-grids --pool-grids "$GRIDS" \
      --out "$OUT/untuned-grids" --evaluate
  }
  GRID_RUNS+=("$OUT/untuned-grids")
  for s in $SUBJECTS; do
    sub="subj$(printf %02d "$s")"
    for m in ${SCIENCE_METHODS:-cl regression}; do
      [[ -f "$OUT/$m-grids-fit-$sub/evaluation/results.json" ]] || fit "$m-grids" "$s" "$OUT/$m-$sub/backbone.safetensors" "$OUT/$m-grids-fit-$sub" --pool-grids "$GRIDS"
      GRID_RUNS+=("$OUT/$m-grids-fit-$sub")
    done
  done
  $VCL compare "${GRID_RUNS[@]}" --reference cl-grids --out "$OUT/grids"
  log "pooling grids: $OUT/grids/comparison.md"
fi

if [[ "${SCIENCE_FWRF:-0}" == 1 ]]; then
  FWRF_RUNS=("${RUNS[@]}")
  FWRF_TAPS="${SCIENCE_FWRF_TAPS:-features.3,features.6,features.10,features.13,features.16}"
  [[ -f "$OUT/untuned-fwrf/evaluation/results.json" ]] || {
    log "untuned fit with the fwRF encoder"
    $VCL fit --data "$DATA" --subjects "$UNTUNED_SUBJECTS" --hemispheres lh --rois "$FIT_ROIS" \
      --input-size "$SIZE" --method untuned --label untuned-fwrf --encoder fwrf --taps "$FWRF_TAPS" \
      --out "$OUT/untuned-fwrf" --evaluate
  }
  FWRF_RUNS+=("$OUT/untuned-fwrf")
  for s in $SUBJECTS; do
    sub="subj$(printf %02d "$s")"
    for m in ${SCIENCE_METHODS:-cl regression}; do
      [[ -f "$OUT/$m-fwrf-fit-$sub/evaluation/results.json" ]] || fit "$m-fwrf" "$s" "$OUT/$m-$sub/backbone.safetensors" "$OUT/$m-fwrf-fit-$sub" --encoder fwrf --taps "$FWRF_TAPS"
      FWRF_RUNS+=("$OUT/$m-fwrf-fit-$sub")
    done
  done
  $VCL compare "${FWRF_RUNS[@]}" --reference cl-fwrf --out "$OUT/fwrf"
  log "fwRF: $OUT/fwrf/comparison.md"
fi

if [[ "${SCIENCE_SPATIAL:-0}" == 1 ]]; then
  TAP="${SCIENCE_SPATIAL_TAP:-features.10}"
  SPATIAL_RUNS=("${RUNS[@]}")
  for s in $SUBJECTS; do
    sub="subj$(printf %02d "$s")"
    for r in mean spatial; do
      label="cl-$r"; [[ "$r" == mean ]] && label=cl-tapmean
      log "CL heads on $TAP ($r) on $sub"
      tune cl "$s" "$OUT/$label-$sub" --image-tap "$TAP" --image-readout "$r"
      [[ -f "$OUT/$label-fit-$sub/evaluation/results.json" ]] || fit "$label" "$s" "$OUT/$label-$sub/backbone.safetensors" "$OUT/$label-fit-$sub"
      SPATIAL_RUNS+=("$OUT/$label-fit-$sub")
    done
  done
  $VCL compare "${SPATIAL_RUNS[@]}" --reference cl-spatial --out "$OUT/spatial"
  log "spatial heads: $OUT/spatial/comparison.md"
fi

if [[ "${SCIENCE_CURVE:-0}" == 1 ]]; then
  CURVE_RUNS=("${RUNS[@]}")
  for n in ${SCIENCE_CURVE_SIZES:-200 400}; do
    [[ -f "$OUT/curve/untuned-$n/evaluation/results.json" ]] || {
      log "untuned fit on $n training images"
      $VCL fit --data "$DATA" --subjects "$UNTUNED_SUBJECTS" --hemispheres lh --rois "$FIT_ROIS" \
        --input-size "$SIZE" --method untuned --train-images "$n" --out "$OUT/curve/untuned-$n" --evaluate
    }
    CURVE_RUNS+=("$OUT/curve/untuned-$n")
    for s in $SUBJECTS; do
      sub="subj$(printf %02d "$s")"
      for m in ${SCIENCE_METHODS:-cl regression}; do
        log "$m on $sub, $n training images"
        tune "$m" "$s" "$OUT/curve/$m-$n-$sub" --train-images "$n"
        [[ -f "$OUT/curve/$m-fit-$n-$sub/evaluation/results.json" ]] || fit "$m" "$s" "$OUT/curve/$m-$n-$sub/backbone.safetensors" "$OUT/curve/$m-fit-$n-$sub" --train-images "$n"
        CURVE_RUNS+=("$OUT/curve/$m-fit-$n-$sub")
      done
    done
  done
  $VCL curve "${CURVE_RUNS[@]}" --out "$OUT/curve"
  log "data-size curve: $OUT/curve/curve.md"
fi

if [[ "${SCIENCE_RECIPES:-0}" == 1 ]]; then
  first="$(echo $SUBJECTS | cut -d' ' -f1)"; sub="subj$(printf %02d "$first")"
  RECIPE_RUNS=("$OUT/untuned" "$OUT/cl-fit-$sub")
  for r in symmetric learnable-tau augment image-tap; do
    log "recipe $r on $sub"
    flags=("--$r")
    [[ "$r" == image-tap ]] && flags=(--image-tap features.10)
    tune cl "$first" "$OUT/cl-$r-$sub" "${flags[@]}"
    [[ -f "$OUT/cl-$r-fit-$sub/evaluation/results.json" ]] || fit "cl-$r" "$first" "$OUT/cl-$r-$sub/backbone.safetensors" "$OUT/cl-$r-fit-$sub"
    RECIPE_RUNS+=("$OUT/cl-$r-fit-$sub")
  done
  $VCL compare "${RECIPE_RUNS[@]}" --reference cl --out "$OUT/recipes"
  log "heads on the frozen untuned backbone, for the MI bound"
  tune cl "$first" "$OUT/cl-frozen-$sub" --freeze features,classifier
  $VCL mi --run "$OUT/cl-$sub" --run "$OUT/cl-frozen-$sub" --out "$OUT/mi"
fi
log "table: $OUT/compare/comparison.md"
[[ "${SCIENCE_RECIPES:-0}" != 1 ]] || log "recipes: $OUT/recipes/comparison.md"
