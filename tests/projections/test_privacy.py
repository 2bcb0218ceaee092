"""Personal data in the view, on SQLite and PostgreSQL: payloads past ABSYNC_PAYLOAD_RETENTION are
dropped (by the sweep, and on the way in, so a rebuild does not restore them), and an erasure removes
an employee and stays erased through a rebuild, recorded without the email."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from projections.db import attempts, deliveries, destination_audit, erasures, writer
from projections.privacy import ERASED, Privacy, drop_old_payloads, erase_from_view, subject_id, subject_keys
from projections.projector import Projector, reset
from schemas.delivery import DeliveryStatus, Status
from streams.settings import Settings
from tests.projections.helpers import DESTINATIONS_TOPIC, STATUS_TOPIC, at, fact, status_records

KEYS = subject_keys(Settings())
JANE = ("Jane Doe", "jane@acme.com")
BOB = ("Bob Roe", "bob@acme.com")


def facts() -> list[DeliveryStatus]:
    """Jane's delivery (an attempt at T0 that failed naming her mailbox, then one that succeeded), and
    Bob's (one attempt a day later)."""
    return [
        fact("dlv_j", Status.PENDING, seq=0, when=0, employee=JANE),
        fact(
            "dlv_j",
            Status.ERROR,
            seq=1,
            when=10,
            attempt=1,
            attempted=True,
            error="mailbox JANE@acme.com not found",
            employee=JANE,
        ),
        fact("dlv_j", Status.SUCCESSFUL, seq=2, when=20, attempt=2, attempted=True, employee=JANE),
        fact(
            "dlv_b",
            Status.SUCCESSFUL,
            seq=0,
            when=86_400 + 30,
            attempt=1,
            attempted=True,
            employee=BOB,
            absence="abs_2",
        ),
    ]


def project(
    engine: Engine,
    privacy: Privacy,
    items: Sequence[DeliveryStatus],
    *,
    rebuild: bool = False,
    offset: int = 0,
) -> None:
    with writer(engine.connect()) as conn, conn.begin():
        if rebuild:
            reset(conn)
        Projector(STATUS_TOPIC, DESTINATIONS_TOPIC, privacy=privacy).apply(
            conn, status_records(items, first_offset=offset)
        )


def attempt_rows(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return {r["status_id"]: dict(r) for r in conn.execute(sa.select(attempts)).mappings()}


def everything(engine: Engine) -> str:
    """Every row of every table, as text (to look for an email anywhere)."""
    with engine.connect() as conn:
        return json.dumps(
            {
                t.name: [dict(r) for r in conn.execute(sa.select(t)).mappings()]
                for t in (deliveries, attempts, destination_audit, erasures)
            },
            default=str,
        )


def test_payloads_past_the_retention_are_dropped_and_a_rebuild_does_not_restore_them(engine: Engine) -> None:
    clock = {"now": at(3600)}
    privacy = Privacy(KEYS, dt.timedelta(days=1), clock=lambda: clock["now"])
    project(engine, privacy, facts())
    rows = attempt_rows(engine)
    assert not any(r["payload_dropped"] for r in rows.values())  # all younger than a day

    # Two days later: the sweep drops what is older than a day (Jane's), keeps Bob's; then nothing.
    clock["now"] = at(2 * 86_400)
    assert drop_old_payloads(engine, clock["now"] - privacy.retention) == 2
    assert drop_old_payloads(engine, clock["now"] - privacy.retention) == 0
    rows = attempt_rows(engine)
    for status_id in ("dlv_j:1", "dlv_j:2"):
        row = rows[status_id]
        assert row["payload_dropped"] and row["request_body"] == "" and row["response_body"] is None
        assert row["request_headers"] == {} and row["response_headers"] == {} and row["calls"] == []
        assert row["request_url"] == "https://hooks.example.com"  # where it went, not the path
        assert row["response_status"] in (200, 503) and row["number"] in (1, 2)  # the outcome stays
    assert not rows["dlv_b:0"]["payload_dropped"] and rows["dlv_b:0"]["request_body"] != ""

    # A rebuild replays the facts (still in delivery-status): the old payloads stay dropped.
    project(engine, privacy, facts(), rebuild=True)
    assert attempt_rows(engine) == rows


def test_an_erasure_removes_the_employee_and_a_rebuild_does_not_bring_her_back(engine: Engine) -> None:
    privacy = Privacy(KEYS, dt.timedelta(days=3650), clock=lambda: at(0))
    project(engine, privacy, facts())
    assert "jane" in everything(engine).casefold()

    # Another tenant's erasure of the same address leaves acme's rows alone.
    other = erase_from_view(engine, KEYS, "jane@acme.com", actor="admin", tenant="globex")
    assert other.deliveries == 0 and "jane@acme.com" in everything(engine)

    erased = erase_from_view(engine, KEYS, "  Jane@ACME.com ", actor="admin", absences=1)
    assert erased.subject == subject_id(KEYS[0], "jane@acme.com") and erased.deliveries == 1
    assert erased.destinations == ["dst_1"]

    def check() -> None:
        text = everything(engine)
        assert "jane" not in text.casefold(), "the email or the name is still in the view or the audit"
        with engine.connect() as conn:
            jane = (
                conn.execute(sa.select(deliveries).where(deliveries.c.delivery_id == "dlv_j"))
                .mappings()
                .one()
            )
            bob = (
                conn.execute(sa.select(deliveries).where(deliveries.c.delivery_id == "dlv_b"))
                .mappings()
                .one()
            )
        assert (jane["employee_name"], jane["employee_email"], jane["employee_id"]) == (
            ERASED,
            None,
            erased.subject,
        )
        assert jane["status"] == Status.SUCCESSFUL.value  # what happened stays; who it was does not
        assert (bob["employee_name"], bob["employee_email"]) == BOB
        rows = attempt_rows(engine)
        assert (
            rows["dlv_j:1"]["payload_dropped"] and rows["dlv_j:1"]["error"] == f"mailbox {ERASED} not found"
        )
        assert not rows["dlv_b:0"]["payload_dropped"]

    check()
    with engine.connect() as conn:
        audit = conn.execute(sa.select(destination_audit)).mappings().all()
        ledger = conn.execute(sa.select(erasures)).mappings().all()
    assert [(a["action"], a["destination_id"], a["changes"]) for a in audit] == [
        ("erase", "dst_1", {"subject": erased.subject, "deliveries": 1})
    ]
    assert {(e["subject"], e["tenant"], e["deliveries"]) for e in ledger} >= {(erased.subject, None, 1)}

    # A rebuild from delivery-status (which still holds Jane's facts) does not bring her back, nor
    # does a late fact about her.
    project(engine, privacy, facts(), rebuild=True)
    late = fact("dlv_j2", Status.ERROR, seq=0, when=40, attempt=1, attempted=True, error="x", employee=JANE)
    project(engine, privacy, [late], offset=len(facts()))
    check()
    with engine.connect() as conn:
        late_row = (
            conn.execute(sa.select(deliveries).where(deliveries.c.delivery_id == "dlv_j2")).mappings().one()
        )
    assert late_row["employee_name"] == ERASED and late_row["employee_email"] is None
