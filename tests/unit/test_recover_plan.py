"""What one Recover re-sends: one delivery per absence, at most the limit, the rest counted."""

from __future__ import annotations

from absync.services.recover import OVER_LIMIT, SAME_ABSENCE, plan
from processors.replay_failed import FailedDelivery


def failed(absence: str, n: int, tenant: str = "acme") -> FailedDelivery:
    return FailedDelivery(f"dlv-{tenant}-{absence}-{n}", "dst", absence, tenant)


def test_one_delivery_per_absence_and_tenant() -> None:
    result = plan(iter([failed("a", 2), failed("a", 1), failed("b", 1), failed("a", 1, tenant="other")]))
    assert [d.delivery_id for d in result.to_send] == ["dlv-acme-a-2", "dlv-acme-b-1", "dlv-other-a-1"]
    assert result.skipped == {SAME_ABSENCE: 1}


def test_the_limit_takes_the_first_ones_and_counts_the_rest() -> None:
    result = plan(iter([failed(f"abs-{i}", 1) for i in range(7)] + [failed("abs-0", 0)]), limit=3)
    assert [d.absence_id for d in result.to_send] == ["abs-0", "abs-1", "abs-2"]
    assert result.skipped == {OVER_LIMIT: 4, SAME_ABSENCE: 1}


def test_nothing_failed_nothing_sent() -> None:
    result = plan(iter([]))
    assert (result.to_send, result.skipped) == ([], {})
