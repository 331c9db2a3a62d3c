#!/usr/bin/env bash
# The README's main job: the combined pipeline (distill -> SparseGPT 30% ->
# GPTQ w4 g32) through the service, ending with its results table.
#
# With no arguments (no ../shared needed) it makes its own small teacher: the
# built-in demo model (4 layers, random weights) and a deterministic text,
# trained briefly with `shrinkray distill` CE-only (alpha 0, seeded), so every
# machine gets the same teacher and the same table. Then it starts a
# coordinator and 2 local workers on loopback, submits the recipe from the CLI
# (`shrinkray submit --wait`: progress per step / layer, then the table), checks
# that the table has its 4 rows, and stops everything.
#
#   scripts/service-demo.sh [BUILD_DIR] [--model DIR] [--text FILE]
#                           [--keep-layers 0,2,3] [--steps N] [--teacher-steps N]
#
#   BUILD_DIR        default: build (or $BUILD_DIR)
#   --model DIR      a Hugging Face Llama-family folder: the teacher instead of
#                    the trained demo model
#   --text FILE      training/calibration text (its first 80% of lines) and
#                    evaluation text (the rest); default: the demo text
#   --keep-layers L  the student's layers (default: every other layer from 0,
#                    and the last: 0,2,3 of 4, 0,2,4 of 5)
#   --steps N        distillation steps of the job (default 100)
#   --teacher-steps N  CE training steps of the demo teacher (default 150)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
MODEL=""
TEXT=""
KEEP=""
STEPS=100
TEACHER_STEPS=150
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "$1"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=${2:?--model needs a folder}; shift 2 ;;
    --text) TEXT=${2:?--text needs a file}; shift 2 ;;
    --keep-layers) KEEP=${2:?--keep-layers needs a list}; shift 2 ;;
    --steps) STEPS=${2:?--steps needs a number}; shift 2 ;;
    --teacher-steps) TEACHER_STEPS=${2:?--teacher-steps needs a number}; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "service-demo: unknown option $1 (--help lists them)" >&2; exit 2 ;;
    *) BUILD_DIR=$1; shift ;;
  esac
done
SHRINKRAY="$BUILD_DIR/client/shrinkray"
COORDINATOR="$BUILD_DIR/server/shrinkray-coordinator"
WORKER="$BUILD_DIR/worker/shrinkray-worker"
for b in "$SHRINKRAY" "$COORDINATOR" "$WORKER"; do
  [ -x "$b" ] || { echo "service-demo: $b not built (run ./scripts/build.sh)" >&2; exit 1; }
done
if [ -n "$MODEL" ]; then
  [ -f "$MODEL/config.json" ] || { echo "service-demo: --model $MODEL has no config.json" >&2; exit 1; }
  MODEL=$(cd "$MODEL" && pwd)
fi
if [ -n "$TEXT" ]; then
  [ -s "$TEXT" ] || { echo "service-demo: --text $TEXT is missing or empty" >&2; exit 1; }
fi
START=$SECONDS

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shrinkray-service-demo.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

if [ -z "$MODEL" ] || [ -z "$TEXT" ]; then
  echo "== the demo model and text (4 layers, random weights; 96 kB of seeded text)"
  "$SHRINKRAY" demo --workdir "$WORK" --prepare-only --layers 4 --intermediate 192 --text-bytes 96000
fi
# Training / calibration text and held-out evaluation text: 80% / 20% of the lines.
SOURCE_TEXT=${TEXT:-$WORK/demo-text.txt}
LINES=$(wc -l <"$SOURCE_TEXT")
[ "$LINES" -ge 5 ] || { echo "service-demo: $SOURCE_TEXT has fewer than 5 lines" >&2; exit 1; }
head -n $((LINES * 4 / 5)) "$SOURCE_TEXT" >"$WORK/train.txt"
tail -n +$((LINES * 4 / 5 + 1)) "$SOURCE_TEXT" >"$WORK/eval.txt"

# Each of the 2 workers gets half the cores (the demo runs them on one machine).
# OpenBLAS's sums depend on its thread count, so the built-in demo pins it to 1
# (the same teacher and table on every machine; 2 cores suffice for this size).
THREADS=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
BLAS_THREADS=$THREADS
[ -z "$MODEL" ] && BLAS_THREADS=1

if [ -z "$MODEL" ]; then
  echo "== the teacher: the demo model trained ${TEACHER_STEPS} steps on the text (CE only, seed 0)"
  # Keeping all 4 layers makes the student a copy of the model; alpha 0 is
  # plain cross-entropy training (the random model's distributions are unused).
  OPENBLAS_NUM_THREADS=1 "$SHRINKRAY" distill --teacher "$WORK/demo-model-f32" --data "$WORK/train.txt" \
    --out "$WORK/teacher" --keep-layers 0,1,2,3 --alpha 0 --steps "$TEACHER_STEPS" --batch 8 --seqlen 128 \
    --lr 1e-2 --min-lr 1e-3 --warmup 10 --seed 0 --log-every 50 >"$WORK/teacher.log" 2>&1 \
    || { cat "$WORK/teacher.log"; echo "service-demo: training the teacher failed" >&2; exit 1; }
  grep -E '^(data|train|step|trained) ' "$WORK/teacher.log" | sed 's/  kl [0-9.]*//'
  MODEL="$WORK/teacher"
fi

LAYERS=$(grep -o '"num_hidden_layers": *[0-9]*' "$MODEL/config.json" | grep -o '[0-9]*$')
if [ -z "$KEEP" ]; then
  # Every other layer from 0, and the last: about half the depth.
  KEEP=$(seq 0 2 $((LAYERS - 1)) | tr '\n' ',')
  [ $(((LAYERS - 1) % 2)) -eq 1 ] && KEEP="$KEEP$((LAYERS - 1)),"
  KEEP=${KEEP%,}
fi
ROOTS=(--allowed-root "$WORK" --allowed-root "$MODEL")
[ -n "$TEXT" ] && ROOTS+=(--allowed-root "$(cd "$(dirname "$TEXT")" && pwd)")

echo "== coordinator and 2 workers on 127.0.0.1"
"$COORDINATOR" --listen 127.0.0.1:0 --port-file "$WORK/port" --metrics-listen 127.0.0.1:0 \
  --data-dir "$WORK/coordinator" "${ROOTS[@]}" >"$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { cat "$WORK/coordinator.log"; echo "service-demo: coordinator did not start" >&2; exit 1; }
SERVER="127.0.0.1:$(cat "$WORK/port")"
head -1 "$WORK/coordinator.log"
for i in 1 2; do
  OPENBLAS_NUM_THREADS=$BLAS_THREADS SHRINKRAY_NUM_THREADS=$THREADS \
    "$WORKER" --coordinator "$SERVER" --name "demo-worker-$i" --metrics-listen 127.0.0.1:0 \
    >"$WORK/worker-$i.log" 2>&1 &
  PIDS+=($!)
done

cat >"$WORK/recipe.yaml" <<YAML
# The field's headline recipe: distill a shallower student (trained on both
# workers, data parallel, KD loss alpha 1, T 2), prune it 30% with SparseGPT,
# then quantize it to 4 bits in groups of 32 with GPTQ (keeping the zeros).
- distill: {student: {keep_layers: [${KEEP//,/, }]}, steps: ${STEPS}, batch: 8, seqlen: 128,
            alpha: 1, temperature: 2, lr: 5e-3, warmup: 5, seed: 0}
- sparsegpt: {sparsity: 0.3}
- gptq: {bits: 4, group_size: 32}
YAML
echo "== recipe"
cat "$WORK/recipe.yaml"
echo "== shrinkray submit --wait (2 workers): teacher $MODEL, student layers $KEEP of $LAYERS"
"$SHRINKRAY" submit --server "$SERVER" --model "$MODEL" --recipe "$WORK/recipe.yaml" \
  --calib "$WORK/train.txt" --num-samples 32 --seqlen 128 --out "$WORK/student-w4" --format gptq \
  --eval "$WORK/eval.txt" --eval-seqlen 128 --workers 2 --label demo=readme --wait

# The table has its 4 rows: original, distill, sparsegpt, gptq.
ROWS=$(grep -E '^\| (original|distill|sparsegpt|gptq) \|' "$WORK/student-w4/results.md" | cut -d'|' -f2 | tr -d ' ' | tr '\n' ' ')
[ "$ROWS" = "original distill sparsegpt gptq " ] \
  || { echo "service-demo: results table rows are '$ROWS', expected original distill sparsegpt gptq" >&2; exit 1; }
echo "service-demo: table of 4 rows (also $WORK/student-w4/results.md); $((SECONDS - START)) s"
echo "service-demo: done; output and logs in $WORK"
