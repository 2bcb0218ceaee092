"""A Kafka producer whose sends are awaitable on asyncio: :class:`AsyncProducer`.

``await send(...)`` returns once Kafka acknowledged the record (with the producer's ``acks``), and
raises :class:`ProduceError` when Kafka refused it. Not transactional: for a processor that runs
outside :mod:`streams.processor`'s transactions (the delivery worker) and orders its own writes by
awaiting them.
"""

from __future__ import annotations

import asyncio

from confluent_kafka import Message, Producer

from streams.kafka import try_produce


class ProduceError(Exception):
    """Kafka did not accept a record (the send's acknowledgement carried an error)."""


class AsyncProducer:
    """A producer whose sends are awaitable (acknowledged by Kafka), served on the event loop.

    While acknowledgements are awaited, a task of the loop polls the producer every millisecond and
    the callbacks settle their futures directly. A thread of its own polling the producer (as before)
    cost 13% of the worker's CPU in GIL hand-overs and thread-safe wake-ups of the loop
    (docs/performance.md); nothing is polled while nothing is awaited.
    Built and used in the event loop's thread only.
    """

    POLL_INTERVAL = 0.001

    def __init__(self, producer: Producer, loop: asyncio.AbstractEventLoop) -> None:
        self._producer = producer
        self._loop = loop
        self._pending = 0
        self._awaited = asyncio.Event()
        self._poller = loop.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            if self._pending == 0:
                self._awaited.clear()
                await self._awaited.wait()
            self._producer.poll(0)
            await asyncio.sleep(self.POLL_INTERVAL)

    async def send(
        self,
        topic: str,
        key: str,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Returns once Kafka acknowledged the record; raises :class:`ProduceError` if it refused it.
        Waits (without blocking the loop) while librdkafka's local queue is full."""
        done: asyncio.Future[None] = self._loop.create_future()

        def acknowledged(err: object, _msg: Message) -> None:
            self._pending -= 1
            if done.done():
                return
            if err is None:
                done.set_result(None)
            else:
                done.set_exception(ProduceError(f"Kafka did not accept a record: {err}"))

        while not try_produce(
            self._producer,
            topic,
            key.encode(),
            value,
            partition=partition,
            headers=list(headers or []),
            on_delivery=acknowledged,
        ):  # local queue full: let the callbacks catch up
            self._producer.poll(0)
            await asyncio.sleep(0.05)
        self._pending += 1
        self._awaited.set()
        await done

    def close(self) -> None:
        """Waits for what is in flight (its callbacks run here), then stops polling."""
        self._producer.flush(30)
        self._poller.cancel()
