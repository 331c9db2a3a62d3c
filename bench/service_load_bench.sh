#!/usr/bin/env bash
# The service load benchmark (docs/benchmarks.md, "Service"): makes the demo
# model, starts one shrinkray-coordinator on loopback (no workers), runs
# service_load_bench against it (100 watchers, 1,000 dry-run jobs, GetJob,
# ListJobs, CancelJob), and reports the coordinator's memory (VmRSS/VmHWM
# before and after, and its /metrics gauge) and the size of its SQLite store.
#   bench/service_load_bench.sh BUILD_DIR [service_load_bench flags, e.g. --jobs 200]
# KEEP=1 keeps the temporary folder (logs, database); PERF_DATA=FILE records
# the coordinator with `perf record -g` while the load runs (it slows it down).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:?usage: bench/service_load_bench.sh BUILD_DIR [service_load_bench flags]}
shift
SHRINKRAY="$BUILD_DIR/client/shrinkray"
COORDINATOR="$BUILD_DIR/server/shrinkray-coordinator"
BENCH="$BUILD_DIR/bench/service_load_bench"
for b in "$SHRINKRAY" "$COORDINATOR" "$BENCH"; do
  [ -x "$b" ] || { echo "service_load_bench.sh: $b not built (ninja -C $BUILD_DIR shrinkray shrinkray-coordinator service_load_bench)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shrinkray-service-load.XXXXXX")
COORD_PID=""
cleanup() {
  if [ -n "${PERF_PID:-}" ]; then kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; fi
  if [ -n "$COORD_PID" ]; then kill "$COORD_PID" 2>/dev/null || true; wait "$COORD_PID" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "service_load_bench.sh: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# "VmRSS 12.3 MiB, VmHWM 14.0 MiB" of a process.
memory() {
  awk '/^VmRSS:/ { rss = $2 } /^VmHWM:/ { hwm = $2 }
       END { printf "VmRSS %.1f MiB, VmHWM %.1f MiB\n", rss / 1024, hwm / 1024 }' "/proc/$1/status"
}
# User and system CPU seconds a process has used.
cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f s user, %.2f s system\n", $12 / hz, $13 / hz }' "/proc/$1/stat"
}
# Sizes of the store's files (the WAL is folded back in when the store closes).
db_size() {
  local f
  for f in "$WORK/data/jobs.sqlite" "$WORK/data/jobs.sqlite-wal"; do
    if [ -f "$f" ]; then stat -c '%n %s' "$f"; else echo "$f 0"; fi
  done | awk '{ n = split($1, p, "/"); printf "%s %.2f MiB; ", p[n], $2 / 1048576; t += $2 }
              END { printf "total %.2f MiB\n", t / 1048576 }'
}
metrics() {
  local url="http://$1/metrics"
  if command -v curl >/dev/null; then curl -fsS "$url"; else python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())" "$url"; fi
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at start:$(uptime | sed 's/.*load average://')"
"$SHRINKRAY" demo --workdir "$WORK" --prepare-only >"$WORK/demo.log" 2>&1 || { cat "$WORK/demo.log"; exit 1; }
mkdir -p "$WORK/out"

"$COORDINATOR" --listen 127.0.0.1:0 --port-file "$WORK/port" --metrics-listen 127.0.0.1:0 \
  --data-dir "$WORK/data" --allowed-root "$WORK" --max-queued-jobs 2000 >"$WORK/coordinator.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { cat "$WORK/coordinator.log"; echo "service_load_bench.sh: coordinator did not start" >&2; exit 1; }
SERVER="127.0.0.1:$(cat "$WORK/port")"
# The log's first line: "... listening on ... metrics 127.0.0.1:PORT, data ...".
METRICS=$(head -1 "$WORK/coordinator.log" | sed -n 's/.*metrics \([^,]*\),.*/\1/p')
echo "coordinator: pid $COORD_PID, gRPC $SERVER, metrics $METRICS"
echo "coordinator memory before: $(memory "$COORD_PID"); CPU $(cpu "$COORD_PID")"

PERF_PID=""
if [ -n "${PERF_DATA:-}" ]; then
  perf record -F 999 --call-graph dwarf -p "$COORD_PID" -o "$PERF_DATA" >"$WORK/perf.log" 2>&1 &
  PERF_PID=$!
  sleep 1  # perf attaches asynchronously
fi
rc=0
"$BENCH" --server "$SERVER" --model "$WORK/demo-model-f32" --calib "$WORK/demo-text.txt" --out-root "$WORK/out" "$@" || rc=$?
if [ -n "$PERF_PID" ]; then
  kill -INT "$PERF_PID"; wait "$PERF_PID" || true; PERF_PID=""
  echo "perf data: $PERF_DATA"
fi

echo
echo "coordinator memory after:  $(memory "$COORD_PID"); CPU $(cpu "$COORD_PID")"
sleep 0.5  # the resident-memory gauge is refreshed on the coordinator's 200 ms tick
metrics "$METRICS" | grep -E '^shrinkray_(coordinator_resident_memory_bytes|jobs\{|jobs_submitted_total|jobs_finished_total)' || true
echo "job store while running: $(db_size)"
kill -TERM "$COORD_PID"
wait "$COORD_PID" || true
COORD_PID=""
echo "job store after stop:    $(db_size)"
echo "load average at end:$(uptime | sed 's/.*load average://')"
exit "$rc"
