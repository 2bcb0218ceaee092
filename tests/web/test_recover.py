"""Recover (the API's ``replay-failed``) against the real broker, the real fan-out and delivery
worker, the projection in PostgreSQL and a loopback HTTP receiver that fails, then heals."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from projections import queries
from projections.runner import catch_up
from schemas.delivery import Status
from schemas.models import AbsenceStatus, ChangeKind
from streams.settings import Settings
from streams.topics import create_topics
from tests.delivery.harness import RunningWorker, StatusLog, http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, next_change, produce_events, running_fanout
from tests.web.conftest import Api, fact

LIMIT = 120.0
POSTGRESQL = pytest.mark.parametrize(
    "engine",
    [
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not os.environ.get("ABSYNC_TEST_DATABASE_URL"), reason="needs ABSYNC_TEST_DATABASE_URL"
            ),
        )
    ],
    indirect=True,
)


@contextmanager
def pipeline(settings: Settings) -> Iterator[StatusLog]:
    """Fan-out and delivery worker running (one retry, after 0.2 s), and the status log."""
    worker_settings = settings.model_copy(update={"retry_delays": (0.2,)})
    create_topics(worker_settings)  # its retry topic (removed with the test's prefix)
    with ExitStack() as stack:
        stack.enter_context(running_fanout(worker_settings))
        stack.enter_context(RunningWorker(worker_settings))
        statuses = StatusLog(worker_settings)
        stack.callback(statuses.close)
        yield statuses


def approve(settings: Settings, receiver: Receiver, names: list[str], failing: set[str]) -> None:
    """Approves one absence per name; the receiver answers 500 to every attempt (two: the first
    and its one retry) of those in ``failing``, then heals."""
    for name in failing:
        receiver.fail_next(2, 500, absence_id=name)
    produce_events(
        settings, [next_change(make_event(n), ChangeKind.APPROVED, AbsenceStatus.APPROVED) for n in names]
    )


def settle(statuses: StatusLog, names: list[str]) -> dict[str, Status]:
    """Waits until each absence's delivery is Successful or Error; returns the status by absence."""
    final = (Status.SUCCESSFUL, Status.ERROR)

    def settled(log: StatusLog) -> bool:
        return {e.absence_id for e in log.events if e.status in final} >= set(names)

    statuses.wait(settled, LIMIT)
    return {e.absence_id: e.status for e in statuses.events if e.absence_id in names and e.status in final}


def wait_done(client: object, path: str) -> dict[str, object]:
    deadline = time.monotonic() + LIMIT
    while (job := client.get(path).json())["running"]:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the Recover did not finish in time"
        time.sleep(0.2)
    return job  # type: ignore[no-any-return]


@POSTGRESQL
def test_recover_resends_exactly_the_deliveries_failed_since_the_time(settings: Settings, api: Api) -> None:
    with Receiver() as receiver, pipeline(settings) as statuses:
        http_destination(settings, receiver.url + "/hook", "dst-rec")
        before = [f"old-{i}" for i in range(5)]
        approve(settings, receiver, before, failing=set(before[:3]))
        assert Counter(settle(statuses, before).values()) == {Status.ERROR: 3, Status.SUCCESSFUL: 2}

        since = dt.datetime.now(dt.UTC)
        time.sleep(0.05)
        after = [f"new-{i}" for i in range(6)]
        approve(settings, receiver, after, failing=set(after[:4]))
        assert Counter(settle(statuses, after).values()) == {Status.ERROR: 4, Status.SUCCESSFUL: 2}
        catch_up(api.settings, api.engine)
        # The receiver has healed: the failures it was told to answer are all used.
        sent_before = Counter(r.absence_id for r in receiver.requests)

        path = "/api/v1/destinations/dst-rec/recover"
        body = {"since": since.isoformat()}
        with api.client("view") as viewer, api.client("configure") as admin:
            assert viewer.post(path, json=body).status_code == 403
            assert viewer.get(path).status_code == 403
            assert admin.get(path).status_code == 404  # none started yet
            naive = {"since": since.replace(tzinfo=None).isoformat()}
            assert admin.post(path, json=naive).status_code == 422  # no offset: which time is it?
            assert admin.post(path, json={"since": 0}).status_code == 422  # a number is not guessed
            deadline = time.monotonic() + LIMIT
            while (started := admin.post(path, json=body)).status_code == 404:  # not seen by the API yet
                assert time.monotonic() < deadline, "the API never saw the destination"
                time.sleep(0.2)
            assert started.status_code == 202, started.text
            assert started.json()["started_by"] == "admin"
            job = wait_done(admin, path)

        assert job["completed"] and job["error"] is None, job
        assert (job["done"], job["total"], job["skipped"]) == (4, 4, {})
        # Exactly the ones failed after `since` are sent again, once each, and now succeed (as retries).
        statuses.wait(
            lambda log: all(
                any(
                    e.status is Status.SUCCESSFUL and e.trigger == "retry"
                    for e in log.events
                    if e.absence_id == n
                )
                for n in after[:4]
            ),
            LIMIT,
        )
        assert receiver.wait_until(lambda r: set(after[:4]) <= set(r.state), LIMIT)
        resent = Counter(r.absence_id for r in receiver.requests) - sent_before
        assert resent == Counter(after[:4])
        assert not set(receiver.state) & set(before[:3])  # failed before `since`: left in Error
        audit = queries.audit_trail(api.engine, "dst-rec", tenant=None)
        assert [(a.action, a.actor, a.changes) for a in audit if a.action == "recover"] == [
            ("recover", "admin", {"since": since.isoformat()})
        ]


@POSTGRESQL
def test_one_recover_per_destination_at_a_time(settings: Settings, api: Api) -> None:
    http_destination(settings, "http://127.0.0.1:9/hook", "dst-1")  # the seeded facts' destination
    api.seed(*(fact(destination_id="dst-1") for _ in range(3000)))
    path = "/api/v1/destinations/dst-1/recover"
    body = {"since": "2020-01-01T00:00:00Z"}
    with api.client("configure") as admin:
        deadline = time.monotonic() + LIMIT
        while (started := admin.post(path, json=body)).status_code == 404:
            assert time.monotonic() < deadline, "the API never saw the destination"
            time.sleep(0.2)
        assert started.status_code == 202, started.text
        # 3,000 commands at 500/s (no worker here: nothing is delivered): still running when asked again.
        refused = admin.post(path, json=body)
        assert refused.status_code == 409
        assert "a Recover of this destination is running" in refused.json()["detail"]
        job = wait_done(admin, path)
        assert job["completed"] and (job["done"], job["total"], job["skipped"]) == (3000, 3000, {})
        assert admin.post(path, json=body).status_code == 202  # done: a new one may start
        wait_done(admin, path)
