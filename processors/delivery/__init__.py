"""The delivery worker: sends each delivery through its connector, retries, converges.

The package, one room per concern:

- :mod:`processors.delivery.worker`: the ``delivery`` component: the consume loop (poll thread,
  delay gate, pauses, commits of finished work) and the dispatch to one ordered lane per key;
- :mod:`processors.delivery.handler`: what one record does: admission, the attempt through the
  connector, the status event, the retry record, the key's new state; the operator's commands;
- :mod:`processors.delivery.state`: the per-key state (latest delivery per destination and absence)
  and the supersede rule, pure;
- :mod:`processors.delivery.retry_policy`: what follows a failed attempt, pure;
- :mod:`processors.delivery.connector_cache`: one connector per destination, built through
  :mod:`connectors.registry`.

The generic parts live in ``streams/``: :mod:`streams.offsets` (what may be committed),
:mod:`streams.lanes` (ordered lanes per key), :mod:`streams.async_producer` (awaitable sends) and
:class:`streams.state.DirectStore` (the key state's changelog, written outside a transaction).

Guarantees: every record of one key is handled by one worker, in order; an offset is committed only
when every record before it in its partition is done (its outputs acknowledged by Kafka), so a crash
re-delivers only unfinished work; sending is at-least-once and connectors are idempotent. Within one
destination the changes of one absence go out in order and only the latest goes out: a new latest
delivery is durable in the key state before it is sent, an older delivery is SUPERSEDED. No record,
destination or request can stall the worker: a destination's slots, an attempt's time and the
records in flight are bounded, and an unreadable record goes to ``deliveries.invalid``.
"""

from processors.delivery.connector_cache import ConnectorCache
from processors.delivery.handler import DeliveryHandler, attempt_record, status_seq
from processors.delivery.retry_policy import GiveUp, NextStep, RetryAt, next_step
from processors.delivery.state import MANUAL, KeyState, admit
from processors.delivery.worker import (
    BUFFER_PER_SLOT,
    COMMIT_INTERVAL,
    DESTINATION_SHARE,
    DeliveryWorker,
    DeliveryWorkerError,
    build,
)

__all__ = [
    "BUFFER_PER_SLOT",
    "COMMIT_INTERVAL",
    "DESTINATION_SHARE",
    "MANUAL",
    "ConnectorCache",
    "DeliveryHandler",
    "DeliveryWorker",
    "DeliveryWorkerError",
    "GiveUp",
    "KeyState",
    "NextStep",
    "RetryAt",
    "admit",
    "attempt_record",
    "build",
    "next_step",
    "status_seq",
]
