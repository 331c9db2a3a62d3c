#!/usr/bin/env bash
# Prints, one per line and sorted, the Debian/Ubuntu packages that hold the
# shared libraries the given programs load (ldd, then dpkg -S). The build
# stage of each image writes this list and the runtime stage installs exactly
# it, so the runtime image follows the build's libraries without a hand-kept
# list (and works on Debian 12 and Ubuntu 24.04 alike, whose package names
# differ). Libraries whose file name matches RUNTIME_PACKAGES_EXCLUDE (default:
# the CUDA driver and toolkit libraries, which the CUDA base image provides)
# are left out. A library that is not found, or that no package owns and is not
# excluded, is an error.
#   deploy/docker/runtime-packages.sh PROGRAM... > runtime-packages.txt
set -euo pipefail
EXCLUDE=${RUNTIME_PACKAGES_EXCLUDE:-'^(libcuda|libcudart|libcublas|libcublasLt|libcusolver|libcusparse|libcurand|libcufft|libnccl|libnvJitLink|libnvrtc|libnvToolsExt)\.so'}
[ $# -gt 0 ] || { echo "usage: $0 PROGRAM..." >&2; exit 2; }

declare -A libs=()  # library path -> the program that needs it
for program in "$@"; do
  [ -x "$program" ] || { echo "runtime-packages: $program: not an executable" >&2; exit 1; }
  while read -r name arrow path _; do
    if [ "$arrow" = "=>" ] && [ "$path" = "not" ]; then
      echo "runtime-packages: $program needs $name, which is not found" >&2
      exit 1
    fi
    [ "$arrow" = "=>" ] && [ -n "$path" ] || continue
    [[ "$(basename "$name")" =~ $EXCLUDE ]] && continue
    libs[$path]=$program
  done < <(ldd "$program")
done
[ ${#libs[@]} -gt 0 ] || exit 0

# With a merged /usr, dpkg may know a file under either spelling, and under
# the symlink's or the target's name: ask for all of them in one dpkg call.
candidates() {
  local path=$1 real
  real=$(readlink -f "$path")
  printf '%s\n' "$path" "$real" "/usr$path" "/usr$real" "${path#/usr}" "${real#/usr}" | grep '^/' | sort -u
}
declare -A owner=()
while IFS= read -r line; do
  pkg=${line%%: *}
  owner[${line#*: }]=${pkg%%:*}  # drop :arch
done < <(for p in "${!libs[@]}"; do candidates "$p"; done | sort -u | xargs dpkg -S 2>/dev/null || true)

for path in "${!libs[@]}"; do
  found=""
  while IFS= read -r c; do
    if [ -n "${owner[$c]:-}" ]; then found=${owner[$c]}; break; fi
  done < <(candidates "$path")
  if [ -z "$found" ]; then
    echo "runtime-packages: ${libs[$path]} needs $path, which no package owns" >&2
    exit 1
  fi
  echo "$found"
done | sort -u
