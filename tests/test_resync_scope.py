"""Back-fill by the absence's date ("every absence ending on or after this date"), with legal entity
and department, from the library, the CLI and the API; the write-time filter under its own name
(``--changed-since``) and the deprecated ``--since``. Real broker, fan-out, delivery worker and
loopback receivers."""

from __future__ import annotations

import datetime as dt
import time
from contextlib import ExitStack

from processors.resync import ResyncRequest, run_resync
from processors.resync_filter import AbsenceScope
from schemas.models import AbsenceEvent, AbsenceStatus, ChangeKind
from streams.settings import Settings
from tests.cli_helpers import absync
from tests.delivery.harness import http_destination
from tests.fakes.receiver import Receiver
from tests.streams_helpers import make_event, next_change, produce_events, running_fanout
from tests.test_resync import LIMIT, pipeline, replays, wait_fanned_out, wait_successful
from tests.web import conftest as web
from tests.web.conftest import Api

api, engine = web.api, web.engine

FIRST_END = dt.date(2026, 5, 1)
FROM = dt.date(2026, 5, 6)
"""Absences 5..11 end on or after it; 0..4 end before."""
COUNT = 12
CANCELLED = 5


def absence(i: int) -> AbsenceEvent:
    """Absence ``i`` ends on FIRST_END + i days; legal entity le-de (even) / le-fr (odd); department
    dep-a, dep-b or none (by i % 3)."""
    end = FIRST_END + dt.timedelta(days=i)
    return make_event(
        f"abs-{i:03d}",
        legal_entity="le-de" if i % 2 == 0 else "le-fr",
        department=("dep-a", "dep-b", None)[i % 3],
        start_date=end - dt.timedelta(days=1),
        end_date=end,
    )


def publish_all(settings: Settings) -> None:
    events: list[AbsenceEvent] = []
    for i in range(COUNT):
        first = absence(i)
        events.append(first)
        if i == CANCELLED:
            events.append(next_change(first, ChangeKind.CANCELLED, AbsenceStatus.CANCELLED))
    produce_events(settings, events)


def ids(indexes: object) -> set[str]:
    return {f"abs-{i:03d}" for i in indexes}  # type: ignore[attr-defined]


def in_scope(department: str | None = None, legal_entity: str | None = None) -> list[int]:
    return [
        i
        for i in range(COUNT)
        if FIRST_END + dt.timedelta(days=i) >= FROM
        and (department is None or ("dep-a", "dep-b", None)[i % 3] == department)
        and (legal_entity is None or ("le-de" if i % 2 == 0 else "le-fr") == legal_entity)
    ]


def test_a_backfill_sends_every_absence_ending_on_or_after_the_date_in_its_scope(settings: Settings) -> None:
    with ExitStack() as stack, pipeline(settings) as statuses:
        receivers = {name: stack.enter_context(Receiver()) for name in ("date", "scoped")}
        publish_all(settings)
        wait_fanned_out(settings)
        for name, receiver in receivers.items():
            http_destination(settings, receiver.url + "/hook", f"dst-{name}")

        date = run_resync(settings, ResyncRequest("dst-date", scope=AbsenceScope(FROM), rate=10_000))
        scoped_scope = AbsenceScope(FROM, legal_entity="le-de", department="dep-a")
        scoped = run_resync(settings, ResyncRequest("dst-scoped", scope=scoped_scope, rate=10_000))
        assert date.completed and scoped.completed

        sent = {name: replays(settings, f"dst-{name}") for name in receivers}
        for deliveries in sent.values():
            wait_successful(statuses, deliveries)
        # Every absence ending on or after the date, the cancelled one as a DELETE; none before it.
        assert {d.absence_id for d in sent["date"]} == ids(in_scope())
        assert (date.upserts, date.deletes) == (len(in_scope()) - 1, 1)
        assert set(receivers["date"].state) == ids(i for i in in_scope() if i != CANCELLED)
        assert {d.absence_id for d in sent["scoped"]} == ids(in_scope("dep-a", "le-de")) == {"abs-006"}
        assert set(receivers["scoped"].state) == {"abs-006"}


def test_the_cli_backfills_from_a_date_and_names_the_write_time_filter_for_what_it_is(
    settings: Settings,
) -> None:
    with running_fanout(settings):
        publish_all(settings)
        wait_fanned_out(settings)
        http_destination(settings, "http://127.0.0.1:9/hook", "dst-cli")
        http_destination(settings, "http://127.0.0.1:9/hook", "dst-old-flag")

        bad = absync(settings, "resync", "--destination", "dst-cli", "--ending-on-or-after", "2026-02-30")
        assert bad.returncode == 2 and "not a date: '2026-02-30'" in bad.stderr

        done = absync(
            settings,
            "resync",
            "--destination",
            "dst-cli",
            "--ending-on-or-after",
            FROM.isoformat(),
            "--department",
            "dep-b",
        )
        assert done.returncode == 0, done.stderr
        assert "deprecated" not in done.stderr
        assert {d.absence_id for d in replays(settings, "dst-cli")} == ids(in_scope("dep-b")) == ids([7, 10])

        # The old flag still works as the write-time filter, and says it is deprecated and what it is.
        future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        old = absync(settings, "resync", "--destination", "dst-old-flag", "--since", future)
        assert old.returncode == 0, old.stderr
        assert "--since is deprecated" in old.stderr and "--changed-since" in old.stderr
        assert "0 upsert(s), 0 delete(s)" in old.stdout  # nothing was written after that time
        past = absync(settings, "resync", "--destination", "dst-old-flag", "--changed-since", "2020-01-01")
        assert past.returncode == 0 and "deprecated" not in past.stderr
        assert f"{COUNT - 1} upsert(s), 1 delete(s)" in past.stdout
        clash = absync(
            settings,
            "resync",
            "--destination",
            "dst-old-flag",
            "--since",
            "2020-01-01",
            "--changed-since",
            future,
        )
        assert clash.returncode == 2 and "disagree" in clash.stderr


def test_the_api_resync_takes_the_date_legal_entity_and_department(settings: Settings, api: Api) -> None:
    with running_fanout(settings), api.client("configure") as admin:
        publish_all(settings)
        wait_fanned_out(settings)
        http_destination(settings, "http://127.0.0.1:9/hook", "dst-api")
        path = "/api/v1/destinations/dst-api/resync"
        deadline = time.monotonic() + LIMIT
        while admin.get("/api/v1/destinations/dst-api").status_code == 404:  # the API's table lags
            assert time.monotonic() < deadline, "the API never saw the destination"
            time.sleep(0.2)
        for wrong in ({"ending_on_or_after": "06/05/2026"}, {"ending_on_or_after": 1746489600}, {"other": 1}):
            assert admin.post(path, json=wrong).status_code == 422, wrong

        body = {"ending_on_or_after": FROM.isoformat(), "legal_entity": "le-fr", "department": "dep-b"}
        started = admin.post(path, json=body)
        assert started.status_code == 202
        assert started.json()["reason"] == "operator"
        assert started.json()["parameters"] == {**body, "changed_since": None}
        while (job := admin.get(path).json())["running"]:
            assert time.monotonic() < deadline, "the resync did not finish in time"
            time.sleep(0.2)
        assert job["completed"] and job["error"] is None
        assert (
            {d.absence_id for d in replays(settings, "dst-api")}
            == ids(in_scope("dep-b", "le-fr"))
            == {"abs-007"}
        )
