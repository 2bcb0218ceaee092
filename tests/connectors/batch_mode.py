"""What the Graph and Google batch-mode tests share: deliveries sent at once to one connector, the
later changes of three absences, a batched destination run through the real broker and delivery
worker, and a delivery under production's egress policy."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from connectors.base import CallRecorder, Connector, DeliveryOutcome
from schemas.delivery import Delivery, DeliveryStatus
from schemas.destination import Destination
from schemas.models import AbsenceStatus, ChangeKind
from streams.destinations import publish_destination
from streams.secrets import SecretBox
from streams.settings import Settings
from tests.connectors.deliveries import TENANT, make_delivery
from tests.delivery.harness import Feed, RunningWorker, StatusLog


async def deliver_all(
    connector: Connector, deliveries: Sequence[Delivery]
) -> tuple[list[DeliveryOutcome | BaseException], list[CallRecorder]]:
    """Each delivery through ``connector`` at once (each with its own recorder): their results (an
    outcome or the error raised) and recorders, in their order."""
    recorders = [CallRecorder(connector.secrets) for _ in deliveries]
    results = await asyncio.gather(
        *(connector.deliver(d, r) for d, r in zip(deliveries, recorders, strict=True)), return_exceptions=True
    )
    return list(results), recorders


async def deliver_once(connector: Connector, delivery: Delivery) -> DeliveryOutcome | BaseException:
    """``delivery`` through ``connector``, set up for it and closed after."""
    await connector.setup()
    try:
        [result], _ = await deliver_all(connector, [delivery])
    finally:
        await connector.close()
    return result


def later_changes(emails: Sequence[str]) -> list[Delivery]:
    """Version 2 of absences abs-0 (updated), abs-1 (cancelled) and abs-9 (deleted, never sent
    before), for ``emails[0]``, ``emails[1]`` and ``emails[2]``."""
    return [
        make_delivery(absence_id="abs-0", email=emails[0], change=ChangeKind.UPDATED, version=2),
        make_delivery(
            absence_id="abs-1",
            email=emails[1],
            change=ChangeKind.CANCELLED,
            status=AbsenceStatus.CANCELLED,
            version=2,
        ),
        make_delivery(absence_id="abs-9", email=emails[2], change=ChangeKind.DELETED, version=2),
    ]


def published_destination(
    settings: Settings, dest_id: str, name: str, kind: str, values: dict[str, Any], secrets: dict[str, str]
) -> Destination:
    """A destination of ``kind`` (its ``secrets`` encrypted as the service keeps them), published."""
    box = SecretBox.from_settings(settings)
    destination = Destination(
        id=dest_id,
        tenant=TENANT,
        name=name,
        kind=kind,
        settings=values,
        secrets={key: box.encrypt(value) for key, value in secrets.items()},
        revision=1,
    )
    publish_destination(settings, destination)
    return destination


def run_until_settled(
    settings: Settings, deliveries: Sequence[Delivery]
) -> tuple[list[DeliveryStatus], list[list[DeliveryStatus]]]:
    """Feeds ``deliveries`` before the delivery worker starts (so they come together), then runs it
    until each is settled: each one's settled status and its statuses so far."""
    Feed(settings).deliveries(*deliveries)
    statuses = StatusLog(settings)
    try:
        with RunningWorker(settings):
            settled = [statuses.wait_settled(d.delivery_id) for d in deliveries]
            history = [statuses.of(d.delivery_id) for d in deliveries]
    finally:
        statuses.close()
    return settled, history
