#!/usr/bin/env bash
# `make bench`: every benchmark of bench/ against a local Kafka broker, then one table of figures,
# ratios and the targets of issue [H] (paste it into docs/performance.md).
#
# The broker: KAFKA_BOOTSTRAP_SERVERS if set (nothing is started), else the local broker on the
# default port 9092 (deploy/local/broker.sh start; a no-op when it runs already). Each benchmark
# uses its own topic prefix and deletes its topics afterwards; all traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  bash deploy/local/broker.sh start
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${ABSYNC_BROKER_PORT:-9092}"
fi
echo "make bench: broker $KAFKA_BOOTSTRAP_SERVERS, $(nproc) cores, started $(date -u '+%Y-%m-%d %H:%M UTC')" >&2
exec .venv/bin/python -m bench.run_all
