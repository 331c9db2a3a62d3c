# Sourced by the service integration tests (resume_test.sh,
# distill_resume_test.sh): the programs of BUILD_DIR, a work folder removed at
# exit (KEEP_WORK=1 keeps it), cleanup of the coordinator (COORD_PID) and the
# workers (WORKER_PID[name]), fail() that prints every log's tail, and a free
# loopback port in PORT / SERVER.
#   source service_harness.sh BUILD_DIR NAME
BUILD=$1
PY=/usr/bin/python3
SHRINKRAY="$BUILD/client/shrinkray"
COORDINATOR="$BUILD/server/shrinkray-coordinator"
WORKER="$BUILD/worker/shrinkray-worker"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shrinkray-$2.XXXXXX")
COORD_PID=""
declare -A WORKER_PID
cleanup() {
  [ -n "$COORD_PID" ] && kill -9 "$COORD_PID" 2>/dev/null || true
  for p in "${WORKER_PID[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -15 "$f" >&2; done
  exit 1
}

PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SERVER="127.0.0.1:$PORT"
