#!/usr/bin/env bash
# Runs `buf lint` over proto/ with the rules in buf.yaml at the repository root.
# buf is not packaged for Debian: it comes from npm (@bufbuild/buf, pinned) and
# is installed once into ${XDG_CACHE_HOME:-~/.cache}/shrinkray/buf/VERSION.
# Without npm and without a cached buf it prints a SKIPPED line and exits 0
# (ctest then reports the buf_lint test as Skipped).
set -euo pipefail

BUF_VERSION="${SHRINKRAY_BUF_VERSION:-1.75.0}"
here="${BASH_SOURCE[0]%/*}"
[ "$here" = "${BASH_SOURCE[0]}" ] && here=.  # invoked without a slash
ROOT="$(cd "$here/.." && pwd)"
CACHE_ROOT="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/shrinkray/buf"
PREFIX="$CACHE_ROOT/$BUF_VERSION"
BUF="$PREFIX/node_modules/.bin/buf"

if [ ! -x "$BUF" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "[  SKIPPED ] buf lint: npm not found and no cached buf at $BUF" \
         "(install the Debian package npm: scripts/install-deps.sh)"
    exit 0
  fi
  mkdir -p "$CACHE_ROOT"
  # Parallel ctest runs share the cache: install under a lock, into a fresh
  # folder renamed into place, so nobody sees a half-installed buf.
  exec 9>"$CACHE_ROOT/.lock"
  flock 9
  if [ ! -x "$BUF" ]; then
    echo "buf-lint: installing @bufbuild/buf@$BUF_VERSION into $PREFIX"
    tmp="$(mktemp -d "$CACHE_ROOT/install.XXXXXX")"
    if ! npm install --prefix "$tmp" --no-audit --no-fund --no-save --loglevel=error \
         "@bufbuild/buf@$BUF_VERSION" >&2; then
      rm -rf "$tmp"
      echo "buf-lint: npm install @bufbuild/buf@$BUF_VERSION failed (offline?)" >&2
      exit 1
    fi
    rm -rf "$PREFIX"
    mv "$tmp" "$PREFIX"
  fi
  flock -u 9
fi

cd "$ROOT"
echo "buf-lint: $("$BUF" --version) lint $ROOT/proto"
"$BUF" lint
echo "buf-lint: no problems"
