"""Calendar mailboxes, for Graph, EWS and Google against their fakes (the real client libraries run):

- a refused request shown as tentative is removed;
- an employee without email: the UPSERT ends in a permanent "no email for this employee", a DELETE
  has nothing to remove;
- the email changed: the event is deleted in the old mailbox and created in the new one (the old one
  comes from ``Delivery.held_email``, which the delivery worker fills from its per-key state; the
  end-to-end test of that is in tests/connectors/test_calendar_moves_e2e.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

import pytest

from connectors.base import CallRecorder, Connector
from connectors.calendar import NO_EMAIL
from connectors.exceptions import PermanentError
from schemas.delivery import Delivery, Operation
from schemas.models import AbsenceStatus, ChangeKind
from tests.connectors.calendars import KINDS, Calendars
from tests.connectors.deliveries import make_delivery

OLD = "jane.doe@acme.com"
NEW = "jane.smith@acme.com"


@pytest.fixture(params=KINDS)
def calendars(request: pytest.FixtureRequest) -> Iterator[Calendars]:
    with ExitStack() as stack:
        fakes = Calendars(request.param, stack)
        fakes.add_mailbox(OLD)
        fakes.add_mailbox(NEW)
        yield fakes


@pytest.fixture
async def connector(calendars: Calendars) -> AsyncIterator[Connector]:
    connector = calendars.connector(include_pending=True)
    await connector.setup()
    yield connector
    await connector.close()


def moved(delivery: Delivery, held_email: str | None) -> Delivery:
    """The delivery as the worker hands it over when the destination holds the absence under
    ``held_email``."""
    return delivery.evolve(held_email=held_email)


async def test_a_refused_request_shown_as_tentative_is_removed(
    calendars: Calendars, connector: Connector
) -> None:
    pending = make_delivery(status=AbsenceStatus.PENDING, change=ChangeKind.CREATED, email=OLD)
    await connector.deliver(pending, CallRecorder())
    assert calendars.shown(OLD) == ["tentative"]
    refused = make_delivery(
        status=AbsenceStatus.REFUSED,
        change=ChangeKind.UPDATED,
        version=2,
        email=OLD,
        operation=Operation.DELETE,
    )
    await connector.deliver(moved(refused, OLD), CallRecorder())
    assert calendars.shown(OLD) == []
    # Even sent as an UPSERT (a resync of the latest state), a refused absence is held nowhere.
    await connector.deliver(pending, CallRecorder())
    upsert = dataclasses.replace(refused, operation=Operation.UPSERT)
    await connector.deliver(upsert, CallRecorder())
    assert calendars.shown(OLD) == []


async def test_no_email_is_a_permanent_error_and_a_delete_has_nothing_to_remove(
    calendars: Calendars, connector: Connector
) -> None:
    nobody = make_delivery(email="")
    recorder = CallRecorder()
    with pytest.raises(PermanentError, match=NO_EMAIL) as caught:
        await connector.deliver(nobody, recorder)
    assert not caught.value.retryable
    assert recorder.calls == [], "nothing is asked of the calendar without a mailbox"
    cancelled = make_delivery(
        email="", change=ChangeKind.CANCELLED, status=AbsenceStatus.CANCELLED, version=2
    )
    outcome = await connector.deliver(cancelled, CallRecorder())
    assert NO_EMAIL in outcome.summary


async def test_an_email_change_moves_the_event_to_the_new_mailbox(
    calendars: Calendars, connector: Connector
) -> None:
    await connector.deliver(make_delivery(email=OLD), CallRecorder())
    assert (calendars.shown(OLD), calendars.shown(NEW)) == (["busy"], [])

    renamed = moved(make_delivery(email=NEW, change=ChangeKind.UPDATED, version=2), OLD)
    outcome = await connector.deliver(renamed, CallRecorder())
    assert (calendars.shown(OLD), calendars.shown(NEW)) == ([], ["busy"])
    assert "moved" in outcome.summary and OLD in outcome.summary

    # The same delivery again (a crash before its state was saved): no second effect.
    await connector.deliver(renamed, CallRecorder())
    assert (calendars.shown(OLD), calendars.shown(NEW)) == ([], ["busy"])

    # A cancellation held under the old address (its state said so) removes from both.
    await connector.deliver(make_delivery(email=OLD), CallRecorder())
    cancelled = make_delivery(
        email=NEW, change=ChangeKind.CANCELLED, status=AbsenceStatus.CANCELLED, version=3
    )
    await connector.deliver(moved(cancelled, OLD), CallRecorder())
    assert (calendars.shown(OLD), calendars.shown(NEW)) == ([], [])


async def test_the_same_address_in_another_case_is_not_a_move(
    calendars: Calendars, connector: Connector
) -> None:
    await connector.deliver(make_delivery(email=OLD), CallRecorder())
    recorder = CallRecorder()
    again = moved(make_delivery(email=OLD.upper(), change=ChangeKind.UPDATED, version=2), OLD)
    outcome = await connector.deliver(again, recorder)
    assert "moved" not in outcome.summary
    assert calendars.shown(OLD) == ["busy"]


async def test_an_old_mailbox_that_no_longer_exists_holds_nothing(
    calendars: Calendars, connector: Connector
) -> None:
    renamed = moved(make_delivery(email=NEW), "gone@acme.com")
    outcome = await connector.deliver(renamed, CallRecorder())
    assert calendars.shown(NEW) == ["busy"]
    assert "gone@acme.com" in outcome.summary


async def test_an_email_removed_empties_the_old_mailbox_then_ends_in_error(
    calendars: Calendars, connector: Connector
) -> None:
    await connector.deliver(make_delivery(email=OLD), CallRecorder())
    without = moved(make_delivery(email="", change=ChangeKind.UPDATED, version=2), OLD)
    with pytest.raises(PermanentError, match=NO_EMAIL):
        await connector.deliver(without, CallRecorder())
    assert calendars.shown(OLD) == []
