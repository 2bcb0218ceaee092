#!/usr/bin/env bash
# Local single-node Apache Kafka broker (KRaft, combined broker+controller), no Docker.
#
#   deploy/local/broker.sh fetch|start|stop|status
#
# Jars come from Maven Central through deploy/local/kafka/pom.xml (mvn), and the
# broker runs on the installed Java (>= 17) as `java -cp 'libs/*' kafka.Kafka`.
#
# Environment:
#   ABSYNC_CACHE_DIR              cache root (default <repo>/.cache; git-ignored)
#                                 jars: $ABSYNC_CACHE_DIR/kafka/<version>/libs
#                                 data: $ABSYNC_CACHE_DIR/kafka/data-<port>
#                                       (server.properties, broker.pid, server.log,
#                                        broker.out, kraft-logs/)
#   ABSYNC_BROKER_PORT            client port on 127.0.0.1 (default 9092): PLAINTEXT, or SASL_SSL
#   ABSYNC_CONTROLLER_PORT        CONTROLLER port (default broker port + 1)
#   ABSYNC_BROKER_SECURITY        plaintext (default) or sasl_ssl: a secured broker, see below
#   ABSYNC_BROKER_MTLS_PORT       sasl_ssl mode: the mutual-TLS port (default broker port + 2)
#   ABSYNC_BROKER_HEAP            JVM heap flags (default "-Xmx512m -Xms256m")
#   ABSYNC_BROKER_START_TIMEOUT   seconds to wait for the broker to answer (default 60)
#   ABSYNC_BROKER_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL (default 30)
#   ABSYNC_PYTHON                 python used for the readiness probe
#                                 (default <repo>/.venv/bin/python, else python3)
#   JAVA_HOME                     if set, $JAVA_HOME/bin/java is used, else `java` on PATH
#
# Secured mode (ABSYNC_BROKER_SECURITY=sasl_ssl; the mode is fixed when the data dir is formatted):
#   - a CA, a broker certificate (SAN 127.0.0.1, localhost) and a client certificate (CN=absync),
#     made with openssl and keytool under <data>/secure (mode 0700);
#   - SASL_SSL on the client port with SCRAM-SHA-512 users admin, absync, producer, viewer (random
#     passwords, added at format time: kafka-storage format --add-scram);
#   - SSL with required client certificates (mutual TLS) on the mTLS port; the controller and
#     inter-broker listeners are mutual TLS too: no listener accepts an unauthenticated client;
#   - the StandardAuthorizer: super users admin and the broker; the ACLs of streams/acls.py for
#     ABSYNC_TOPIC_PREFIX / ABSYNC_GROUP_PREFIX (absync, producer, viewer; prefixed ACLs);
#   - one env file per principal in <data>/ (KAFKA_BOOTSTRAP_SERVERS and KAFKA_* lines):
#     absync.env, absync-mtls.env, producer.env, viewer.env, admin.env; their paths are printed.
#
# Exit codes: 0 ok; 1 not running (status) or failure; 2 usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
KAFKA_CONF_DIR="$SCRIPT_DIR/kafka"
POM="$KAFKA_CONF_DIR/pom.xml"
LOG4J_CONF="$KAFKA_CONF_DIR/log4j2.properties"

die() { echo "broker.sh: error: $*" >&2; exit 1; }
info() { echo "broker.sh: $*" >&2; }

KAFKA_VERSION=$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$POM" | head -n 1)
[[ -n "$KAFKA_VERSION" ]] || die "cannot read <kafka.version> from $POM"

CACHE_DIR=${ABSYNC_CACHE_DIR:-$REPO_ROOT/.cache}
case "$CACHE_DIR" in /*) ;; *) CACHE_DIR="$PWD/$CACHE_DIR" ;; esac
PORT=${ABSYNC_BROKER_PORT:-9092}
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65534)); then die "bad ABSYNC_BROKER_PORT: $PORT"; fi
CPORT=${ABSYNC_CONTROLLER_PORT:-$((PORT + 1))}
if ! [[ "$CPORT" =~ ^[0-9]+$ ]] || ((CPORT < 1 || CPORT > 65535 || CPORT == PORT)); then
  die "bad ABSYNC_CONTROLLER_PORT: $CPORT"
fi
HOST=127.0.0.1
BOOTSTRAP="$HOST:$PORT"
HEAP_OPTS=${ABSYNC_BROKER_HEAP:--Xmx512m -Xms256m}
START_TIMEOUT=${ABSYNC_BROKER_START_TIMEOUT:-60}
STOP_TIMEOUT=${ABSYNC_BROKER_STOP_TIMEOUT:-30}

KAFKA_HOME="$CACHE_DIR/kafka/$KAFKA_VERSION"
LIBS_DIR="$KAFKA_HOME/libs"
MARKER="$LIBS_DIR/.complete"
DATA_DIR="$CACHE_DIR/kafka/data-$PORT"
CONFIG="$DATA_DIR/server.properties"
LOG_DIRS="$DATA_DIR/kraft-logs"
PID_FILE="$DATA_DIR/broker.pid"
SERVER_LOG="$DATA_DIR/server.log"
OUT_LOG="$DATA_DIR/broker.out"
SECURE_DIR="$DATA_DIR/secure"
MODE_FILE="$DATA_DIR/security"
# The mode: ABSYNC_BROKER_SECURITY, else the one the data dir was formatted with (so stop and status
# need no variable), else plaintext.
SECURITY=${ABSYNC_BROKER_SECURITY:-$(cat "$MODE_FILE" 2>/dev/null || echo plaintext)}
case "$SECURITY" in plaintext | sasl_ssl) ;; *) die "ABSYNC_BROKER_SECURITY must be plaintext or sasl_ssl (got '$SECURITY')" ;; esac
MPORT=${ABSYNC_BROKER_MTLS_PORT:-$((PORT + 2))}
if [[ "$SECURITY" == sasl_ssl ]] && { ! [[ "$MPORT" =~ ^[0-9]+$ ]] || ((MPORT == PORT || MPORT == CPORT)); }; then
  die "bad ABSYNC_BROKER_MTLS_PORT: $MPORT"
fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

pick_python() {
  if [[ -n "${ABSYNC_PYTHON:-}" ]]; then echo "$ABSYNC_PYTHON"
  elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then echo "$REPO_ROOT/.venv/bin/python"
  elif command -v python3 >/dev/null 2>&1; then command -v python3
  fi
}

pom_digest() { cksum <"$POM" | cut -d' ' -f1; }

# ---------------------------------------------------------------- fetch
fetch() {
  local digest
  digest=$(pom_digest)
  if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$digest" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (Debian: apt-get install maven)"
  mkdir -p "$KAFKA_HOME"
  exec 8>"$KAFKA_HOME/.fetch.lock"
  flock -w 600 8 || die "timed out waiting for another fetch ($KAFKA_HOME/.fetch.lock)"
  if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$digest" ]]; then
    exec 8>&-
    return 0
  fi
  local t0 tmp
  t0=$(now)
  tmp=$(mktemp -d "$KAFKA_HOME/libs.tmp.XXXXXX")
  info "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR"
  if ! (cd "$KAFKA_HOME" && mvn -B -Dstyle.color=never -f "$POM" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
        </dev/null >"$KAFKA_HOME/fetch.log" 2>&1); then
    rm -rf "$tmp"
    tail -n 40 "$KAFKA_HOME/fetch.log" >&2
    die "mvn could not resolve Kafka $KAFKA_VERSION (log: $KAFKA_HOME/fetch.log; pom: $POM)"
  fi
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"; }
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
  echo "$digest" >"$MARKER"
  exec 8>&-
  local jars=("$LIBS_DIR"/*.jar)
  info "fetched ${#jars[@]} jars in $(elapsed "$t0")s"
}

# ---------------------------------------------------------------- java
JAVA=""
check_java() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA=$(command -v java)
  else
    die "java not found: Kafka $KAFKA_VERSION needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless), or set JAVA_HOME"
  fi
  local spec major
  spec=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n 1)
  major=${spec%%.*}
  [[ "$major" =~ ^[0-9]+$ ]] || die "cannot tell the version of $JAVA (got '$spec'); Kafka $KAFKA_VERSION needs Java >= 17"
  ((major >= 17)) || die "$JAVA is Java $spec; Kafka $KAFKA_VERSION needs Java 17 or newer (set JAVA_HOME or install openjdk-17)"
}

# ---------------------------------------------------------------- process helpers
# True for a live (non-zombie) process whose command line is our broker.
is_our_broker() {
  local pid=$1 state cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/stat" ]] || return 1
  state=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$pid/stat" 2>/dev/null || true)
  [[ "$state" != "Z" && "$state" != "X" ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
  [[ "$cmdline" == *"kafka.Kafka $CONFIG"* ]]
}

# Prints the pid of the broker for this data dir, if one runs.
running_pid() {
  local pid=""
  if [[ -f "$PID_FILE" ]]; then
    pid=$(tr -dc '0-9' <"$PID_FILE" || true)
    if is_our_broker "$pid"; then echo "$pid"; return 0; fi
  fi
  # pid file lost or stale: look for a broker started with exactly this config.
  local p
  for p in $(pgrep -f -- "kafka\\.Kafka " 2>/dev/null || true); do
    if is_our_broker "$p"; then echo "$p" >"$PID_FILE"; echo "$p"; return 0; fi
  done
  return 1
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Waits until the broker answers a Metadata request listing a broker.
# $1 pid (0: don't watch a pid), $2 timeout seconds, $3 "full" to also ask
# confluent-kafka's AdminClient (if importable).
probe() {
  local pid=$1 timeout=$2 mode=${3:-quick} py
  py=$(pick_python)
  if [[ -z "$py" ]]; then
    # No python: settle for the port accepting connections.
    local deadline=$((SECONDS + ${timeout%.*}))
    until port_in_use "$PORT"; do
      ((pid == 0)) || is_our_broker "$pid" || return 2
      ((SECONDS < deadline)) || return 1
      sleep 0.5
    done
    return 0
  fi
  "$py" - "$HOST" "$PORT" "$pid" "$timeout" "$mode" <<'PY'
import os, socket, struct, sys, time

host, port, pid, timeout, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
deadline = time.monotonic() + timeout


def alive() -> bool:
    if pid == 0:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def metadata_broker_count() -> int:
    # MetadataRequest v4 (non-flexible): all topics (null array), no auto-create.
    client_id = b"absync-broker-probe"
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body = struct.pack(">ib", -1, 0)
    msg = header + body
    with socket.create_connection((host, port), timeout=2) as s:
        s.settimeout(5)
        s.sendall(struct.pack(">i", len(msg)) + msg)
        (size,) = struct.unpack(">i", recv_exact(s, 4))
        resp = recv_exact(s, size)
    corr, _throttle, n = struct.unpack(">iii", resp[:12])
    if corr != 7:
        raise ConnectionError("bad correlation id")
    return n


while True:
    if not alive():
        sys.exit(2)
    try:
        if metadata_broker_count() >= 1:
            break
    except (OSError, struct.error):
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.2)

if mode == "full":
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        sys.exit(0)
    remaining = max(deadline - time.monotonic(), 5.0)
    try:
        md = AdminClient({"bootstrap.servers": f"{host}:{port}"}).list_topics(timeout=remaining)
    except Exception as e:  # KafkaException
        print(f"confluent-kafka list_topics failed: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if md.brokers else 1)
PY
}

# Offsets of the logs when this start began, so failures show only this run's lines.
OUT_LOG_OFFSET=0
SERVER_LOG_OFFSET=0
mark_logs() {
  OUT_LOG_OFFSET=$(stat -c %s "$OUT_LOG" 2>/dev/null || echo 0)
  SERVER_LOG_OFFSET=$(stat -c %s "$SERVER_LOG" 2>/dev/null || echo 0)
}

show_logs() {
  local f off
  for f in "$OUT_LOG" "$SERVER_LOG"; do
    off=$OUT_LOG_OFFSET
    [[ "$f" == "$SERVER_LOG" ]] && off=$SERVER_LOG_OFFSET
    [[ -f "$f" ]] || continue
    (($(stat -c %s "$f") >= off)) || off=0 # rolled over
    if [[ -n "$(tail -c +$((off + 1)) "$f" | head -c 1)" ]]; then
      echo "---- last lines of $f ----" >&2
      tail -c +$((off + 1)) "$f" | tail -n 25 >&2
    fi
  done
}

lock_data_dir() {
  mkdir -p "$DATA_DIR"
  exec 9>"$DATA_DIR/.lock"
  flock -w 300 9 || die "timed out waiting for another broker.sh on $DATA_DIR"
}

# ---------------------------------------------------------------- config
gen_cluster_id() {
  # Kafka's Uuid: 16 random bytes, URL-safe base64 without padding (22 chars),
  # never starting with '-'.
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ ${#id} -eq 22 && "$id" != -* && "$id" != "AAAAAAAAAAAAAAAAAAAAAA" ]] && break
  done
  echo "$id"
}

listener_config() {
  if [[ "$SECURITY" == plaintext ]]; then
    cat <<EOF
controller.quorum.voters=1@$HOST:$CPORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
    return 0
  fi
  local STORE_PASSWORD
  STORE_PASSWORD=$(sed -n 's/^STORE_PASSWORD=//p' "$SECURE_DIR/credentials")
  cat <<EOF
controller.quorum.voters=1@$HOST:$CPORT
listeners=SASL_SSL://$HOST:$PORT,MTLS://$HOST:$MPORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=SASL_SSL://$HOST:$PORT,MTLS://$HOST:$MPORT
inter.broker.listener.name=MTLS
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL,MTLS:SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=$SECURE_DIR/broker.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.key.password=$STORE_PASSWORD
ssl.truststore.type=PKCS12
ssl.truststore.location=$SECURE_DIR/truststore.p12
ssl.truststore.password=$STORE_PASSWORD
listener.name.mtls.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+).*\$/\$1/,DEFAULT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:absync-broker;User:admin
allow.everyone.if.no.acl.found=false
EOF
}

write_config() {
  (
    umask 077
    echo "# Written by deploy/local/broker.sh on every start; edits are overwritten."
    echo "process.roles=broker,controller"
    echo "node.id=1"
    listener_config
  ) >"$CONFIG.tmp"
  cat >>"$CONFIG.tmp" <<EOF
log.dirs=$LOG_DIRS

num.network.threads=2
num.io.threads=4
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true
group.initial.rebalance.delay.ms=0

offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1

log.segment.bytes=16777216
log.retention.hours=24
log.retention.check.interval.ms=60000
EOF
  mv "$CONFIG.tmp" "$CONFIG"
}

jvm_opts() {
  # shellcheck disable=SC2206
  local heap=($HEAP_OPTS)
  printf '%s\n' "${heap[@]}" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$LOG4J_CONF" "-Dkafka.logs.dir=$DATA_DIR"
}

format_storage() {
  if [[ -f "$LOG_DIRS/meta.properties" ]]; then
    local formatted
    formatted=$(cat "$MODE_FILE" 2>/dev/null || echo plaintext)
    [[ "$formatted" == "$SECURITY" ]] || die "$DATA_DIR was formatted for ABSYNC_BROKER_SECURITY=$formatted, not $SECURITY: stop it and remove $DATA_DIR, or use another ABSYNC_BROKER_PORT"
    return 0
  fi
  echo "$SECURITY" >"$MODE_FILE"
  local cid opts
  cid=$(gen_cluster_id)
  mapfile -t opts < <(jvm_opts)
  info "formatting $LOG_DIRS (cluster id $cid)"
  local scram=()
  if [[ "$SECURITY" == sasl_ssl ]]; then
    # shellcheck disable=SC1091
    source "$SECURE_DIR/credentials"
    local user pass
    for user in admin absync producer viewer; do
      pass="${user^^}_PASSWORD"
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=${!pass}]")
    done
  fi
  if ! "$JAVA" "${opts[@]}" -cp "$LIBS_DIR/*" kafka.tools.StorageTool format \
      --cluster-id "$cid" --config "$CONFIG" --ignore-formatted "${scram[@]}" \
      >"$DATA_DIR/format.log" 2>&1 </dev/null; then
    cat "$DATA_DIR/format.log" >&2
    die "formatting $LOG_DIRS failed (log: $DATA_DIR/format.log)"
  fi
}

# ---------------------------------------------------------------- secured mode
random_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# The CA, the broker's and the client's certificates, the stores and the passwords (once per data dir).
make_secrets() {
  if [[ ! -f "$SECURE_DIR/.complete" ]]; then
    command -v openssl >/dev/null 2>&1 || die "openssl not found (Debian: apt-get install openssl)"
    local keytool
    keytool=$(dirname "$JAVA")/keytool
    [[ -x "$keytool" ]] || keytool=$(command -v keytool) || die "keytool not found (it comes with the JDK/JRE)"
    rm -rf "$SECURE_DIR"
    mkdir -p "$SECURE_DIR"
    chmod 700 "$SECURE_DIR"
    info "generating a CA, certificates and SCRAM passwords in $SECURE_DIR"
    (
      set -e
      umask 077
      cd "$SECURE_DIR"
      {
        echo "STORE_PASSWORD=$(random_secret)"
        for user in admin absync producer viewer; do echo "${user^^}_PASSWORD=$(random_secret)"; done
      } >credentials
      store_password=$(sed -n 's/^STORE_PASSWORD=//p' credentials)
      openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 -subj "/CN=absync-local-ca" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout ca.key -out ca.crt
      sign() { # name, CN, subjectAltName
        openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$3" >"$1.ext"
        openssl x509 -req -sha256 -days 825 -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
          -extfile "$1.ext" -out "$1.crt"
        rm -f "$1.csr" "$1.ext"
      }
      sign broker absync-broker "IP:127.0.0.1,DNS:localhost"
      sign absync absync "DNS:absync"
      openssl pkcs12 -export -in broker.crt -inkey broker.key -certfile ca.crt -name broker \
        -passout "pass:$store_password" -out broker.p12
      "$keytool" -importcert -noprompt -alias ca -file ca.crt -keystore truststore.p12 -storetype PKCS12 \
        -storepass "$store_password"
      touch .complete
    ) >"$DATA_DIR/secrets.log" 2>&1 || { cat "$DATA_DIR/secrets.log" >&2; die "generating certificates failed"; }
  fi
  write_env_files
}

# One env file per principal: KAFKA_BOOTSTRAP_SERVERS, then the KAFKA_* connection properties.
write_env_files() {
  local user password
  for user in admin absync producer viewer; do
    password=$(sed -n "s/^${user^^}_PASSWORD=//p" "$SECURE_DIR/credentials")
    (
      umask 077
      cat >"$DATA_DIR/$user.env" <<EOF
# $user: SCRAM-SHA-512 over TLS to the local secured broker (its ACLs: python -m streams.acls show)
KAFKA_BOOTSTRAP_SERVERS=$HOST:$PORT
KAFKA_SECURITY_PROTOCOL=SASL_SSL
KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KAFKA_SASL_USERNAME=$user
KAFKA_SASL_PASSWORD=$password
KAFKA_SSL_CA_LOCATION=$SECURE_DIR/ca.crt
EOF
    )
  done
  (
    umask 077
    cat >"$DATA_DIR/absync-mtls.env" <<EOF
# absync over mutual TLS: client certificate CN=absync, the principal User:absync
KAFKA_BOOTSTRAP_SERVERS=$HOST:$MPORT
KAFKA_SECURITY_PROTOCOL=SSL
KAFKA_SSL_CA_LOCATION=$SECURE_DIR/ca.crt
KAFKA_SSL_CERTIFICATE_LOCATION=$SECURE_DIR/absync.crt
KAFKA_SSL_KEY_LOCATION=$SECURE_DIR/absync.key
EOF
  )
}

# The KAFKA_* lines of an env file (comments dropped), for `env`.
env_of() { grep -E '^KAFKA_[A-Z0-9_]+=' "$1"; }

# Waits until the broker answers the admin principal over SASL_SSL (needs confluent-kafka).
secure_probe() {
  local pid=$1 timeout=$2 py vars
  py=$(pick_python)
  [[ -n "$py" ]] || die "the secured mode needs python with confluent-kafka (make venv)"
  mapfile -t vars < <(env_of "$DATA_DIR/admin.env")
  env "${vars[@]}" "$py" - "$pid" "$timeout" <<'PY'
import os, sys, time

try:
    from confluent_kafka.admin import AdminClient
except ImportError:
    print("broker.sh: the secured mode needs confluent-kafka (make venv)", file=sys.stderr)
    sys.exit(1)
pid, timeout = int(sys.argv[1]), float(sys.argv[2])
config = {k[6:].lower().replace("_", "."): v for k, v in os.environ.items() if k.startswith("KAFKA_")}
config["log_level"] = 0  # the broker is expected to refuse connections while it starts
admin = AdminClient(config)
deadline = time.monotonic() + timeout
while True:
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                sys.exit(2)
    except OSError:
        sys.exit(2)
    try:
        if admin.list_topics(timeout=2).brokers:
            sys.exit(0)
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.3)
PY
}

# The ACLs of streams/acls.py for ABSYNC_TOPIC_PREFIX, created by the admin principal.
apply_acls() {
  local py vars
  py=$(pick_python)
  mapfile -t vars < <(env_of "$DATA_DIR/admin.env")
  (cd "$REPO_ROOT" && env "${vars[@]}" "$py" -m streams.acls apply \
    absync=User:absync producer=User:producer viewer=User:viewer) ||
    die "could not create the ACLs (admin principal: $DATA_DIR/admin.env)"
}

print_env_files() {
  echo "SASL_SSL (SCRAM-SHA-512) on $HOST:$PORT, mutual TLS on $HOST:$MPORT; ACLs for ABSYNC_TOPIC_PREFIX='${ABSYNC_TOPIC_PREFIX:-}'"
  local f
  for f in absync absync-mtls producer viewer admin; do echo "$DATA_DIR/$f.env"; done
}

# ---------------------------------------------------------------- commands
cmd_start() {
  local t0 pid rc opts
  t0=$(now)
  lock_data_dir
  local formatted
  formatted=$(cat "$MODE_FILE" 2>/dev/null || echo "$SECURITY")
  [[ "$formatted" == "$SECURITY" ]] || die "$DATA_DIR was formatted for ABSYNC_BROKER_SECURITY=$formatted, not $SECURITY: stop it and remove $DATA_DIR, or use another ABSYNC_BROKER_PORT"
  if pid=$(running_pid); then
    rc=0
    if [[ "$SECURITY" == sasl_ssl ]]; then secure_probe "$pid" "$START_TIMEOUT" || rc=$?; else probe "$pid" "$START_TIMEOUT" quick || rc=$?; fi
    ((rc == 0)) || { show_logs; die "broker (pid $pid) runs but does not answer on $BOOTSTRAP; log: $SERVER_LOG"; }
    echo "already running: $BOOTSTRAP (pid $pid)"
    [[ "$SECURITY" == plaintext ]] || { apply_acls; print_env_files; }
    return 0
  fi
  rm -f "$PID_FILE"
  check_java
  fetch
  local ports=("$PORT" "$CPORT")
  [[ "$SECURITY" == plaintext ]] || { ports+=("$MPORT"); make_secrets; }
  for p in "${ports[@]}"; do
    port_in_use "$p" && die "port $HOST:$p is already in use by another process (not a broker for $DATA_DIR)"
  done
  mkdir -p "$LOG_DIRS"
  write_config
  format_storage
  mapfile -t opts < <(jvm_opts)
  mark_logs
  echo "==== $(date -u +%FT%TZ) start Kafka $KAFKA_VERSION on $BOOTSTRAP" >>"$OUT_LOG"
  # New session (setsid) so the broker outlives the caller and its terminal/process
  # group; all fds redirected so a caller capturing our output does not hang; the
  # lock fds are closed. The wrapper shell writes its pid and execs java in place.
  # Every level execs, so no shell lingers holding the lock.
  (
    exec 8>&- 9>&- </dev/null >>"$OUT_LOG" 2>&1
    cd "$DATA_DIR" || exit 1
    # shellcheck disable=SC2016 # $$, $0 and $@ belong to the inner shell
    exec setsid nohup bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
      "$PID_FILE" "$JAVA" "${opts[@]}" -cp "$LIBS_DIR/*" kafka.Kafka "$CONFIG"
  ) &
  local i
  for ((i = 0; i < 100; i++)); do [[ -s "$PID_FILE" ]] && break; sleep 0.05; done
  pid=$(tr -dc '0-9' <"$PID_FILE" 2>/dev/null || true)
  [[ -n "$pid" ]] || { show_logs; die "broker process did not start; log: $OUT_LOG"; }
  rc=0
  if [[ "$SECURITY" == sasl_ssl ]]; then secure_probe "$pid" "$START_TIMEOUT" || rc=$?; else probe "$pid" "$START_TIMEOUT" full || rc=$?; fi
  if ((rc != 0)); then
    show_logs
    if ((rc == 2)); then
      rm -f "$PID_FILE"
      die "broker exited during startup; see $SERVER_LOG and $OUT_LOG"
    fi
    stop_pid "$pid" >/dev/null 2>&1 || true
    die "broker did not answer on $BOOTSTRAP within ${START_TIMEOUT}s (stopped it); see $SERVER_LOG and $OUT_LOG"
  fi
  [[ "$SECURITY" == plaintext ]] || apply_acls
  echo "started Kafka $KAFKA_VERSION on $BOOTSTRAP (pid $pid) in $(elapsed "$t0")s"
  [[ "$SECURITY" == plaintext ]] || print_env_files
}

# Sends SIGTERM, waits up to STOP_TIMEOUT, then SIGKILL.
stop_pid() {
  local pid=$1 deadline
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while is_our_broker "$pid"; do
    if ((SECONDS >= deadline)); then
      info "broker (pid $pid) still up ${STOP_TIMEOUT}s after SIGTERM: sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      local i
      for ((i = 0; i < 50; i++)); do is_our_broker "$pid" || break; sleep 0.1; done
      break
    fi
    sleep 0.2
  done
  is_our_broker "$pid" && return 1
  rm -f "$PID_FILE"
}

cmd_stop() {
  local pid t0
  lock_data_dir
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    echo "not running ($BOOTSTRAP)"
    return 0
  fi
  t0=$(now)
  stop_pid "$pid" || die "could not stop broker pid $pid"
  echo "stopped broker on $BOOTSTRAP (pid $pid) in $(elapsed "$t0")s"
}

cmd_status() {
  local pid
  if [[ -d "$DATA_DIR" ]] && pid=$(running_pid); then
    local rc=0
    if [[ "$SECURITY" == sasl_ssl ]]; then secure_probe "$pid" 3 || rc=$?; else probe "$pid" 3 quick || rc=$?; fi
    if ((rc == 0)); then
      echo "$BOOTSTRAP"
      return 0
    fi
    echo "broker pid $pid is up but not answering on $BOOTSTRAP (starting?)" >&2
    return 1
  fi
  echo "not running ($BOOTSTRAP)" >&2
  return 1
}

case "${1:-}" in
  fetch) fetch; echo "Kafka $KAFKA_VERSION jars in $LIBS_DIR" ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 fetch|start|stop|status" >&2; exit 2 ;;
esac
