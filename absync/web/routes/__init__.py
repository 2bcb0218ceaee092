"""The operator API, under ``/api/v1``: one module of routes per resource.

- :mod:`.deliveries`: list, counts, one delivery (from the SQL view);
- :mod:`.stream`: the live stream of delivery changes (server-sent events);
- :mod:`.commands`: Retry and Mark as processed (a ``Command`` produced to Kafka);
- :mod:`.bulk`: Retry all / Mark all as processed on the list's filters (a tracked job);
- :mod:`.destinations`: destinations (from the destinations topic; writes through
  :mod:`absync.services.destinations`), connection test, audit trail;
- :mod:`.resync`: resync of a destination;
- :mod:`.recover`: Recover (re-send of its deliveries in Error) of a destination;
- :mod:`.health`: a destination's health and health history (auto-disable, alerts sent);
- :mod:`.alerts`: where operator alerts go (Slack, signed webhook; a token for every tenant);
- :mod:`.audit`: the audit log of every destination (destination writes, resyncs, Retry and
  Mark as processed);
- :mod:`.me`: who the token is;
- :mod:`.erasures`: erase an employee's personal data (docs/privacy.md).

Writes never touch the view: the view follows from Kafka. Rights: every route needs a token;
``view`` for deliveries and ``/me``, ``configure`` for everything under ``/destinations``,
``/alerts``, ``/erasures`` and ``/audit``. A tenant-limited token gets 404 for other tenants'
objects. Response models: :mod:`absync.web.models`.
"""

from fastapi import APIRouter

from absync.web.routes import (
    alerts,
    audit,
    bulk,
    commands,
    deliveries,
    destinations,
    erasures,
    health,
    me,
    recover,
    resync,
    stream,
)

router = APIRouter(prefix="/api/v1")
router.include_router(stream.router)  # before deliveries: /deliveries/stream is not a delivery id
router.include_router(bulk.router)  # nor is /deliveries/bulk
router.include_router(deliveries.router)
router.include_router(commands.router)
router.include_router(destinations.router)
router.include_router(health.router)
router.include_router(resync.router)
router.include_router(alerts.router)
router.include_router(recover.router)
router.include_router(audit.router)
router.include_router(me.router)
router.include_router(erasures.router)

__all__ = ["router"]
