#!/usr/bin/env bash
# Starts what the tests need (a Kafka broker on the test port, PostgreSQL; builds the schema registry) unless the environment
# already points at them, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
port="${ABSYNC_TEST_BROKER_PORT:-39092}"
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  # The suite creates and deletes many topics: give the test broker room.
  ABSYNC_BROKER_HEAP="${ABSYNC_BROKER_HEAP:--Xmx1536m -Xms512m}" ABSYNC_BROKER_PORT="$port" bash deploy/local/broker.sh start
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
fi
if [ -z "${ABSYNC_TEST_DATABASE_URL:-}" ] && [ -f deploy/local/postgres.sh ]; then
  bash deploy/local/postgres.sh start
  export ABSYNC_TEST_DATABASE_URL="$(bash deploy/local/postgres.sh url)"
fi
if [ -z "${ABSYNC_TEST_SCHEMA_REGISTRY_URL:-}" ]; then
  # Built once from Maven Central (minutes the first time): outside any test's time limit. The
  # tests/registry fixture starts and stops it.
  bash deploy/local/registry.sh fetch
fi
start=$(date +%s)
set +e
.venv/bin/pytest --durations=25 "$@"
rc=$?
set -e
echo "make test: pytest took $(( $(date +%s) - start ))s"
exit $rc
