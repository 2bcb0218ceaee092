"""Erasure of an employee end to end: real broker, fan-out, delivery worker, projection (SQLite and
PostgreSQL), the API route and the CLI. The view forgets her, the compacted topics get tombstones,
and neither a projection rebuild nor a resync brings her back; the audit trail names an opaque
subject, never the email."""

from __future__ import annotations

import dataclasses
import json
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from processors.resync import ResyncRequest, run_resync
from projections.db import deliveries, destination_audit, erasures, writer
from projections.privacy import ERASED
from projections.projector import reset
from projections.runner import catch_up
from schemas.models import AbsenceEvent
from streams.settings import Settings
from streams.topics import Topics
from tests.cli_helpers import absync_in
from tests.delivery.harness import http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, produce_events, read_to_end
from tests.test_resync import LIMIT, pipeline, replays, wait_fanned_out
from tests.web import conftest as web
from tests.web.conftest import Api

api, engine = web.api, web.engine

JANE = "Jane.Doe@Acme.test"


def bob(event: AbsenceEvent) -> AbsenceEvent:
    employee = dataclasses.replace(event.employee, id="emp-2", display_name="Bob Roe", email="bob@acme.test")
    return dataclasses.replace(event, employee=employee)


def view_text(engine: Engine) -> str:
    with engine.connect() as conn:
        return json.dumps(
            {
                t.name: [dict(r) for r in conn.execute(sa.select(t)).mappings()]
                for t in (deliveries, destination_audit, erasures)
            },
            default=str,
        ).casefold()


def tombstoned(settings: Settings, topic: str) -> set[bytes]:
    """Keys whose latest record in ``topic`` is a tombstone."""
    latest: dict[bytes, bytes | None] = {}
    for msg in read_to_end(settings, topic):
        latest[msg.key() or b""] = msg.value()
    return {key for key, value in latest.items() if value is None}


def test_an_erased_employee_is_gone_from_the_view_and_no_rebuild_or_resync_brings_her_back(
    settings: Settings, api: Api, engine: Engine
) -> None:
    hers = [make_event("abs-j1", email=JANE.lower()), make_event("abs-j2", email=JANE.upper())]
    his = [bob(make_event("abs-b1"))]
    with Receiver() as receiver, pipeline(settings), api.client("configure") as admin:
        http_destination(settings, receiver.url + "/hook", "dst-held")
        produce_events(settings, [*hers, *his])
        assert receiver.wait_until(lambda r: set(r.state) == {"abs-j1", "abs-j2", "abs-b1"}, LIMIT)
        wait_fanned_out(settings)
        catch_up(settings, engine)
        assert "jane.doe@acme.test" in view_text(engine)

        with api.client("view") as viewer:
            assert viewer.post("/api/v1/erasures", json={"employee_email": JANE}).status_code == 403
        assert admin.post("/api/v1/erasures", json={"employee_email": "no address"}).status_code == 422
        answer = admin.post("/api/v1/erasures", json={"employee_email": f" {JANE} "})
        assert answer.status_code == 200, answer.text
        erased = answer.json()
        assert "acme.test" not in answer.text.casefold()
        assert erased["subject"].startswith("sub_") and erased["absences"] == 2
        assert erased["deliveries"] == 2 and erased["destinations"] == ["dst-held"]

        # The compacted topics: tombstones for her absences; the fan-out drops its state of them.
        topics = Topics(settings)
        assert {b"acme|abs-j1", b"acme|abs-j2"} <= tombstoned(settings, topics.absences)
        assert b"acme|abs-b1" not in tombstoned(settings, topics.absences)
        assert {b"dst-held|abs-j1", b"dst-held|abs-j2"} <= tombstoned(settings, topics.delivery_state)
        deadline = time.monotonic() + LIMIT
        while not {b"acme|abs-j1", b"acme|abs-j2"} <= tombstoned(settings, topics.fanout_state):
            assert time.monotonic() < deadline, "the fan-out did not drop its state of the erased absences"
            time.sleep(0.5)
        # An erasure is not a cancellation: nothing was sent to the destination (docs/privacy.md).
        assert set(receiver.state) == {"abs-j1", "abs-j2", "abs-b1"}

        # The view and the audit trail: her deliveries stay (status, dates), without her.
        catch_up(settings, engine)
        text = view_text(engine)
        assert "jane" not in text and "bob roe" in text
        with engine.connect() as conn:
            names = conn.execute(sa.select(deliveries.c.absence_id, deliveries.c.employee_name)).all()
            actions = conn.execute(sa.select(destination_audit.c.action, destination_audit.c.changes)).all()
        assert {name for absence, name in names if absence.startswith("abs-j")} == {ERASED}
        assert ("erase", {"subject": erased["subject"], "deliveries": 2}) in [(a, c) for a, c in actions]

        # A rebuild of the view from delivery-status (which still holds her facts) does not bring her back.
        with writer(engine.connect()) as conn, conn.begin():
            reset(conn)
        catch_up(settings, engine)
        assert "jane" not in view_text(engine)

        # Nor does a resync: the tombstones are the latest state of her absences.
        http_destination(settings, receiver.url + "/hook", "dst-new")
        assert run_resync(settings, ResyncRequest("dst-new", rate=10_000)).completed
        assert {d.absence_id for d in replays(settings, "dst-new")} == {"abs-b1"}

    # The CLI: a clear refusal of a non-address, and an erasure that prints the subject, not the email.
    env = {"ABSYNC_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    refused = absync_in(settings, env, "erase", "--employee", "nobody")
    assert refused.returncode == 2 and "not an email address" in refused.stderr
    done = absync_in(settings, env, "erase", "--employee", "bob@acme.test")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("erased subject sub_") and "bob" not in done.stdout + done.stderr
    assert "1 absence(s), 1 delivery(ies)" in done.stdout
    assert b"acme|abs-b1" in tombstoned(settings, Topics(settings).absences)
