#!/usr/bin/env bash
# The service end to end on loopback: a coordinator (with a bearer token and
# allowed roots) and 2 workers; a GPTQ w4 job on stories260K from the CLI and
# another from the Python client, both watched to SUCCEEDED and their outputs
# evaluated again with `shrinkray eval`; both /metrics outputs through
# promtool; a queued job that survives a coordinator restart (SIGKILL); a
# running job (a wider demo model) cancelled, after which both workers are
# idle and run the next job.
#   service_test.sh BUILD_DIR SOURCE_DIR DATA_DIR
set -euo pipefail
BUILD=$1
SRC=$2
DATA=$3
PY=/usr/bin/python3
SHRINKRAY="$BUILD/client/shrinkray"
COORDINATOR="$BUILD/server/shrinkray-coordinator"
WORKER="$BUILD/worker/shrinkray-worker"
export SHRINKRAY_PYTHON_GEN="$BUILD/client/python/gen"

if [ ! -d "$DATA/stories260K" ]; then
  echo "[  SKIPPED ] test data not found: $DATA/stories260K (the shared data folder ../shared/data is absent)"
  exit 0
fi
DATA=$(cd "$DATA" && pwd -P)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shrinkray-service-test.XXXXXX")
COORD_PID=""
WORKER_PIDS=()
cleanup() {
  [ -n "$COORD_PID" ] && kill -9 "$COORD_PID" 2>/dev/null || true
  for p in "${WORKER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done
  exit 1
}

echo "t0ken-$$-$RANDOM" >"$WORK/token"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SERVER="127.0.0.1:$PORT"
CLI=(--server "$SERVER" --token-file "$WORK/token")

COORD_STARTS=0
start_coordinator() {
  COORD_STARTS=$((COORD_STARTS + 1))
  "$COORDINATOR" --listen "$SERVER" --metrics-listen 127.0.0.1:0 --data-dir "$WORK/coordinator" \
    --allowed-root "$DATA" --allowed-root "$WORK" --token-file "$WORK/token" --heartbeat-timeout-seconds 5 \
    >>"$WORK/coordinator.log" 2>&1 &
  COORD_PID=$!
  for _ in $(seq 100); do
    [ "$(grep -c "listening on" "$WORK/coordinator.log" 2>/dev/null)" -ge "$COORD_STARTS" ] && break
    sleep 0.1
  done
  COORD_METRICS=$(grep "listening on" "$WORK/coordinator.log" | tail -1 | sed -E 's/.*metrics ([0-9.:]+),.*/\1/')
  [ -n "$COORD_METRICS" ] || fail "coordinator did not start"
}

metrics() { $PY -c 'import sys,urllib.request; print(urllib.request.urlopen("http://"+sys.argv[1]+"/metrics", timeout=5).read().decode())' "$1"; }
metric_value() { metrics "$1" | awk -v m="$2" '$1 == m {print $2}'; }

# Waits until the coordinator reports N idle workers.
wait_idle_workers() {
  for _ in $(seq 300); do
    [ "$(metric_value "$COORD_METRICS" 'shrinkray_workers{state="idle"}')" = "$1" ] && return 0
    sleep 0.1
  done
  fail "the coordinator never saw $1 idle workers"
}

job_field() {  # job_field ID PYTHON-EXPRESSION-ON-j
  "$SHRINKRAY" get "$1" --json "${CLI[@]}" | $PY -c "import json,sys; j=json.load(sys.stdin); print($2)"
}

start_coordinator
for i in 1 2; do
  "$WORKER" --coordinator "$SERVER" --name "worker-$i" --token-file "$WORK/token" --metrics-listen 127.0.0.1:0 \
    >"$WORK/worker-$i.log" 2>&1 &
  WORKER_PIDS+=($!)
done
wait_idle_workers 2
W1_METRICS=$(grep -m1 "metrics" "$WORK/worker-1.log" | sed -E 's/.*metrics ([0-9.:]+).*/\1/')

printf -- '- gptq: {bits: 4, group_size: 32}\n' >"$WORK/w4g32.yaml"
printf -- '- gptq: {bits: 4}\n' >"$WORK/w4.yaml"
EVAL=(--eval "$DATA/text/tinystories_valid_prefix.txt" --eval-max-chars 20000)

echo "== 1. GPTQ w4 g32 from the CLI, 2 workers, --wait"
"$SHRINKRAY" submit "${CLI[@]}" --model "$DATA/stories260K" --recipe "$WORK/w4g32.yaml" \
  --calib "$DATA/text/tinystories_train_prefix.txt" --num-samples 32 --seqlen 256 --out "$WORK/out-cli" \
  --format gptq "${EVAL[@]}" --workers 2 --wait >"$WORK/submit-cli.out" 2>&1 || { cat "$WORK/submit-cli.out"; fail "CLI job"; }
CLI_JOB=$(awk 'NR==1 {print $2}' "$WORK/submit-cli.out")
[ "$(job_field "$CLI_JOB" 'j["state"]')" = "JOB_STATE_SUCCEEDED" ] || fail "CLI job not SUCCEEDED"
[ -f "$WORK/out-cli/quantize_config.json" ] || fail "no GPTQ output"

echo "== 2. GPTQ w4 per-channel from the Python client"
$PY "$SRC/client/python/examples/submit_and_watch.py" --server "$SERVER" --token-file "$WORK/token" \
  --model "$DATA/stories260K" --recipe "$WORK/w4.yaml" --calib "$DATA/text/tinystories_train_prefix.txt" \
  --num-samples 32 --seqlen 256 --out "$WORK/out-py" --format compressed-tensors \
  --eval "$DATA/text/tinystories_valid_prefix.txt" --eval-max-chars 20000 --workers 1 \
  >"$WORK/submit-py.out" 2>&1 || { cat "$WORK/submit-py.out"; fail "Python job"; }
PY_JOB=$(awk 'NR==1 {print $2}' "$WORK/submit-py.out")
[ "$(job_field "$PY_JOB" 'j["state"]')" = "JOB_STATE_SUCCEEDED" ] || fail "Python job not SUCCEEDED"

echo "== 3. the outputs evaluate to the ppl the jobs reported"
for pair in "$CLI_JOB:$WORK/out-cli" "$PY_JOB:$WORK/out-py"; do
  id=${pair%%:*}
  out=${pair#*:}
  reported=$(job_field "$id" '[r["perplexity"] for r in j["result"]["eval"] if r["model"]=="compressed"][0]')
  measured=$("$SHRINKRAY" eval --model "$out" --data "$DATA/text/tinystories_valid_prefix.txt" --max-chars 20000 \
    --seqlen 256 | awk '/^ppl/ {print $2}')
  $PY -c "import sys; r,m=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(r-m)<=1e-6*r else 1)" \
    "$reported" "$measured" || fail "job $id reported ppl $reported, eval of $out gives $measured"
  # Quantized, not a copy: worse than the original's 4.0861 but not broken.
  $PY -c "import sys; m=float(sys.argv[1]); sys.exit(0 if 4.09 < m < 4.6 else 1)" "$measured" \
    || fail "ppl $measured of $out is out of the expected range"
  echo "   $id: ppl $measured (reported $reported)"
done

echo "== 4. /metrics of the coordinator and a worker pass promtool"
metrics "$COORD_METRICS" >"$WORK/coordinator.metrics"
metrics "$W1_METRICS" >"$WORK/worker.metrics"
promtool check metrics <"$WORK/coordinator.metrics" || fail "promtool: coordinator metrics"
promtool check metrics <"$WORK/worker.metrics" || fail "promtool: worker metrics"
grep -q '^shrinkray_jobs_finished_total{state="succeeded"} 2' "$WORK/coordinator.metrics" || fail "2 succeeded jobs not counted"
! grep -q 'job_id' "$WORK/coordinator.metrics" "$WORK/worker.metrics" || fail "job id used as a label"

echo "== 5. a queued job survives a coordinator restart (SIGKILL)"
"$SHRINKRAY" submit "${CLI[@]}" --model "$DATA/stories260K" --recipe "$WORK/w4.yaml" \
  --calib "$DATA/text/tinystories_train_prefix.txt" --num-samples 8 --seqlen 64 --out "$WORK/out-queued" \
  --workers 3 >"$WORK/submit-queued.out"
QUEUED_JOB=$(awk 'NR==1 {print $2}' "$WORK/submit-queued.out")
[ "$(job_field "$QUEUED_JOB" 'j["state"]')" = "JOB_STATE_QUEUED" ] || fail "3-worker job not queued"
kill -9 "$COORD_PID"
wait "$COORD_PID" 2>/dev/null || true
start_coordinator
[ "$(job_field "$QUEUED_JOB" 'j["state"]')" = "JOB_STATE_QUEUED" ] || fail "queued job lost in the restart"
[ "$(job_field "$CLI_JOB" 'j["state"]')" = "JOB_STATE_SUCCEEDED" ] || fail "finished job lost in the restart"
wait_idle_workers 2  # both workers reconnected on their own
"$SHRINKRAY" cancel "$QUEUED_JOB" "${CLI[@]}" >/dev/null
[ "$(job_field "$QUEUED_JOB" 'j["state"]')" = "JOB_STATE_CANCELLED" ] || fail "queued job not cancelled"

echo "== 6. cancel a running job (a wider model), the workers are free again"
"$SHRINKRAY" demo --workdir "$WORK/wide" --prepare-only --hidden 512 --intermediate 1536 --layers 8 \
  --text-bytes 400000 >/dev/null
"$SHRINKRAY" submit "${CLI[@]}" --model "$WORK/wide/demo-model-f32" --recipe "$WORK/w4g32.yaml" \
  --calib "$WORK/wide/demo-text.txt" --num-samples 64 --seqlen 256 --out "$WORK/out-wide" \
  >"$WORK/submit-wide.out"
WIDE_JOB=$(awk 'NR==1 {print $2}' "$WORK/submit-wide.out")
for _ in $(seq 600); do
  layer=$(job_field "$WIDE_JOB" 'j.get("progress",{}).get("layer",0) if j["state"]=="JOB_STATE_RUNNING" else -1')
  [ "$layer" -ge 1 ] && break
  sleep 0.1
done
[ "$layer" -ge 1 ] || fail "the wide job was never seen running past its first layer"
"$SHRINKRAY" cancel "$WIDE_JOB" --reason "integration test" "${CLI[@]}" >/dev/null
[ "$(job_field "$WIDE_JOB" 'j["state"]')" = "JOB_STATE_CANCELLED" ] || fail "running job not cancelled"
wait_idle_workers 2
[ ! -e "$WORK/out-wide" ] || fail "a cancelled job left its output folder"
if "$SHRINKRAY" watch "$WIDE_JOB" "${CLI[@]}" >/dev/null 2>&1; then fail "watch of a cancelled job exited 0"; fi

"$SHRINKRAY" submit "${CLI[@]}" --model "$DATA/stories260K" --recipe "$WORK/w4.yaml" \
  --calib "$DATA/text/tinystories_train_prefix.txt" --num-samples 8 --seqlen 64 --out "$WORK/out-after" \
  --workers 2 --wait >"$WORK/submit-after.out" 2>&1 || { cat "$WORK/submit-after.out"; fail "job after cancel"; }

echo "== 7. bad requests: exact codes from the CLI"
expect_error() {  # expect_error CODE command...
  local code=$1
  shift
  if "$@" >"$WORK/err.out" 2>&1; then fail "expected $code from: $*"; fi
  grep -q "$code" "$WORK/err.out" || { cat "$WORK/err.out"; fail "expected $code from: $*"; }
}
echo "wrong" >"$WORK/bad-token"
expect_error UNAUTHENTICATED "$SHRINKRAY" list --server "$SERVER" --token-file "$WORK/bad-token"
expect_error NOT_FOUND "$SHRINKRAY" get job-000000000000 "${CLI[@]}"
expect_error FAILED_PRECONDITION "$SHRINKRAY" cancel "$CLI_JOB" "${CLI[@]}"
expect_error PERMISSION_DENIED "$SHRINKRAY" submit "${CLI[@]}" --model "$DATA/stories260K" --recipe "$WORK/w4.yaml" \
  --calib "$DATA/text/tinystories_train_prefix.txt" --out /var/tmp/shrinkray-outside
expect_error INVALID_ARGUMENT "$SHRINKRAY" submit "${CLI[@]}" --model "$DATA/stories260K" --recipe "$WORK/w4.yaml" \
  --calib "$DATA/text/tinystories_train_prefix.txt" --out "$WORK/x" --num-samples 0 --seqlen -5
expect_error RESOURCE_EXHAUSTED "$SHRINKRAY" submit "${CLI[@]}" --model "$DATA/stories260K" --recipe "$WORK/w4.yaml" \
  --calib "$DATA/text/tinystories_train_prefix.txt" --out "$WORK/y" --workers 9

echo "service_test: all checks passed"
