"""The delay gate (streams/delay.py) as a pure state machine: a manual clock, real
confluent-kafka ``Message`` objects, no broker.

The property at the end drives the gate the way the delivery worker's poll loop does (pause what is
gated, seek and resume what :meth:`DelayGate.due_partitions` names) against a consumer model that may
hand over records fetched before a pause and may lose a seek, and checks that every record of every
partition is processed once, in offset order, never before its due time.
"""

from __future__ import annotations

from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.delay import DUE_AT_HEADER, RESEEK_MS, DelayGate, due_at_header, header_due_ms, now_ms

RETRY = "retry-1"
OTHER = "deliveries"
T0 = 1_800_000_000_000  # epoch ms


class ManualClock:
    """Epoch milliseconds that move only when the test says so."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class BodyDue:
    """The body fallback: the record's value is its due time in ASCII epoch ms; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, msg: Message) -> int:
        self.calls += 1
        value = msg.value()
        assert value is not None
        return int(value)


def record(
    offset: int,
    due: int | None,
    *,
    partition: int = 0,
    topic: str = RETRY,
    body_due: int = 0,
    raw_header: bytes | None = None,
) -> Message:
    """A consumed record; ``due`` goes into the due-at header (none when None), ``body_due`` into the
    body; ``raw_header`` puts those bytes in the header instead."""
    headers: list[tuple[str, str | bytes | None]] = []
    if raw_header is not None:
        headers.append((DUE_AT_HEADER, raw_header))
    elif due is not None:
        headers.append((DUE_AT_HEADER, str(due).encode()))
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        headers=headers,
        key=b"dst|abs",
        value=str(body_due).encode(),
    )


def gate_with(clock: ManualClock, body: BodyDue | None = None) -> DelayGate:
    return DelayGate([RETRY, "retry-2"], body or BodyDue(), clock=clock)


# -- admission ------------------------------------------------------------------------------------


def test_records_of_other_topics_are_admitted_whatever_their_due_time() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert gate.admit(record(7, T0 + 3_600_000, topic=OTHER))
    assert gate.gated == frozenset()


def test_a_record_is_admitted_from_its_due_time_on_and_not_a_millisecond_before() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert gate.admit(record(0, T0))  # due now
    assert gate.admit(record(1, T0 - 1))  # overdue
    assert not gate.admit(record(2, T0 + 1, partition=1))  # one ms early
    assert gate.gated == {(RETRY, 1)}


def test_a_gated_partition_refuses_everything_until_its_head_is_due_and_others_go_on() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert not gate.admit(record(10, T0 + 1_000))
    # records fetched behind the head, even overdue ones, wait for it (offset order)
    assert not gate.admit(record(11, T0 - 5_000))
    assert not gate.admit(record(10, T0 + 1_000))
    # another partition of the same topic, and another delay topic, are not blocked
    assert gate.admit(record(3, T0, partition=2))
    assert gate.admit(record(0, T0 - 1, topic="retry-2"))
    assert gate.gated == {(RETRY, 0)}

    clock.advance(999)
    assert gate.due_partitions() == {}
    assert not gate.admit(record(12, T0))
    assert gate.gated == {(RETRY, 0)}


def test_a_due_head_is_sought_back_then_admitted_and_the_partition_flows_again() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert not gate.admit(record(10, T0 + 1_000))
    clock.advance(1_000)
    assert gate.due_partitions() == {(RETRY, 0): 10}
    assert gate.gated == frozenset()  # resumed: the poll loop seeks it to offset 10
    assert gate.due_partitions() == {}  # asked once; again only after RESEEK_MS
    assert gate.admit(record(10, T0 + 1_000))
    assert gate.admit(record(11, T0 + 1_000))
    clock.advance(RESEEK_MS)
    assert gate.due_partitions() == {}  # the head came back: nothing to seek any more


def test_while_rewinding_only_the_head_is_admitted_and_another_record_asks_for_a_seek_at_once() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert not gate.admit(record(10, T0 + 1_000))
    clock.advance(1_000)
    assert gate.due_partitions() == {(RETRY, 0): 10}
    # the consumer's own repositioning landed after our seek: records behind the head arrive
    assert not gate.admit(record(11, T0))
    assert not gate.admit(record(12, T0))
    assert gate.due_partitions() == {(RETRY, 0): 10}  # sought again without waiting RESEEK_MS
    assert gate.admit(record(10, T0 + 1_000))


def test_a_rewinding_partition_whose_head_does_not_come_back_is_sought_again_every_reseek_interval() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert not gate.admit(record(4, T0 + 200, partition=1))
    clock.advance(200)
    assert gate.due_partitions() == {(RETRY, 1): 4}
    clock.advance(RESEEK_MS - 1)
    assert gate.due_partitions() == {}
    clock.advance(1)
    assert gate.due_partitions() == {(RETRY, 1): 4}
    clock.advance(RESEEK_MS - 1)
    assert gate.due_partitions() == {}
    clock.advance(1)
    assert gate.due_partitions() == {(RETRY, 1): 4}
    assert gate.admit(record(4, T0 + 200, partition=1))


def test_a_later_head_not_yet_due_gates_the_partition_again() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert not gate.admit(record(0, T0 + 100))
    clock.advance(100)
    assert gate.due_partitions() == {(RETRY, 0): 0}
    assert gate.admit(record(0, T0 + 100))
    assert not gate.admit(record(1, T0 + 5_000))  # a Retry-After floor further out
    assert gate.gated == {(RETRY, 0)}
    clock.advance(4_899)
    assert gate.due_partitions() == {}
    clock.advance(1)
    assert gate.due_partitions() == {(RETRY, 0): 1}


# -- where the due time comes from ----------------------------------------------------------------


def test_the_header_decides_without_reading_the_body() -> None:
    clock = ManualClock()
    body = BodyDue()
    gate = gate_with(clock, body)
    assert gate.admit(record(0, T0, body_due=T0 + 10_000))  # header due, body not: header wins
    assert not gate.admit(record(0, T0 + 10_000, partition=1, body_due=T0))  # and the other way round
    assert body.calls == 0


def test_the_body_is_read_when_the_header_is_missing_empty_or_not_a_number() -> None:
    clock = ManualClock()
    body = BodyDue()
    gate = gate_with(clock, body)
    assert gate.admit(record(0, None, body_due=T0))
    assert not gate.admit(record(0, None, partition=1, body_due=T0 + 1))
    assert not gate.admit(record(0, None, partition=2, raw_header=b"", body_due=T0 + 1))
    assert not gate.admit(record(0, None, partition=3, raw_header=b"tomorrow", body_due=T0 + 1))
    assert body.calls == 4
    assert gate.gated == {(RETRY, 1), (RETRY, 2), (RETRY, 3)}


def test_the_header_written_for_a_delay_topic_reads_back_as_its_due_time() -> None:
    import datetime as dt

    due = dt.datetime(2027, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    name, value = due_at_header(due)
    msg = Message(topic=RETRY, partition=0, offset=0, headers=[(name, value)])
    assert header_due_ms(msg) == int(due.timestamp() * 1000)
    assert header_due_ms(Message(topic=RETRY, partition=0, offset=0)) is None


# -- forget, seconds_to_next, the default clock ---------------------------------------------------


def test_forget_drops_gated_and_rewinding_partitions_which_are_rebuilt_from_their_records() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert not gate.admit(record(5, T0 + 1_000, partition=0))
    assert not gate.admit(record(8, T0 + 50, partition=1))
    clock.advance(50)
    assert gate.due_partitions() == {(RETRY, 1): 8}  # partition 1 rewinding to 8

    gate.forget([(RETRY, 0), (RETRY, 1), (RETRY, 9)])  # 9 was never seen: ignored
    assert gate.gated == frozenset()
    clock.advance(RESEEK_MS)
    assert gate.due_partitions() == {}
    # whoever gets the partitions next starts from the records themselves
    assert gate.admit(record(9, T0, partition=1))  # no head to wait for any more
    assert not gate.admit(record(5, T0 + 1_000, partition=0))  # still not due: gated again
    assert gate.gated == {(RETRY, 0)}


def test_forget_leaves_the_other_partitions_alone() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert not gate.admit(record(1, T0 + 100, partition=0))
    assert not gate.admit(record(1, T0 + 100, partition=1))
    gate.forget([(RETRY, 0)])
    assert gate.gated == {(RETRY, 1)}
    clock.advance(100)
    assert gate.due_partitions() == {(RETRY, 1): 1}


def test_seconds_to_next_is_the_wait_for_the_nearest_gated_head_bounded_by_the_default() -> None:
    clock = ManualClock()
    gate = gate_with(clock)
    assert gate.seconds_to_next(1.0) == 1.0  # nothing gated
    assert not gate.admit(record(0, T0 + 7_000, partition=0))
    assert not gate.admit(record(0, T0 + 2_500, partition=1))
    assert gate.seconds_to_next(10.0) == 2.5
    assert gate.seconds_to_next(1.0) == 1.0
    clock.advance(2_000)
    assert gate.seconds_to_next(10.0) == 0.5
    clock.advance(1_000)  # overdue, not resumed yet
    assert gate.seconds_to_next(10.0) == 0.0
    assert gate.due_partitions() == {(RETRY, 1): 0}
    assert gate.seconds_to_next(10.0) == 4.0


def test_without_a_clock_the_gate_reads_the_wall_clock() -> None:
    gate = DelayGate([RETRY], BodyDue())
    assert gate.admit(record(0, now_ms() - 1))
    assert not gate.admit(record(0, now_ms() + 3_600_000, partition=1))
    assert gate.gated == {(RETRY, 1)}
    assert 3_500 < gate.seconds_to_next(7_200.0) <= 3_600


# -- property: the gate inside a poll loop --------------------------------------------------------

PARTITIONS = 3

poll = st.tuples(st.just("poll"), st.integers(0, PARTITIONS - 1))
advance = st.tuples(st.just("advance"), st.integers(0, 3 * RESEEK_MS))
tick = st.tuples(st.just("tick"), st.booleans())  # the boolean: the consumer loses our seek


@settings(max_examples=300, deadline=None)
@given(
    dues=st.lists(st.lists(st.integers(-1_000, 5_000), max_size=6), min_size=PARTITIONS, max_size=PARTITIONS),
    steps=st.lists(st.one_of(poll, advance, tick), max_size=60),
)
def test_in_a_poll_loop_every_record_is_processed_once_in_order_and_never_before_it_is_due(
    dues: list[list[int]], steps: list[tuple[str, object]]
) -> None:
    """``dues[p][o]``: due time of offset ``o`` of partition ``p``, relative to the start.

    The consumer model: a position per partition; ``poll p`` hands over the record at the position
    (even of a paused partition: records fetched before the pause) and moves on; ``tick`` is the poll
    loop's turn: pause what is gated, seek and resume what is due, unless the consumer loses the seek
    (its own repositioning on resume landed elsewhere).
    """
    clock = ManualClock()
    gate = DelayGate([RETRY], BodyDue(), clock=clock)
    position = [0] * PARTITIONS
    paused: set[int] = set()
    processed: list[list[int]] = [[] for _ in range(PARTITIONS)]

    def poll_one(p: int) -> bool:
        if position[p] >= len(dues[p]):
            return False
        offset = position[p]
        position[p] += 1
        due = T0 + dues[p][offset]
        if gate.admit(record(offset, due, partition=p)):
            assert due <= clock.now, f"offset {offset} of partition {p} admitted before it was due"
            processed[p].append(offset)
        return True

    def poll_loop_turn(lose_seek: bool) -> None:
        paused.update(p for _, p in gate.gated)
        for (_, p), offset in gate.due_partitions().items():
            paused.discard(p)
            if not lose_seek:
                position[p] = offset

    for step, arg in steps:
        if step == "poll":
            assert isinstance(arg, int)
            poll_one(arg)
        elif step == "advance":
            assert isinstance(arg, int)
            clock.advance(arg)
        else:
            assert isinstance(arg, bool)
            poll_loop_turn(arg)

    # then the loop runs on faithfully, the clock moving by RESEEK_MS when nothing else moves
    for _ in range(200):
        poll_loop_turn(False)
        while any(poll_one(p) for p in range(PARTITIONS) if p not in paused):
            poll_loop_turn(False)
        if all(len(processed[p]) == len(dues[p]) for p in range(PARTITIONS)) and not gate.gated:
            break
        clock.advance(RESEEK_MS)
    for p in range(PARTITIONS):
        assert processed[p] == list(range(len(dues[p]))), f"partition {p}"
