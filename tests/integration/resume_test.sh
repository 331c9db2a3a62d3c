#!/usr/bin/env bash
# Resume after failure, end to end on loopback: (A) the worker running a job is
# SIGKILLed after its second layer: the coordinator notices, re-queues, the
# other worker resumes at the first unfinished layer (event + metric), and
# the output equals an uninterrupted run's file for file; (B) the coordinator
# is SIGKILLed mid-job and restarted: the job is re-queued, the worker
# reconnects and resumes, same output again.
#   resume_test.sh BUILD_DIR
set -euo pipefail
# shellcheck source=service_harness.sh
source "$(dirname "$0")/service_harness.sh" "$1" resume-test
COORD_STARTS=0
start_coordinator() {
  COORD_STARTS=$((COORD_STARTS + 1))
  "$COORDINATOR" --listen "$SERVER" --metrics-listen 127.0.0.1:0 --data-dir "$WORK/coordinator" \
    --allowed-root "$WORK" --heartbeat-timeout-seconds 3 --max-attempts 3 >>"$WORK/coordinator.log" 2>&1 &
  COORD_PID=$!
  for _ in $(seq 100); do
    [ "$(grep -c "listening on" "$WORK/coordinator.log" 2>/dev/null)" -ge "$COORD_STARTS" ] && return 0
    sleep 0.1
  done
  fail "coordinator did not start"
}
start_worker() {
  "$WORKER" --coordinator "$SERVER" --name "$1" --metrics-listen 127.0.0.1:0 >>"$WORK/$1.log" 2>&1 &
  WORKER_PID[$1]=$!
}
job_field() { "$SHRINKRAY" get "$1" --json --server "$SERVER" | $PY -c "import json,sys; j=json.load(sys.stdin); print($2)"; }
wait_state() {  # wait_state ID STATE SECONDS
  for _ in $(seq $(($3 * 10))); do
    [ "$(job_field "$1" 'j["state"]' 2>/dev/null)" = "$2" ] && return 0
    sleep 0.1
  done
  fail "job $1 not $2 after $3 s (state $(job_field "$1" 'j["state"]' 2>/dev/null))"
}
wait_layer() {  # wait_layer ID LAYER: running with at least LAYER layers done
  for _ in $(seq 1200); do
    l=$(job_field "$1" 'j.get("progress",{}).get("layer",0) if j["state"]=="JOB_STATE_RUNNING" and j.get("progress",{}).get("stage")=="calibrate" else -1' 2>/dev/null || echo -1)
    [ "$l" -ge "$2" ] && return 0
    sleep 0.05
  done
  fail "job $1 never reached layer $2"
}
same_output() {  # same_output DIR_A DIR_B: every file but report.json byte-identical
  (cd "$1" && find . -type f ! -name report.json | sort) >"$WORK/files-a"
  (cd "$2" && find . -type f ! -name report.json | sort) >"$WORK/files-b"
  cmp -s "$WORK/files-a" "$WORK/files-b" || fail "$1 and $2 hold different files"
  while read -r f; do cmp -s "$1/$f" "$2/$f" || fail "$f differs between $1 and $2"; done <"$WORK/files-a"
}

"$SHRINKRAY" demo --workdir "$WORK/model" --prepare-only --hidden 256 --intermediate 768 --layers 8 \
  --text-bytes 200000 >/dev/null
MODEL="$WORK/model/demo-model-f32"
CALIB="$WORK/model/demo-text.txt"
printf -- '- gptq: {bits: 4, group_size: 32, act_order: true}\n' >"$WORK/recipe.yaml"
JOB_FLAGS=(--model "$MODEL" --recipe "$WORK/recipe.yaml" --calib "$CALIB" --num-samples 32 --seqlen 128 --format gptq)

echo "== reference: the same job, uninterrupted, with shrinkray compress"
"$SHRINKRAY" compress "${JOB_FLAGS[@]}" --out "$WORK/reference" >"$WORK/reference.out" 2>&1 \
  || { cat "$WORK/reference.out"; fail "reference run"; }

start_coordinator
start_worker worker-a
start_worker worker-b

echo "== A: SIGKILL the worker running the job after its second layer"
"$SHRINKRAY" submit --server "$SERVER" "${JOB_FLAGS[@]}" --out "$WORK/out-a" >"$WORK/submit-a.out"
JOB_A=$(awk 'NR==1 {print $2}' "$WORK/submit-a.out")
wait_layer "$JOB_A" 2
victim=$(job_field "$JOB_A" 'j["workerIds"][0]')
name=${victim%-*}
survivor=worker-a
[ "$name" = worker-a ] && survivor=worker-b
kill -9 "${WORKER_PID[$name]}"
echo "   killed $name ($victim) at layer >= 2"
wait_state "$JOB_A" JOB_STATE_SUCCEEDED 300
[ "$(job_field "$JOB_A" 'j["attempt"]')" = 2 ] || fail "job A did not run a second attempt"
"$SHRINKRAY" watch "$JOB_A" --history --server "$SERVER" >"$WORK/watch-a.out" 2>&1 || fail "watch of job A"
grep -q "resumed at layer [3-8]/8" "$WORK/watch-a.out" || { cat "$WORK/watch-a.out"; fail "no resume event"; }
survivor_metrics=$(grep -m1 "metrics" "$WORK/$survivor.log" | sed -E 's/.*metrics ([0-9.:]+).*/\1/')
resumed_at=$($PY -c 'import sys,urllib.request; t=urllib.request.urlopen("http://"+sys.argv[1]+"/metrics",timeout=5).read().decode(); print([l.split()[1] for l in t.splitlines() if l.startswith("shrinkray_worker_job_resumes_total")][0])' "$survivor_metrics")
[ "${resumed_at%.*}" -ge 1 ] || fail "the survivor's shrinkray_worker_job_resumes_total is $resumed_at"
same_output "$WORK/reference" "$WORK/out-a"
[ ! -e "$WORK/out-a.partial" ] || fail "out-a.partial left behind"
echo "   resumed on $survivor; output identical to the uninterrupted run"

echo "== B: SIGKILL the coordinator mid-job, restart it"
start_worker "$name"  # back to two workers
"$SHRINKRAY" submit --server "$SERVER" "${JOB_FLAGS[@]}" --out "$WORK/out-b" >"$WORK/submit-b.out"
JOB_B=$(awk 'NR==1 {print $2}' "$WORK/submit-b.out")
wait_layer "$JOB_B" 2
kill -9 "$COORD_PID"
wait "$COORD_PID" 2>/dev/null || true
start_coordinator
wait_state "$JOB_B" JOB_STATE_SUCCEEDED 300
[ "$(job_field "$JOB_B" 'j["attempt"]')" -ge 2 ] || fail "job B did not run a second attempt"
"$SHRINKRAY" watch "$JOB_B" --history --server "$SERVER" >"$WORK/watch-b.out" 2>&1 || fail "watch of job B"
grep -q "re-queued: the coordinator restarted" "$WORK/watch-b.out" || { cat "$WORK/watch-b.out"; fail "no re-queue event"; }
grep -q "resumed at layer" "$WORK/watch-b.out" || { cat "$WORK/watch-b.out"; fail "no resume event"; }
same_output "$WORK/reference" "$WORK/out-b"
echo "   resumed after the restart; output identical to the uninterrupted run"
echo "== C: a 2-worker (sharded) job loses a rank after its second layer"
"$SHRINKRAY" submit --server "$SERVER" "${JOB_FLAGS[@]}" --out "$WORK/reference-2" --workers 2 --wait \
  >"$WORK/reference-2.out" 2>&1 || { cat "$WORK/reference-2.out"; fail "uninterrupted 2-worker job"; }
"$SHRINKRAY" submit --server "$SERVER" "${JOB_FLAGS[@]}" --out "$WORK/out-c" --workers 2 >"$WORK/submit-c.out"
JOB_C=$(awk 'NR==1 {print $2}' "$WORK/submit-c.out")
wait_layer "$JOB_C" 2
victim=$(job_field "$JOB_C" 'j["workerIds"][1]')
name=${victim%-*}
kill -9 "${WORKER_PID[$name]}"
wait_state "$JOB_C" JOB_STATE_QUEUED 30  # one worker left: the gang waits
start_worker "$name"
wait_state "$JOB_C" JOB_STATE_SUCCEEDED 300
"$SHRINKRAY" watch "$JOB_C" --history --server "$SERVER" >"$WORK/watch-c.out" 2>&1 || fail "watch of job C"
grep -q "resumed at layer" "$WORK/watch-c.out" || { cat "$WORK/watch-c.out"; fail "no resume event"; }
same_output "$WORK/reference-2" "$WORK/out-c"
echo "   the gang re-formed and resumed; output identical to the uninterrupted 2-worker run"
echo "resume_test: all checks passed"
