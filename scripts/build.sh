#!/usr/bin/env bash
# Configures and builds shrinkray into build/ (CUDA targets when nvcc is found).
# Extra arguments go to the CMake configure step, e.g. -DSHRINKRAY_CUDA=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} "$@"
cmake --build "$BUILD_DIR" -j"$(nproc)"
