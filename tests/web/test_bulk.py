"""Bulk actions on the follow-up list (Retry all / Mark all as processed) over real HTTP, on SQLite
and PostgreSQL and the real broker: the count, the bound, the tenant scope, the right, the audit
record, a bad or vanished delivery in the middle; then end to end with the fan-out, the delivery
worker and a loopback receiver: the retried deliveries are sent again, the marked ones are marked."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from absync.services import bulk
from absync.services.bulk import BulkAction
from projections import queries
from projections.db import deliveries
from projections.runner import catch_up
from schemas.codec import codec_for
from schemas.delivery import Command, Status
from schemas.models import AbsenceStatus, ChangeKind
from streams.settings import Settings
from streams.topics import REPLAY_COMMAND_HEADER, Topics
from tests.delivery.harness import http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, next_change, produce_events, read_to_end
from tests.web.conftest import Api, fact
from tests.web.test_recover import LIMIT, POSTGRESQL, pipeline, settle

BULK = "/api/v1/deliveries/bulk"


def wait_done(client: Any) -> dict[str, Any]:
    deadline = time.monotonic() + LIMIT
    while (job := client.get(BULK).json())["running"]:
        assert time.monotonic() < deadline, "the bulk action did not finish in time"
        time.sleep(0.1)
    return job  # type: ignore[no-any-return]


def commands(settings: Settings) -> list[Command]:
    """The bulk job's commands: they travel the replay lane, so 10,000 of them never delay live work."""
    return [
        Command.from_avro(codec_for("Command").decode(m.value()))
        for m in read_to_end(settings, Topics(settings).replay)
        if dict(m.headers() or []).get(REPLAY_COMMAND_HEADER) == b"1"
    ]


def bulk_audit(api: Api) -> list[queries.AuditRecord]:
    return [a for a in queries.audit_log(api.engine, tenant=None).items if a.action.startswith("bulk-")]


def test_count_bound_scope_right_and_audit(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    # Newest change first: superseded, error, pending, error (the list's order); another tenant's.
    first = fact(status=Status.ERROR, at=at)
    pending = fact(status=Status.PENDING, at=at + dt.timedelta(seconds=1))
    second = fact(status=Status.ERROR, at=at + dt.timedelta(seconds=2))
    replaced = fact(status=Status.SUPERSEDED, at=at + dt.timedelta(seconds=3))
    theirs = fact(tenant="globex", destination_id="dst-9", status=Status.ERROR, at=at)
    api.seed(first, pending, second, replaced, theirs)

    with api.client() as anonymous:
        assert anonymous.get(f"{BULK}/count").status_code == 401
        assert anonymous.post(f"{BULK}/retry").status_code == 401
        assert anonymous.get(BULK).status_code == 401
    with api.client("acme-view") as acme, api.client("view") as everyone:
        count = acme.get(f"{BULK}/count").json()
        assert count == {
            "matching": 4,
            "limit": 10_000,
            "over_limit": False,
            "by_status": {"ERROR": 2, "PENDING": 1, "SUPERSEDED": 1},
            "actionable": {"retry": 3, "mark-processed": 3},
            "destinations": 1,
        }
        assert everyone.get(f"{BULK}/count").json()["matching"] == 5
        assert everyone.get(f"{BULK}/count", params={"tenant": "globex"}).json()["matching"] == 1
        assert acme.get(f"{BULK}/count", params={"tenant": "globex"}).json()["matching"] == 0  # never widens
        assert acme.get(f"{BULK}/count", params={"status": "ERROR"}).json()["matching"] == 2
        assert acme.get(BULK).status_code == 404  # none started yet

        refused = acme.post(f"{BULK}/retry", params={"tenant": "globex"})
        assert refused.status_code == 422
        assert "no delivery matches these filters" in refused.text
        stale = acme.post(f"{BULK}/retry", params={"expected": 5})
        assert stale.status_code == 409
        assert "now select 4 deliveries, not 5" in stale.json()["detail"]

        monkeypatch.setattr(bulk, "MAX_DELIVERIES", 3)  # the bound, without seeding 10,001 rows
        assert acme.get(f"{BULK}/count").json()["over_limit"] is True
        too_many = acme.post(f"{BULK}/retry")
        assert too_many.status_code == 422
        assert "more than 3 deliveries match these filters: narrow them" in too_many.text
        monkeypatch.undo()
        assert bulk_audit(api) == []  # nothing refused is recorded

        # A row the job cannot trust, in the middle of the selection: counted as failed, the job goes on.
        with api.engine.begin() as conn:
            conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.delivery_id == pending.delivery_id)
                .values(status="BOGUS")
            )
        started = acme.post(f"{BULK}/retry", params={"expected": 4})
        assert started.status_code == 202, started.text
        assert started.json()["started_by"] == "acme viewer"
        job = wait_done(acme)
        assert everyone.get(BULK).status_code == 404  # every tenant's scope: not acme's job
    assert job["completed"] and job["error"] is None, job
    assert (job["action"], job["total"], job["done"], job["failed"]) == ("retry", 4, 2, 1)
    assert job["skipped"] == {"superseded": 1}
    assert "a newer change of this absence replaced this delivery" in job["skip_reasons"]["superseded"]
    assert job["failures"][0].startswith(pending.delivery_id)
    sent = commands(api.settings)
    assert sorted(c.delivery_id for c in sent) == sorted([first.delivery_id, second.delivery_id])
    assert {(c.kind.value, c.tenant, c.issued_by) for c in sent} == {("RETRY", "acme", "acme viewer")}
    [record] = bulk_audit(api)
    assert (record.action, record.actor, record.tenant, record.destination_id) == (
        "bulk-retry",
        "acme viewer",
        "acme",
        "dst-1",
    )
    assert record.changes == {
        "job_id": job["job_id"],
        "filters": {},
        "count": 4,
        "destinations": {"dst-1": 4},
    }

    # A delivery gone from the view after the selection: failed, the ones after it still acted on.
    where = queries.DeliveryFilter(destination_id="dst-1")
    refs = bulk.select(api.engine, tenant="acme", where=where)
    assert [r.delivery_id for r in refs] == [
        replaced.delivery_id,
        second.delivery_id,
        pending.delivery_id,
        first.delivery_id,
    ]
    with api.engine.begin() as conn:
        conn.execute(sa.delete(deliveries).where(deliveries.c.delivery_id == second.delivery_id))
    done = bulk.run(api.settings, api.engine, BulkAction.MARK_PROCESSED, refs, tenant="acme", issued_by="t")
    assert (done.total, done.sent, done.failed, done.skipped, done.completed) == (
        4,
        1,
        2,
        {"superseded": 1},
        True,
    )
    assert done.failures[0] == f"{second.delivery_id}: {bulk.GONE}"
    marked = [c for c in commands(api.settings) if c.kind.value == "MARK_PROCESSED"]
    assert [c.delivery_id for c in marked] == [first.delivery_id]


def approve(settings: Settings, receiver: Receiver, names: dict[str, str], failing: set[str]) -> None:
    """Approves one absence per name (name -> department); those in ``failing`` are answered 500 on
    their two attempts (the first and its one retry), then the receiver heals."""
    for name in failing:
        receiver.fail_next(2, 500, absence_id=name)
    produce_events(
        settings,
        [
            next_change(make_event(name, department=dep), ChangeKind.APPROVED, AbsenceStatus.APPROVED)
            for name, dep in names.items()
        ],
    )


@POSTGRESQL
def test_retry_all_resends_and_mark_all_marks(settings: Settings, api: Api) -> None:
    retried = {"r-0": "dep-r", "r-1": "dep-r"}
    marked = {"m-0": "dep-m", "m-1": "dep-m", "m-ok": "dep-m"}
    with Receiver() as receiver, pipeline(settings) as statuses:
        http_destination(settings, receiver.url + "/hook", "dst-bulk")
        approve(settings, receiver, {**retried, **marked}, failing={"r-0", "r-1", "m-0", "m-1"})
        final = settle(statuses, [*retried, *marked])
        assert Counter(final.values()) == {Status.ERROR: 4, Status.SUCCESSFUL: 1}
        catch_up(api.settings, api.engine)
        sent_before = Counter(r.absence_id for r in receiver.requests)

        retry_filter = {"destination": "dst-bulk", "department": "dep-r", "status": "ERROR"}
        mark_filter = {"destination": "dst-bulk", "department": "dep-m"}
        with api.client("acme-view") as operator:
            assert operator.get(f"{BULK}/count", params=retry_filter).json()["matching"] == 2
            count = operator.get(f"{BULK}/count", params=mark_filter).json()
            assert (count["matching"], count["actionable"]["mark-processed"]) == (3, 2)
            started = operator.post(f"{BULK}/retry", params={**retry_filter, "expected": 2})
            assert started.status_code == 202, started.text
            job = wait_done(operator)
            assert (job["done"], job["total"], job["skipped"], job["failed"]) == (2, 2, {}, 0), job
            assert job["filters"] == {
                "destination_id": "dst-bulk",
                "department_id": "dep-r",
                "status": "ERROR",
            }
            started = operator.post(f"{BULK}/mark-processed", params={**mark_filter, "expected": 3})
            assert started.status_code == 202, started.text
            job = wait_done(operator)
            assert (job["done"], job["total"], job["skipped"], job["failed"]) == (2, 3, {"successful": 1}, 0)

        statuses.wait(
            lambda log: (
                all(
                    any(
                        e.status is Status.SUCCESSFUL and e.trigger == "retry"
                        for e in log.events
                        if e.absence_id == n
                    )
                    for n in retried
                )
                and all(any(e.manual for e in log.events if e.absence_id == n) for n in ("m-0", "m-1"))
            ),
            LIMIT,
        )
        assert receiver.wait_until(lambda r: set(retried) <= set(r.state), LIMIT)
        catch_up(api.settings, api.engine)
        resent = Counter(r.absence_id for r in receiver.requests) - sent_before
        assert resent == Counter(list(retried))  # the marked ones are not sent; nothing else is
        view = {
            row.absence_id: row
            for row in queries.list_deliveries(api.engine, tenant="acme", destination_id="dst-bulk").items
        }
        assert all(view[n].status == "SUCCESSFUL" and view[n].trigger == "retry" for n in retried)
        assert all(view[n].manual for n in ("m-0", "m-1")) and not view["m-ok"].manual
        actions = [(a.action, a.changes["count"], a.destination_id) for a in reversed(bulk_audit(api))]
        assert actions == [("bulk-retry", 2, "dst-bulk"), ("bulk-mark-processed", 3, "dst-bulk")]
