"""Destinations as events: the compacted ``destinations`` topic (latest value per id; a tombstone
deletes) and a global table that every worker keeps of it.

- :func:`publish_destination` / :func:`delete_destination`: write side (CLI, web API).
- :class:`DestinationTable`: read side; a background thread reads all partitions from the start and
  keeps the latest value per id; ``wait_ready()`` returns once it has caught up.
- :func:`load_yaml`: destinations written in YAML, secrets encrypted before they leave the process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import KafkaException, Message

from schemas.codec import AvroCodec, codec_for
from schemas.destination import ChangeSelection, Destination, Filters, check_rate, kind_catalog
from schemas.errors import SchemaError
from streams.destination_input import load_yaml_documents, validate_documents
from streams.kafka import ReadBarrier, make_producer, read_compacted
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.topics import Topics

log = structlog.get_logger(__name__)


class DestinationError(ValueError):
    """A destination definition is invalid (the message says which field)."""


def _where(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip().rstrip("/")
    if isinstance(value, dict):
        return {str(k): _where(v) for k, v in value.items()}
    return value


def endpoint_changes(previous: Destination, kind: str, settings: Mapping[str, Any]) -> list[str]:
    """The settings (or ``kind``) whose change sends the secrets somewhere else than before."""
    if kind != previous.kind:
        return ["kind"]
    return [
        name
        for name in kind_catalog().endpoint_settings(kind)
        if _where(settings.get(name)) != _where(previous.settings.get(name))
    ]


def merge_secrets(
    previous: Destination | None, kind: str, settings: Mapping[str, Any], entered: Mapping[str, bytes]
) -> dict[str, bytes]:
    """The secrets of a write: ``entered`` (encrypted) over the previous ones, which are kept as long
    as they go where they went before. Secrets are bound to their endpoint: when one of the kind's
    ``endpoint_settings`` (:mod:`connectors.declaration`) changes, every previous secret must be entered again in the same write,
    else :class:`DestinationError` names the changed settings and the secrets to re-enter (so a
    configure operator cannot redirect a stored token to a host of their own)."""
    if previous is None:
        return dict(entered)
    kept = {name: token for name, token in previous.secrets.items() if name not in entered}
    moved = endpoint_changes(previous, kind, settings)
    if moved and kept:
        raise DestinationError(
            f"{', '.join(moved)} changed, so the secrets would be sent somewhere new: enter them again "
            f"in the same change: {', '.join(sorted(kept))}"
        )
    return {**kept, **entered}


def publish_destination(settings: Settings, destination: Destination) -> None:
    producer = make_producer(settings)
    producer.produce(
        Topics(settings).destinations,
        key=destination.id.encode(),
        value=codec_for("Destination").encode(destination.to_avro()),
    )
    if producer.flush(30) != 0:
        raise RuntimeError("destination not written: Kafka did not acknowledge in 30 s")


def delete_destination(settings: Settings, destination_id: str) -> None:
    producer = make_producer(settings)
    producer.produce(Topics(settings).destinations, key=destination_id.encode(), value=None)
    if producer.flush(30) != 0:
        raise RuntimeError("destination not deleted: Kafka did not acknowledge in 30 s")


class DestinationTable:
    """Latest destination per id, kept up to date from the destinations topic by a thread."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = Topics(settings).destinations
        self._items: dict[str, Destination] = {}
        self._deleted: set[str] = set()
        """Ids whose tombstone this table read (a deletion it saw, not an id it has not seen yet)."""
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[str, Destination | None], None]] = []
        self._barrier = ReadBarrier()

    def on_change(self, listener: Callable[[str, Destination | None], None]) -> None:
        """Called (from the table's thread) with (id, new value or None) after each change."""
        self._listeners.append(listener)

    def start(self) -> DestinationTable:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="destinations-table", daemon=True)
            self._thread.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self._ready.wait(timeout):
            raise TimeoutError(f"destinations table not caught up with {self._topic} in {timeout}s")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def get(self, destination_id: str) -> Destination | None:
        with self._lock:
            return self._items.get(destination_id)

    def deleted(self, destination_id: str) -> bool:
        """Whether this table read the destination's deletion (its tombstone, not compacted away)."""
        with self._lock:
            return destination_id in self._deleted

    async def wait_for(self, destination_id: str, timeout: float) -> Destination | None:
        """The destination, or None once this table knows it is not there.

        A record can name a destination this table has not read yet (the fan-out's table, or an
        operator's publish, a moment ahead of this one): that must not be taken for a deleted one.
        So an id neither known nor seen deleted is looked up again once the table has read every
        record the topic held when asked (:class:`~streams.kafka.ReadBarrier`, usually a few ms):
        still absent then, it is unknown (deleted long ago, or never published). ``timeout`` bounds
        the wait when the broker is slow to answer. A deletion the table read is answered at once.
        """
        found = self.get(destination_id)
        if found is not None or self.deleted(destination_id):
            return found
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._barrier.ask()), timeout)
        except (TimeoutError, KafkaException) as exc:
            log.warning(
                "destinations table did not confirm its end in time",
                destination_id=destination_id,
                error=str(exc) or type(exc).__name__,
            )
        return self.get(destination_id)

    def all(self, tenant: str | None = None) -> list[Destination]:
        with self._lock:
            items = list(self._items.values())
        return [d for d in items if tenant is None or d.tenant == tenant]

    @property
    def ready(self) -> bool:
        """True once the table has caught up with the topic (it then stays up to date)."""
        return self._ready.is_set()

    def _run(self) -> None:
        """Reads the topic from the start, again after any Kafka error (a fresh topic may have no
        leader yet): values are latest-per-id, so a re-read converges to the same table."""
        while not self._stop.is_set():
            try:
                self._read_topic()
            except KafkaException as exc:
                log.warning("destinations table restarting after a Kafka error", error=str(exc))
                self._stop.wait(1.0)

    def _read_topic(self) -> None:
        codec = codec_for("Destination")

        def apply(msg: Message) -> None:
            # errors="replace": a key that is not UTF-8 must not end the table's thread
            self._apply(codec, (msg.key() or b"").decode(errors="replace"), msg.value(), msg.offset())

        read_compacted(
            self._settings,
            self._topic,
            apply,
            follow=self._stop,
            on_caught_up=self._ready.set,
            barrier=self._barrier,
        )

    def _apply(self, codec: AvroCodec, key: str, raw: bytes | None, offset: int | None) -> None:
        value: Destination | None = None
        if raw is not None:
            try:
                value = Destination.from_avro(codec.decode(raw))
            except (SchemaError, KeyError, ValueError) as exc:
                log.error("undecodable destination skipped", key=key, offset=offset, error=str(exc))
                return
        with self._lock:
            if value is None:
                self._items.pop(key, None)
                self._deleted.add(key)
            else:
                self._items[key] = value
                self._deleted.discard(key)
        for listener in self._listeners:
            listener(key, value)


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | int):
        return (str(value),)
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    raise DestinationError(f"{field} must be a list of strings")


def destination_from_dict(
    data: dict[str, Any], box: SecretBox, *, actor: str = "cli", previous: Destination | None = None
) -> Destination:
    """Builds a Destination from its YAML/JSON form; clear-text secrets are encrypted here.

    A secret left out keeps its previous encrypted value (secrets are write-only), unless the write
    changes where secrets are sent (:func:`merge_secrets`).
    """
    for required in ("id", "tenant", "name", "kind"):
        if not isinstance(data.get(required), str) or not data[required]:
            raise DestinationError(f"destination field {required!r} is required")
    known = kind_catalog().kinds()
    if data["kind"] not in known:
        raise DestinationError(f"kind must be one of {', '.join(known)}, got {data['kind']!r}")
    filters = data.get("filters") or {}
    if not isinstance(filters, dict):
        raise DestinationError("filters must be a mapping")
    unknown = set(filters) - {
        "legal_entities",
        "departments",
        "leave_accounts",
        "leave_categories",
        "employees",
    }
    if unknown:
        raise DestinationError(f"unknown filter(s): {', '.join(sorted(unknown))}")
    settings = data.get("settings") or {}
    secrets_in = data.get("secrets") or {}
    if not isinstance(settings, dict) or not isinstance(secrets_in, dict):
        raise DestinationError("settings and secrets must be mappings")
    entered = {
        str(name): box.encrypt(str(value))
        for name, value in secrets_in.items()
        if value is not None and value != ""
    }
    secrets = merge_secrets(previous, data["kind"], settings, entered)
    try:
        changes = ChangeSelection(str(data.get("changes", "ALL")).upper())
    except ValueError:
        raise DestinationError("changes must be 'all' or 'approved_and_deletions'") from None
    try:
        rate_limit = check_rate(data.get("rate_limit"))
    except ValueError as exc:
        raise DestinationError(f"rate_limit: {exc}") from None
    return Destination(
        id=data["id"],
        tenant=data["tenant"],
        name=data["name"],
        kind=data["kind"],
        enabled=bool(data.get("enabled", True)),
        filters=Filters(**{k: _strings(v, f"filters.{k}") for k, v in filters.items()}),
        changes=changes,
        settings=settings,
        secrets=secrets,
        revision=(previous.revision + 1) if previous else int(data.get("revision", 1)),
        updated_at=dt.datetime.now(dt.UTC),
        updated_by=actor,
        rate_limit=rate_limit,
    ).stamped(previous)


def load_yaml(path: Path, box: SecretBox) -> list[Destination]:
    """One destination per YAML document (or a list of them), validated by the API's own model
    (:mod:`streams.destination_input`): the file is read whole or refused, never half-applied."""
    try:
        models = validate_documents(path, load_yaml_documents(path))
    except ValueError as exc:
        raise DestinationError(str(exc)) from None
    out: list[Destination] = []
    for i, model in enumerate(models):
        try:
            out.append(destination_from_dict(model.model_dump(), box))
        except DestinationError as exc:
            raise DestinationError(f"{path}: document {i + 1}: {exc}") from exc
    return out


def apply_all(settings: Settings, destinations: Iterable[Destination]) -> int:
    count = 0
    for destination in destinations:
        publish_destination(settings, destination)
        count += 1
    return count
