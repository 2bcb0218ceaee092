"""The change feed's per-stream rules, without server or database: coalescing keeps the latest state
per delivery (in the order of the latest changes), the bound turns into a resync with nothing kept,
and the counters follow the subscriber's scope (issue 19)."""

from __future__ import annotations

import json

from absync.web.feed import Change, Closed, Counters, Scope, Subscriber


def change(seq: int, delivery: str, status: str, tenant: str = "acme", destination: str = "d1") -> Change:
    text = json.dumps({"delivery_id": delivery, "status": status, "tenant": tenant})
    return Change(seq, delivery, tenant, destination, text)


def items(subscriber: Subscriber, counters: Counters) -> list[tuple[str, str]]:
    batch = subscriber.take(counters)
    assert batch is not None
    return [(d["delivery_id"], d["status"]) for d in json.loads(batch.json())["items"]]


def test_a_batch_holds_the_latest_state_per_delivery_in_the_order_of_latest_changes() -> None:
    subscriber = Subscriber(Scope(None), "hash", None, max_pending=10)
    for seq, (delivery, status) in enumerate(
        [("a", "PENDING"), ("b", "PENDING"), ("a", "ERROR"), ("c", "PENDING"), ("a", "SUCCESSFUL")]
    ):
        assert subscriber.offer(change(seq, delivery, status))
    counters = Counters()
    assert items(subscriber, counters) == [("b", "PENDING"), ("c", "PENDING"), ("a", "SUCCESSFUL")]
    assert subscriber.take(counters) is None  # taken: nothing left


def test_one_delivery_over_the_bound_means_resync_and_nothing_kept() -> None:
    subscriber = Subscriber(Scope(None), "hash", None, max_pending=3)
    for seq, delivery in enumerate("abc"):
        assert subscriber.offer(change(seq, delivery, "PENDING"))
    assert subscriber.offer(change(3, "a", "SUCCESSFUL"))  # the same delivery again: still three
    assert not subscriber.offer(change(4, "d", "PENDING"))
    assert subscriber.closed is Closed.RESYNC
    assert subscriber.pending == {}
    assert not subscriber.offer(change(5, "e", "PENDING"))  # closed: takes nothing more


def test_counters_follow_the_scope_and_come_only_when_they_moved() -> None:
    counters = Counters()
    counters.replace(
        {("acme", "d1", "SUCCESSFUL"): 3, ("acme", "d2", "ERROR"): 1, ("globex", "d1", "PENDING"): 5}
    )
    assert json.loads(counters.text(Scope("acme"))) == {
        "counts": {"PENDING": 0, "SUCCESSFUL": 3, "ERROR": 1, "SUPERSEDED": 0},
        "total": 4,
    }
    assert json.loads(counters.text(Scope("acme", "d2")))["total"] == 1
    assert json.loads(counters.text(Scope(None)))["total"] == 9
    subscriber = Subscriber(Scope("acme", "d1"), "hash", None, max_pending=10)
    batch = subscriber.take(counters)
    assert batch is not None and json.loads(batch.json()) == {
        "items": [],
        "stats": {"counts": {"PENDING": 0, "SUCCESSFUL": 3, "ERROR": 0, "SUPERSEDED": 0}, "total": 3},
    }
    assert subscriber.take(counters) is None  # unchanged counters are not sent again
    counters.replace(dict(counters.rows))
    assert subscriber.take(counters) is None  # the same figures read again: no new version


def test_scope_sees_its_tenant_and_destination_only() -> None:
    assert Scope(None).sees(change(1, "a", "PENDING", "globex"))
    assert Scope("acme").sees(change(1, "a", "PENDING", "acme"))
    assert not Scope("acme").sees(change(1, "a", "PENDING", "globex"))
    assert not Scope("acme", "d2").sees(change(1, "a", "PENDING", "acme", "d1"))
