#!/usr/bin/env bash
# GPTQ w4 g128 through the service on a synthetic 8-layer model with
# 1024-wide layers and 4096-wide MLPs, with 1 and then 2 workers on this
# machine: wall time of each job and rank 0's time by phase (forward with
# statistics, all-reduce, solve, broadcast, write, checkpoint) from report.json.
#   bench/sharded_compress_bench.sh BUILD_DIR [NUM_SAMPLES] [SEQLEN] [BLAS_THREADS_PER_WORKER]
set -euo pipefail
BUILD=${1:-build}
SAMPLES=${2:-32}
SEQLEN=${3:-256}
THREADS=${4:-1}
PY=/usr/bin/python3
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shrinkray-shard-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BUILD/client/shrinkray" demo --workdir "$WORK/model" --prepare-only --hidden 1024 --intermediate 4096 \
  --layers 8 --text-bytes 2000000 >/dev/null
printf -- '- gptq: {bits: 4, group_size: 128}\n' >"$WORK/recipe.yaml"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SERVER="127.0.0.1:$PORT"
"$BUILD/server/shrinkray-coordinator" --listen "$SERVER" --metrics-listen "" --data-dir "$WORK/coordinator" \
  --allowed-root "$WORK" >"$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
sleep 0.5
for i in 1 2; do
  OPENBLAS_NUM_THREADS=$THREADS "$BUILD/worker/shrinkray-worker" --coordinator "$SERVER" --name "bench-$i" \
    --metrics-listen "" >"$WORK/worker-$i.log" 2>&1 &
  PIDS+=($!)
done
sleep 1

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); OPENBLAS_NUM_THREADS=$THREADS per worker"
echo "model: 8 layers, hidden 1024, MLP 4096 (demo tokenizer); GPTQ w4 g128; calibration $SAMPLES x $SEQLEN tokens"
echo
echo "| workers | wall s | forward+stats s | all-reduce s | solve s | broadcast s | write s | checkpoint s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for workers in 1 2; do
  start=$(date +%s.%N)
  "$BUILD/client/shrinkray" submit --server "$SERVER" --model "$WORK/model/demo-model-f32" --recipe "$WORK/recipe.yaml" \
    --calib "$WORK/model/demo-text.txt" --num-samples "$SAMPLES" --seqlen "$SEQLEN" --out "$WORK/out-$workers" \
    --workers "$workers" --wait >"$WORK/job-$workers.log" 2>&1 || { cat "$WORK/job-$workers.log"; exit 1; }
  end=$(date +%s.%N)
  $PY - "$WORK/out-$workers/report.json" "$workers" "$start" "$end" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["timings"]; p = t["phases"]
wall = float(sys.argv[4]) - float(sys.argv[3])
print(f"| {sys.argv[2]} | {wall:.1f} | {p['forward_seconds']:.1f} | {p['allreduce_seconds']:.2f} | "
      f"{p['solve_seconds']:.1f} | {p['broadcast_seconds']:.2f} | {t.get('write_seconds', 0):.2f} | "
      f"{t.get('checkpoint_seconds', 0):.2f} |")
EOF
done
