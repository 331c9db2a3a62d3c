#!/usr/bin/env bash
# The CLI on bad input: a non-zero exit and a message naming the problem, never a crash.
set -u
CLI=$1
DATA=${SHRINKRAY_SHARED_DATA:-$2}
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
if [ -d "$DATA/stories260K" ]; then
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
