#!/usr/bin/env bash
# Builds (Release) and runs the benchmarks, printing one table per program and
# the machine they ran on, for docs/benchmarks.md. Extra args go to every program
# (e.g. --benchmark_filter=Tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build-bench BUILD_TYPE=Release scripts/build.sh -DSHRINKRAY_CUDA=OFF -DSHRINKRAY_BUILD_TESTS=OFF >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "date:    $(date -u +%Y-%m-%d)"
for b in build-bench/bench/*_bench; do
  # Needs a running coordinator: bench/service_load_bench.sh runs it.
  [ "$(basename "$b")" = service_load_bench ] && continue
  echo; echo "== $(basename "$b")"
  "$b" --benchmark_counters_tabular=true "$@"
done
