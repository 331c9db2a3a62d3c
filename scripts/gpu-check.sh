#!/usr/bin/env bash
# GPU checks for a bundle made by scripts/make-bundle.sh, run ON the GPU
# machine from the repo root where .bundle/ was carried:
#
#   scripts/gpu-check.sh [section...]     sections: env ops goldens goldens-gpu nccl table compress-job
#                                         compress-job-bf16 compress-job-8b gptq-smoke
#                                         gptq-8b sparsegpt-8b training forward-vs-transformers
#                                         attention hessian hinv
#                                         (default: env ops goldens)
#
#   env      nvidia-smi, and ldd of every bundled program through the bundle's
#            env.sh: any "not found" library fails the section
#   ops      shrinkray_cuda_tests (CUDA kernels vs the CPU references; $OPS_FILTER,
#            default all); a test that SKIPS here counts as a failure: this machine has a GPU.
#            Timeout $GTEST_TIMEOUT (300 s; also goldens, goldens-gpu, nccl): the note then
#            names the test that was running
#   goldens  shrinkray_unit_tests filtered to the golden tests ($GOLDEN_FILTER,
#            default *Golden*:*golden*), data from the bundle's data/
#   goldens-gpu  shrinkray_cuda_tests filtered to LlamaCuda* ($GPU_GOLDEN_FILTER):
#            the fp32 GPU forward (LlamaCudaModel) on stories260K against
#            golden.json and the CPU model, data from the bundle's data/; a
#            skipped test or no matching test counts as a failure
#   gptq-smoke  gptq_llama8b_bench on 1 layer, 8 samples (Llama-3-8B shapes):
#            the end-to-end layerwise GPTQ path in ~seconds; timeout $GPTQ_SMOKE_TIMEOUT (120 s)
#   gptq-8b  the same bench on the full job: $GPTQ_LAYERS (32) layers, 128 x 2048
#            calibration tokens, 4-bit group 128, the flipped inverse factor
#            (GPTQ_8B_ARGS="--inverse-factor chain" for the reference's); timeout $GPTQ_8B_TIMEOUT (270 s).
#            Extra bench flags: $GPTQ_8B_ARGS. The bench stops between layers 30 s
#            before the timeout and reports an extrapolated 32-layer time. Skipped (FAIL) when gptq-smoke
#            ran in the same call and failed, to save device time.
#   nccl     shrinkray_cuda_tests filtered to the NCCL tests ($NCCL_FILTER): the
#            communicator on device buffers, the host-staged one, and a 1-rank
#            NCCL job on stories260K against the CPU job (same bytes)
#   sparsegpt-8b  the bench with --method sparsegpt (50%, unstructured) on the
#            full job; timeout $SPARSEGPT_8B_TIMEOUT (240 s), extra flags $SPARSEGPT_8B_ARGS
#   training kd_train_bench: KD training throughput (tokens/s, MFU) of a student
#            of Llama-3.2-1B shapes from a teacher of Llama-3.2-3B shapes; a
#            2-layer smoke run, the full run ($TRAIN_BATCH x 2048 tokens, default
#            4; $TRAIN_STEPS timed steps, default 3), and the same with the
#            all-reduce beside the backward; timeout $TRAIN_TIMEOUT (240 s) each
#   forward-vs-transformers  teacher forward throughput, the same shapes and
#            tokens ($FWD_SAMPLES x 2048, default 64): our bench --method forward,
#            then PyTorch + transformers' LlamaForCausalLM (bench/cuda/
#            transformers_forward.py, eager + SDPA, bf16) on the same card
#   compress-job  `shrinkray compress --device cuda` (what a GPU worker runs) on a
#            demo model of Llama-3.2-1B decoder shapes, GPTQ w4 g128, 128 x 2048
#            tokens: load-to-save time and phases ($JOB_LAYERS, $JOB_SAMPLES, $JOB_TIMEOUT)
#   compress-job-bf16  the same job with the recipe's forward_dtype: bf16 (layer
#            forwards and statistics on bf16 tensor cores) and inverse_factor: flipped
#   compress-job-8b  the bf16 job on Llama-3-8B decoder shapes, $JOB8B_LAYERS (8) layers,
#            timeout $JOB8B_TIMEOUT (300 s)
#   attention  attention_bench: the causal attention forward at Llama-3-8B
#            shapes (8 x 2048 tokens, 32 / 8 heads of 128), fp32 tiled vs fp32
#            one-warp-per-query vs bf16 flash, one table; timeout 120 s
#   hessian  hessian_bench: H of widths 4096 and 14336 from 32768 tokens, fp32
#            vs 3xTF32 (the fp32 executor's) vs TF32 vs bf16, one table; fails
#            when 3xTF32 is off by more than 1e-4 of max |H|; timeout 120 s
#   hinv     hessian_inverse_bench: the solvers' inverse factor at widths 4096 and
#            14336, flipped Cholesky (potrf + trtri, the recipe field inverse_factor: flipped) vs the chain
#            (potrf + potri + potrf), ms and each factor's residual; fails when a
#            factor does not invert H; timeout 120 s
#   table    the GPTQ and SparseGPT rows of docs/results.md (scripts/results-table.sh,
#            full protocol) with DEVICE=cuda: forwards, statistics and solves on the GPU, one process per
#            row in parallel; each row solved on one device must be within 0.5%
#            of the CPU's ppl in docs/results.md (chained rows: see section_table).
#            Timeout $TABLE_TIMEOUT (240 s)
#
# Every section runs even when an earlier one failed. Logs go to $OUT when set
# (the device tool's output folder), else .gpu/logs/. A summary table comes
# last; the exit status is non-zero when any section failed.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=${SHRINKRAY_BUNDLE_DIR:-$ROOT/.bundle}
LOGDIR=${OUT:-$ROOT/.gpu/logs}
GOLDEN_FILTER=${GOLDEN_FILTER:-*Golden*:*golden*}
GPU_GOLDEN_FILTER=${GPU_GOLDEN_FILTER:-LlamaCuda*}
NCCL_FILTER=${NCCL_FILTER:-*Nccl*:*HostStaged*:*HostCommunicator*}
mkdir -p "$LOGDIR"

declare -a SUMMARY=()
FAILED=0

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
header() { printf '\n==== %s ==== %s\n' "$1" "$(date -u +%H:%M:%S)"; }

# Counts from a gtest XML report: "tests failures skipped" (0 0 0 if absent).
gtest_counts() {
  local xml=$1
  if [[ ! -s "$xml" ]]; then echo "0 0 0"; return; fi
  local tests failures errors skipped
  tests=$(grep -m1 -o '<testsuites tests="[0-9]*"' "$xml" | grep -o '[0-9]*')
  failures=$(grep -m1 -o '<testsuites tests="[0-9]*" failures="[0-9]*"' "$xml" | grep -o '[0-9]*$')
  errors=$(grep -m1 '<testsuites ' "$xml" | grep -o 'errors="[0-9]*"' | grep -o '[0-9]*')
  skipped=$(grep -c 'result="skipped"' "$xml")
  echo "${tests:-0} $(( ${failures:-0} + ${errors:-0} )) ${skipped:-0}"
}

# Runs a bundled gtest program; sets STATUS and NOTE.
run_gtest() {
  local name=$1 prog=$2; shift 2
  local log="$LOGDIR/$name.log" xml="$LOGDIR/$name.xml"
  rm -f "$xml"
  # A hung kernel must not take the whole device call: $GTEST_TIMEOUT (300 s).
  local limit=${GTEST_TIMEOUT:-300}
  # Not --gtest_brief: the log names the test that was running when it hung.
  timeout -k 10 "$limit" "$BUNDLE/bin/$prog" --gtest_color=no --gtest_output="xml:$xml" "$@" >"$log" 2>&1
  local rc=$?
  # RUN/OK lines and skip messages repeat per test; the full text stays in the log.
  grep -v -E '^\[ +(RUN|OK) +\]|: Skipped$|^no CUDA device$|^\[ +SKIPPED +\]' "$log" | tail -n 40
  read -r tests fails skipped < <(gtest_counts "$xml")
  # Multi-GPU tests skip on a one-GPU machine: expected, not a failure.
  local multi=0
  [[ -s "$xml" ]] && multi=$(grep -c '<skipped message="[^"]*needs [0-9]* GPUs' "$xml")
  skipped=$((skipped - multi))
  NOTE="rc=$rc tests=$tests failed=$fails skipped=$skipped"
  ((multi > 0)) && NOTE="$NOTE (+$multi needing more GPUs)"
  if ((rc == 124 || rc == 137)); then
    STATUS=FAIL; NOTE="timed out after ${limit}s, last test started: $(grep -E '^\[ RUN' "$log" | tail -n 1) (see $name.log)"
  elif ((rc != 0 || fails > 0)); then
    STATUS=FAIL
  elif ((tests == 0)); then
    STATUS=EMPTY; NOTE="$NOTE (no test matched)"
  elif ((skipped > 0)); then
    STATUS=FAIL; NOTE="$NOTE (tests skipped on a GPU machine; see $name.log)"
  else
    STATUS=PASS
  fi
}

section_env() {
  local log="$LOGDIR/env.log"
  STATUS=PASS; NOTE=""
  (
    echo "host: $(uname -n) $(uname -r)"
    if command -v nvidia-smi >/dev/null 2>&1; then
      nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv ||
        { echo "nvidia-smi failed"; }
    else
      echo "nvidia-smi: not found"
    fi
    command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2
    if [[ ! -f "$BUNDLE/env.sh" ]]; then
      echo "no bundle at $BUNDLE (run scripts/make-bundle.sh and carry .bundle)"
      exit 3
    fi
    head -n 2 "$BUNDLE/MANIFEST"
    # A subshell with a clean environment, as the wrappers see it.
    env -i TMPDIR="${TMPDIR:-/tmp}" bash -c '
      source "$1/env.sh" || { echo "env.sh failed"; exit 2; }
      echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
      missing=0
      for f in "$SHRINKRAY_BUNDLE_PROGRAMS"/*; do
        nf=$(ldd "$f" 2>&1 | grep "not found")
        if [[ -n "$nf" ]]; then
          echo "MISSING for $(basename "$f"):"; echo "$nf"; missing=1
        fi
      done
      for p in shrinkray_cuda_tests gptq_llama8b_bench; do
        [[ -e "$SHRINKRAY_BUNDLE_PROGRAMS/$p" ]] || continue
        echo "CUDA libraries as resolved for $p:"
        ldd "$SHRINKRAY_BUNDLE_PROGRAMS/$p" 2>/dev/null | grep -E "libcuda|cublas|cusolver|nvJitLink|nccl|cudart" || true
      done
      exit $missing' _ "$BUNDLE"
  ) >"$log" 2>&1
  local rc=$?
  cat "$log"
  if ((rc != 0)); then STATUS=FAIL; NOTE="missing libraries or no bundle (rc=$rc)"; fi
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    STATUS=FAIL; NOTE="${NOTE:+$NOTE; }no GPU visible to nvidia-smi"
  fi
}

section_ops() {
  if [[ ! -x "$BUNDLE/bin/shrinkray_cuda_tests" ]]; then
    STATUS=FAIL; NOTE="no shrinkray_cuda_tests in the bundle"; echo "$NOTE"; return
  fi
  run_gtest ops shrinkray_cuda_tests --gtest_filter="${OPS_FILTER:-*}"
}

section_goldens() {
  if [[ ! -x "$BUNDLE/bin/shrinkray_unit_tests" ]]; then
    STATUS=FAIL; NOTE="no shrinkray_unit_tests in the bundle"; echo "$NOTE"; return
  fi
  echo "filter: $GOLDEN_FILTER"
  run_gtest goldens shrinkray_unit_tests --gtest_filter="$GOLDEN_FILTER"
  # Golden tests skip (not fail) when data is missing: that is a failed check here.
}

section_goldens_gpu() {
  if [[ ! -x "$BUNDLE/bin/shrinkray_cuda_tests" ]]; then
    STATUS=FAIL; NOTE="no shrinkray_cuda_tests in the bundle"; echo "$NOTE"; return
  fi
  if [[ ! -f "$BUNDLE/data/stories260K/golden.json" ]]; then
    STATUS=FAIL; NOTE="no stories260K data in the bundle ($BUNDLE/data)"; echo "$NOTE"; return
  fi
  echo "filter: $GPU_GOLDEN_FILTER  data: $BUNDLE/data"
  SHRINKRAY_SHARED_DATA="$BUNDLE/data" \
    run_gtest goldens-gpu shrinkray_cuda_tests --gtest_filter="$GPU_GOLDEN_FILTER"
  # Skips already FAIL in run_gtest; an old bundle without the tests matches none.
  [[ "$STATUS" == EMPTY ]] && STATUS=FAIL
  # The measured errors and perplexities, for the summary log.
  grep -E '^stories260K ' "$LOGDIR/goldens-gpu.log" || true
}

# Runs the bundled GPTQ bench with a timeout; sets STATUS and NOTE.
GPTQ_SMOKE_FAILED=0
BENCH_RC=0
run_bench() {
  local name=$1 limit=$2; shift 2
  local log="$LOGDIR/$name.log" prog=${BENCH_PROG:-gptq_llama8b_bench}
  if [[ ! -x "$BUNDLE/bin/$prog" ]]; then
    STATUS=FAIL; NOTE="no $prog in the bundle"; echo "$NOTE"; return
  fi
  echo "$prog $* (timeout ${limit}s)"
  timeout -k 10 "$limit" "$BUNDLE/bin/$prog" "$@" >"$log" 2>&1
  local rc=$?
  BENCH_RC=$rc
  tail -n 60 "$log"
  local result
  result=$(grep -m1 '^RESULT' "$log" || true)
  if ((rc == 124 || rc == 137)); then
    STATUS=FAIL; NOTE="timed out after ${limit}s (see $name.log)"
  elif ((rc == 2)); then
    STATUS=FAIL; NOTE="rc=2: a numerics check failed (non-finite values, or kernels that disagree); ${result#RESULT }"
  elif ((rc != 0)); then
    STATUS=FAIL; NOTE="rc=$rc (see $name.log)"
  else
    STATUS=PASS; NOTE="${result#RESULT }"
  fi
}

section_gptq_smoke() {
  run_bench gptq-smoke "${GPTQ_SMOKE_TIMEOUT:-120}" --layers 1 --samples 8
  # A numerics failure (rc 2) still gives timings worth having: only a crash,
  # a CUDA error or a timeout skips the full run.
  [[ "$STATUS" == PASS || "$BENCH_RC" == 2 ]] || GPTQ_SMOKE_FAILED=1
}

section_gptq_8b() {
  if ((GPTQ_SMOKE_FAILED)); then
    STATUS=FAIL; NOTE="skipped: gptq-smoke failed in this call"; echo "$NOTE"; return
  fi
  # shellcheck disable=SC2086  # GPTQ_8B_ARGS is a flag list
  # --budget-s: the bench stops between layers (and extrapolates) before the
  # hard timeout would kill it mid-layer and lose the totals.
  local limit=${GPTQ_8B_TIMEOUT:-270}
  run_bench gptq-8b "$limit" --layers "${GPTQ_LAYERS:-32}" --budget-s $((limit - 30)) ${GPTQ_8B_ARGS:-}
}

section_attention() { BENCH_PROG=attention_bench run_bench attention 120; }
section_hessian() { BENCH_PROG=hessian_bench run_bench hessian 120; }
section_hinv() { BENCH_PROG=hessian_inverse_bench run_bench hinv 120; }

section_nccl() {
  if [[ ! -x "$BUNDLE/bin/shrinkray_cuda_tests" ]]; then
    STATUS=FAIL; NOTE="no shrinkray_cuda_tests in the bundle"; echo "$NOTE"; return
  fi
  echo "filter: $NCCL_FILTER"
  run_gtest nccl shrinkray_cuda_tests --gtest_filter="$NCCL_FILTER"
  [[ "$STATUS" == EMPTY ]] && STATUS=FAIL
  grep -E '^stories260K .* via NCCL' "$LOGDIR/nccl.log" || true
}

section_sparsegpt_8b() {
  if ((GPTQ_SMOKE_FAILED)); then
    STATUS=FAIL; NOTE="skipped: gptq-smoke failed in this call"; echo "$NOTE"; return
  fi
  local limit=${SPARSEGPT_8B_TIMEOUT:-240}
  # shellcheck disable=SC2086  # SPARSEGPT_8B_ARGS is a flag list
  run_bench sparsegpt-8b "$limit" --method sparsegpt --sparsity 0.5 --layers "${GPTQ_LAYERS:-32}" \
    --budget-s $((limit - 30)) ${SPARSEGPT_8B_ARGS:-}
}

# KD training throughput: a student of Llama-3.2-1B shapes from a teacher of
# Llama-3.2-3B shapes (kd_train_bench): a 2-layer smoke run first, then the
# full models ($TRAIN_BATCH x 2048 tokens per step, $TRAIN_STEPS timed steps),
# then the same with the gradients all-reduced beside the backward (1-rank NCCL).
section_training() {
  local limit=${TRAIN_TIMEOUT:-240}
  BENCH_PROG=kd_train_bench run_bench training-smoke 60 --student-layers 2 --teacher-layers 2 \
    --batch 1 --seqlen 256 --steps 2
  [[ "$STATUS" == PASS ]] || { NOTE="smoke: $NOTE"; return; }
  BENCH_PROG=kd_train_bench run_bench training "$limit" --batch "${TRAIN_BATCH:-4}" --seqlen 2048 \
    --steps "${TRAIN_STEPS:-3}" --warmup 1
  local main_status=$STATUS main_note=$NOTE
  BENCH_PROG=kd_train_bench run_bench training-allreduce "$limit" --batch "${TRAIN_BATCH:-4}" \
    --seqlen 2048 --steps 2 --warmup 1 --allreduce
  local ar_note=$NOTE
  [[ "$STATUS" == PASS ]] || main_status=FAIL
  STATUS=$main_status
  NOTE="${main_note}; with all-reduce: $(sed -n 's/.*\(tokens_per_s=[0-9.]*\).*/\1/p' <<<"$ar_note")"
}

section_forward_vs_transformers() {
  local samples=${FWD_SAMPLES:-64} limit=${FWD_TIMEOUT:-200}
  # --profile-ops: the forward's time by op kind (events add < 0.1%).
  run_bench forward-ours "$limit" --method forward --samples "$samples" --profile-ops
  local ours_status=$STATUS ours_note=$NOTE
  local log="$LOGDIR/forward-transformers.log"
  echo "python3 bench/cuda/transformers_forward.py --samples $samples (timeout ${limit}s)"
  timeout -k 10 "$limit" python3 "$ROOT/bench/cuda/transformers_forward.py" --samples "$samples" \
    --seqlen 2048 --batch 16 >"$log" 2>&1
  local rc=$?
  tail -n 20 "$log"
  local theirs
  theirs=$(grep -m1 '^RESULT' "$log" || true)
  if ((rc != 0)) || [[ -z "$theirs" ]]; then
    STATUS=FAIL; NOTE="ours: ${ours_note}; transformers: rc=$rc (see forward-transformers.log)"; return
  fi
  local a b
  a=$(sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p' <<<"$ours_note")
  b=$(sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p' <<<"$theirs")
  STATUS=$ours_status
  NOTE="ours ${a:-?} tok/s, transformers ${b:-?} tok/s"
  if [[ -n "$a" && -n "$b" ]]; then
    NOTE="$NOTE, ratio $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", a / b }')x"
  fi
}

# A `shrinkray compress --device cuda` job as a service worker runs it (the
# CLI and a worker share RunCompression): a demo model of Llama-3.2-1B's
# decoder shapes ($JOB_LAYERS layers, default 16; hidden 2048, MLP 8192, 32
# heads / 8 KV heads; fp32 safetensors, a small vocabulary), GPTQ w4 g128 on
# $JOB_SAMPLES (128) x 2048 calibration tokens of its text: load-to-save
# seconds and the report's phases (layer forwards + statistics on the GPU,
# solves, writing). Timeout $JOB_TIMEOUT (240 s).
# Arguments: name, the recipe's fields beside bits and group_size, hidden,
# MLP width, layers [, timeout in seconds].
run_compress_job() {
  local name=$1 fields=$2 hidden=$3 inter=$4 layers=$5 limit=${6:-${JOB_TIMEOUT:-240}}
  if [[ ! -x "$BUNDLE/bin/shrinkray" ]]; then
    STATUS=FAIL; NOTE="no shrinkray in the bundle"; echo "$NOTE"; return
  fi
  local work="${TMPDIR:-/tmp}/gpu-check-$name" log="$LOGDIR/$name.log"
  rm -rf "$work"; mkdir -p "$work"
  local t0
  t0=$(now)
  "$BUNDLE/bin/shrinkray" demo --prepare-only --workdir "$work" --hidden "$hidden" --intermediate "$inter" \
    --layers "$layers" --heads 32 --kv-heads 8 --max-positions 2048 --text-bytes 3000000 >"$log" 2>&1 ||
    { STATUS=FAIL; NOTE="demo model: $(tail -n1 "$log")"; return; }
  echo "model + text written in $(elapsed "$t0") s" | tee -a "$log"
  echo "[{gptq: {bits: 4, group_size: 128, $fields}}]" >"$work/recipe.yaml"
  t0=$(now)
  timeout -k 10 "$limit" "$BUNDLE/bin/shrinkray" compress --model "$work/demo-model-f32" --calib "$work/demo-text.txt" \
    --recipe "$work/recipe.yaml" --out "$work/out" --num-samples "${JOB_SAMPLES:-128}" --seqlen 2048 \
    --device cuda >>"$log" 2>&1
  local rc=$? secs
  secs=$(elapsed "$t0")
  tail -n 12 "$log"
  if ((rc != 0)) || [[ ! -s "$work/out/report.json" ]]; then
    STATUS=FAIL; NOTE="rc=$rc after ${secs}s"; return
  fi
  local phases
  phases=$(/usr/bin/env python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); t=r["timings"]; p=t["phases"]; ls=t.get("layer_seconds", [])
print("load %.1f s, forward %.1f s, solve %.1f s, error %.1f s, write %.1f s + checkpoints %.1f s (waited for I/O %.1f s), calibration %.1f s, open %.1f s, %d matrices, median layer %.2f s" % (p.get("load_seconds", 0), p["forward_seconds"], p["solve_seconds"], p.get("error_seconds", 0), t.get("write_seconds", 0), t.get("checkpoint_seconds", 0), t.get("io_wait_seconds", 0), t.get("calibration_seconds", 0), t.get("load_seconds", 0), len(r["matrices"]), sorted(ls)[len(ls) // 2] if ls else 0))' \
    "$work/out/report.json" 2>&1)
  grep -q "layer forwards .*on the CPU" "$log" && { STATUS=FAIL; NOTE="forwards fell back to the CPU"; return; }
  cp "$work/out/report.json" "$LOGDIR/$name-report.json"
  STATUS=PASS; NOTE="load-to-save ${secs} s: $phases"
}

# The fp32 job is the reference's numerics; the bf16 ones also take the
# flipped inverse factor (half the Cholesky FLOPs): the fast path.
section_compress_job() { run_compress_job compress-job "forward_dtype: float32" 2048 8192 "${JOB_LAYERS:-16}"; }
section_compress_job_bf16() {
  run_compress_job compress-job-bf16 "forward_dtype: bfloat16, inverse_factor: flipped" 2048 8192 "${JOB_LAYERS:-16}"
}
# Llama-3-8B decoder shapes (hidden 4096, MLP 14336), bf16 forwards, on
# $JOB8B_LAYERS (default 8) of its 32 layers: the median layer times 32 is the
# job's decoder time (the fp32 demo model of 32 layers is 28 GB to write).
section_compress_job_8b() {
  run_compress_job compress-job-8b "forward_dtype: bfloat16, inverse_factor: flipped" 4096 14336 \
    "${JOB8B_LAYERS:-8}" "${JOB8B_TIMEOUT:-300}"
}

section_table() {
  if [[ ! -x "$BUNDLE/bin/shrinkray" ]]; then
    STATUS=FAIL; NOTE="no shrinkray in the bundle"; echo "$NOTE"; return
  fi
  # Outputs stay in /tmp; the logs are copied to $LOGDIR/table.
  local work="${TMPDIR:-/tmp}/gpu-check-table" limit=${TABLE_TIMEOUT:-240}
  rm -rf "$work"; mkdir -p "$work"
  local -a names=()
  mapfile -t names < <(grep -E '^\| (GPTQ|SparseGPT) ' "$ROOT/docs/results.md" | cut -d'|' -f2 | sed 's/^ //; s/ $//')
  ((${#names[@]} > 0)) || { STATUS=FAIL; NOTE="no GPTQ/SparseGPT rows in docs/results.md"; return; }
  local i=0 pids=()
  for name in "${names[@]}"; do
    # One process per row, one BLAS thread each: the rows run side by side.
    SHRINKRAY_SHARED_DATA="$BUNDLE/data" DEVICE=cuda ONLY="$name" OPENBLAS_NUM_THREADS=1 \
      timeout -k 10 "$limit" bash "$ROOT/scripts/results-table.sh" "$BUNDLE/bin/shrinkray" "$work/row$i" \
      >"$work/row$i.md" 2>"$work/row$i.err" &
    pids+=($!)
    i=$((i + 1))
  done
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  local worst rows solves
  echo "| configuration | ppl GPU solves | ppl CPU (docs/results.md) | diff |"
  for ((i = 0; i < ${#names[@]}; i++)); do
    local name=${names[$i]} gpu cpu
    gpu=$(grep -F "| $name |" "$work/row$i.md" | cut -d'|' -f4 | tr -d ' ')
    cpu=$(grep -F "| $name |" "$ROOT/docs/results.md" | cut -d'|' -f4 | tr -d ' ')
    solves=$(grep -h '^solves' "$work/row$i/log"*.txt 2>/dev/null | head -n1)
    if [[ -z "$gpu" ]]; then
      echo "| $name | FAILED ($(tail -n1 "$work/row$i.err" 2>/dev/null)) | $cpu | |"; continue
    fi
    local d
    d=$(awk -v g="$gpu" -v c="$cpu" 'BEGIN { printf "%+.3f%%", 100 * (g / c - 1) }')
    echo "| $name | $gpu | $cpu | $d | ${solves#solves }"
  done | tee "$LOGDIR/table.log"
  # One file of every row's output and logs (the device tool returns few files).
  for f in "$work"/row*.md "$work"/row*.err "$work"/row*/log*.txt; do
    [[ -f "$f" ]] && { echo "==== $f"; cat "$f"; }
  done >"$LOGDIR/table-rows.log"
  # Rows with a number in the GPU column; the worst |diff| over the
  # single-stage rows. A chained row ("SparseGPT 50% then GPTQ w4 g32": GPTQ
  # with the pruning's keep mask, on the GPU since 2026-11-28, on the CPU
  # before) is reported but not bounded: GPTQ after pruning is chaotic at this
  # size (float32-rounding perturbations of its input move ppl by -1.5%..+3.3%
  # on the CPU alone, tests/cuda/compress_cuda_test.cc), and the per-matrix
  # comparison of that test (masks identical, weights within 1e-6) is its check.
  rows=$(awk -F'|' '$3 ~ /^ *[0-9]/ { n++ } END { print n + 0 }' "$LOGDIR/table.log")
  worst=$(awk -F'|' '$3 ~ /^ *[0-9]/ && $2 !~ / then / {
                       d = $5; gsub(/[ %+-]/, "", d); if (d + 0 > w) w = d + 0 } END { printf "%.3f", w + 0 }' \
            "$LOGDIR/table.log")
  local chained
  chained=$(awk -F'|' '$3 ~ /^ *[0-9]/ && $2 ~ / then / { n++ } END { print n + 0 }' "$LOGDIR/table.log")
  NOTE="$rows of ${#names[@]} rows, worst |ppl diff| ${worst}% (bound 0.5%) over the single-stage rows; $chained chained row(s) reported only"
  if ((failed > 0 || rows != ${#names[@]})) || awk -v w="$worst" 'BEGIN { exit !(w > 0.5) }'; then
    STATUS=FAIL
  else
    STATUS=PASS
  fi
}

sections=("$@")
((${#sections[@]} > 0)) || sections=(env ops goldens)
for s in "${sections[@]}"; do
  case "$s" in env | ops | goldens | goldens-gpu | nccl | table | compress-job | compress-job-bf16 | compress-job-8b | gptq-smoke | gptq-8b | sparsegpt-8b | training | forward-vs-transformers | attention | hessian | hinv) ;; *)
    echo "unknown section '$s' (env ops goldens goldens-gpu nccl table compress-job compress-job-bf16 compress-job-8b gptq-smoke gptq-8b sparsegpt-8b" \
      "training forward-vs-transformers attention hessian hinv)" >&2; exit 2 ;;
  esac
done

for s in "${sections[@]}"; do
  header "$s"
  t0=$(now)
  STATUS=FAIL; NOTE=""
  "section_${s//-/_}"
  secs=$(elapsed "$t0")
  printf -- '---- %s: %s in %ss %s\n' "$s" "$STATUS" "$secs" "$NOTE"
  SUMMARY+=("$(printf '%-10s %-6s %7s  %s' "$s" "$STATUS" "$secs" "$NOTE")")
  [[ "$STATUS" == FAIL ]] && FAILED=1
done

{
  printf '\n==== summary ====\n'
  printf '%-10s %-6s %7s  %s\n' section status seconds note
  printf '%s\n' "${SUMMARY[@]}"
} | tee "$LOGDIR/summary.txt"
exit "$FAILED"
