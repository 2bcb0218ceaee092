"""The created item's id that a connector returns reaches the delivery's status and the view: the real
worker, the real http connector (``method_mode: rest``: the resource URL is the item) and a receiver."""

from __future__ import annotations

import pytest

from projections import queries
from projections.db import engine_for
from projections.runner import catch_up
from schemas.delivery import Status
from schemas.models import ChangeKind
from streams.settings import Settings
from tests.delivery.harness import Feed, RunningWorker, StatusLog, change, http_destination
from tests.fakes.receiver import Receiver

pytestmark = pytest.mark.kafka


def test_the_created_item_id_travels_from_the_connector_to_the_delivery_detail(
    settings: Settings, receiver: Receiver, statuses: StatusLog
) -> None:
    http_destination(settings, receiver.url + "/hook")
    delivery = change("abs-item", 1, ChangeKind.APPROVED)
    receiver.fail_next(1, 503, absence_id="abs-item")
    with RunningWorker(settings):
        Feed(settings).deliveries(delivery)
        final = statuses.wait_settled(delivery.delivery_id)
    events = statuses.of(delivery.delivery_id)
    assert [(e.status, e.external_id) for e in events] == [
        (Status.PENDING, None),  # a failed attempt created nothing
        (Status.SUCCESSFUL, receiver.url + "/hook/abs-item"),
    ]
    assert final.external_id == receiver.url + "/hook/abs-item"
    assert "abs-item" in receiver.state

    engine = engine_for(settings)
    try:
        catch_up(settings, engine)
        detail = queries.get_delivery(engine, delivery.delivery_id, tenant=None)
    finally:
        engine.dispose()
    assert detail is not None
    assert (detail.delivery.status, detail.delivery.external_id) == (
        "SUCCESSFUL",
        receiver.url + "/hook/abs-item",
    )
