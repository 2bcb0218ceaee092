# absync — two commands for a newcomer: `make run` and `make test`. Everything else is plumbing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_BROKER_PORT ?= 39092
export ABSYNC_TEST_BROKER_PORT := $(TEST_BROKER_PORT)

.PHONY: help venv system-deps broker broker-stop topics run test test-only faults lint format bench bench-resync bench-state clean

help:
	@echo "make run    run the service with its embedded defaults (local Kafka broker included)"
	@echo "make test   install what the tests need, lint, and run the whole test suite"
	@echo "make bench  benchmarks (figures and ratios against a baseline)"
	@echo "make bench-state [ARGS=\"--keys 200000\"]  state backends (memory vs disk): restore, put/get, peak RSS"
	@echo "make bench-resync [ARGS=\"--absences 20000\"]  resync of 1,000,000 absences, end to end"
	@echo "make faults the fault suite and the three-broker cluster test"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests need (PostgreSQL server, Chromium for the console's browser tests).
system-deps:
	@bash deploy/local/system-deps.sh

broker: venv
	@bash deploy/local/broker.sh start

broker-stop:
	@bash deploy/local/broker.sh stop

topics: venv
	@$(BIN)/absync topics create

run: venv broker topics
	@bash deploy/local/run.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The suite mostly waits on the broker (group joins, transactions, retry delays): three pytest-xdist
# workers keep two cores busy (the whole suite: 806 s on -n 3, 723 s on -n 4, about 1,170 s on -n 2,
# 2026-11-27). Tests sharing one per-session server (secured broker, schema registry, Chromium) stay
# on one worker (tests/conftest.py). TEST_PARALLEL= runs serially.
TEST_PARALLEL ?= -n 3 --dist loadgroup

test: venv system-deps lint
	@bash deploy/local/test.sh $(TEST_PARALLEL)

# Run the tests without the lint and install steps (quick local loop).
test-only:
	@bash deploy/local/test.sh

# The fault suite and the three-broker cluster test (long runs; results in docs/reliability.md).
faults: venv system-deps
	@bash deploy/local/test.sh -m "cluster or faults"

bench: venv
	@bash deploy/local/bench.sh

# Issue 15's resync benchmark (1,000,000 absences by default: long; too long for `make bench`).
# ARGS go to bench/resync.py, e.g. ARGS="--absences 20000 --rate-limit 200".
ARGS ?=
bench-resync: venv
	@bash deploy/local/bench-resync.sh $(ARGS)

# The state backends of streams/state.py side by side (ABSYNC_STATE_BACKEND memory vs disk).
bench-state: venv
	@.venv/bin/python -m bench.state_store $(ARGS)

clean:
	-@bash deploy/local/broker.sh stop
	-@ABSYNC_BROKER_PORT=$(TEST_BROKER_PORT) bash deploy/local/broker.sh stop
	-@bash deploy/local/postgres.sh stop
	-@bash deploy/local/cluster.sh stop
	-@bash deploy/local/registry.sh stop
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
