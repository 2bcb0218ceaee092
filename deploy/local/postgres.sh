#!/usr/bin/env bash
# Local PostgreSQL server for the projection (tests, benchmarks, `make run`), no Docker.
#
#   deploy/local/postgres.sh install|start|stop|status|url
#
# install  installs Debian's `postgresql` package when no server binaries are found.
# start    (idempotent) creates the cluster on first use, starts it on 127.0.0.1, waits until
#          it answers, creates the `absync` database. Superuser `absync`, trust auth on loopback
#          only: a throw-away development server, never a production one.
# stop     fast shutdown (rolls back open transactions, keeps the data).
# status   exit 0 when it answers, 1 otherwise.
# url      prints the SQLAlchemy URL: postgresql+psycopg://absync@127.0.0.1:<port>/absync
#
# Environment:
#   ABSYNC_CACHE_DIR   cache root (default <repo>/.cache; git-ignored); the cluster lives in
#                      $ABSYNC_CACHE_DIR/postgres/data-<port> (log: postgres.log beside it)
#   ABSYNC_PG_PORT     TCP port on 127.0.0.1 (default 55432)
#
# Run as root (CI), the server runs as the `postgres` system user, which owns the cluster dirs.
# Exit codes: 0 ok; 1 not running (status) or failure; 2 usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
CACHE_DIR=${ABSYNC_CACHE_DIR:-$REPO_ROOT/.cache}
case "$CACHE_DIR" in /*) ;; *) CACHE_DIR="$PWD/$CACHE_DIR" ;; esac
PORT=${ABSYNC_PG_PORT:-55432}
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
  echo "postgres.sh: bad ABSYNC_PG_PORT: $PORT" >&2
  exit 2
fi
HOST=127.0.0.1
USER_NAME=absync
DB_NAME=absync
BASE_DIR="$CACHE_DIR/postgres"
DATA_DIR="$BASE_DIR/data-$PORT"
SOCKET_DIR="$BASE_DIR/run-$PORT"
LOG_FILE="$BASE_DIR/postgres-$PORT.log"

die() { echo "postgres.sh: error: $*" >&2; exit 1; }
info() { echo "postgres.sh: $*" >&2; }

# The newest installed server's bin directory (Debian keeps them in /usr/lib/postgresql/<v>/bin).
bin_dir() {
  local dir
  dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -n "$dir" && -x "$dir/initdb" ]]; then echo "$dir"; return 0; fi
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"; return 0
  fi
  return 1
}

# Runs a server command as the owner of the cluster: `postgres` when we are root.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

install() {
  if bin_dir >/dev/null; then
    info "PostgreSQL found in $(bin_dir)"
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed; run as root (or: sudo apt-get install postgresql)"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install PostgreSQL (>= 13) by hand"
  info "installing Debian's postgresql package"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
  bin_dir >/dev/null || die "postgresql installed but no server binaries found"
}

is_ready() {
  "$(bin_dir)/pg_isready" -q -h "$HOST" -p "$PORT" -U "$USER_NAME" -d postgres
}

init_cluster() {
  local bin=$1
  mkdir -p "$BASE_DIR"
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' system user (install the postgresql package)"
    # The server refuses to run as root: it runs as `postgres`, which must reach and own its dirs.
    chmod o+x "$CACHE_DIR" "$BASE_DIR"
    runuser -u postgres -- test -x "$BASE_DIR" \
      || die "the postgres user cannot reach $BASE_DIR (a parent is private): set ABSYNC_CACHE_DIR elsewhere"
  fi
  if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
    info "creating cluster in $DATA_DIR"
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$DATA_DIR"
    chmod 700 "$DATA_DIR"
    as_owner "$bin/initdb" -D "$DATA_DIR" -U "$USER_NAME" --auth=trust -E UTF8 --locale=C.UTF-8 >&2
  fi
  mkdir -p "$SOCKET_DIR"
  touch "$LOG_FILE"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres:postgres "$SOCKET_DIR" "$LOG_FILE"
  fi
}

start() {
  install
  local bin
  bin=$(bin_dir)
  if is_ready; then
    info "already running on $HOST:$PORT"
  else
    init_cluster "$bin"
    info "starting on $HOST:$PORT (log: $LOG_FILE)"
    # Trust auth is limited to loopback by listen_addresses; fsync off: a disposable dev server.
    as_owner "$bin/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" -w -t 60 start \
      -o "-c listen_addresses=$HOST -p $PORT -k $SOCKET_DIR -c fsync=off -c max_connections=200" >&2 \
      || { tail -n 20 "$LOG_FILE" >&2; die "server did not start"; }
    for _ in $(seq 1 60); do is_ready && break; sleep 1; done
    is_ready || die "server does not answer on $HOST:$PORT"
  fi
  if [[ -z $("$bin/psql" -h "$HOST" -p "$PORT" -U "$USER_NAME" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ]]; then
    "$bin/createdb" -h "$HOST" -p "$PORT" -U "$USER_NAME" "$DB_NAME"
  fi
  info "ready: $(url)"
}

stop() {
  local bin
  bin=$(bin_dir) || { info "not installed"; return 0; }
  if [[ -f "$DATA_DIR/postmaster.pid" ]]; then
    as_owner "$bin/pg_ctl" -D "$DATA_DIR" -m fast -w -t 60 stop >&2 || die "stop failed"
  else
    info "not running"
  fi
}

status() {
  if bin_dir >/dev/null && is_ready; then
    echo "running ($(url))"
  else
    echo "not running ($HOST:$PORT)"
    return 1
  fi
}

url() { echo "postgresql+psycopg://$USER_NAME@$HOST:$PORT/$DB_NAME"; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) url ;;
  *) echo "usage: $0 install|start|stop|status|url" >&2; exit 2 ;;
esac
