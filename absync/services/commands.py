"""When an operator's command on a delivery makes sense: one rule for the single Retry / Mark as
processed (:mod:`absync.web.routes.commands`) and for the bulk actions on a filtered list
(:mod:`absync.services.bulk`), so both refuse exactly the same deliveries."""

from __future__ import annotations

from schemas.delivery import CommandKind, Status

REFUSED: dict[CommandKind, dict[str, str]] = {
    CommandKind.RETRY: {
        Status.SUPERSEDED: "a newer change of this absence replaced this delivery: retry that one",
    },
    CommandKind.MARK_PROCESSED: {
        Status.SUCCESSFUL: "the delivery is already successful",
        Status.SUPERSEDED: "a newer change of this absence replaced this delivery",
    },
}
"""Commands that make no sense in a status, with the reason. Retry is allowed on Error, Successful
(send again) and Pending (send now instead of waiting for the next retry); Mark as processed on
Error and Pending."""


def refusal(kind: CommandKind, status: str) -> str | None:
    """Why ``kind`` is refused for a delivery in ``status``, or None when it is allowed; a status
    that is not one of :class:`Status` raises ``ValueError`` (a row that cannot be trusted)."""
    return REFUSED[kind].get(Status(status))
