"""Read side of the view (and the destination audit trail), used by the web API and the CLI.

Every function takes an ``Engine`` or a ``Connection`` and returns typed, frozen dataclasses, never
rows. ``tenant=None`` means every tenant; otherwise rows of other tenants are invisible. The
modules: :mod:`.deliveries` (deliveries, attempts, counts, the live feed's changes),
:mod:`.destinations` (destinations, health, audit trail), :mod:`.health` (what attempts say of a
destination, its health events).
"""

from projections.queries.base import Bind
from projections.queries.deliveries import (
    CHANGES_PAGE,
    EXPORT_PAGE,
    MAX_LIMIT,
    TRIGGERS,
    AttemptView,
    DeliveryDetail,
    DeliveryFilter,
    DeliverySummary,
    Page,
    all_counts,
    change_position,
    changes_after,
    count_by_status,
    decode_cursor,
    encode_cursor,
    export_deliveries,
    get_delivery,
    list_deliveries,
)
from projections.queries.destinations import (
    HEALTH_WINDOW,
    MAX_AUDIT_LIMIT,
    AuditPage,
    AuditRecord,
    DestinationHealth,
    DestinationView,
    audit_log,
    audit_trail,
    destination_health,
    get_destination,
    list_destinations,
    record_audit,
)
from projections.queries.health import (
    NO_ATTEMPT,
    AttemptHealth,
    HealthEventView,
    attempt_health,
    health_history,
)

__all__ = [
    "CHANGES_PAGE",
    "EXPORT_PAGE",
    "HEALTH_WINDOW",
    "MAX_AUDIT_LIMIT",
    "MAX_LIMIT",
    "NO_ATTEMPT",
    "TRIGGERS",
    "AttemptHealth",
    "AttemptView",
    "AuditPage",
    "AuditRecord",
    "Bind",
    "DeliveryDetail",
    "DeliveryFilter",
    "DeliverySummary",
    "DestinationHealth",
    "DestinationView",
    "HealthEventView",
    "Page",
    "all_counts",
    "attempt_health",
    "audit_log",
    "audit_trail",
    "change_position",
    "changes_after",
    "count_by_status",
    "decode_cursor",
    "destination_health",
    "encode_cursor",
    "export_deliveries",
    "get_delivery",
    "get_destination",
    "health_history",
    "list_deliveries",
    "list_destinations",
    "record_audit",
]
