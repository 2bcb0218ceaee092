"""The pure build/parse functions of Graph JSON batching and Google Calendar batch requests: answers
matched by id whatever their order, per-item errors, a per-item Retry-After, and malformed or
missing parts as retryable errors of their own item (never a crash)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import google_batch, graph_batch
from connectors.exceptions import BackpressureError, RetryableError
from connectors.wire import Answer


def graph_answer(responses: object, status: int = 200, **headers: str) -> Answer:
    return Answer(status, httpx.Headers(headers), json.dumps({"responses": responses}).encode())


def sub(i: int, mailbox: str = "a@x") -> graph_batch.SubRequest:
    return graph_batch.SubRequest(str(i), "GET", f"/users/{mailbox}/events", mailbox=mailbox)


# -- Graph ---------------------------------------------------------------------------------------
def test_graph_build_is_the_documented_shape() -> None:
    body = graph_batch.build_batch(
        [sub(1), graph_batch.SubRequest("2", "PATCH", "/users/a@x/events/E1", body={"subject": "Absent"})]
    )
    assert json.loads(body) == {
        "requests": [
            {"id": "1", "method": "GET", "url": "/users/a@x/events"},
            {
                "id": "2",
                "method": "PATCH",
                "url": "/users/a@x/events/E1",
                "headers": {"Content-Type": "application/json"},
                "body": {"subject": "Absent"},
            },
        ]
    }


@pytest.mark.parametrize(
    "requests",
    [
        [],
        [sub(i) for i in range(21)],
        [sub(1), graph_batch.SubRequest("1", "GET", "/me")],
        [graph_batch.SubRequest("a", "GET", "/me"), graph_batch.SubRequest("A", "GET", "/me")],
        [graph_batch.SubRequest("", "GET", "/me")],
        [graph_batch.SubRequest("1", "GET", "https://graph.microsoft.com/v1.0/me")],
        [graph_batch.SubRequest("1", "GET", "me")],
        [graph_batch.SubRequest("1", "TRACE", "/me")],
    ],
)
def test_graph_build_refuses_what_graph_refuses(requests: list[graph_batch.SubRequest]) -> None:
    with pytest.raises(ValueError):
        graph_batch.build_batch(requests)


def test_graph_relative_url() -> None:
    base = "https://graph.microsoft.com/v1.0"
    assert graph_batch.relative_url(base + "/", base + "/users/a/events?x=1") == "/users/a/events?x=1"
    with pytest.raises(ValueError):
        graph_batch.relative_url(base, "https://evil.example/v1.0/users")


def test_graph_split_keeps_20_per_batch_and_4_per_mailbox() -> None:
    requests = [sub(i, "a@x") for i in range(6)] + [sub(10 + i, f"m{i}@x") for i in range(30)]
    batches = graph_batch.split_batches(requests)
    assert sorted(r.id for b in batches for r in b) == sorted(r.id for r in requests)
    for batch in batches:
        assert len(batch) <= 20
        assert sum(r.mailbox == "a@x" for r in batch) <= 4
    assert len(batches) == 2


def test_graph_answers_in_any_order_with_per_item_errors() -> None:
    answer = graph_answer(
        [
            {"id": "3", "status": 404, "body": {"error": {"code": "ErrorItemNotFound"}}},
            {
                "id": "2",
                "status": 429,
                "headers": {"Retry-After": "7", "Content-Type": "application/json"},
                "body": {"error": {"code": "ApplicationThrottled"}},
            },
            {
                "id": "1",
                "status": 200,
                "headers": {"Content-Type": "application/json"},
                "body": {"value": []},
            },
        ]
    )
    results = graph_batch.parse_batch_answer(answer, ["1", "2", "3"])
    one, two, three = results["1"], results["2"], results["3"]
    assert isinstance(one, Answer) and one.status_code == 200 and one.json() == {"value": []}
    assert isinstance(two, Answer) and two.status_code == 429 and two.headers["Retry-After"] == "7"
    assert isinstance(three, Answer) and three.status_code == 404


def test_graph_missing_and_malformed_entries_are_retryable_for_that_item_only() -> None:
    answer = graph_answer(
        [
            {"id": "1", "status": 204},
            {"id": "2", "status": "200"},
            {"id": "2", "status": 200},  # a second entry for an id: the first one counts
            {"id": "99", "status": 200},
            "garbage",
            {"status": 200},
        ]
    )
    results = graph_batch.parse_batch_answer(answer, ["1", "2", "3"])
    assert isinstance(results["1"], Answer) and results["1"].status_code == 204
    assert isinstance(results["2"], RetryableError) and "malformed" in str(results["2"])
    assert isinstance(results["3"], RetryableError)
    assert set(results) == {"1", "2", "3"}


def test_graph_answers_nested_deeper_than_the_parser_goes_are_retryable() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert isinstance(
        graph_batch.parse_batch_answer(Answer(200, httpx.Headers(), deep), ["1"])["1"], RetryableError
    )
    body = b'{"responses":[{"id":"1","status":429,"body":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    assert isinstance(
        graph_batch.parse_batch_answer(Answer(200, httpx.Headers(), body), ["1"])["1"], RetryableError
    )


def test_graph_refused_batch_is_every_items_error() -> None:
    throttled = Answer(429, httpx.Headers({"Retry-After": "30"}), b"{}")
    results = graph_batch.parse_batch_answer(throttled, ["1", "2"])
    assert all(isinstance(r, BackpressureError) and r.retry_after == 30 for r in results.values())
    refused = Answer(400, httpx.Headers(), b'{"error":{"code":"BadRequest"}}')
    results = graph_batch.parse_batch_answer(refused, ["1"])
    assert type(results["1"]) is RetryableError


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_graph_parse_never_raises(content: bytes) -> None:
    results = graph_batch.parse_batch_answer(Answer(200, httpx.Headers(), content), ["1", "2"])
    assert set(results) == {"1", "2"}


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c),
    )
)
def test_graph_parse_never_raises_on_any_json(document: object) -> None:
    results = graph_batch.parse_batch_answer(
        graph_answer([document, {"id": "1", "headers": document}]), ["1"]
    )
    assert set(results) == {"1"}


# -- Google --------------------------------------------------------------------------------------
def google_sub(content_id: str, method: str = "DELETE", body: bytes | None = None) -> google_batch.SubRequest:
    return google_batch.SubRequest(
        content_id,
        method,
        f"/calendar/v3/calendars/primary/events/e{content_id}?sendUpdates=none",
        {"Authorization": f"Bearer token-{content_id}"},
        body,
    )


def google_answer(parts: list[bytes], boundary: str = "batch_xyz") -> Answer:
    body = b"preamble\r\n" + b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return Answer(200, httpx.Headers({"Content-Type": f"multipart/mixed; boundary={boundary}"}), body)


def part(content_id: str, status_line: str, body: bytes = b"", *headers: str) -> bytes:
    head = f"Content-Type: application/http\r\nContent-ID: <response-{content_id}>\r\n\r\n{status_line}\r\n"
    head += "".join(h + "\r\n" for h in headers)
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_google_build_is_the_documented_shape() -> None:
    content_type, body = google_batch.build_batch(
        [google_sub("a+1"), google_sub("a+2", "POST", b'{"id":"x"}')], boundary="b0"
    )
    assert content_type == "multipart/mixed; boundary=b0"
    text = body.decode()
    assert text.startswith("--b0\r\nContent-Type: application/http\r\n")
    assert (
        "Content-ID: <a+1>\r\n\r\nDELETE /calendar/v3/calendars/primary/events/ea+1?sendUpdates=none HTTP/1.1\r\n"
        in text
    )
    assert (
        "Authorization: Bearer token-a+2\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
        in text
    )
    assert text.endswith('{"id":"x"}\r\n--b0--\r\n')


@pytest.mark.parametrize(
    "requests",
    [
        [],
        [google_sub("1"), google_sub("1")],
        [google_batch.SubRequest("1", "GET", "https://www.googleapis.com/calendar/v3/x")],
        [google_batch.SubRequest("1", "GET", "/calendar/v3/x", {"X": "a\r\nInjected: 1"})],
        [google_batch.SubRequest("1", "POST", "/calendar/v3/x", {}, b"--b0\r\n")],
    ],
)
def test_google_build_refuses_what_cannot_be_sent(requests: list[google_batch.SubRequest]) -> None:
    with pytest.raises(ValueError):
        google_batch.build_batch(requests, boundary="b0")


def test_google_answers_matched_by_content_id_in_any_order() -> None:
    error = json.dumps({"error": {"errors": [{"reason": "rateLimitExceeded"}], "code": 403}}).encode()
    answer = google_answer(
        [
            part("a+2", "HTTP/1.1 403 Forbidden", error, "Content-Type: application/json", "Retry-After: 9"),
            part("a+1", "HTTP/1.1 204 No Content"),
            part("a+3", "HTTP/1.1 200 OK", b'{"id":"e3"}', "Content-Type: application/json"),
        ]
    )
    results = google_batch.parse_batch_answer(answer, ["a+1", "a+2", "a+3"])
    one, two, three = results["a+1"], results["a+2"], results["a+3"]
    assert isinstance(one, Answer) and one.status_code == 204 and one.content == b""
    assert isinstance(two, Answer) and two.status_code == 403 and two.headers["Retry-After"] == "9"
    assert two.content == error
    assert isinstance(three, Answer) and three.json() == {"id": "e3"}


def test_google_missing_or_unreadable_parts_are_retryable_for_that_call_only() -> None:
    answer = google_answer(
        [
            part("a+1", "HTTP/1.1 200 OK", b"{}"),
            part("a+2", "NOT HTTP"),
            b"Content-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",  # no Content-ID
            part("zzz", "HTTP/1.1 200 OK"),
        ]
    )
    results = google_batch.parse_batch_answer(answer, ["a+1", "a+2", "a+3"])
    assert isinstance(results["a+1"], Answer)
    assert isinstance(results["a+2"], RetryableError) and "unreadable" in str(results["a+2"])
    assert isinstance(results["a+3"], RetryableError)


def test_google_answer_not_multipart_or_refused() -> None:
    not_multipart = Answer(200, httpx.Headers({"Content-Type": "application/json"}), b"{}")
    assert all(
        isinstance(r, RetryableError) for r in google_batch.parse_batch_answer(not_multipart, ["1"]).values()
    )
    throttled = Answer(429, httpx.Headers({"Retry-After": "5"}), b"")
    result = google_batch.parse_batch_answer(throttled, ["1"])["1"]
    assert isinstance(result, BackpressureError) and result.retry_after == 5


def test_google_boundary_forms() -> None:
    assert google_batch.boundary_of('multipart/mixed; boundary="a b"') == "a b"
    assert google_batch.boundary_of("Multipart/Mixed; charset=x; BOUNDARY=batch_1") == "batch_1"
    assert google_batch.boundary_of("application/json; boundary=x") is None


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=600))
def test_google_parse_never_raises(content: bytes) -> None:
    noisy = b"--b\r\n" + content + b"\r\n--b\r\nContent-ID: <response-1>\r\n\r\n" + content + b"\r\n--b--"
    for body in (content, noisy):
        answer = Answer(200, httpx.Headers({"Content-Type": "multipart/mixed; boundary=b"}), body)
        assert set(google_batch.parse_batch_answer(answer, ["1", "2"])) == {"1", "2"}


def test_google_parse_is_bounded() -> None:
    huge = google_answer([part(str(i), "HTTP/1.1 200 OK") for i in range(5000)])
    results = google_batch.parse_batch_answer(huge, ["1", "4999"])
    assert isinstance(results["1"], Answer)
    assert isinstance(results["4999"], RetryableError)  # past the parts read
    long_head = google_answer(
        [b"Content-ID: <response-1>\r\n" + b"X: y\r\n" * 1000 + b"\r\nHTTP/1.1 200 OK\r\n\r\n"]
    )
    assert isinstance(google_batch.parse_batch_answer(long_head, ["1"])["1"], RetryableError)
