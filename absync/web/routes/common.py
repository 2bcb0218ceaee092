"""What the API's route modules share: path parameters, the 422/404 helpers and the tenant checks.

Tenant rule: an object of another tenant is answered exactly like a missing one (404), so a
tenant-limited token learns nothing of other tenants' ids.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from fastapi import HTTPException, Path, status
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator

from absync.web.auth import Principal
from absync.web.state import AppState
from projections import queries
from schemas.destination import Destination


def _iso_date(value: object) -> object:
    """Only ``YYYY-MM-DD`` (pydantic would also take a number as a Unix timestamp)."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("a date is YYYY-MM-DD")
    return value


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]
DestinationId = Annotated[str, Path(description="Destination id.", max_length=200)]
DeliveryId = Annotated[str, Path(description="Delivery id (dlv_...).", max_length=64)]


def invalid(loc: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own (one error format for clients, as documented)."""
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")


def visible_destination(state: AppState, principal: Principal, destination_id: str) -> Destination:
    """The destination, or 404 if it does not exist or belongs to a tenant ``principal`` cannot see."""
    destination = state.destinations.get(destination_id)
    if destination is None or not principal.sees(destination.tenant):
        raise not_found("destination")
    return destination


def visible_delivery(state: AppState, principal: Principal, delivery_id: str) -> queries.DeliveryDetail:
    """The delivery with its attempts, or 404 (also for another tenant's)."""
    detail = queries.get_delivery(state.engine, delivery_id, tenant=principal.tenant)
    if detail is None:
        raise not_found("delivery")
    return detail
