"""What the fault suite shares: the source side (a stream of absence changes and the state it leads
to), worker processes (``absync run --only fanout --only delivery``) started and killed at will, the
comparison of a receiver with the source, and the table of results printed at the end of the run
(copied into docs/reliability.md).

Every case ends with :func:`assert_converged`: 0 missing, 0 orphans, 0 duplicate effects.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from schemas.codec import codec_for
from schemas.delivery import Command, CommandKind, DeliveryStatus
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.kafka import make_producer
from streams.settings import REPO_ROOT, Settings
from streams.topics import Topics
from tests.delivery.harness import StatusLog, isolated, wait_consumed
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, next_change

SETTLE_S = 180.0
"""Longest wait for a receiver to reach the source state (a bound, not an assertion)."""

_RESULTS: list[dict[str, object]] = []
_STARTED = 0.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault-injection suite on the real broker (slow)")


_COLUMNS = ("case", "expected", "missing", "orphans", "duplicate_effects", "effects", "repeats", "seconds")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The results table of docs/reliability.md, one row per comparison made."""
    if not _RESULTS:
        return
    terminalreporter.section("fault suite results")
    terminalreporter.write_line("| " + " | ".join(c.replace("_", " ") for c in _COLUMNS) + " |")
    terminalreporter.write_line("|" + "---|" * len(_COLUMNS))
    for row in _RESULTS:
        terminalreporter.write_line("| " + " | ".join(str(row[c]) for c in _COLUMNS) + " |")


@pytest.fixture(autouse=True)
def _test_started() -> None:
    """Remembers when the test started: each row of the table says how long the case took."""
    global _STARTED
    _STARTED = time.monotonic()


# -- the source side ----------------------------------------------------------------------------


def absence_stream(
    prefix: str, count: int, **employee: object
) -> tuple[list[AbsenceEvent], dict[str, AbsenceEvent]]:
    """``count`` absences, 4 changes each (created, approved, updated, then updated or deleted for
    every other one); returns the events and the latest event per absence id."""
    events: list[AbsenceEvent] = []
    for i in range(count):
        created = make_event(f"{prefix}-{i}", **employee)  # type: ignore[arg-type]
        approved = next_change(created, ChangeKind.APPROVED, AbsenceStatus.APPROVED)
        updated = next_change(approved, ChangeKind.UPDATED, AbsenceStatus.APPROVED)
        last_kind = ChangeKind.UPDATED if i % 2 == 0 else ChangeKind.DELETED
        events += [created, approved, updated, next_change(updated, last_kind, AbsenceStatus.APPROVED)]
    return events, latest_of(events)


def latest_of(events: list[AbsenceEvent]) -> dict[str, AbsenceEvent]:
    latest: dict[str, AbsenceEvent] = {}
    for event in events:
        latest[event.absence.id] = event
    return latest


def held(
    latest: dict[str, AbsenceEvent], matches: Callable[[AbsenceEvent], bool] = lambda _: True
) -> dict[str, int]:
    """The source state a destination (all changes) must end with: absence id -> version of every
    absence neither deleted nor cancelled that the destination's filters (``matches``) select."""
    return {
        aid: event.version
        for aid, event in latest.items()
        if not event.change.removes and event.absence.status != AbsenceStatus.CANCELLED and matches(event)
    }


# -- comparing a receiver with the source -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Comparison:
    missing: list[str]
    """Absences the destination should hold at the source's version but does not (or holds older)."""
    orphans: list[str]
    """Absences the destination holds that it should not hold."""
    duplicate_effects: int
    """Effects beyond one per distinct (absence, method, version): a change applied twice."""
    effects: int
    repeats: int
    """Requests the receiver deduplicated by webhook-id (allowed: at-least-once sending)."""


def versions(receiver: Receiver) -> dict[str, int]:
    with receiver._lock:
        return {aid: int(doc["version"]) for aid, doc in receiver.state.items()}


def compare(receiver: Receiver, expected: dict[str, int]) -> Comparison:
    state = versions(receiver)
    with receiver._lock:
        effects = [r for r in receiver.requests if r.outcome == "effect"]
        repeats = receiver.duplicates
    applied = Counter((r.absence_id, r.method, r.json()["version"]) for r in effects)
    return Comparison(
        missing=sorted(aid for aid, version in expected.items() if state.get(aid) != version),
        orphans=sorted(set(state) - set(expected)),
        duplicate_effects=sum(n - 1 for n in applied.values()),
        effects=len(effects),
        repeats=repeats,
    )


def requests_at_least(count: int) -> Callable[[Receiver], bool]:
    return lambda receiver: len(receiver.requests) >= count


def wait_state(receiver: Receiver, expected: dict[str, int], timeout: float = SETTLE_S) -> bool:
    return receiver.wait_until(lambda r: versions(r) == expected, timeout=timeout)


def wait_idle(settings: Settings) -> None:
    """Waits until the delivery workers have handled every record of every delivery topic."""
    topics = Topics(settings)
    for topic in (topics.deliveries, *topics.retries, topics.commands, topics.replay):
        wait_consumed(settings, topic, timeout=SETTLE_S)


def assert_converged(case: str, receiver: Receiver, expected: dict[str, int], context: str = "") -> None:
    """The end of every case: the receiver holds exactly the source state, each change applied once.
    The row goes to the results table."""
    result = compare(receiver, expected)
    _RESULTS.append(
        {
            "case": case,
            "expected": len(expected),
            "missing": len(result.missing),
            "orphans": len(result.orphans),
            "duplicate_effects": result.duplicate_effects,
            "effects": result.effects,
            "repeats": result.repeats,
            "seconds": round(time.monotonic() - _STARTED),
        }
    )
    assert result.missing == [], f"{case}: missing {result.missing[:10]}\n{context}"
    assert result.orphans == [], f"{case}: orphans {result.orphans[:10]}\n{context}"
    assert result.duplicate_effects == 0, f"{case}: {result.duplicate_effects} duplicate effects\n{context}"


# -- operators ----------------------------------------------------------------------------------


def send_retry(settings: Settings, statuses: list[DeliveryStatus]) -> None:
    """A RETRY command per delivery, as the console sends it."""
    producer = make_producer(settings)
    for status in statuses:
        command = Command(
            command_id=uuid.uuid4().hex,
            kind=CommandKind.RETRY,
            delivery_id=status.delivery_id,
            destination_id=status.destination_id,
            absence_id=status.absence_id,
            tenant=status.tenant,
            issued_by="faults",
            issued_at=dt.datetime.now(dt.UTC),
        )
        producer.produce(
            Topics(settings).commands, key=command.key, value=codec_for("Command").encode(command.to_avro())
        )
    assert producer.flush(30) == 0


# -- worker processes ---------------------------------------------------------------------------


class Workers:
    """``absync run --only fanout --only delivery`` processes on one test's topics, by worker id.

    ``ABSYNC_WORKER_ID`` is stable per worker: a restarted worker fences its killed predecessor's
    open transaction at once (see streams/processor.py), and workers of one host do not fence each
    other.
    """

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.exit_codes: list[tuple[str, int]] = []
        self.restarts: list[tuple[str, int]] = []
        """(worker id, exit code) of each worker that ended by itself and was started again."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._extra_env: dict[str, str] = {}

    def supervise(self, **extra_env: str) -> None:
        """From now on, a worker that ends by itself is started again, as Kubernetes or systemd would
        (``restartPolicy: Always``); ``extra_env`` is added to every worker started from now on."""
        self._extra_env.update(extra_env)

        def watch() -> None:
            while not self._stop.wait(0.5):
                with self._lock:
                    ended = [(w, p.returncode) for w, p in self.running.items() if p.poll() is not None]
                    for worker_id, code in ended:
                        del self.running[worker_id]
                        self.restarts.append((worker_id, code))
                        self._start(worker_id)

        threading.Thread(target=watch, name="supervisor", daemon=True).start()

    def start(self, worker_id: str) -> None:
        with self._lock:
            self._start(worker_id)

    def _start(self, worker_id: str) -> None:
        assert worker_id not in self.running, f"{worker_id} runs already"
        s = self.settings
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            "ABSYNC_TOPIC_PREFIX": s.topic_prefix,
            "ABSYNC_PARTITIONS": str(s.partitions),
            "ABSYNC_RETRY_DELAYS": ",".join(f"{d:g}s" for d in s.retry_delays),
            "ABSYNC_CONNECTOR_TIMEOUT": str(s.connector_timeout),
            "ABSYNC_DATA_DIR": str(s.data_dir),
            "ABSYNC_LOG_LEVEL": "INFO",
            "ABSYNC_WORKER_ID": worker_id,
            "ABSYNC_ENV": "development",  # the embedded secret key; the receiver is on loopback
            **self._extra_env,
        }
        command = [sys.executable, "-m", "absync", "run", "--only", "fanout", "--only", "delivery"]
        with (self.log_dir / f"{worker_id}.log").open("ab") as out:
            self.running[worker_id] = subprocess.Popen(
                [*command, "--no-create-topics"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
            )

    def signal(self, worker_id: str, sig: signal.Signals) -> int:
        """Sends ``sig`` and waits for the process to end; returns its exit code."""
        with self._lock:
            process = self.running.pop(worker_id)
        process.send_signal(sig)
        code = process.wait(90)
        self.exit_codes.append((worker_id, code))
        return code

    def alive(self) -> list[str]:
        """Worker ids whose process still runs (a worker that exited by itself is a failure)."""
        return [w for w, p in self.running.items() if p.poll() is None]

    def stop_all(self) -> None:
        self._stop.set()
        with self._lock:
            processes, self.running = dict(self.running), {}
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(30)

    def logs(self, tail: int = 3000) -> str:
        """The end of each worker's log, without librdkafka's own lines (reconnection noise)."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            lines = [
                line for line in path.read_text(errors="replace").splitlines() if not line.startswith("%")
            ]
            parts.append(f"--- {path.name}\n" + "\n".join(lines)[-tail:])
        return "\n".join(parts)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Iterator[Settings]:
    """Own topic prefix, delays 1s,2s,3s,4s, topics deleted after the test."""
    with isolated(bootstrap, tmp_path) as settings:
        yield settings


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def statuses(settings: Settings) -> Iterator[StatusLog]:
    log = StatusLog(settings)
    yield log
    log.close()


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(settings, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``predicate`` until it holds; fails with ``what`` after ``timeout`` seconds (a bound)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout:g} s"
        time.sleep(0.2)
