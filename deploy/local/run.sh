#!/usr/bin/env bash
# What `make run` runs after the broker is up and the topics exist: an operator token (created once),
# a demo HTTP receiver with the example destination, then the whole service in the foreground.
set -euo pipefail
cd "$(dirname "$0")/../.."
# A local run: the embedded secret key and the loopback demo receiver are development conveniences
# that production (the default environment) refuses.
export ABSYNC_ENV="${ABSYNC_ENV:-development}"
mkdir -p .data
if [ ! -s .data/admin-token ]; then
  .venv/bin/absync tokens create --name admin --right configure | tail -n 1 > .data/admin-token
  chmod 600 .data/admin-token
fi
.venv/bin/python -m tests.fakes.receiver --port 8765 >.data/demo-receiver.log 2>&1 &
receiver=$!
# Ctrl-C stops the service (absync run handles SIGINT), then the demo receiver and the broker.
trap 'kill $receiver 2>/dev/null || true; bash deploy/local/broker.sh stop >/dev/null 2>&1 || true' EXIT
.venv/bin/absync destinations apply examples/destinations/http.yaml >/dev/null
port="${ABSYNC_HTTP_PORT:-8080}"
cat <<MSG

  absync is starting (Ctrl-C stops everything).
  Console:   http://127.0.0.1:${port}/          sign in with the token in .data/admin-token
  API:       http://127.0.0.1:${port}/api/v1    (reference: /docs, OpenAPI: /openapi.json)
  Try it:    .venv/bin/absync publish examples/absences.jsonl
             then watch the deliveries reach the demo receiver (http://127.0.0.1:8765/hook)
  Logs:      JSON lines below; the broker's in .cache/kafka/ (Ctrl-C stops the broker too)

MSG
.venv/bin/absync run
