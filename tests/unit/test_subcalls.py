"""connectors.subcalls.Rounds: deliveries' calls coalesced round by round, each call's result to its
own delivery, errors of a round never a crash (no network: the sender is a function)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from connectors.base import CallRecorder, DeliveryOutcome
from connectors.batching import BatchItem
from connectors.exceptions import ConfigurationError, ConnectorError, PermanentError, RetryableError
from connectors.subcalls import Rounds
from tests.connectors.deliveries import make_delivery


def items(n: int) -> list[BatchItem]:
    return [BatchItem(make_delivery(absence_id=f"abs-{i}"), CallRecorder()) for i in range(n)]


async def test_calls_of_one_step_go_together_and_each_result_reaches_its_caller() -> None:
    sent: list[list[str]] = []

    async def send(calls: list[tuple[BatchItem, str]]) -> Sequence[str | ConnectorError]:
        sent.append([request for _, request in calls])
        return [PermanentError("refused") if r == "write-1" else f"ok:{r}" for _, r in calls]

    rounds: Rounds[str, str] = Rounds(send)
    batch = items(3)

    async def deliver(item: BatchItem) -> DeliveryOutcome:
        n = batch.index(item)
        found = await rounds.call(item, f"find-{n}")
        if n == 2:
            return DeliveryOutcome(summary=found)  # done after one call: the next round does not wait for it
        await asyncio.sleep(0)  # other awaits between calls do not split a round
        return DeliveryOutcome(summary=await rounds.call(item, f"write-{n}"))

    results = await rounds.run(batch, deliver)
    assert sent == [["find-0", "find-1", "find-2"], ["write-0", "write-1"]]
    assert [r.summary if isinstance(r, DeliveryOutcome) else type(r) for r in results] == [
        "ok:write-0",
        PermanentError,
        "ok:find-2",
    ]
    assert rounds.rounds == 2


async def test_a_failing_sender_fails_the_rounds_calls_never_the_run() -> None:
    async def crashing(calls: list[tuple[BatchItem, str]]) -> Sequence[str | ConnectorError]:
        raise KeyError("bug")

    async def short(calls: list[tuple[BatchItem, str]]) -> Sequence[str | ConnectorError]:
        return ["only one"]

    async def refusing(calls: list[tuple[BatchItem, str]]) -> Sequence[str | ConnectorError]:
        raise ConfigurationError("refused")

    for send, expected in (
        (crashing, RetryableError),
        (short, RetryableError),
        (refusing, ConfigurationError),
    ):
        rounds: Rounds[str, str] = Rounds(send)

        async def deliver(item: BatchItem, rounds: Rounds[str, str] = rounds) -> DeliveryOutcome:
            return DeliveryOutcome(summary=await rounds.call(item, "x"))

        results = await rounds.run(items(2), deliver)
        assert [type(r) for r in results] == [expected, expected]
        assert results[0] is not results[1]


async def test_a_delivery_that_raises_is_its_own_result() -> None:
    async def send(calls: list[tuple[BatchItem, str]]) -> Sequence[str | ConnectorError]:
        return ["ok" for _ in calls]

    rounds: Rounds[str, str] = Rounds(send)
    batch = items(2)

    async def deliver(item: BatchItem) -> DeliveryOutcome:
        if item is batch[0]:
            raise ValueError("a bug in one delivery")
        return DeliveryOutcome(summary=await rounds.call(item, "x"))

    results = await rounds.run(batch, deliver)
    assert isinstance(results[0], RetryableError) and "ValueError" in results[0].message
    assert isinstance(results[1], DeliveryOutcome)


async def test_cancelling_the_run_cancels_every_delivery() -> None:
    started = asyncio.Event()

    async def hang(calls: list[tuple[BatchItem, str]]) -> Sequence[str | ConnectorError]:
        started.set()
        await asyncio.Event().wait()
        return []

    rounds: Rounds[str, str] = Rounds(hang)

    async def deliver(item: BatchItem) -> DeliveryOutcome:
        return DeliveryOutcome(summary=await rounds.call(item, "x"))

    run = asyncio.ensure_future(rounds.run(items(2), deliver))
    await started.wait()
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert run.cancelled()
