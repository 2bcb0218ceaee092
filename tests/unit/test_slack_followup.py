"""The Slack post's retry ladder and record, as pure functions (no broker)."""

from __future__ import annotations

import datetime as dt
import json

from connectors.exceptions import BackpressureError, ConfigurationError, ConnectorError, RetryableError
from processors.slack_followup import MANUAL, Outcome, PostRecord, after_failure
from schemas.delivery import Status, slack_post_absence_id, slack_post_delivery_id

DELAYS = (300.0, 900.0, 3600.0, 86400.0)
NINE = dt.datetime(2026, 3, 9, 9, 0, tzinfo=dt.UTC)
MIDNIGHT = dt.datetime(2026, 3, 10, 0, 0, tzinfo=dt.UTC)
WALL = 1_800_000_000.0


def fail(
    record: PostRecord, error: ConnectorError, *, final: bool = False, now: dt.datetime = NINE
) -> Outcome:
    return after_failure(
        record,
        error,
        record.attempts + 1,
        DELAYS,
        final=final,
        revision=3,
        now=now,
        day_ends=MIDNIGHT,
        wall_now=WALL,
    )


def test_the_ladder_goes_stage_by_stage_then_to_error() -> None:
    record = PostRecord("C1", None, "")
    seen = []
    for _ in range(3):
        outcome = fail(record, RetryableError("Slack chat.postMessage answered 503"))
        record = outcome.record
        seen.append((outcome.status, record.stage, record.due - WALL))
    assert seen == [
        (Status.PENDING, 1, 300.0),
        (Status.PENDING, 2, 900.0),
        (Status.PENDING, 3, 3600.0),
    ]
    # The fourth delay (24 h) would fall on a later day: a post is never made on a later day.
    last = fail(record, RetryableError("down"))
    assert last.status is Status.ERROR and "no retry before the day ends" in last.error
    assert last.record.due == 0.0 and last.record.attempts == 4


def test_retry_after_is_a_floor_and_permanent_or_final_is_error_at_once() -> None:
    record = PostRecord("C1", "1.1", "d")
    throttled = fail(record, BackpressureError("ratelimited", retry_after=1200.0))
    assert throttled.record.due == WALL + 1200.0
    assert throttled.next_retry_at == dt.datetime.fromtimestamp(WALL + 1200.0, dt.UTC)
    for outcome in (
        fail(record, ConfigurationError("invalid_auth")),
        fail(record, RetryableError("down"), final=True),
    ):
        assert outcome.status is Status.ERROR and outcome.next_retry_at is None
        assert outcome.record.revision == 3 and outcome.record.ts == "1.1"


def test_automatic_attempts_stop_in_error_until_the_destination_changes_and_after_a_mark() -> None:
    error = PostRecord("C1", "1.1", "old", 2, 0, Status.ERROR.value, 0.0, revision=3)
    assert not error.automatic_attempt_due("new", revision=3, now=WALL)
    assert error.automatic_attempt_due("new", revision=4, now=WALL)
    assert not PostRecord("C1", "1.1", "old", status=MANUAL).automatic_attempt_due("new", 3, WALL)
    done = PostRecord("C1", "1.1", "same", status=Status.SUCCESSFUL.value)
    assert not done.automatic_attempt_due("same", 3, WALL)
    assert done.automatic_attempt_due("changed", 3, WALL)
    pending = PostRecord("C1", None, "", 1, 1, Status.PENDING.value, due=WALL + 5)
    assert not pending.automatic_attempt_due("x", 3, WALL) and pending.automatic_attempt_due("x", 3, WALL + 5)


def test_records_written_before_posts_were_followed_are_read() -> None:
    made = PostRecord.from_bytes(json.dumps({"channel": "C1", "ts": "1.1", "digest": "d"}).encode())
    intent = PostRecord.from_bytes(json.dumps({"channel": "C1", "ts": None, "digest": ""}).encode())
    assert (made.status, made.attempts, intent.status) == (Status.SUCCESSFUL.value, 0, Status.PENDING.value)
    assert PostRecord.from_bytes(made.to_bytes()) == made


def test_one_delivery_id_per_destination_channel_and_day() -> None:
    ids = {
        slack_post_delivery_id(d, c, day)
        for d in ("dst-a", "dst-b")
        for c in ("C1", "C2")
        for day in ("2026-03-09", "2026-03-10")
    }
    assert len(ids) == 8 and all(i.startswith("dlv_") for i in ids)
    assert slack_post_delivery_id("dst-a", "C1", "2026-03-09") == slack_post_delivery_id(
        "dst-a", "C1", "2026-03-09"
    )
    assert slack_post_absence_id("2026-03-09") == "slack-post:2026-03-09"
