#!/usr/bin/env bash
# Fetches promtool (Prometheus's rule checker) from Debian's `prometheus` package into the cache, once,
# without installing the package (no service, no root needed): `apt-get download` + `dpkg-deb -x`.
# Prints the binary's path. Used by `make test` (deploy/local/system-deps.sh) for
# tests/deploy/test_monitoring.py (`promtool check rules`, `promtool test rules`).
#   ABSYNC_CACHE_DIR   cache root (default <repo>/.cache; git-ignored): $ABSYNC_CACHE_DIR/promtool/
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE_DIR=${ABSYNC_CACHE_DIR:-$REPO_ROOT/.cache}
DEST="$CACHE_DIR/promtool"
BIN="$DEST/usr/bin/promtool"
if [ ! -x "$BIN" ]; then
  if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download prometheus >/dev/null 2>&1) || {
    echo "promtool: 'apt-get download prometheus' failed (run apt-get update?); the rule tests fall back to the schema check" >&2
    exit 1
  }
  mkdir -p "$work/x" "$DEST/usr/bin"
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
  cp "$work/x/usr/bin/promtool" "$BIN"
fi
"$BIN" --version >/dev/null
echo "$BIN"
