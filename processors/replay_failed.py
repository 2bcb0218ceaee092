"""Replay of failed deliveries: one RETRY ``Command`` per delivery in Error.

The worker then makes one attempt now of the key's *latest* delivery, re-read from its state (so a
replay never sends an outdated version), trigger RETRY. A ``Delivery`` written into the first retry
topic instead would be dropped by the worker: it accepts a retry record only when it is the next
stage expected for the key's latest delivery, and a delivery in Error expects none (the guard that
stops duplicated retries after a crash). The commands go to the replay lane, ``deliveries.replay``
(header ``absync-command``), which the worker reads only when live work leaves room
(:mod:`processors.delivery.replay_lane`): a Recover of thousands never delays live changes nor an
operator's single Retry (which stays on ``commands``). They are rate-limited the same way as a resync.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from processors.resync_io import DEFAULT_RATE, Output, RateLimiter
from schemas.codec import codec_for
from schemas.delivery import Command, CommandKind, now_utc
from streams.settings import Settings
from streams.topics import REPLAY_COMMAND_HEADER, Topics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A delivery in Error, as the projection lists it."""

    delivery_id: str
    destination_id: str
    absence_id: str
    tenant: str


def replay_failed(
    settings: Settings,
    failed: Iterable[FailedDelivery],
    *,
    issued_by: str,
    kind: CommandKind = CommandKind.RETRY,
    rate: float = DEFAULT_RATE,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """One RETRY command per failed delivery, on the replay lane (see the module docstring); returns how many were sent.
    ``kind``: MARK_PROCESSED sends that command instead (the console's "Mark all as processed")."""
    stop = stop or threading.Event()
    limiter = RateLimiter(rate)
    output = Output(settings)
    topic = Topics(settings).replay
    headers: list[tuple[str, str | bytes | None]] = [(REPLAY_COMMAND_HEADER, b"1")]
    codec = codec_for("Command")
    sent = 0
    try:
        for delivery in failed:
            if not limiter.acquire(stop):
                break
            command = Command(
                command_id=uuid.uuid4().hex,
                kind=kind,
                delivery_id=delivery.delivery_id,
                destination_id=delivery.destination_id,
                absence_id=delivery.absence_id,
                tenant=delivery.tenant,
                issued_by=issued_by,
                issued_at=now_utc(),
            )
            output.produce(topic, command.key, codec.encode(command.to_avro()), headers=headers)
            sent += 1
            if progress is not None:
                progress(sent)
    finally:
        output.flush()
    log.info("failed deliveries replayed", count=sent, issued_by=issued_by, kind=kind.value)
    return sent
