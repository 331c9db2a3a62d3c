#!/usr/bin/env bash
# The CLI on bad input: a non-zero exit and a message naming the problem, never a crash.
set -u
CLI=$1
DATA=${SHRINKRAY_SHARED_DATA:-$2}
WORKER=${3:-}  # shrinkray-worker, for its flag errors (skipped when not given)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0

expect_error() {  # expect_error "what" "message substring" cmd...
  local what=$1 want=$2; shift 2
  out=$("$@" 2>&1); rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -qF -- "$want" <<<"$out"; then
    passes=$((passes+1))
  else
    echo "FAIL: $what: rc=$rc, wanted '$want' in: $out"; fails=$((fails+1))
  fi
}

expect_error "unknown command" "unknown command 'frobnicate'" "$CLI" frobnicate
expect_error "unknown flag" "unknown flag --bogus" "$CLI" eval --bogus 1
expect_error "missing flag" "missing required flag --model" "$CLI" eval --data x
expect_error "missing model folder" "$tmp/none" "$CLI" inspect --model "$tmp/none"
mkdir -p "$tmp/m"
echo '{"architectures": ["GPT2LMHeadModel"], "hidden_size": 64}' > "$tmp/m/config.json"
expect_error "unknown architecture" "GPT2LMHeadModel" "$CLI" inspect --model "$tmp/m"
# distill: flag errors found before anything is loaded.
expect_error "distill without a student" "a student is required: --keep-layers" "$CLI" distill --teacher x --data y --out "$tmp/s"
expect_error "distill two students" "are exclusive" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0 --mlp-width 8
expect_error "distill unknown loss" "--loss: unknown loss 'mse'" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0 --loss mse
expect_error "distill unknown top-k mode" "--top-k-mode: unknown mode 'head'" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0 --top-k 4 --top-k-mode head
expect_error "distill bad layer list" "--keep-layers: 'a' is not an integer" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0,a
expect_error "distill negative top-k" "--top-k must be >= 1" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0 --top-k 0
expect_error "distill micro > batch" "--micro-batch 8 is larger than --batch 4" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0 --batch 4 --micro-batch 8
expect_error "distill checkpoint-every alone" "--checkpoint-every needs --checkpoint-dir" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0 --checkpoint-every 5
expect_error "distill missing teacher" "--teacher: " "$CLI" distill --teacher "$tmp/none" --data y --out "$tmp/s" --keep-layers 0
expect_error "generate temperature 0" "--temperature 0 must be positive" "$CLI" generate --model x --temperature 0
expect_error "distill no data, no samples" "missing required flag --data (or --teacher-samples N" "$CLI" distill --teacher x --out "$tmp/s" --keep-layers 0
expect_error "distill zero teacher samples" "--teacher-samples must be positive, got 0" "$CLI" distill --teacher x --out "$tmp/s" --keep-layers 0 --teacher-samples 0
expect_error "distill negative teacher samples" "--teacher-samples must be positive, got -4" "$CLI" distill --teacher x --out "$tmp/s" --keep-layers 0 --teacher-samples -4
expect_error "distill sample temperature 0" "--teacher-sample-temperature must be positive, got 0" "$CLI" distill --teacher x --out "$tmp/s" --keep-layers 0 --teacher-samples 8 --teacher-sample-temperature 0
expect_error "distill sample flag alone" "--teacher-sample-seed needs --teacher-samples N" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0 --teacher-sample-seed 3
# --device: cpu, cuda or cuda:N; a GPU that is not there (or a build without
# CUDA) is named before anything is loaded: "device cuda:99: <why>".
expect_error "distill bad device" "--device must be cpu, cuda or cuda:N, got 'cuda:-1'" "$CLI" distill --teacher x --data y --out "$tmp/s" --keep-layers 0 --device cuda:-1
expect_error "distill gpu not there" "device cuda:99: " "$CLI" distill --teacher "$tmp/none" --data y --out "$tmp/s" --keep-layers 0 --device cuda:99
if [ -n "$WORKER" ]; then
  expect_error "worker bad device" "--device must be cpu, cuda or cuda:N, got 'gpu'" "$WORKER" --device gpu --metrics-listen ""
  expect_error "worker bad device index" "--device must be cpu, cuda or cuda:N, got 'cuda:1x'" "$WORKER" --device cuda:1x --metrics-listen ""
  expect_error "worker gpu not there" "device cuda:99: " "$WORKER" --device cuda:99 --metrics-listen "" --coordinator 127.0.0.1:1
fi
# A distill stage in a recipe (shrinkray compress): the recipe's errors name the
# file, the stage and the field, before anything is loaded; the student's size
# against the teacher once the model's config is read (the demo model: 2 layers,
# MLP 172, 8 heads in 4 KV groups).
"$CLI" demo --workdir "$tmp/demo" --prepare-only >/dev/null 2>&1
DM=$tmp/demo/demo-model-f32; DT=$tmp/demo/demo-text.txt
r() { printf '%s\n' "$1" > "$tmp/r.yaml"; shift; "$CLI" compress --model "$DM" --recipe "$tmp/r.yaml" --calib "$DT" --num-samples 4 --seqlen 32 --out "$tmp/rc" "$@"; }
expect_error "recipe distill alpha" "recipe $tmp/r.yaml: stage 0 (distill): field 'alpha': must be in [0, 1], got 1.5" r "- distill: {student: {keep_layers: [0]}, alpha: 1.5}"
expect_error "recipe distill T" "stage 0 (distill): field 'temperature': must be positive, got 0" r "- distill: {student: {keep_layers: [0]}, temperature: 0}"
expect_error "recipe distill teacher_samples" "stage 0 (distill): field 'teacher_samples': must be positive, got 0" r "- distill: {student: {keep_layers: [0]}, teacher_samples: 0}"
expect_error "recipe distill sample_temperature" "stage 0 (distill): field 'sample_temperature': must be positive, got -1" r "- distill: {student: {keep_layers: [0]}, teacher_samples: 4, sample_temperature: -1}"
expect_error "recipe distill loss" "stage 0 (distill): field 'loss': expected kl, reverse_kl or jsd, got 'mse'" r "- distill: {student: {keep_layers: [0]}, loss: mse}"
expect_error "recipe distill not first" "stage 1 (distill): a distill stage must come first" r "[{gptq: {}}, {distill: {student: {keep_layers: [0]}}}]"
expect_error "recipe distill no student" "stage 0 (distill): needs 'student'" r "- distill: {steps: 3}"
expect_error "recipe distill deeper student" "stage 0 (distill): field 'student.keep_layers': keeps 3 layers but the teacher has 2; a pruned student cannot be deeper" r "[{distill: {student: {keep_layers: [0, 1, 2]}}}, {gptq: {}}]"
expect_error "recipe distill layer out of range" "field 'student.keep_layers': layer 5 is outside the teacher's 2 layers" r "- distill: {student: {keep_layers: [0, 5]}}"
expect_error "compress bad device" "--device must be cpu, cuda or cuda:N, got 'cuda:x'" r "[{gptq: {}}]" --device cuda:x
expect_error "compress gpu not there" "device cuda:99: " r "[{gptq: {}}]" --device cuda:99
expect_error "recipe distill wider MLP" "field 'student.mlp_width': intermediate size 400 is larger than the teacher's 172; pruning cannot widen" r "- distill: {student: {mlp_width: 400}}"
expect_error "recipe distill more heads" "field 'student.heads': 16 heads is more than the teacher's 8" r "- distill: {student: {heads: 16}}"
expect_error "recipe distill top-k > vocab" "field 'top_k': top_k 100000 is larger than the teacher's vocabulary" r "- distill: {student: {keep_layers: [0]}, top_k: 100000}"
expect_error "recipe distill missing data" "stage 0 (distill): field 'data': training data $tmp/none.txt does not exist" r "- distill: {student: {keep_layers: [0]}, data: $tmp/none.txt}"
if [ -d "$DATA/stories260K" ]; then
  # distill: errors the library finds (InvalidArgument naming the field), with the flag in front.
T260=$DATA/stories260K; TR=$DATA/text/tinystories_train_prefix.txt
d() { "$CLI" distill --teacher "$T260" --data "$TR" --out "$tmp/student" --steps 1 --batch 2 --seqlen 32 "$@"; }
expect_error "distill alpha > 1" "--alpha: alpha 1.5 must be in [0, 1]" d --keep-layers 0,2,4 --alpha 1.5
expect_error "distill alpha < 0" "--alpha: alpha -0.1 must be in [0, 1]" d --keep-layers 0,2,4 --alpha -0.1
expect_error "distill T = 0" "--temperature: temperature 0 must be positive" d --keep-layers 0,2,4 --temperature 0
expect_error "distill JSD beta" "--beta: beta 1 must be in (0, 1)" d --keep-layers 0,2,4 --loss jsd --beta 1
expect_error "distill top-k > vocab" "--top-k 600 is larger than the teacher's vocabulary (512)" d --keep-layers 0,2,4 --top-k 600
expect_error "distill deeper student" "--keep-layers: student init: keep_layers has 6 entries but the teacher has 5" d --keep-layers 0,1,2,3,4,5
expect_error "distill layer out of range" "--keep-layers: student init: keep_layers[2] = 7 is outside [0, 5)" d --keep-layers 0,2,7
expect_error "distill repeated layer" "keep_layers[1] = 0 is repeated" d --keep-layers 0,0
expect_error "distill wider MLP" "--mlp-width: student init: intermediate_size 200 is larger than the teacher's 172" d --mlp-width 200
expect_error "distill heads not whole groups" "--heads: student init: num_attention_heads" d --heads 0
expect_error "distill min-lr > lr" "--min-lr: " d --keep-layers 0,2,4 --lr 1e-3 --min-lr 1e-2
expect_error "distill warmup >= steps" "--warmup/--steps: " d --keep-layers 0,2,4 --warmup 1
expect_error "distill seqlen > positions" "--seqlen: seqlen 4096 exceeds max_position_embeddings" "$CLI" distill --teacher "$T260" --data "$TR" --out "$tmp/student" --keep-layers 0,2,4 --seqlen 4096
echo '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 100, "max_position_embeddings": 64, "rms_norm_eps": 1e-5}' > "$tmp/small.json"
expect_error "distill random student vocab" "--student-config: student init: vocab_size 100 differs from the teacher's 512" d --student-config "$tmp/small.json"
mkdir -p "$tmp/exists"
expect_error "distill existing out" "exists; pass --overwrite" "$CLI" distill --teacher "$T260" --data "$TR" --out "$tmp/exists" --keep-layers 0
  : > "$tmp/empty.txt"
  expect_error "empty text" "empty.txt: text file is empty" "$CLI" eval --model "$DATA/stories260K" --data "$tmp/empty.txt"
  printf 'abc\xff' > "$tmp/bad.txt"
  expect_error "non-UTF-8 text" "bad.txt: not valid UTF-8 at byte 3" "$CLI" eval --model "$DATA/stories260K" --data "$tmp/bad.txt"
  head -c 100 "$DATA/stories260K/model.safetensors" > "$tmp/trunc.safetensors"
  mkdir -p "$tmp/t"; cp "$DATA/stories260K/config.json" "$DATA/stories260K/tokenizer.json" "$tmp/t/"
  cp "$tmp/trunc.safetensors" "$tmp/t/model.safetensors"
  expect_error "truncated safetensors" "model.safetensors" "$CLI" eval --model "$tmp/t" --data "$DATA/text/tinystories_valid_prefix.txt"
  out=$("$CLI" eval --model "$DATA/stories260K" --data "$DATA/text/tinystories_valid_prefix.txt" --max-chars 20000 --seqlen 256)
  if grep -q "ppl             4.08" <<<"$out"; then passes=$((passes+1)); else echo "FAIL: eval ppl: $out"; fails=$((fails+1)); fi
  out=$("$CLI" generate --model "$DATA/stories260K" --prompt "" --max-new-tokens 48)
  if grep -qF "Once upon a time, there was a little girl named Lily. She loved to play outside in the park." <<<"$out"; then
    passes=$((passes+1)); else echo "FAIL: generate: $out"; fails=$((fails+1)); fi
else
  echo "SKIPPED the stories260K cases: $DATA/stories260K not found"
fi
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
