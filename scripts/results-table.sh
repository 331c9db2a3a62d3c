#!/usr/bin/env bash
# The stories260K compression table of docs/results.md: runs `shrinkray
# compress` for each configuration and prints a markdown table.
#
#   scripts/results-table.sh [SHRINKRAY_BIN] [WORKDIR]
#
# SHRINKRAY_BIN defaults to build/client/shrinkray; WORKDIR (outputs, recipes,
# logs) to a fresh temporary folder, removed at the end unless KEEP=1.
# Data: $SHRINKRAY_SHARED_DATA or ../shared/data beside the repo.
# Protocol: calibration 128 windows x 256 tokens from tinystories_train_prefix.txt
# (seed 0); eval on the first 100,000 characters of tinystories_valid_prefix.txt
# in windows of 256 (docs/eval.md); dense output format.
# Environment: DEVICE=cuda solves GPTQ/SparseGPT on the GPU (compress --device);
# ONLY='NAME' keeps the configuration of exactly that name (one per line for several);
# INVERSE_FACTOR=flipped (or chain) sets the GPTQ and SparseGPT stages' inverse_factor.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/build/client/shrinkray}
DATA=${SHRINKRAY_SHARED_DATA:-$ROOT/../shared/data}
MODEL=$DATA/stories260K
CALIB=$DATA/text/tinystories_train_prefix.txt
EVAL=$DATA/text/tinystories_valid_prefix.txt
for f in "$BIN" "$MODEL/model.safetensors" "$CALIB" "$EVAL"; do
  [[ -e $f ]] || { echo "results-table: missing $f" >&2; exit 1; }
done
if [[ -n ${2:-} ]]; then
  WORK=$2
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d -t shrinkray-results-XXXXXX)
  [[ ${KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT
fi

# name|recipe (one flow-style YAML line)
CONFIGS=(
  "RTN w4 per-channel|[{rtn: {bits: 4}}]"
  "GPTQ w4 per-channel|[{gptq: {bits: 4}}]"
  "GPTQ w4 per-channel act_order|[{gptq: {bits: 4, act_order: true}}]"
  "RTN w4 g32 sym|[{rtn: {bits: 4, group_size: 32}}]"
  "GPTQ w4 g32 sym|[{gptq: {bits: 4, group_size: 32}}]"
  "RTN w4 g32 asym|[{rtn: {bits: 4, group_size: 32, sym: false}}]"
  "GPTQ w4 g32 asym|[{gptq: {bits: 4, group_size: 32, sym: false}}]"
  "RTN w3 g32|[{rtn: {bits: 3, group_size: 32}}]"
  "GPTQ w3 g32|[{gptq: {bits: 3, group_size: 32}}]"
  "RTN w2 g32|[{rtn: {bits: 2, group_size: 32}}]"
  "GPTQ w2 g32|[{gptq: {bits: 2, group_size: 32}}]"
  "magnitude 50%|[{magnitude: {sparsity: 0.5}}]"
  "Wanda 50%|[{wanda: {sparsity: 0.5}}]"
  "SparseGPT 50%|[{sparsegpt: {sparsity: 0.5}}]"
  "magnitude 2:4|[{magnitude: {pattern: \"2:4\"}}]"
  "Wanda 2:4|[{wanda: {pattern: \"2:4\"}}]"
  "SparseGPT 2:4|[{sparsegpt: {pattern: \"2:4\"}}]"
  "SparseGPT 50% + w4 (joint, per-channel)|[{sparsegpt: {sparsity: 0.5, bits: 4}}]"
  "SparseGPT 50% then GPTQ w4 g32|[{sparsegpt: {sparsity: 0.5}}, {gptq: {bits: 4, group_size: 32}}]"
)

fail() { echo "results-table: $1 failed, see $2:" >&2; tail -5 "$2" >&2; exit 1; }

eval_ppl() {  # model_dir log -> ppl
  "$BIN" eval --model "$1" --data "$EVAL" --max-chars 100000 --seqlen 256 > "$2" 2>&1 || fail "eval of $1" "$2"
  awk '/^ppl / { print $2 }' "$2"
}

run() {  # name recipe index -> "ppl mean_err rtn_cmp"
  local name=$1 recipe=$2 i=$3
  if [[ -n ${INVERSE_FACTOR:-} ]]; then
    recipe=$(sed -E "s/\{(gptq|sparsegpt): \{/{\1: {inverse_factor: $INVERSE_FACTOR, /g" <<< "$recipe")
  fi
  printf '%s\n' "$recipe" > "$WORK/recipe$i.yaml"
  "$BIN" compress --model "$MODEL" --recipe "$WORK/recipe$i.yaml" --calib "$CALIB" \
    --num-samples 128 --seqlen 256 --seed 0 --out "$WORK/out$i" --overwrite --format dense \
    --compare-rtn --device "${DEVICE:-cpu}" > "$WORK/log$i.txt" 2>&1 || fail "'$name'" "$WORK/log$i.txt"
  local ppl
  ppl=$(eval_ppl "$WORK/out$i" "$WORK/eval$i.txt")
  awk -v ppl="$ppl" '
    /^matrices /      { err = $5 }
    /^vs rtn /        { cmp = $7 "/" $9 }
    END { if (cmp == "") cmp = "-"; print ppl, err, cmp }' "$WORK/log$i.txt"
}

echo "| configuration | recipe | ppl | vs fp32 | mean matrix error | error <= RTN |"
echo "|---|---|---:|---:|---:|---:|"
base=$(eval_ppl "$MODEL" "$WORK/eval-fp32.txt")
printf '| fp32 (stories260K) | — | %.3f | — | — | — |\n' "$base"
for i in "${!CONFIGS[@]}"; do
  name=${CONFIGS[$i]%%|*}
  recipe=${CONFIGS[$i]#*|}
  if [[ -n ${ONLY:-} ]] && ! grep -qxF -- "$name" <<< "$ONLY"; then continue; fi
  row=$(run "$name" "$recipe" "$i")  # a failed run stops the script (set -e)
  read -r ppl err cmp <<< "$row"
  pct=$(awk -v p="$ppl" -v b="$base" 'BEGIN { printf "%+.2f%%", 100 * (p / b - 1) }')
  printf '| %s | `%s` | %.3f | %s | %.3g | %s |\n' "$name" "$recipe" "$ppl" "$pct" "$err" "$cmp"
done
