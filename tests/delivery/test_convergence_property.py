"""Property: whatever the changes and the receivers' failures, every destination ends up holding
exactly what the source says (nothing missing, nothing orphaned, no duplicate effect).

One pipeline (fan-out + delivery worker, retry delays 100-400 ms, connector timeout 0.5 s) and three
receivers serve the whole test; each Hypothesis example uses fresh absence ids and runs until it has
settled, one after the other. Running the examples one at a time keeps each failure attributable to
one example (and shrinkable), and a shared pipeline keeps 100 examples within a few minutes.

Failures are injected per (destination, absence): 500, 429 with Retry-After, a hang longer than the
timeout, a dropped connection, a slow answer, and the whole receiver refusing connections for a
moment. At most four attempts of one delivery can fail, so no delivery runs out of retry stages.

The receivers keep the highest version they saw per absence and ignore older ones, as a receiver of
absync.v1 should: a request that timed out on our side may still be applied late by the receiver, after
a newer change (no sender can prevent that; the version in the body lets the receiver).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.fanout import should_hold
from schemas.delivery import Status
from schemas.destination import ChangeSelection, Destination
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.settings import Settings
from tests.delivery.harness import RunningWorker, StatusLog, http_destination, isolated
from tests.fakes.receiver import ReceivedRequest, Receiver
from tests.streams_helpers import make_event, next_change, produce_events, running_fanout

pytestmark = pytest.mark.kafka

TIMEOUT = 0.5
TERMINAL = (Status.SUCCESSFUL, Status.ERROR, Status.SUPERSEDED)
MODES = ("500", "429", "timeout", "drop", "slow")


class VersionedReceiver(Receiver):
    """Applies an absync.v1 PUT or DELETE only if its version is not older than the one seen last."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, int] = {}

    def _apply(self, request: ReceivedRequest) -> int:
        doc = request.json()
        if request.absence_id and isinstance(doc, dict) and "version" in doc:
            if doc["version"] < self.versions.get(request.absence_id, 0):
                request.outcome = "stale"
                return 200
            self.versions[request.absence_id] = doc["version"]
        return super()._apply(request)


@dataclass
class Pipeline:
    settings: Settings
    destinations: list[Destination]
    receivers: list[Receiver]
    statuses: StatusLog


@pytest.fixture(scope="module")
def pipeline(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with contextlib.ExitStack() as stack:
        settings_ = stack.enter_context(
            isolated(
                bootstrap,
                tmp_path_factory.mktemp("property"),
                retry_delays="100ms,200ms,300ms,400ms",
                connector_timeout=TIMEOUT,
            )
        )
        receivers = [stack.enter_context(VersionedReceiver()) for _ in range(3)]
        selections = [ChangeSelection.ALL, ChangeSelection.ALL, ChangeSelection.APPROVED_AND_DELETIONS]
        destinations = [
            http_destination(settings_, r.url + "/hook", dest_id=f"dst-{i}", changes=selection)
            for i, (r, selection) in enumerate(zip(receivers, selections, strict=True))
        ]
        statuses = StatusLog(settings_)
        stack.callback(statuses.close)
        stack.enter_context(running_fanout(settings_))
        stack.enter_context(RunningWorker(settings_))
        yield Pipeline(settings_, destinations, receivers, statuses)


def history(draw: st.DrawFn, absence_id: str) -> list[AbsenceEvent]:
    """create, then random approve/update/cancel/delete (nothing after a delete)."""
    status = draw(st.sampled_from([AbsenceStatus.PENDING, AbsenceStatus.APPROVED]))
    events = [make_event(absence_id, status=status)]
    for step in draw(st.lists(st.sampled_from(["approve", "update", "cancel", "delete"]), max_size=4)):
        last = events[-1]
        if step == "approve":
            events.append(next_change(last, ChangeKind.APPROVED, AbsenceStatus.APPROVED))
        elif step == "update":
            events.append(next_change(last, ChangeKind.UPDATED, last.absence.status))
        elif step == "cancel":
            events.append(next_change(last, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED))
        else:
            events.append(next_change(last, ChangeKind.DELETED, last.absence.status))
            break
    return events


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    histories = [history(draw, f"p{run}-{i}") for i in range(draw(st.integers(1, 3)))]
    # interleave the histories, each in its own order
    queues = [list(h) for h in histories]
    events: list[AbsenceEvent] = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        events.append(queue.pop(0))
    failures = draw(
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, len(histories) - 1), st.sampled_from(MODES)),
            max_size=4,
        )
    )
    refuse = draw(st.sets(st.integers(0, 2), max_size=1))
    return {"histories": histories, "events": events, "failures": failures, "refuse": refuse}


def expected(
    destinations: list[Destination], histories: list[list[AbsenceEvent]]
) -> tuple[list[dict[str, int]], int]:
    """What each destination must hold at the end ({absence id: version}) and how many deliveries
    the fan-out emits (one UPSERT per change it holds, one DELETE when it stops holding)."""
    holds: list[dict[str, int]] = [{} for _ in destinations]
    deliveries = 0
    for i, destination in enumerate(destinations):
        for events in histories:
            held = False
            for event in events:
                now = should_hold(destination, event)
                deliveries += now or held
                held = now
            if held:
                holds[i][events[-1].absence.id] = events[-1].version
    return holds, deliveries


def inject(receiver: Receiver, mode: str, absence_id: str) -> None:
    if mode == "500":
        receiver.fail_next(1, 500, absence_id=absence_id)
    elif mode == "429":
        receiver.throttle_next(1, retry_after=1, absence_id=absence_id)
    elif mode == "timeout":
        receiver.hang_next(1, TIMEOUT + 0.3, absence_id=absence_id)
    elif mode == "drop":
        receiver.close_next(1, absence_id=absence_id)
    else:
        receiver.hang_next(1, TIMEOUT / 3, absence_id=absence_id)


def refuse_briefly(receiver: Receiver, seconds: float = 0.15) -> None:
    """Connection refused for a moment (fewer than two attempts of one delivery fit in it)."""
    receiver.pause()
    threading.Timer(seconds, receiver.resume).start()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_destinations_converge_to_the_source(pipeline: Pipeline, scenario: dict[str, Any]) -> None:
    histories: list[list[AbsenceEvent]] = scenario["histories"]
    absence_ids = {h[0].absence.id for h in histories}
    budget: dict[tuple[int, int], int] = {}
    for dest, absence, mode in scenario["failures"]:
        if budget.get((dest, absence), 0) < 2:  # at most 2 injected failures per (destination, absence)
            budget[(dest, absence)] = budget.get((dest, absence), 0) + 1
            inject(pipeline.receivers[dest], mode, histories[absence][0].absence.id)
    for dest in scenario["refuse"]:
        refuse_briefly(pipeline.receivers[dest])
    produce_events(pipeline.settings, scenario["events"])

    holds, count = expected(pipeline.destinations, histories)
    log = pipeline.statuses

    def settled(_: StatusLog) -> bool:
        ours = {e.delivery_id for e in log.events if e.absence_id in absence_ids}
        return len(ours) == count and all(log.of(d)[-1].status in TERMINAL for d in ours)

    log.wait(settled, timeout=90)
    for receiver in pipeline.receivers:
        receiver.clear_failures()

    ours = [e for e in log.events if e.absence_id in absence_ids]
    assert not [e for e in ours if e.status is Status.ERROR], "a delivery ran out of retries"
    for receiver, wanted in zip(pipeline.receivers, holds, strict=True):
        held = {aid: doc["version"] for aid, doc in list(receiver.state.items()) if aid in absence_ids}
        assert held == wanted
        effects = [
            r for r in list(receiver.requests) if r.absence_id in absence_ids and r.outcome == "effect"
        ]
        message_ids = [r.headers.get("webhook-id") for r in effects]
        assert len(message_ids) == len(set(message_ids)), "one delivery had two effects"
        arrived = [r for r in list(receiver.requests) if r.absence_id in absence_ids]
        for absence_id in absence_ids:
            versions = [r.json()["version"] for r in effects if r.absence_id == absence_id]
            assert versions == sorted(set(versions)), f"{absence_id}: a version applied twice or backwards"
            sent = [r.json()["version"] for r in arrived if r.absence_id == absence_id]
            assert sent == sorted(sent), f"{absence_id}: changes reached the receiver out of order"
