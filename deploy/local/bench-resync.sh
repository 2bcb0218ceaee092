#!/usr/bin/env bash
# `make bench-resync [ARGS="..."]`: issue 15's bulk-resync benchmark (bench/resync.py: 1,000,000
# absences to one HTTP destination, end to end, while live changes flow to another), then a table of
# its figures and targets. Too long for `make bench`; arguments go to bench.resync (`--absences N`,
# `--rate-limit R`...), `--limit SECONDS` bounds the whole run (default 2 hours).
#
# The broker: as `make bench` (deploy/local/bench.sh): KAFKA_BOOTSTRAP_SERVERS if set, else the
# local broker on the default port 9092, started if needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  bash deploy/local/broker.sh start
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${ABSYNC_BROKER_PORT:-9092}"
fi
echo "make bench-resync: broker $KAFKA_BOOTSTRAP_SERVERS, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), started $(date -u '+%Y-%m-%d %H:%M UTC')" >&2
exec .venv/bin/python -m bench.run_resync "$@"
