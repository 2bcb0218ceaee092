"""Re-enabling a destination catches up: the changes made while it was disabled reach it, as a
resync job of the absences changed since it was disabled, started by the enable itself. Real broker,
fan-out, delivery worker, the API and a loopback HTTP receiver."""

from __future__ import annotations

import datetime as dt
import time

from schemas.delivery import Delivery, Trigger
from schemas.models import AbsenceStatus, ChangeKind
from streams.settings import Settings
from tests.delivery.harness import http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, next_change, produce_events
from tests.test_resync import LIMIT, pipeline, replays, wait_fanned_out
from tests.web import conftest as web
from tests.web.conftest import Api

api, engine = web.api, web.engine


def replayed_to(settings: Settings, destination_id: str) -> list[Delivery]:
    """The destination's REPLAY deliveries (a resync's), once the fan-out has handled everything."""
    return [d for d in replays(settings, destination_id) if d.trigger is Trigger.REPLAY]


def test_enabling_a_destination_again_sends_what_changed_while_it_was_disabled(
    settings: Settings, api: Api
) -> None:
    first = [make_event(f"abs-{i}") for i in range(4)]
    with Receiver() as receiver, pipeline(settings), api.client("configure") as admin:
        http_destination(settings, receiver.url + "/hook", "dst-re")
        base = "/api/v1/destinations/dst-re"
        deadline = time.monotonic() + LIMIT
        while admin.get(base).status_code == 404:  # the API's table lags the topic
            assert time.monotonic() < deadline, "the API never saw the destination"
            time.sleep(0.2)
        produce_events(settings, first)
        assert receiver.wait_until(lambda r: set(r.state) == {f"abs-{i}" for i in range(4)}, LIMIT)

        disabled = admin.post(f"{base}/disable")
        assert disabled.status_code == 200
        disabled_at = dt.datetime.fromisoformat(disabled.json()["disabled_at"])
        assert abs(disabled_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
        # Changes while disabled: a cancellation, an update, a new absence. None reaches it now.
        cancelled = next_change(first[0], ChangeKind.CANCELLED, AbsenceStatus.CANCELLED)
        updated = next_change(first[1], ChangeKind.UPDATED, AbsenceStatus.PENDING)
        new = make_event("abs-new")
        produce_events(settings, [cancelled, updated, new])
        wait_fanned_out(settings)
        assert replayed_to(settings, "dst-re") == [], "no replay before the enable"
        assert "abs-new" not in receiver.state

        enabled = admin.post(f"{base}/enable")
        assert enabled.status_code == 200 and enabled.json()["disabled_at"] is None
        job = admin.get(f"{base}/resync").json()
        assert job["reason"] == "re-enabled"
        assert dt.datetime.fromisoformat(job["parameters"]["changed_since"]) == disabled_at
        while (job := admin.get(f"{base}/resync").json())["running"]:
            assert time.monotonic() < deadline + LIMIT, "the catch-up did not finish in time"
            time.sleep(0.2)
        assert job["completed"] and job["error"] is None
        assert (job["upserts"], job["deletes"]) == (2, 1)

        # Only the absences changed while it was disabled were replayed, at their latest version.
        replayed = replayed_to(settings, "dst-re")
        assert {(d.absence_id, d.version, d.operation.value) for d in replayed} == {
            ("abs-0", 2, "DELETE"),
            ("abs-1", 2, "UPSERT"),
            ("abs-new", 1, "UPSERT"),
        }
        assert receiver.wait_until(lambda r: set(r.state) == {"abs-1", "abs-2", "abs-3", "abs-new"}, LIMIT)
        assert receiver.wait_until(lambda r: r.state["abs-1"]["version"] == 2, LIMIT)

        # Enabled twice: no transition, no second job (the finished one is still the latest).
        again = admin.post(f"{base}/enable")
        assert again.status_code == 200 and again.json()["revision"] == enabled.json()["revision"]
        assert admin.get(f"{base}/resync").json() == job
        trail = admin.get(f"{base}/audit").json()
        assert [entry["action"] for entry in trail].count("enable") == 1
