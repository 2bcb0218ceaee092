"""The micro-batcher (connectors/batching.py) on its own: a ``send`` the test controls stands for a
connector's ``deliver_batch`` (no network here; the HTTP batch mode is tested end to end against the
receiver in tests/test_http_batch.py). No sleeps: each test waits on conditions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from connectors.base import CallRecorder, DeliveryOutcome
from connectors.batching import BatchItem, ItemCalls, ItemResult, MicroBatcher
from connectors.exceptions import BackpressureError, ConnectorError, PermanentError, RetryableError
from schemas.delivery import Delivery
from tests.connectors.deliveries import make_delivery

NEVER = 3600.0
"""A linger or deadline no test reaches: the batch must go out for another reason."""


class Sender:
    """Records each batch; answers each item with an outcome naming it, or with ``fail[absence]``.
    ``gate`` (when set) holds every batch until the test opens it."""

    def __init__(self, fail: dict[str, ConnectorError] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail or {}
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, items: Sequence[BatchItem]) -> list[ItemResult]:
        self.batches.append([i.delivery.absence_id for i in items])
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return [
            self.fail.get(i.delivery.absence_id) or DeliveryOutcome(summary=i.delivery.absence_id)
            for i in items
        ]


def deliveries(n: int) -> list[Delivery]:
    return [make_delivery(absence_id=f"abs-{i}") for i in range(n)]


async def until(condition: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0)


async def test_concurrent_calls_share_one_request_when_it_is_full() -> None:
    send = Sender()
    batcher = MicroBatcher(send, max_items=5, linger=NEVER, deadline=NEVER)
    outcomes = await asyncio.gather(*(batcher.deliver(d, CallRecorder()) for d in deliveries(5)))
    assert send.batches == [[f"abs-{i}" for i in range(5)]]
    assert [o.summary for o in outcomes] == [f"abs-{i}" for i in range(5)]


async def test_a_batch_not_full_goes_out_after_the_linger() -> None:
    send = Sender()
    batcher = MicroBatcher(send, max_items=100, linger=0.01, deadline=NEVER)
    outcomes = await asyncio.gather(*(batcher.deliver(d, CallRecorder()) for d in deliveries(3)))
    assert send.batches == [["abs-0", "abs-1", "abs-2"]]
    assert [o.summary for o in outcomes] == ["abs-0", "abs-1", "abs-2"]


async def test_more_calls_than_max_items_make_several_batches_each_caller_its_own_result() -> None:
    send = Sender()
    batcher = MicroBatcher(send, max_items=4, linger=0.01, deadline=NEVER)
    outcomes = await asyncio.gather(*(batcher.deliver(d, CallRecorder()) for d in deliveries(10)))
    assert [len(b) for b in send.batches] == [4, 4, 2]
    assert sorted(a for b in send.batches for a in b) == sorted(f"abs-{i}" for i in range(10))
    assert [o.summary for o in outcomes] == [f"abs-{i}" for i in range(10)]


async def test_one_items_error_is_raised_in_its_caller_only() -> None:
    send = Sender(fail={"abs-1": PermanentError("no such calendar", status_code=404)})
    batcher = MicroBatcher(send, max_items=3, linger=NEVER, deadline=NEVER)
    results = await asyncio.gather(
        *(batcher.deliver(d, CallRecorder()) for d in deliveries(3)), return_exceptions=True
    )
    assert isinstance(results[0], DeliveryOutcome) and isinstance(results[2], DeliveryOutcome)
    assert isinstance(results[1], PermanentError) and results[1].message == "no such calendar"


async def test_a_whole_batch_error_reaches_every_caller_as_its_own_copy() -> None:
    async def throttled(items: Sequence[BatchItem]) -> list[ItemResult]:
        raise BackpressureError("slow down", retry_after=30.0, status_code=429)

    batcher = MicroBatcher(throttled, max_items=3, linger=NEVER, deadline=NEVER)
    results = await asyncio.gather(
        *(batcher.deliver(d, CallRecorder()) for d in deliveries(3)), return_exceptions=True
    )
    assert all(isinstance(r, BackpressureError) and r.retry_after == 30.0 for r in results)
    assert len({id(r) for r in results}) == 3


@pytest.mark.parametrize("answer", ["short", "bug", "junk"])
async def test_a_broken_deliver_batch_fails_every_item_retryably(answer: str) -> None:
    async def broken(items: Sequence[BatchItem]) -> list[ItemResult]:
        if answer == "bug":
            raise KeyError("results")
        if answer == "junk":
            return ["not an outcome"] * len(items)  # type: ignore[list-item]
        return [DeliveryOutcome()]

    batcher = MicroBatcher(broken, max_items=2, linger=NEVER, deadline=NEVER)
    results = await asyncio.gather(
        *(batcher.deliver(d, CallRecorder()) for d in deliveries(2)), return_exceptions=True
    )
    assert all(isinstance(r, RetryableError) for r in results), results


async def test_a_batch_past_its_deadline_fails_every_item_retryably() -> None:
    send = Sender()
    send.gate = asyncio.Event()  # never opened: the receiver hangs
    batcher = MicroBatcher(send, max_items=2, linger=NEVER, deadline=0.05)
    results = await asyncio.gather(
        *(batcher.deliver(d, CallRecorder()) for d in deliveries(2)), return_exceptions=True
    )
    assert all(isinstance(r, RetryableError) and "within 0.05 s" in r.message for r in results)
    assert batcher.in_flight == 0


async def test_a_caller_cancelled_while_queued_is_not_sent() -> None:
    send = Sender()
    batcher = MicroBatcher(send, max_items=3, linger=NEVER, deadline=NEVER)
    first, second = deliveries(2)
    leaving = asyncio.create_task(batcher.deliver(first, CallRecorder()))
    await until(lambda: batcher.waiting == 1)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert batcher.waiting == 0
    staying = [batcher.deliver(d, CallRecorder()) for d in [second, *deliveries(4)[2:]]]
    outcomes = await asyncio.gather(*staying)
    assert send.batches == [["abs-1", "abs-2", "abs-3"]]
    assert [o.summary for o in outcomes] == ["abs-1", "abs-2", "abs-3"]


async def test_a_caller_cancelled_in_flight_leaves_the_others_their_results() -> None:
    send = Sender()
    send.gate = asyncio.Event()
    batcher = MicroBatcher(send, max_items=3, linger=NEVER, deadline=NEVER)
    tasks = [asyncio.create_task(batcher.deliver(d, CallRecorder())) for d in deliveries(3)]
    await send.started.wait()
    tasks[0].cancel()
    send.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [r.summary for r in results[1:]] == ["abs-1", "abs-2"]  # type: ignore[union-attr]


async def test_a_newer_item_of_a_key_waits_for_an_abandoned_older_one_in_flight() -> None:
    send = Sender()
    send.gate = asyncio.Event()
    batcher = MicroBatcher(send, max_items=1, linger=NEVER, deadline=NEVER)
    older = make_delivery(absence_id="abs-k", version=1)
    newer = make_delivery(absence_id="abs-k", version=2)
    abandoned = asyncio.create_task(batcher.deliver(older, CallRecorder()))
    await send.started.wait()
    abandoned.cancel()  # its caller's deadline: the batch goes on
    follower = asyncio.create_task(batcher.deliver(newer, CallRecorder()))
    await until(lambda: abandoned.done())
    for _ in range(20):  # the follower's task runs as far as it can
        await asyncio.sleep(0)
    assert send.batches == [["abs-k"]] and not follower.done()  # held back, not sent beside it
    send.gate.set()
    assert (await follower).summary == "abs-k"
    assert send.batches == [["abs-k"], ["abs-k"]]


async def test_close_fails_waiting_and_in_flight_items_retryably_and_later_calls_at_once() -> None:
    send = Sender()
    send.gate = asyncio.Event()  # the first batch hangs
    batcher = MicroBatcher(send, max_items=2, linger=NEVER, deadline=NEVER)
    flying = [asyncio.create_task(batcher.deliver(d, CallRecorder())) for d in deliveries(2)]
    await send.started.wait()
    waiting = asyncio.create_task(batcher.deliver(make_delivery(absence_id="abs-late"), CallRecorder()))
    await until(lambda: batcher.waiting == 1)
    await batcher.close()
    results = await asyncio.gather(*flying, waiting, return_exceptions=True)
    assert all(isinstance(r, RetryableError) for r in results), results
    assert batcher.in_flight == 0 and batcher.waiting == 0
    with pytest.raises(RetryableError):
        await batcher.deliver(make_delivery(absence_id="abs-after"), CallRecorder())
    assert send.batches == [["abs-0", "abs-1"]]


async def test_item_calls_show_each_item_its_own_part_with_secrets_masked() -> None:
    recorders = [CallRecorder() for _ in range(2)]
    items = [BatchItem(d, r) for d, r in zip(deliveries(2), recorders, strict=True)]
    calls = ItemCalls(
        items,
        "POST",
        "https://hr.example/hook",
        {"X-Api-Token": "s3cr3t-value-123", "webhook-id": "batch_1"},
        ['{"id":"a"}', '{"id":"b"}'],
        secret_headers=["X-Api-Token"],
    )
    calls.finish(200, {"content-type": "application/json"}, ['{"id":"a","status":200}', None])
    first, second = recorders[0].calls[0], recorders[1].calls[0]
    assert first.request_body == '{"id":"a"}' and second.request_body == '{"id":"b"}'
    assert first.response_body == '{"id":"a","status":200}' and first.response_status == 200
    assert "s3cr3t" not in repr(first) and "s3cr3t" not in repr(second)
    assert first.request_headers["webhook-id"] == "batch_1"
