#!/usr/bin/env bash
# A three-node Apache Kafka cluster on loopback (KRaft, each node broker+controller), no Docker:
# the smallest cluster where a broker can die without losing data (RF 3, min.insync.replicas 2).
#
#   deploy/local/cluster.sh start|stop|status|bootstrap
#   deploy/local/cluster.sh start-node N | stop-node N [--kill]     (N = 1, 2 or 3)
#
# `stop-node N --kill` sends SIGKILL (a crash: no controlled shutdown, no leader hand-over);
# without it SIGTERM (controlled shutdown). Jars come from `broker.sh fetch` (Maven Central, cached).
#
# Environment:
#   ABSYNC_CACHE_DIR            cache root (default <repo>/.cache; git-ignored)
#                               data: $ABSYNC_CACHE_DIR/kafka/cluster-<base port>/node-<N>
#   ABSYNC_CLUSTER_PORT         PLAINTEXT port of node 1 (default 29092); node N listens on
#                               base+N-1 (29092..29094), its controller on base+100+N-1 (29192..29194).
#                               Keep these below the ephemeral range (32768+ on Linux): a port there
#                               can be taken by an outgoing connection between two restarts.
#   ABSYNC_CLUSTER_HEAP         JVM heap flags of each node (default "-Xmx384m -Xms128m")
#   ABSYNC_CLUSTER_START_TIMEOUT seconds to wait for the nodes to answer (default 120)
#   ABSYNC_CLUSTER_STOP_TIMEOUT  seconds to wait after SIGTERM before SIGKILL (default 30)
#   ABSYNC_PYTHON               python with confluent-kafka, for the readiness probe
#                               (default <repo>/.venv/bin/python)
#   JAVA_HOME                   if set, $JAVA_HOME/bin/java is used, else `java` on PATH (>= 17)
#
# Exit codes: 0 ok; 1 not running (status) or failure; 2 usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
LOG4J_CONF="$SCRIPT_DIR/kafka/log4j2.properties"
NODES=(1 2 3)
HOST=127.0.0.1

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
info() { echo "cluster.sh: $*" >&2; }

CACHE_DIR=${ABSYNC_CACHE_DIR:-$REPO_ROOT/.cache}
case "$CACHE_DIR" in /*) ;; *) CACHE_DIR="$PWD/$CACHE_DIR" ;; esac
export ABSYNC_CACHE_DIR=$CACHE_DIR # broker.sh fetch must use the same cache
BASE=${ABSYNC_CLUSTER_PORT:-29092}
if ! [[ "$BASE" =~ ^[0-9]+$ ]] || ((BASE < 1 || BASE > 65000)); then die "bad ABSYNC_CLUSTER_PORT: $BASE"; fi
HEAP_OPTS=${ABSYNC_CLUSTER_HEAP:--Xmx384m -Xms128m}
START_TIMEOUT=${ABSYNC_CLUSTER_START_TIMEOUT:-120}
STOP_TIMEOUT=${ABSYNC_CLUSTER_STOP_TIMEOUT:-30}
PYTHON=${ABSYNC_PYTHON:-$REPO_ROOT/.venv/bin/python}
CLUSTER_DIR="$CACHE_DIR/kafka/cluster-$BASE"

broker_port() { echo $((BASE + $1 - 1)); }
controller_port() { echo $((BASE + 100 + $1 - 1)); }
node_dir() { echo "$CLUSTER_DIR/node-$1"; }
config_of() { echo "$(node_dir "$1")/server.properties"; }
pid_file() { echo "$(node_dir "$1")/node.pid"; }

bootstrap() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("$HOST:$(broker_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

voters() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("$n@$HOST:$(controller_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

check_node() {
  [[ "${1:-}" =~ ^[1-3]$ ]] || { echo "usage: $0 start-node|stop-node N (N = 1, 2 or 3)" >&2; exit 2; }
}

# ---------------------------------------------------------------- jars and java
KAFKA_HOME=""
JAVA=""
prepare() {
  # broker.sh owns the Maven step; its last line names the libs dir.
  local line
  line=$(bash "$SCRIPT_DIR/broker.sh" fetch | tail -n 1)
  KAFKA_HOME=${line#* jars in }
  [[ -d "$KAFKA_HOME" ]] || die "broker.sh fetch did not name a libs dir (got '$line')"
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"
  else JAVA=$(command -v java) || die "java not found (Kafka needs Java >= 17; Debian: openjdk-17-jre-headless)"
  fi
}

jvm_opts() {
  # shellcheck disable=SC2206
  local heap=($HEAP_OPTS)
  # Serial GC: three JVMs share two cores here; G1's background threads would compete for them.
  printf '%s\n' "${heap[@]}" -server -XX:+UseSerialGC \
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$LOG4J_CONF" "-Dkafka.logs.dir=$(node_dir "$1")"
}

# ---------------------------------------------------------------- processes
# Pid of node N when it runs: the pid file names a live java started with this node's config.
node_pid() {
  local pidf pid cmdline
  pidf=$(pid_file "$1")
  [[ -f "$pidf" ]] || return 1
  pid=$(tr -dc '0-9' <"$pidf")
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  [[ "$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
  [[ "$cmdline" == *"kafka.Kafka $(config_of "$1")"* ]] || return 1
  echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Waits until the nodes listed answer a metadata request that shows each of them registered;
# gives up early when one of their processes dies (a port taken, a corrupt log dir...).
wait_for() {
  local servers=() pids=() n pid
  for n in "$@"; do
    servers+=("$HOST:$(broker_port "$n")")
    pid=$(node_pid "$n") || { info "node $n is not running"; return 1; }
    pids+=("$n:$pid")
  done
  "$PYTHON" - "$START_TIMEOUT" "$(IFS=,; echo "${servers[*]}")" "${pids[@]}" <<'PY' || return 1
import os, sys, time
from confluent_kafka.admin import AdminClient

timeout, servers = float(sys.argv[1]), sys.argv[2]
pids = {int(n): int(pid) for n, pid in (arg.split(":") for arg in sys.argv[3:])}
admin = AdminClient({"bootstrap.servers": servers, "log_level": 0})
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    for node, pid in pids.items():
        if not os.path.exists(f"/proc/{pid}"):
            print(f"cluster.sh: node {node} (pid {pid}) exited during startup", file=sys.stderr)
            sys.exit(1)
    try:
        if set(pids) <= set(admin.list_topics(timeout=5).brokers):
            sys.exit(0)
    except Exception:  # KafkaException while the nodes elect a controller
        pass
    time.sleep(0.5)
sys.exit(1)
PY
}

# ---------------------------------------------------------------- config
write_config() {
  local n=$1 dir
  dir=$(node_dir "$n")
  cat >"$(config_of "$n")" <<EOF
# Written by deploy/local/cluster.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://$HOST:$(broker_port "$n"),CONTROLLER://$HOST:$(controller_port "$n")
advertised.listeners=PLAINTEXT://$HOST:$(broker_port "$n")
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/kraft-logs

# Durability: a record is acknowledged (acks=all) once two of the three replicas hold it.
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2

num.network.threads=2
num.io.threads=2
num.partitions=3
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
log.retention.hours=24
EOF
}

cluster_id() {
  local f="$CLUSTER_DIR/cluster.id" id
  if [[ ! -s "$f" ]]; then
    # Kafka's Uuid: 16 random bytes, URL-safe base64 without padding, not starting with '-'.
    while :; do
      id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
      [[ ${#id} -eq 22 && "$id" != -* ]] && break
    done
    echo "$id" >"$f"
  fi
  cat "$f"
}

format_node() {
  local n=$1 dir opts
  dir=$(node_dir "$n")
  [[ -f "$dir/kraft-logs/meta.properties" ]] && return 0
  mapfile -t opts < <(jvm_opts "$n")
  "$JAVA" "${opts[@]}" -cp "$KAFKA_HOME/*" kafka.tools.StorageTool format --cluster-id "$(cluster_id)" \
    --config "$(config_of "$n")" --ignore-formatted >"$dir/format.log" 2>&1 </dev/null \
    || { cat "$dir/format.log" >&2; die "formatting node $n failed (log: $dir/format.log)"; }
}

# Launches node N in its own session (it outlives this script); waits for its pid, not for it to answer.
launch_node() {
  local n=$1 dir opts p
  dir=$(node_dir "$n")
  if node_pid "$n" >/dev/null; then return 0; fi
  for p in "$(broker_port "$n")" "$(controller_port "$n")"; do
    port_in_use "$p" && die "port $HOST:$p is in use by another process (not node $n of $CLUSTER_DIR)"
  done
  mkdir -p "$dir/kraft-logs"
  write_config "$n"
  format_node "$n"
  mapfile -t opts < <(jvm_opts "$n")
  echo "==== $(date -u +%FT%TZ) start node $n" >>"$dir/node.out"
  (
    exec </dev/null >>"$dir/node.out" 2>&1
    cd "$dir" || exit 1
    # shellcheck disable=SC2016 # $$, $0 and $@ belong to the inner shell
    exec setsid nohup bash -c 'echo $$ >"$0" && exec "$@"' \
      "$(pid_file "$n")" "$JAVA" "${opts[@]}" -cp "$KAFKA_HOME/*" kafka.Kafka "$(config_of "$n")"
  ) &
  local i
  for ((i = 0; i < 100; i++)); do node_pid "$n" >/dev/null && return 0; sleep 0.05; done
  die "node $n did not start; see $dir/node.out"
}

# ---------------------------------------------------------------- commands
cmd_start() {
  local n
  prepare
  mkdir -p "$CLUSTER_DIR"
  for n in "${NODES[@]}"; do launch_node "$n"; done
  wait_for "${NODES[@]}" || die "the cluster did not come up in ${START_TIMEOUT}s; logs: $CLUSTER_DIR/node-*/server.log"
  bootstrap
}

cmd_start_node() {
  check_node "${1:-}"
  prepare
  launch_node "$1"
  wait_for "$1" || die "node $1 did not come up in ${START_TIMEOUT}s; log: $(node_dir "$1")/server.log"
  echo "node $1 up on $HOST:$(broker_port "$1")"
}

# Sends SIG$2 to the nodes listed in $1 (space-separated) and waits for them to exit; SIGKILL after
# STOP_TIMEOUT (a broker whose controllers are all gone cannot finish a controlled shutdown).
signal_nodes() {
  local nodes=$1 signal=$2 n pid i left
  for n in $nodes; do
    if pid=$(node_pid "$n"); then kill "-$signal" "$pid"; echo "node $n: SIG$signal (pid $pid)"; fi
  done
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    left=""
    for n in $nodes; do node_pid "$n" >/dev/null && left+=" $n"; done
    [[ -z "$left" ]] && return 0
    sleep 0.1
  done
  info "node(s)$left still up ${STOP_TIMEOUT}s after SIG$signal: sending SIGKILL"
  for n in $left; do pid=$(node_pid "$n") && kill -KILL "$pid"; done
  for ((i = 0; i < 50; i++)); do
    left=""
    for n in $nodes; do node_pid "$n" >/dev/null && left+=" $n"; done
    [[ -z "$left" ]] && return 0
    sleep 0.1
  done
  die "node(s)$left did not stop"
}

cmd_stop_node() {
  check_node "${1:-}"
  local signal=TERM
  [[ "${2:-}" == "--kill" ]] && signal=KILL
  node_pid "$1" >/dev/null || { echo "node $1: not running"; return 0; }
  signal_nodes "$1" "$signal"
}

# All nodes at once: stopped one by one, the last ones would wait for a controller quorum that is gone.
cmd_stop() { signal_nodes "${NODES[*]}" TERM; }

cmd_status() {
  local n pid up=()
  for n in "${NODES[@]}"; do
    if pid=$(node_pid "$n"); then echo "node $n: pid $pid, $HOST:$(broker_port "$n")"; up+=("$n")
    else echo "node $n: not running"
    fi
  done
  ((${#up[@]} == ${#NODES[@]})) && START_TIMEOUT=5 wait_for "${NODES[@]}"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  bootstrap) bootstrap ;;
  start-node) cmd_start_node "${2:-}" ;;
  stop-node) cmd_stop_node "${2:-}" "${3:-}" ;;
  *) echo "usage: $0 start|stop|status|bootstrap|start-node N|stop-node N [--kill]" >&2; exit 2 ;;
esac
