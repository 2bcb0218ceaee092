#!/usr/bin/env bash
# Local Confluent-compatible schema registry for the tests: Apicurio Registry, in-memory, no Docker.
#
#   deploy/local/registry.sh fetch|start|stop|status|url
#
# fetch  builds the registry once from Maven Central (deploy/local/registry/pom.xml, mvn; a few
#        minutes the first time, cached after) into $ABSYNC_CACHE_DIR/registry/<version>/
# start  starts it on 127.0.0.1:$ABSYNC_REGISTRY_PORT (fetching first if needed) and waits until its
#        Confluent API answers; prints the URL absync takes (ABSYNC_SCHEMA_REGISTRY_URL)
# stop   stops the registry this script started on that port (its pid file; nothing else)
# url    prints the Confluent API URL
#
# Environment:
#   ABSYNC_CACHE_DIR              cache root (default <repo>/.cache; git-ignored)
#   ABSYNC_REGISTRY_PORT          HTTP port on 127.0.0.1 (default 38081)
#   ABSYNC_REGISTRY_HEAP          JVM heap flags (default "-Xmx256m")
#   ABSYNC_REGISTRY_START_TIMEOUT seconds to wait for it to answer (default 120)
#   JAVA_HOME                     if set, $JAVA_HOME/bin/java is used, else `java` on PATH (>= 17)
#
# The registry keeps its schemas in memory: a restart forgets them (ids start again at 1).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
SOURCE_DIR="$SCRIPT_DIR/registry"
POM="$SOURCE_DIR/pom.xml"

die() { echo "registry.sh: error: $*" >&2; exit 1; }
info() { echo "registry.sh: $*" >&2; }

VERSION=$(sed -n 's:.*<apicurio\.version>\(.*\)</apicurio\.version>.*:\1:p' "$POM" | head -n 1)
[[ -n "$VERSION" ]] || die "cannot read <apicurio.version> from $POM"
CACHE_DIR=${ABSYNC_CACHE_DIR:-$REPO_ROOT/.cache}
case "$CACHE_DIR" in /*) ;; *) CACHE_DIR="$PWD/$CACHE_DIR" ;; esac
PORT=${ABSYNC_REGISTRY_PORT:-38081}
[[ "$PORT" =~ ^[0-9]+$ ]] && ((PORT >= 1 && PORT <= 65535)) || die "bad ABSYNC_REGISTRY_PORT: $PORT"
HOST=127.0.0.1
HEAP_OPTS=${ABSYNC_REGISTRY_HEAP:--Xmx256m}
START_TIMEOUT=${ABSYNC_REGISTRY_START_TIMEOUT:-120}

HOME_DIR="$CACHE_DIR/registry/$VERSION"
BUILD_DIR="$HOME_DIR/build"
RUNNER="$BUILD_DIR/target/absync-local-registry-0-runner.jar"
MARKER="$HOME_DIR/.complete"
DATA_DIR="$CACHE_DIR/registry/data-$PORT"
PID_FILE="$DATA_DIR/registry.pid"
LOG="$DATA_DIR/registry.log"
URL="http://$HOST:$PORT/apis/ccompat/v7"

digest() { cat "$POM" "$SOURCE_DIR"/src/main/java/dev/absync/registry/*.java "$SOURCE_DIR"/src/main/resources/* | cksum | cut -d' ' -f1; }

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then command -v java
  else die "java not found: the registry needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)"
  fi
}

fetch() {
  local sum
  sum=$(digest)
  if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$sum" && -f "$RUNNER" ]]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (Debian: apt-get install maven)"
  mkdir -p "$HOME_DIR"
  exec 8>"$HOME_DIR/.fetch.lock"
  flock -w 900 8 || die "timed out waiting for another fetch ($HOME_DIR/.fetch.lock)"
  if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$sum" && -f "$RUNNER" ]]; then exec 8>&-; return 0; fi
  info "building Apicurio Registry $VERSION from Maven Central into $BUILD_DIR (first time: minutes)"
  local t0=$SECONDS
  rm -rf "$BUILD_DIR"
  mkdir -p "$BUILD_DIR"
  cp -r "$POM" "$SOURCE_DIR/src" "$BUILD_DIR/"
  if ! (cd "$BUILD_DIR" && mvn -B -q -Dstyle.color=never package -DskipTests </dev/null >"$HOME_DIR/fetch.log" 2>&1); then
    tail -n 40 "$HOME_DIR/fetch.log" >&2
    die "mvn could not build the registry (log: $HOME_DIR/fetch.log; pom: $POM)"
  fi
  [[ -f "$RUNNER" ]] || die "$RUNNER missing after mvn (log: $HOME_DIR/fetch.log)"
  echo "$sum" >"$MARKER"
  exec 8>&-
  info "built in $((SECONDS - t0))s"
}

# True for a live process whose command line is our registry on this port.
is_ours() {
  local pid=$1
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
  [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"-Dquarkus.http.port=$PORT "*"$RUNNER"* ]]
}

running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid=$(tr -dc '0-9' <"$PID_FILE" || true)
  is_ours "$pid" && echo "$pid"
}

answers() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$URL/subjects" 2>/dev/null | grep -q '^200$'; }

start() {
  if running_pid >/dev/null; then answers && { echo "$URL"; return 0; }; fi
  command -v curl >/dev/null 2>&1 || die "curl not found (Debian: apt-get install curl)"
  fetch
  if (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then die "port $PORT is in use by another program"; fi
  mkdir -p "$DATA_DIR"
  local java t0=$SECONDS pid
  java=$(java_bin)
  # shellcheck disable=SC2086
  nohup "$java" $HEAP_OPTS -XX:TieredStopAtLevel=1 -Dquarkus.http.host=$HOST "-Dquarkus.http.port=$PORT" \
    -Dquarkus.log.level=WARN -jar "$RUNNER" </dev/null >"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_FILE"
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then tail -n 30 "$LOG" >&2; die "the registry exited (log: $LOG)"; fi
    if ((SECONDS - t0 > START_TIMEOUT)); then
      tail -n 30 "$LOG" >&2
      kill "$pid" 2>/dev/null || true
      die "the registry did not answer in ${START_TIMEOUT}s (log: $LOG)"
    fi
    sleep 0.5
  done
  info "Apicurio Registry $VERSION up on $URL in $((SECONDS - t0))s (pid $pid)"
  echo "$URL"
}

stop() {
  local pid
  pid=$(running_pid) || { rm -f "$PID_FILE"; return 0; }
  kill "$pid"
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$PID_FILE"
  info "stopped (pid $pid)"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) running_pid >/dev/null && answers && echo "running on $URL" || { echo "not running"; exit 1; } ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 fetch|start|stop|status|url" >&2; exit 2 ;;
esac
