#!/usr/bin/env bash
# Builds and runs every test suite:
#  1. build/ (CUDA ON when nvcc is found, or as SHRINKRAY_CUDA says): all ctest suites;
#  2. build-asan/ (AddressSanitizer + UBSan, CPU only): the unit and service tests again.
# Set SHRINKRAY_SKIP_ASAN=1 to run only the first. Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)

BUILD_DIR=build scripts/build.sh -DSHRINKRAY_CUDA="${SHRINKRAY_CUDA:-AUTO}"
ctest --test-dir build --output-on-failure -j"$JOBS" "$@"

if [ "${SHRINKRAY_SKIP_ASAN:-0}" != "1" ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSHRINKRAY_CUDA=OFF \
    -DSHRINKRAY_BUILD_BENCH=OFF -DSHRINKRAY_SANITIZE=address,undefined
  cmake --build build-asan -j"$JOBS" --target shrinkray_unit_tests shrinkray_service_tests
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j"$JOBS" -L '^(unit|service)$' "$@"
fi
