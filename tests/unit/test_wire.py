"""The shared HTTP helpers of connectors/wire.py: Retry-After (both forms, hostile values) and the
status -> connector error rule every connector uses."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors.exceptions import BackpressureError, PermanentError, RetryableError
from connectors.wire import MAX_RETRY_AFTER, parse_retry_after, status_error

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),  # not RFC 9110, but sent by some services: read, not refused
        ("Wed, 25 Nov 2026 12:01:30 GMT", 90.0),
        ("Wednesday, 25-Nov-26 12:01:30 GMT", 90.0),  # RFC 850 form
        ("Wed Nov 25 12:01:30 2026", 90.0),  # asctime form, no zone: read as GMT
        ("Wed, 25 Nov 2026 11:00:00 GMT", 0.0),  # in the past: at once
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_both_forms_are_read(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-5",
        "-0.5",
        "+5",
        "soon",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e3",
        "0x10",
        "١٢",  # non-ASCII digits
        "12 34",
        "Wed, 32 Nov 2026 12:00:00 GMT",
        "Mon, 99 Foo 99999 99:99:99 GMT",
        "9" * 201,  # over-long: not even parsed
        "Wed, 25 Nov 2026 12:01:30 GMT, " * 10,
    ],
)
def test_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize(
    "value",
    ["99999999999999999999", "86401", "31536000", "Fri, 31 Dec 9999 23:59:59 GMT"],
)
def test_a_huge_wait_is_bounded(value: str) -> None:
    assert parse_retry_after(value, NOW) == MAX_RETRY_AFTER


def test_every_answer_is_finite_and_in_bounds() -> None:
    for value in (
        "1" * 20,
        "0.000000001",
        "Sat, 01 Jan 0001 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 +1400",
    ):
        seconds = parse_retry_after(value, NOW)
        assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER


def test_429_is_backpressure_with_or_without_a_wait() -> None:
    error = status_error(429, "slow down", retry_after="30")
    assert isinstance(error, BackpressureError) and error.retry_after == 30.0 and error.status_code == 429
    bare = status_error(429, "slow down")
    assert isinstance(bare, BackpressureError) and bare.retry_after is None


def test_503_is_backpressure_only_with_a_usable_retry_after() -> None:
    with_wait = status_error(503, "busy", retry_after="Wed, 25 Nov 2099 12:00:00 GMT")
    assert isinstance(with_wait, BackpressureError) and with_wait.retry_after == MAX_RETRY_AFTER
    for header in (None, "soon", "-1"):
        error = status_error(503, "busy", retry_after=header)
        assert type(error) is RetryableError and error.status_code == 503


def test_a_connector_chooses_its_backpressure_statuses() -> None:
    assert isinstance(status_error(503, "x", always_backpressure=(429, 503)), BackpressureError)  # ADP
    assert isinstance(
        status_error(504, "x", retry_after="5", backpressure_statuses=(429, 503, 504)), BackpressureError
    )
    assert type(status_error(503, "x", retry_after="5", backpressure_statuses=())) is RetryableError  # Google
    throttled = status_error(403, "rateLimitExceeded", throttled=True)
    assert isinstance(throttled, BackpressureError) and throttled.status_code == 403


def test_5xx_and_listed_statuses_are_retryable_the_rest_permanent() -> None:
    assert type(status_error(500, "x")) is RetryableError
    assert type(status_error(599, "x")) is RetryableError
    assert type(status_error(408, "x", retryable_statuses=(408, 425))) is RetryableError
    for status in (400, 401, 403, 404, 408, 410, 302):
        error = status_error(status, "detail")
        assert type(error) is PermanentError and error.status_code == status and error.message == "detail"
