#!/usr/bin/env bash
# The distillation table of docs/results.md ("Distillation: students of
# stories260K"): two students of stories260K, each evaluated before training,
# after knowledge distillation and after CE-only training (--alpha 0) with the
# same steps, data, seed and lr schedule; prints a markdown table.
#
#   scripts/distill-table.sh [SHRINKRAY_BIN] [WORKDIR]
#
# SHRINKRAY_BIN defaults to build/client/shrinkray; WORKDIR (students, logs,
# distill_report.json files) to a fresh temporary folder, removed at the end
# unless KEEP=1. Data: $SHRINKRAY_SHARED_DATA or ../shared/data beside the repo.
# Protocol: training windows of 256 tokens from text/tinystories_train_prefix.txt;
# eval on the first 100,000 characters of text/tinystories_valid_prefix.txt in
# windows of 256 (docs/eval.md), as the compression table.
# Environment (defaults in brackets): STEPS [100], BATCH [16] windows per step,
# MICRO [4], LR [3e-3] peak (cosine to LR/10, WARMUP [10] steps), ALPHA [1]
# and T [2] for the KD runs, LOSS [kl], SEED [0], KEEP_LAYERS [0,1,3]; ONLY='depth' or 'width'
# keeps one student; EXTRA='--top-k 32' etc. is added to every run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/build/client/shrinkray}
DATA=${SHRINKRAY_SHARED_DATA:-$ROOT/../shared/data}
MODEL=$DATA/stories260K
TRAIN=$DATA/text/tinystories_train_prefix.txt
EVAL=$DATA/text/tinystories_valid_prefix.txt
for f in "$BIN" "$MODEL/model.safetensors" "$TRAIN" "$EVAL"; do
  [[ -e $f ]] || { echo "distill-table: missing $f" >&2; exit 1; }
done
if [[ -n ${2:-} ]]; then
  WORK=$2
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d -t shrinkray-distill-XXXXXX)
  [[ ${KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT
fi
STEPS=${STEPS:-100} BATCH=${BATCH:-16} MICRO=${MICRO:-4} LR=${LR:-3e-3} WARMUP=${WARMUP:-10}
ALPHA=${ALPHA:-1} T=${T:-2} LOSS=${LOSS:-kl} SEED=${SEED:-0}

# name|student flags. Depth keeps layers KEEP_LAYERS [0,1,3]: of the ten
# 3-of-5 subsets, {0,1,3} has the lowest ppl before training (docs/results.md
# lists all ten); width keeps the 86 MLP channels of 172 with the largest
# Minitron activation importance, in every layer.
KEEP_LAYERS=${KEEP_LAYERS:-0,1,3}
STUDENTS=(
  "depth|3 of 5 layers {$KEEP_LAYERS}|--keep-layers $KEEP_LAYERS"
  "width|MLP 86 of 172 (Minitron)|--mlp-width 86 --importance-windows 16"
)

fail() { echo "distill-table: $1 failed, see $2:" >&2; tail -5 "$2" >&2; exit 1; }

run() {  # tag student-flags alpha temperature -> log path
  local tag=$1 spec=$2 alpha=$3 temp=$4
  # shellcheck disable=SC2086  # spec and EXTRA are flag lists
  "$BIN" distill --teacher "$MODEL" --data "$TRAIN" --out "$WORK/$tag" --overwrite $spec \
    --steps "$STEPS" --batch "$BATCH" --micro-batch "$MICRO" --seqlen 256 --lr "$LR" \
    --min-lr "$(awk -v l="$LR" 'BEGIN { print l / 10 }')" --warmup "$WARMUP" --seed "$SEED" \
    --alpha "$alpha" --temperature "$temp" --loss "$LOSS" --log-every 50 ${EXTRA:-} \
    --eval "$EVAL" --eval-max-chars 100000 --eval-seqlen 256 > "$WORK/$tag.log" 2>&1 ||
    fail "'$tag'" "$WORK/$tag.log"
  echo "$WORK/$tag.log"
}

# "before|after" line of a log -> "ppl kl top1"
metrics() { awk -v w="$2" '$1 == w { print $3, $5, $7 }' "$1"; }
seconds() { awk '/^trained / { print $5 }' "$1"; }
params() { awk '/^student / { for (i = 1; i <= NF; ++i) if ($i == "parameters") print $(i - 1) }' "$1"; }

echo "| student | params | training | ppl | KL to teacher | top-1 agreement | train s |"
echo "|---|---:|---|---:|---:|---:|---:|"
teacher_done=0
for entry in "${STUDENTS[@]}"; do
  IFS='|' read -r key name spec <<< "$entry"
  if [[ -n ${ONLY:-} && $ONLY != "$key" ]]; then continue; fi
  kd=$(run "$key-kd" "$spec" "$ALPHA" "$T")
  ce=$(run "$key-ce" "$spec" 0 "$T")
  if [[ $teacher_done == 0 ]]; then
    tppl=$(awk '/^ppl teacher/ { print $3 }' "$kd")
    printf '| teacher (stories260K) | %s | — | %.3f | 0 | 1 | — |\n' \
      "$(awk '/^teacher / { for (i = 1; i <= NF; ++i) if ($i == "parameters") print $(i - 1) }' "$kd")" "$tppl"
    teacher_done=1
  fi
  p=$(params "$kd")
  read -r bppl bkl btop <<< "$(metrics "$kd" before)"
  printf '| %s | %s | none (initialised) | %.3f | %.4f | %.4f | — |\n' "$name" "$p" "$bppl" "$bkl" "$btop"
  read -r ppl kl top <<< "$(metrics "$kd" after)"
  printf '| %s | %s | KD α=%s T=%s (%s) | %.3f | %.4f | %.4f | %.0f |\n' "$name" "$p" "$ALPHA" "$T" "$LOSS" \
    "$ppl" "$kl" "$top" "$(seconds "$kd")"
  read -r ppl kl top <<< "$(metrics "$ce" after)"
  printf '| %s | %s | CE only (α=0) | %.3f | %.4f | %.4f | %.0f |\n' "$name" "$p" "$ppl" "$kl" "$top" \
    "$(seconds "$ce")"
done
