#!/usr/bin/env bash
# Builds shrinkray (Release, CUDA on) in build-bundle/ and assembles a
# relocatable bundle in .bundle/ for a machine that has a GPU but not this
# machine's libraries (the device machine: CUDA 13 driver + toolkit, PyTorch's
# nvidia-* wheels, no abseil/openblas/gtest).
#
#   scripts/make-bundle.sh            # build + bundle
#   SKIP_BUILD=1 scripts/make-bundle.sh   # re-bundle an existing build (SKIP_BUILD=0: build)
#   BUILD_DIR=$PWD/build SKIP_BUILD=1 scripts/make-bundle.sh
#                                     # bundle the everyday CUDA build (scripts/build.sh with
#                                     # -DSHRINKRAY_CUDA=ON): ~1 min instead of a cold build
#
# The default programs (what gpu-check runs) make ~34 MB with the data, under
# the device call's 64 MiB (~62 MB before the programs were compressed).
#
# Layout (every path relative to the bundle, so the folder can move):
#   bin/<prog>      wrapper: sources env.sh, execs the unpacked libexec/<prog>
#   libexec/<prog>.xz  the stripped executables (RUNPATH $ORIGIN/../lib),
#                   xz-compressed (36 MB -> 9 MB for the default programs) and
#                   unpacked with the big libraries (below) into
#                   ${TMPDIR:-/tmp}/shrinkray-bundle-<id>/{libexec,lib}/
#   lib/            every shared library ldd resolves here, except glibc's core
#                   libraries, the driver (libcuda) and CUDA libraries over
#                   CUDA_LIB_MAX_MB (cuBLAS/cuBLASLt/cuSOLVER/NCCL are 50-540 MB
#                   each: the GPU machine's own CUDA 13 provides them).
#                   Libraries over PACK_MIN_MB are stored xz-compressed
#                   (lib/<name>.xz) and unpacked on first use into
#                   ${TMPDIR:-/tmp}/shrinkray-bundle-<id>/lib/, keeping the
#                   bundle itself small and read-only.
#   data/           ../shared/data's stories260K/ and text/ (SHRINKRAY_SHARED_DATA)
#   env.sh          sets LD_LIBRARY_PATH and SHRINKRAY_SHARED_DATA (sourceable)
#   MANIFEST        what went in, and which libraries must come from the host
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build-bundle}
BUNDLE=$ROOT/.bundle
JOBS=${JOBS:-2}
DATA_SRC=${SHRINKRAY_SHARED_DATA_SRC:-$ROOT/../shared/data}
CUDA_LIB_MAX_MB=${CUDA_LIB_MAX_MB:-8}
PACK_MIN_MB=${PACK_MIN_MB:-2}

log() { printf '[make-bundle] %s\n' "$*" >&2; }

# ---- build ------------------------------------------------------------------
if [[ -z "${SKIP_BUILD:-}" || "${SKIP_BUILD}" == 0 ]]; then
  # Binaries carry RUNPATH $ORIGIN/../lib and nothing that points into the
  # build tree (build-time runs, e.g. gtest discovery, find their libraries in
  # the system paths and /usr/local/cuda via ld.so.conf).
  cmake -S "$ROOT" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DSHRINKRAY_CUDA=ON \
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
    '-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib'
  cmake --build "$BUILD" -j "$JOBS"
fi
[[ -d "$BUILD" ]] || { log "no build at $BUILD"; exit 1; }

# ---- collect executables ------------------------------------------------------
is_program() {  # an ELF with a program interpreter, i.e. an executable, not a .so
  [[ -f "$1" && -x "$1" && "$1" != *.so && "$1" != *.so.* ]] || return 1
  readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}
mapfile -t PROGRAMS < <(find "$BUILD" -type f -perm -u+x -not -path '*/CMakeFiles/*' \
                          -not -path '*/_deps/*' -print | sort)
# Only what scripts/gpu-check.sh runs ($BUNDLE_PROGRAMS, space-separated; "all"
# takes every program): the device call carries at most 64 MiB in all.
BUNDLE_PROGRAMS=${BUNDLE_PROGRAMS:-shrinkray shrinkray_unit_tests shrinkray_cuda_tests gptq_llama8b_bench kd_train_bench attention_bench hessian_bench hessian_inverse_bench}
progs=()
for p in "${PROGRAMS[@]}"; do
  is_program "$p" || continue
  [[ "$BUNDLE_PROGRAMS" == all || " $BUNDLE_PROGRAMS " == *" $(basename "$p") "* ]] && progs+=("$p")
done
((${#progs[@]} > 0)) || { log "no executables found in $BUILD"; exit 1; }
for want in shrinkray shrinkray_unit_tests shrinkray_cuda_tests gptq_llama8b_bench kd_train_bench; do
  found=0
  for p in "${progs[@]}"; do [[ "$(basename "$p")" == "$want" ]] && found=1; done
  ((found)) || log "warning: expected program '$want' was not built"
done

# ---- assemble -------------------------------------------------------------------
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"/{bin,libexec,lib,data}
: >"$BUNDLE/MANIFEST"
manifest() { printf '%s\n' "$*" >>"$BUNDLE/MANIFEST"; }
manifest "# shrinkray bundle, built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
manifest "# source: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit'))"

for p in "${progs[@]}"; do
  name=$(basename "$p")
  if [[ -e "$BUNDLE/libexec/$name.xz" ]]; then log "duplicate program name $name ($p)"; exit 1; fi
  strip --strip-unneeded -o "$BUNDLE/libexec/$name" "$p"
  xz -6 -T"$JOBS" "$BUNDLE/libexec/$name"  # -> $name.xz, the original removed
  cat >"$BUNDLE/bin/$name" <<'EOF'
#!/bin/bash
# shrinkray bundle wrapper: finds the bundle's libraries and data (unpacking
# them and the programs on first use), then runs the real program.
here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
source "$here/env.sh" || exit 127
exec "$SHRINKRAY_BUNDLE_PROGRAMS/$(basename "${BASH_SOURCE[0]}")" "$@"
EOF
  chmod +x "$BUNDLE/bin/$name"
  manifest "program $name"
done

# Libraries that must come from the machine the bundle runs on.
is_system_lib() {
  case "$1" in
    linux-vdso.so.*|ld-linux*.so.*|libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|\
    libutil.so.*|libresolv.so.*|libanl.so.*|libmvec.so.*) return 0 ;;
    libcuda.so.*|libnvidia-*.so.*) return 0 ;;  # the driver: must match the GPU machine's kernel module
  esac
  return 1
}

declare -A seen=()
host_cuda=()
missing=()
for p in "${progs[@]}"; do
  while read -r line; do
    # "libfoo.so.1 => /path/libfoo.so.1 (0x...)" or "libfoo.so.1 => not found"
    [[ "$line" == *"=>"* ]] || continue
    soname=${line%% =>*}
    soname=${soname//[[:space:]]/}
    path=${line#*=> }
    path=${path%% (*}
    [[ -n "${seen[$soname]:-}" ]] && continue
    seen[$soname]=1
    is_system_lib "$soname" && continue
    if [[ "$path" == "not found" ]]; then missing+=("$soname ($(basename "$p"))"); continue; fi
    real=$(readlink -f "$path")
    size_mb=$(( $(stat -c %s "$real") / 1048576 ))
    if [[ "$real" == /usr/local/cuda* ]] && ((size_mb > CUDA_LIB_MAX_MB)); then
      host_cuda+=("$soname (${size_mb} MB)")
      manifest "host-cuda $soname"
      continue
    fi
    if ((size_mb >= PACK_MIN_MB)); then
      # Cache the (slow) xz step across runs, keyed by source path and mtime.
      cache="$BUILD/bundle-xz-cache/$soname.$(stat -c %Y "$real").xz"
      if [[ ! -f "$cache" ]]; then
        mkdir -p "$BUILD/bundle-xz-cache"
        log "compressing $soname ($size_mb MB)"
        xz -6 -T"$JOBS" -c "$real" >"$cache.tmp" && mv "$cache.tmp" "$cache"
      fi
      cp "$cache" "$BUNDLE/lib/$soname.xz"
      manifest "lib-xz $soname <- $real"
    else
      cp -L "$path" "$BUNDLE/lib/$soname"
      manifest "lib $soname <- $real"
    fi
  done < <(ldd "$p")
done
if ((${#missing[@]} > 0)); then
  log "error: libraries not found here: ${missing[*]}"
  exit 1
fi

# An id for the unpack directory: changes whenever the packed programs or
# libraries do.
bundle_id=$(cat "$BUNDLE"/libexec/*.xz "$BUNDLE"/lib/*.xz 2>/dev/null | cksum | cut -d' ' -f1)
echo "$bundle_id" >"$BUNDLE/lib/BUNDLE_ID"

cat >"$BUNDLE/env.sh" <<'EOF'
# Sourced by the bundle's wrappers (bash): library path and data for the
# bundle's programs. Safe to source from an interactive shell too.
SHRINKRAY_BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export SHRINKRAY_BUNDLE
: "${PATH:=/usr/local/bin:/usr/bin:/bin}"
export PATH

# 1. The bundle's programs and own libraries; what is stored xz-compressed is
#    unpacked once into a tmp dir named after the bundle id (libexec/, lib/;
#    atomic renames, so parallel runs are safe).
_sr_unpack="${TMPDIR:-/tmp}/shrinkray-bundle-$(cat "$SHRINKRAY_BUNDLE/lib/BUNDLE_ID" 2>/dev/null || echo 0)"
mkdir -p "$_sr_unpack/libexec" "$_sr_unpack/lib" || return 1
for _sr_z in "$SHRINKRAY_BUNDLE"/libexec/*.xz "$SHRINKRAY_BUNDLE"/lib/*.xz; do
  [[ -e "$_sr_z" ]] || continue
  _sr_name=$(basename "$_sr_z" .xz)
  _sr_to="$_sr_unpack/$(basename "$(dirname "$_sr_z")")"
  [[ -s "$_sr_to/$_sr_name" ]] && continue
  _sr_tmp=$(mktemp "$_sr_to/.$_sr_name.XXXXXX") || return 1
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$_sr_z" >"$_sr_tmp"
  else  # no xz binary: Python's lzma module reads the same format
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$_sr_z" "$_sr_tmp"
  fi
  if [[ $? -eq 0 ]] && chmod 755 "$_sr_tmp"; then
    mv -f "$_sr_tmp" "$_sr_to/$_sr_name"
  else
    rm -f "$_sr_tmp"
    echo "shrinkray bundle: cannot unpack $_sr_z (need xz or python3)" >&2
    return 1
  fi
done
export SHRINKRAY_BUNDLE_UNPACKED="$_sr_unpack"
export SHRINKRAY_BUNDLE_PROGRAMS="$_sr_unpack/libexec"
_sr_libs="$SHRINKRAY_BUNDLE/lib:$_sr_unpack/lib"

# 2. CUDA libraries too big to carry (cuBLAS, cuBLASLt, cuSOLVER, NCCL): the
#    host's toolkit first, then PyTorch's pip nvidia-* wheels. The driver
#    (libcuda.so) is found by the loader's default paths.
for _sr_d in ${SHRINKRAY_CUDA_LIB_DIRS:-} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d "$_sr_d" ]] && _sr_libs="$_sr_libs:$_sr_d"
done
shopt -s nullglob
for _sr_d in /opt/*/.venv/lib/python3*/site-packages/nvidia/{cu13,*}/lib \
             /usr/local/lib/python3*/dist-packages/nvidia/{cu13,*}/lib \
             /usr/lib/python3/dist-packages/nvidia/{cu13,*}/lib; do
  [[ ":$_sr_libs:" == *":$_sr_d:"* ]] || _sr_libs="$_sr_libs:$_sr_d"
done
shopt -u nullglob

export LD_LIBRARY_PATH="$_sr_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SHRINKRAY_SHARED_DATA="${SHRINKRAY_SHARED_DATA:-$SHRINKRAY_BUNDLE/data}"
unset _sr_libs _sr_unpack _sr_z _sr_name _sr_tmp _sr_d
EOF

# ---- data -----------------------------------------------------------------------
if [[ -d "$DATA_SRC" ]]; then
  for item in README.md stories260K text; do
    [[ -e "$DATA_SRC/$item" ]] && cp -r "$DATA_SRC/$item" "$BUNDLE/data/"
  done
  chmod -R u+w "$BUNDLE/data"  # the source is read-only; keep the bundle removable
  manifest "data $(cd "$BUNDLE/data" && ls | tr '\n' ' ')"
else
  log "warning: no shared data at $DATA_SRC; data/ is empty"
fi

# ---- smoke check ----------------------------------------------------------------
# With a clean environment and only env.sh, every library a program loads must
# come from the bundle, be a glibc/driver library, or be a host CUDA library
# listed above. (Here everything would also resolve through ld.so.conf, so a
# plain "not found" check alone would prove nothing.)
allowed_host=$(printf '%s\n' "${host_cuda[@]%% (*}")
bad=0
while read -r prog soname path; do
  [[ -z "$prog" ]] && continue
  is_system_lib "$soname" && continue
  grep -qxF "$soname" <<<"$allowed_host" && continue
  log "error: $prog loads $soname from $path, outside the bundle"
  bad=1
done < <(env -i TMPDIR="${TMPDIR:-/tmp}" bash -c '
  source "$1/env.sh" || exit 1
  for f in "$SHRINKRAY_BUNDLE_PROGRAMS"/*; do
    ldd "$f" | awk -v p="$(basename "$f")" -v b="$1/lib/" -v u="$SHRINKRAY_BUNDLE_UNPACKED/lib/" \
      "/=>/ { if (index(\$3, b) != 1 && index(\$3, u) != 1) print p, \$1, \$3 }"
  done' _ "$BUNDLE")
((bad == 0)) || { log "error: the bundle is not self-contained"; exit 1; }

if ((${#host_cuda[@]} > 0)); then
  log "not bundled (the GPU machine provides them): ${host_cuda[*]}"
fi
log "programs: $(ls "$BUNDLE/libexec" | sed 's/\.xz$//' | tr '\n' ' ')"
log "libs: $(ls "$BUNDLE/lib" | wc -l) files"
du -sh "$BUNDLE"/* | sed 's/^/[make-bundle]   /' >&2
echo "bundle: $BUNDLE  size: $(du -sh "$BUNDLE" | cut -f1) ($(du -sb "$BUNDLE" | cut -f1) bytes)"
