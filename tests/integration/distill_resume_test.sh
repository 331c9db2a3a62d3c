#!/usr/bin/env bash
# Resume of a distill job after a killed worker, end to end on loopback (the
# pattern of resume_test.sh, for the training stage): (A) a 1-worker distill
# job's worker is SIGKILLed mid-training, after a checkpoint: the coordinator
# notices, re-queues, the other worker runs attempt 2, which resumes from the
# checkpoint (its log says at which step) and ends with the same student, byte
# for byte, as the same recipe run uninterrupted with `shrinkray compress`;
# (B) a 2-worker (data-parallel) distill job loses a rank after a checkpoint:
# the gang waits, re-forms when the worker is back, resumes, and ends with the
# student of an uninterrupted 2-worker run.
#   distill_resume_test.sh BUILD_DIR
set -euo pipefail
# shellcheck source=service_harness.sh
source "$(dirname "$0")/service_harness.sh" "$1" distill-resume-test
"$COORDINATOR" --listen "$SERVER" --metrics-listen 127.0.0.1:0 --data-dir "$WORK/coordinator" \
  --allowed-root "$WORK" --heartbeat-timeout-seconds 3 --max-attempts 3 >"$WORK/coordinator.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/coordinator.log" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$WORK/coordinator.log" || fail "coordinator did not start"
start_worker() {
  # One BLAS thread: the trainer's sums then do not depend on the cores free.
  OPENBLAS_NUM_THREADS=1 "$WORKER" --coordinator "$SERVER" --name "$1" --metrics-listen 127.0.0.1:0 \
    >>"$WORK/$1.log" 2>&1 &
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
wait_step() {  # wait_step ID STEP: training, at least STEP optimizer steps done
  for _ in $(seq 1200); do
    s=$(job_field "$1" 'j.get("progress",{}).get("layer",0) if j["state"]=="JOB_STATE_RUNNING" and j.get("progress",{}).get("stage")=="distill" else -1' 2>/dev/null || echo -1)
    [ "$s" -ge "$2" ] && { echo "$s"; return 0; }
    sleep 0.05
  done
  fail "job $1 never reached distill step $2"
}
same_student() {  # same_student DIR_A DIR_B: the weights, config and tokenizer byte-identical
  for f in model.safetensors config.json tokenizer.json tokenizer_config.json; do
    [ -f "$1/$f" ] || fail "$1/$f missing"
    cmp -s "$1/$f" "$2/$f" || fail "$f differs between $1 and $2"
  done
}

"$SHRINKRAY" demo --workdir "$WORK/model" --prepare-only --hidden 128 --intermediate 384 --layers 4 \
  --text-bytes 120000 >/dev/null
MODEL="$WORK/model/demo-model-f32"
TEXT="$WORK/model/demo-text.txt"
# 40 steps, a checkpoint every 10; the kills come after the one at step 10.
cat >"$WORK/recipe.yaml" <<'YAML'
- distill: {student: {keep_layers: [0, 2, 3]}, steps: 40, batch: 8, seqlen: 128, alpha: 0.5, temperature: 2,
            lr: 5e-3, warmup: 4, checkpoint_every: 10, seed: 3}
YAML
JOB_FLAGS=(--model "$MODEL" --recipe "$WORK/recipe.yaml" --calib "$TEXT" --num-samples 8 --seqlen 128)

echo "== reference: the same recipe, uninterrupted, with shrinkray compress"
OPENBLAS_NUM_THREADS=1 "$SHRINKRAY" compress "${JOB_FLAGS[@]}" --out "$WORK/reference" >"$WORK/reference.out" 2>&1 \
  || { cat "$WORK/reference.out"; fail "reference run"; }

start_worker worker-a
start_worker worker-b

echo "== A: SIGKILL the worker training the student after its checkpoint at step 10"
"$SHRINKRAY" submit --server "$SERVER" "${JOB_FLAGS[@]}" --out "$WORK/out-a" >"$WORK/submit-a.out"
JOB_A=$(awk 'NR==1 {print $2}' "$WORK/submit-a.out")
at=$(wait_step "$JOB_A" 11)
victim=$(job_field "$JOB_A" 'j["workerIds"][0]')
name=${victim%-*}
kill -9 "${WORKER_PID[$name]}"
[ "$at" -lt 40 ] || fail "job A finished training before the kill (step $at); the test needs a slower job"
echo "   killed $name ($victim) at step $at"
wait_state "$JOB_A" JOB_STATE_SUCCEEDED 300
[ "$(job_field "$JOB_A" 'j["attempt"]')" = 2 ] || fail "job A did not run a second attempt"
"$SHRINKRAY" watch "$JOB_A" --history --server "$SERVER" >"$WORK/watch-a.out" 2>&1 || fail "watch of job A"
grep -Eq "resumed from .*distill-checkpoints.* at step [1-3]0" "$WORK/watch-a.out" \
  || { cat "$WORK/watch-a.out"; fail "attempt 2 did not resume from a checkpoint"; }
same_student "$WORK/reference" "$WORK/out-a"
[ ! -e "$WORK/out-a.work" ] || fail "out-a.work left behind"
echo "   resumed ($(grep -Eo 'resumed from [^;]* at step [0-9]+' "$WORK/watch-a.out" | sed 's/from .* at/at/' | head -1));" \
  "student identical to the uninterrupted run's"

echo "== B: a 2-worker (data-parallel) distill job loses a rank after its checkpoint at step 10"
start_worker "$name"  # back to two workers
"$SHRINKRAY" submit --server "$SERVER" "${JOB_FLAGS[@]}" --out "$WORK/reference-2" --workers 2 --wait \
  >"$WORK/reference-2.out" 2>&1 || { cat "$WORK/reference-2.out"; fail "uninterrupted 2-worker job"; }
"$SHRINKRAY" submit --server "$SERVER" "${JOB_FLAGS[@]}" --out "$WORK/out-b" --workers 2 >"$WORK/submit-b.out"
JOB_B=$(awk 'NR==1 {print $2}' "$WORK/submit-b.out")
at=$(wait_step "$JOB_B" 11)
victim=$(job_field "$JOB_B" 'j["workerIds"][1]')
name=${victim%-*}
kill -9 "${WORKER_PID[$name]}"
[ "$at" -lt 40 ] || fail "job B finished training before the kill (step $at); the test needs a slower job"
echo "   killed rank 1, $name ($victim), at step $at"
wait_state "$JOB_B" JOB_STATE_QUEUED 30  # one worker left: the gang waits
start_worker "$name"
wait_state "$JOB_B" JOB_STATE_SUCCEEDED 300
"$SHRINKRAY" watch "$JOB_B" --history --server "$SERVER" >"$WORK/watch-b.out" 2>&1 || fail "watch of job B"
grep -Eq "resumed from .*distill-checkpoints.* at step [1-3]0" "$WORK/watch-b.out" \
  || { cat "$WORK/watch-b.out"; fail "the re-formed gang did not resume from a checkpoint"; }
same_student "$WORK/reference-2" "$WORK/out-b"
echo "   the gang re-formed and resumed; student identical to the uninterrupted 2-worker run's"
echo "distill_resume_test: all checks passed"
