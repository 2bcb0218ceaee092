"""Employees without email, and email changes, through the whole pipeline on the real broker: the
fan-out, the delivery worker (its per-key state knows the mailbox each calendar holds an absence
under) and, for each calendar kind, its fake; an HTTP receiver beside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from connectors.calendar import NO_EMAIL
from processors.fanout import delivery_for
from schemas.delivery import CommandKind, Delivery, Operation, Status, delivery_id_for
from schemas.destination import Destination
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.destinations import publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.calendars import KINDS, Calendars
from tests.connectors.deliveries import TENANT
from tests.delivery.harness import Feed, RunningWorker, StatusLog, http_destination, requests_for
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, next_change, produce_events, running_fanout

OLD = "jane.doe@acme.com"
NEW = "jane.smith@acme.com"


@pytest.fixture(params=KINDS)
def calendars(request: pytest.FixtureRequest) -> Iterator[Calendars]:
    with ExitStack() as stack:
        fakes = Calendars(request.param, stack)
        fakes.add_mailbox(OLD)
        fakes.add_mailbox(NEW)
        yield fakes


def calendar_destination(settings: Settings, calendars: Calendars) -> Destination:
    box = SecretBox.from_settings(settings)
    destination = Destination(
        id="dst-cal",
        tenant=TENANT,
        name=f"{calendars.kind} calendars",
        kind=calendars.kind,
        settings=calendars.settings(),
        secrets={name: box.encrypt(value) for name, value in calendars.secrets().items()},
        revision=1,
    )
    publish_destination(settings, destination)
    return destination


def upsert(destination: str, event: AbsenceEvent) -> str:
    return delivery_id_for(destination, event.event_id, "UPSERT")


def test_no_email_errors_on_calendars_only_then_the_email_arrives_and_later_moves(
    settings: Settings, statuses: StatusLog, receiver: Receiver, calendars: Calendars
) -> None:
    calendar_destination(settings, calendars)
    http_destination(settings, receiver.url)
    approved = make_event("abs-mail", change=ChangeKind.APPROVED, status=AbsenceStatus.APPROVED, email=None)
    with_email = next_change(approved, ChangeKind.UPDATED, AbsenceStatus.APPROVED, email=OLD)
    renamed = next_change(with_email, ChangeKind.UPDATED, AbsenceStatus.APPROVED, email=NEW)
    cancelled = next_change(renamed, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
    with running_fanout(settings), RunningWorker(settings):
        # 1. No email: HTTP gets it, the calendar ends in Error at once (no retry scheduled).
        produce_events(settings, [approved])
        to_http = statuses.wait_settled(upsert("dst-http", approved))
        failed = statuses.wait_settled(upsert("dst-cal", approved))
        assert to_http.status is Status.SUCCESSFUL, to_http.error
        assert failed.status is Status.ERROR and failed.next_retry_at is None
        assert NO_EMAIL in (failed.error or "")
        [sent] = requests_for(receiver, "abs-mail")
        assert sent.json()["employee"]["email"] is None

        # 2. A change carrying the email: sent by itself; the errored one is superseded. An operator
        #    Retry of the errored delivery then sends the key's latest change again (no second event).
        produce_events(settings, [with_email])
        created = statuses.wait_settled(upsert("dst-cal", with_email))
        assert created.status is Status.SUCCESSFUL, created.error
        statuses.wait_status(upsert("dst-cal", approved), Status.SUPERSEDED)
        assert calendars.shown(OLD) == ["busy"]
        Feed(settings).command(CommandKind.RETRY, failed_delivery(approved))
        statuses.wait(
            lambda log: any(
                e.trigger == "retry" and e.status is Status.SUCCESSFUL for e in log.of(created.delivery_id)
            )
        )
        assert calendars.shown(OLD) == ["busy"]

        # 3. The email changes: deleted in the old mailbox, created in the new one.
        produce_events(settings, [renamed])
        moved = statuses.wait_settled(upsert("dst-cal", renamed))
        assert moved.status is Status.SUCCESSFUL, moved.error
        assert (calendars.shown(OLD), calendars.shown(NEW)) == ([], ["busy"])

        # 4. The cancellation removes it from the new one.
        produce_events(settings, [cancelled])
        gone = statuses.wait_settled(delivery_id_for("dst-cal", cancelled.event_id, "DELETE"))
        assert gone.status is Status.SUCCESSFUL, gone.error
        assert (calendars.shown(OLD), calendars.shown(NEW)) == ([], [])


def failed_delivery(event: AbsenceEvent) -> Delivery:
    """The errored calendar delivery as the console knows it (what a Retry command names)."""
    destination = Destination(id="dst-cal", tenant=TENANT, name="", kind="graph")
    return delivery_for(destination, event, Operation.UPSERT)
