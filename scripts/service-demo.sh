#!/usr/bin/env bash
# The README's main job: starts a coordinator and 2 local workers on loopback,
# makes the built-in demo model and text (no ../shared needed), submits a real
# GPTQ w4 job through the service from the CLI, watches it to the end and
# prints its results table, then stops everything.
#   scripts/service-demo.sh [BUILD_DIR]      (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-${BUILD_DIR:-build}}
SHRINKRAY="$BUILD_DIR/client/shrinkray"
COORDINATOR="$BUILD_DIR/server/shrinkray-coordinator"
WORKER="$BUILD_DIR/worker/shrinkray-worker"
for b in "$SHRINKRAY" "$COORDINATOR" "$WORKER"; do
  [ -x "$b" ] || { echo "service-demo: $b not built (run ./scripts/build.sh)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shrinkray-service-demo.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== demo model and text"
"$SHRINKRAY" demo --workdir "$WORK" --prepare-only --layers 4 --intermediate 192 --text-bytes 64000

echo "== coordinator and 2 workers on 127.0.0.1"
"$COORDINATOR" --listen 127.0.0.1:0 --port-file "$WORK/port" --metrics-listen 127.0.0.1:0 \
  --data-dir "$WORK/coordinator" --allowed-root "$WORK" >"$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { cat "$WORK/coordinator.log"; echo "service-demo: coordinator did not start" >&2; exit 1; }
SERVER="127.0.0.1:$(cat "$WORK/port")"
head -1 "$WORK/coordinator.log"
for i in 1 2; do
  "$WORKER" --coordinator "$SERVER" --name "demo-worker-$i" --metrics-listen 127.0.0.1:0 \
    >"$WORK/worker-$i.log" 2>&1 &
  PIDS+=($!)
done

cat >"$WORK/recipe.yaml" <<'YAML'
# GPTQ, 4 bits, groups of 32, act_order: the field's default quantization.
- gptq: {bits: 4, group_size: 32, act_order: true}
YAML
echo "== shrinkray submit --wait (2 workers)"
"$SHRINKRAY" submit --server "$SERVER" --model "$WORK/demo-model-f32" --recipe "$WORK/recipe.yaml" \
  --calib "$WORK/demo-text.txt" --num-samples 32 --seqlen 128 --out "$WORK/demo-model-gptq" --format gptq \
  --eval "$WORK/demo-text.txt" --eval-seqlen 128 --workers 2 --label demo=readme --wait
echo "service-demo: done; output and logs in $WORK"
