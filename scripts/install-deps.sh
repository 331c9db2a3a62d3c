#!/usr/bin/env bash
# Installs every Debian package shrinkray's build, tests and benchmarks need.
# Idempotent: packages already present are left alone; apt-get update runs only
# when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev
  prometheus-cpp-dev
  libgloo-dev
  libsqlite3-dev
  libopenblas-dev liblapacke-dev
  nlohmann-json3-dev
  libyaml-cpp-dev
  libpcre2-dev
  libutf8proc-dev
  libgtest-dev libgmock-dev
  libbenchmark-dev
  python3-numpy
  python3-grpcio python3-protobuf
  prometheus
  yamllint python3-jsonschema python3-yaml
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# buf (proto lint) comes from the npm registry; npm itself may already come
# with a nodejs from another source (which conflicts with Debian's npm), so it
# is installed only when missing, and its absence only skips the buf_lint test.
if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends npm || echo "install-deps: npm not installed (buf_lint will be skipped)"
fi
