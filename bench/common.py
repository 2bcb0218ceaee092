"""What the benchmark scripts share.

- :class:`BenchRun`: one isolated run on the shared broker (its own topic prefix, topics created,
  topics and consumer groups deleted at the end), and the environment that points a subprocess at it.
- :class:`Proc`: a subprocess with its log file, RSS (``VmRSS``), peak RSS (``VmHWM``) and CPU time
  read from ``/proc`` while it runs.
- :func:`start_pipeline`: ``absync run --only ...`` as a subprocess, waited for until its partitions
  are assigned (with ``ABSYNC_BENCH_PROFILE=DIR``, py-spy samples it until it exits and writes a
  profile to ``DIR/absync-<id>.txt`` (collapsed stacks: speedscope and flamegraph.pl read them): how the hot path was found); :class:`ReceiverProc`: the loopback receiver (``python -m tests.fakes.receiver``) as a
  subprocess, whose arrival times are read back from its debug log (one ``received`` line per
  request, timestamped).
- :class:`EventFactory`: realistic AbsenceEvents (employees, departments, leave accounts, dates).
- :func:`percentile` and :class:`Row`, the uniform result row ``name | figure | unit | baseline |
  ratio`` every script prints and ``bench.run_all`` reads back.

Everything runs as separate processes so the figures are not skewed by the harness's own GIL.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.codec import codec_for
from schemas.destination import Destination
from schemas.models import (
    Absence,
    AbsenceEvent,
    AbsenceStatus,
    ChangeKind,
    Employee,
    HalfDay,
    LeaveAccount,
    validate,
)
from streams.destinations import publish_destination
from streams.kafka import connection_config, make_producer, produce
from streams.publisher import AbsencePublisher
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.topics import Topics, create_topics

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TENANT = "bench"
SIGNING_SECRET = "whsec_" + base64.b64encode(b"absync-benchmark-signing-key-32b").decode()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def bootstrap() -> str:
    """The broker under test: ``KAFKA_BOOTSTRAP_SERVERS``, else the local default."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def kafka_config() -> dict[str, Any]:
    """The broker under test's client configuration (bootstrap servers and ``KAFKA_*`` security)."""
    return connection_config(Settings(KAFKA_BOOTSTRAP_SERVERS=bootstrap()))  # type: ignore[call-arg]


def log(message: str) -> None:
    """Progress for the person watching (stderr, so stdout holds only result rows)."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One figure: ``name | figure | unit | baseline | ratio`` (ratio = figure / baseline).

    A figure that could not be measured is a string saying why (``"not measured: ..."``).
    """

    name: str
    figure: float | str
    unit: str
    baseline: float | None = None

    @property
    def ratio(self) -> float | None:
        if isinstance(self.figure, str) or not self.baseline:
            return None
        return self.figure / self.baseline

    def line(self) -> str:
        return " | ".join(
            [self.name, _fmt(self.figure), self.unit, _fmt(self.baseline), _fmt(self.ratio, ratio=True)]
        )

    @classmethod
    def parse(cls, line: str) -> Row | None:
        """The row a script printed, or None for any other line."""
        parts = [p.strip() for p in line.split(" | ")]
        if len(parts) != 5 or not parts[0]:
            return None
        return cls(parts[0], _number(parts[1]), parts[2], _optional_number(parts[3]))


def _fmt(value: float | str | None, *, ratio: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if ratio:
        return f"{value:.2f}"
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _optional_number(text: str) -> float | None:
    value = _number(text)
    return value if isinstance(value, float) else None


def print_rows(rows: Iterable[Row]) -> None:
    for row in rows:
        sys.stdout.write(row.line() + "\n")
    sys.stdout.flush()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between the closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- an isolated run on the shared broker -----------------------------------------------------------


class BenchRun:
    """Own topic prefix (``bench-<label>-<uuid>.``), topics created on enter, deleted on exit."""

    def __init__(self, label: str, *, retry_delays: str | None = None, partitions: int = 6) -> None:
        self.prefix = f"bench-{label}-{uuid.uuid4().hex[:8]}."
        self.workdir = Path(tempfile.mkdtemp(prefix=f"absync-bench-{label}-"))
        self._env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap(),
            "ABSYNC_TOPIC_PREFIX": self.prefix,
            "ABSYNC_PARTITIONS": str(partitions),
            "ABSYNC_DATA_DIR": str(self.workdir / "data"),
            "ABSYNC_WORKER_ID": f"bench-{uuid.uuid4().hex[:8]}",
            "ABSYNC_ENV": "development",  # the embedded secret key; the receiver is on loopback
        }
        if retry_delays is not None:
            self._env["ABSYNC_RETRY_DELAYS"] = retry_delays
        values: dict[str, object] = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap(),
            "topic_prefix": self.prefix,
            "partitions": partitions,
            "data_dir": self.workdir / "data",
            "env": "development",
        }
        if retry_delays is not None:
            values["retry_delays"] = retry_delays
        self.settings = Settings(**values)  # type: ignore[arg-type]
        self.topics = Topics(self.settings)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a subprocess working on this run's topics."""
        return {**os.environ, "PYTHONUNBUFFERED": "1", **self._env, **extra}

    def __enter__(self) -> BenchRun:
        create_topics(self.settings)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        admin = AdminClient(kafka_config())
        with contextlib.suppress(Exception):  # best effort: a leftover topic only costs disk
            names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(self.prefix)]
            if names:
                for future in admin.delete_topics(names, operation_timeout=30).values():
                    future.result()
        with contextlib.suppress(Exception):
            groups = [
                g.group_id
                for g in admin.list_consumer_groups(request_timeout=30).result().valid
                if self.prefix in g.group_id
            ]
            if groups:
                for future in admin.delete_consumer_groups(groups, request_timeout=30).values():
                    future.result()
        if kind is None and not os.environ.get("ABSYNC_BENCH_KEEP_LOGS"):  # on failure logs stay
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"logs kept in {self.workdir}")


# -- subprocesses -----------------------------------------------------------------------------------


class Proc:
    """A subprocess writing stdout and stderr to ``log_path``; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self.popen.pid

    def _status_kb(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
        raise RuntimeError(f"{field} not in /proc/{self.pid}/status")

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """Peak resident memory so far (VmHWM): read it before stopping the process."""
        return self._status_kb("VmHWM") / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 90.0) -> None:
        """Waits until ``text`` appeared ``count`` times in the log; raises if the process died."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {text!r} not logged in {timeout:g}s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_pipeline(
    run: BenchRun, components: Sequence[str] = ("fanout", "delivery"), workers: int = 1, **env: str
) -> Proc:
    """``absync run --only <component>...`` on the run's topics, once its partitions are assigned.

    Run as ``python -m absync`` from the repository root, so the working tree's packages are used
    whatever the state of the editable install.
    """
    argv = [PYTHON, "-m", "absync", "run", "--no-create-topics"]
    for component in components:
        argv += ["--only", component]
    if workers > 1:  # absync/workers.py: the process measured is then the supervisor (no CPU figure)
        argv += ["--workers", str(workers)]
    name = f"absync-{uuid.uuid4().hex[:6]}"
    proc = Proc("absync", argv, run.env(**env), run.workdir / f"{name}.log")
    proc.wait_for_log("partitions assigned", count=len(components) * workers)
    profile_dir = os.environ.get("ABSYNC_BENCH_PROFILE")
    if profile_dir and shutil.which("py-spy", path=str(Path(PYTHON).parent)):
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        spy = [str(Path(PYTHON).parent / "py-spy"), "record", "--nonblocking", "--threads", "--format", "raw"]
        spy += ["--pid", str(proc.popen.pid), "-o", str(Path(profile_dir) / f"{name}.txt")]
        subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # ends with the worker
    return proc


@dataclass(frozen=True)
class Arrival:
    """One request the receiver answered: when (epoch seconds), what and how."""

    at: float
    method: str
    path: str
    status: int | None
    item: str | None = None
    """The absence id of a batch item (the receiver logs one arrival per item of a batch)."""

    @property
    def absence_id(self) -> str:
        return self.item or self.path.rstrip("/").rsplit("/", 1)[-1]


class ReceiverProc(Proc):
    """``python -m tests.fakes.receiver`` on a free loopback port (keep-alive, answers at once).

    The receiver logs one ``received`` line per request at debug level, with a microsecond
    timestamp taken once it has answered: that is the arrival time used here.
    """

    MARKER = '"event": "received"'

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [PYTHON, "-m", "tests.fakes.receiver", "--port", str(self.port)]
        super().__init__("receiver", argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, workdir / "receiver.log")
        self._offset = 0
        self._count = 0
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/_state", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.popen.poll() is not None:
                    raise RuntimeError(f"receiver did not start; see {self.log_path}") from None
                time.sleep(0.1)

    def count(self) -> int:
        """Requests answered so far (reads only the new part of the log)."""
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk.rfind(b"\n") + 1
        self._count += chunk[:complete].count(self.MARKER.encode())
        self._offset += complete
        return self._count

    def wait_for(self, n: int, timeout: float, stall: float = 10.0) -> bool:
        """Polls until ``n`` requests were answered; False after ``timeout``, or after ``stall``
        seconds without a new request (the rest went to a retry topic: minutes away)."""
        deadline = time.monotonic() + timeout
        last, last_change = self.count(), time.monotonic()
        while last < n:
            now = time.monotonic()
            if now > deadline or now - last_change > stall:
                return False
            time.sleep(0.05)
            current = self.count()
            if current != last:
                last, last_change = current, now
        return True

    def arrivals(self) -> list[Arrival]:
        out: list[Arrival] = []
        for line in self.log_text().splitlines():
            if self.MARKER not in line:
                continue
            doc = json.loads(line)
            at = dt.datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append(Arrival(at, doc["method"], doc["path"], doc.get("status"), doc.get("absence_id")))
        return out


def read_statuses(run: BenchRun, destination_id: str | None = None) -> list[dict[str, Any]]:
    """Every status event of this run (``delivery-status`` read to its end), decoded; only those of
    ``destination_id`` if given (the others are decoded, not kept)."""
    codec = codec_for("DeliveryStatus")
    consumer = Consumer(
        {
            **kafka_config(),
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,  # the end, whatever transaction markers come last
        }
    )
    statuses: list[dict[str, Any]] = []
    try:
        topic = run.topics.status
        partitions = list(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        remaining = set(partitions)
        deadline = time.monotonic() + 300
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition() or 0)
                continue
            status = codec.decode(msg.value())
            if destination_id is None or status["destination_id"] == destination_id:
                statuses.append(status)
    finally:
        consumer.close()
    return statuses


def failed_attempts(run: BenchRun) -> Counter[str]:
    """Error texts of the attempts that failed in this run (read from ``delivery-status``)."""
    return Counter(
        s["error"]
        for s in read_statuses(run)
        if s["attempt"] > 0 and s["status"] != "SUCCESSFUL" and s.get("error")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_destinations(
    run: BenchRun,
    receiver_url: str,
    count: int,
    batch_size: int = 1,
    *,
    rate_limits: dict[int, float] | None = None,
) -> list[str]:
    """Publishes ``count`` signed absync.v1 destinations of the bench tenant, one URL path each
    (``/d1``, ``/d2``...), in batch mode when ``batch_size`` > 1, ``rate_limits`` by number
    (``{2: 100.0}``: bench-d2 at most 100 requests/s); returns their URLs."""
    box = SecretBox.from_settings(run.settings)
    urls = [f"{receiver_url}/d{i}" for i in range(1, count + 1)]
    for i, url in enumerate(urls, start=1):
        publish_destination(
            run.settings,
            Destination(
                id=f"bench-d{i}",
                tenant=TENANT,
                name=f"bench receiver {i}",
                kind="http",
                settings={"url": url, "format": "absync.v1", "method_mode": "rest"}
                | ({"batch_size": batch_size} if batch_size > 1 else {}),
                secrets={"signing_secrets": box.encrypt(SIGNING_SECRET)},
                revision=1,
                rate_limit=(rate_limits or {}).get(i),
            ),
        )
    return urls


# -- realistic events -------------------------------------------------------------------------------

FIRST = [
    "Camille",
    "Hugo",
    "Léa",
    "Lucas",
    "Chloé",
    "Nathan",
    "Inès",
    "Jules",
    "Manon",
    "Adam",
    "Sarah",
    "Omar",
]
LAST = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit", "Durand", "Leroy", "Moreau", "Haddad"]
ACCOUNTS = [
    LeaveAccount("la-paid", "Congés payés", "cat-holidays", "Holidays"),
    LeaveAccount("la-rtt", "RTT", "cat-holidays", "Holidays"),
    LeaveAccount("la-sick", "Arrêt maladie", "cat-sick", "Sick leave"),
    LeaveAccount("la-remote", "Télétravail", "cat-remote", "Remote work"),
]
ENTITIES = ["le-fr", "le-de"]
DEPARTMENTS = ["dep-sales", "dep-eng", "dep-ops", "dep-hr", "dep-finance"]


class EventFactory:
    """AbsenceEvents as an HR system emits them: one new absence per call (version 1), a third of
    them created already approved, 0.5 to 10 days, within the next six months, 500 employees."""

    def __init__(self, seed: int = 7, tenant: str = TENANT) -> None:
        self._random = random.Random(seed)
        self._tenant = tenant
        self._run = uuid.uuid4().hex[:6]
        self._n = 0

    @property
    def event_prefix(self) -> str:
        """What every absence id of this factory starts with (then ``-<n>``)."""
        return f"abs-{self._run}"

    def event(self) -> AbsenceEvent:
        r, n = self._random, self._n
        self._n += 1
        emp = r.randrange(500)
        first, last = FIRST[emp % len(FIRST)], LAST[(emp // len(FIRST)) % len(LAST)]
        start = dt.date.today() + dt.timedelta(days=r.randrange(1, 180))
        half_days = r.randrange(1, 21)
        start_half = r.choice([HalfDay.AM, HalfDay.PM])
        end_index = (0 if start_half is HalfDay.AM else 1) + half_days - 1
        end = start + dt.timedelta(days=end_index // 2)
        approved = r.random() < 1 / 3
        now = dt.datetime.now(dt.UTC)
        return AbsenceEvent(
            event_id=str(uuid.uuid4()),
            occurred_at=now,
            tenant=self._tenant,
            change=ChangeKind.APPROVED if approved else ChangeKind.CREATED,
            version=1,
            absence=Absence(
                id=f"abs-{self._run}-{n}",
                status=AbsenceStatus.APPROVED if approved else AbsenceStatus.PENDING,
                start_date=start,
                start_half=start_half,
                end_date=end,
                end_half=HalfDay.AM if end_index % 2 == 0 else HalfDay.PM,
                time_zone="Europe/Paris" if emp % 3 else "Europe/Berlin",
                leave_account=ACCOUNTS[r.randrange(len(ACCOUNTS))],
                approved_at=now if approved else None,
            ),
            employee=Employee(
                id=f"emp-{emp}",
                display_name=f"{first} {last}",
                legal_entity_id=ENTITIES[emp % len(ENTITIES)],
                email=f"{first.lower()}.{last.lower()}.{emp}@bench.example",
                employee_number=f"E{emp:05d}",
                department_id=DEPARTMENTS[emp % len(DEPARTMENTS)],
            ),
        )


def publish_events(run: BenchRun, events: Iterable[AbsenceEvent]) -> int:
    """Publishes events to ``absences`` with the upstream publisher; returns how many (all acked)."""
    count = 0
    with AbsencePublisher(run.settings) as publisher:
        for event in events:
            publisher.publish(event)
            count += 1
    return count


def publish_many(run: BenchRun, count: int, *, seed: int = 5, shapes: int = 1000) -> str:
    """Publishes ``count`` distinct new absences fast; returns their id prefix (ids are
    ``<prefix>-<n:08d>``, n from 0).

    ``shapes`` events of :class:`EventFactory` are validated and encoded once; each record is one of
    them with its absence id and event id replaced in the encoded bytes (same lengths: the Avro
    stays valid), produced with large batches and no flush until the end. About 3 us of CPU per
    record instead of ~60 (build, validate, encode: a million took minutes).
    """
    factory = EventFactory(seed=seed)
    prefix = f"abs-{uuid.uuid4().hex[:8]}"
    event_ids = str(uuid.uuid4())[:24]  # + 12 hex digits of n: 36 characters, like a UUID
    codec = codec_for("AbsenceEvent")
    templates: list[tuple[bytes, bytes, bytes]] = []
    for k in range(min(shapes, count)):
        event = factory.event()
        absence_id, event_id = f"{prefix}-{k:08d}", f"{event_ids}{k:012x}"
        event = replace(event, event_id=event_id, absence=replace(event.absence, id=absence_id))
        validate(event)
        value = codec.encode(event.to_avro())
        if value.count(absence_id.encode()) != 1 or value.count(event_id.encode()) != 1:
            raise RuntimeError(f"an id of template {k} is not found exactly once in its encoding")
        templates.append((value, absence_id.encode(), event_id.encode()))
    failures: list[str] = []

    def acknowledged(error: KafkaError | None, _msg: object) -> None:
        if error is not None:
            failures.append(error.str())

    producer = make_producer(
        run.settings, **{"linger.ms": 50, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000}
    )
    topic, tenant = run.topics.absences, f"{TENANT}|".encode()
    for n in range(count):
        template, old_id, old_event_id = templates[n % len(templates)]
        new_id = f"{prefix}-{n:08d}".encode()
        value = template.replace(old_id, new_id).replace(old_event_id, f"{event_ids}{n:012x}".encode())
        produce(producer, topic, tenant + new_id, value, wait=0.05, on_delivery=acknowledged)
        if n % 10_000 == 0:
            producer.poll(0)
    if producer.flush(300) != 0 or failures:
        raise RuntimeError(f"publishing failed: {failures[:1] or 'not acknowledged in 300 s'}")
    return prefix
