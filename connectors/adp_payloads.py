"""ADP payloads: the default endpoints and event templates, and how a template is filled.

ADP GXP (ADP's French payroll) publishes no open interface, so an integration may bring its own
paths and templates (settings ``endpoints`` and ``templates``); :func:`variables` lists the
placeholders they may use. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from connectors.exceptions import ConfigurationError
from schemas.models import AbsenceEvent, HalfDay

DEFAULT_ENDPOINTS = {
    "request": "/events/hr/v1/worker.leave.absence.request",
    "cancel": "/events/hr/v1/worker.leave.cancel",
}
DEFAULT_TEMPLATES: dict[str, Any] = {
    "request": {
        "events": [
            {
                "data": {
                    "eventContext": {
                        "associateOID": "{associate_oid}",
                        "workAssignmentID": "{work_assignment_id}",
                    },
                    "transform": {
                        "effectiveDateTime": "{start_date_time}",
                        "workerLeave": {
                            "leaveAbsence": {
                                "startDateTime": "{start_date_time}",
                                "expectedEndDateTime": "{end_date_time}",
                                "leaveTypeCode": {"codeValue": "{leave_code}"},
                            }
                        },
                    },
                }
            }
        ]
    },
    "cancel": {
        "events": [
            {
                "data": {
                    "eventContext": {
                        "associateOID": "{associate_oid}",
                        "workAssignmentID": "{work_assignment_id}",
                        "leaveStartDate": "{start_date}",
                    }
                }
            }
        ]
    },
}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def variables(
    event: AbsenceEvent, associate_oid: str, work_assignment_id: str | None, leave_code: str | None
) -> dict[str, str | None]:
    """The placeholders a template may use, for one absence.

    Date-times are local to the absence's time zone, without offset (ADP's samples): a morning ends
    and an afternoon starts at 12:00; a full last day ends at 23:59:59; an hourly absence uses its hours.
    """
    a, e = event.absence, event.employee
    start_clock = a.start_time or ("12:00" if a.start_half == HalfDay.PM else "00:00")
    end_clock = a.end_time or ("12:00" if a.end_half == HalfDay.AM else "23:59:59")
    return {
        "associate_oid": associate_oid,
        "work_assignment_id": work_assignment_id,
        "leave_code": leave_code,
        "start_date": a.start_date.isoformat(),
        "end_date": a.end_date.isoformat(),
        "start_date_time": f"{a.start_date.isoformat()}T{_clock(start_clock)}",
        "end_date_time": f"{a.end_date.isoformat()}T{_clock(end_clock)}",
        "start_half": a.start_half.value,
        "end_half": a.end_half.value,
        "half_days": str(len(a.half_days())),
        "absence_id": a.id,
        "leave_account_id": a.leave_account.id,
        "leave_account_name": a.leave_account.name,
        "employee_id": e.id,
        "employee_number": e.employee_number,
        "employee_name": e.display_name,
    }


def render(template: Any, values: Mapping[str, str | None]) -> Any:
    """The template with its ``{placeholders}`` filled; a key whose whole value is empty is left out.

    Unknown placeholders are a configuration error (a typo must not reach the payroll).
    """
    if isinstance(template, dict):
        out = {k: render(v, values) for k, v in template.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    if isinstance(template, list):
        return [render(v, values) for v in template]
    if not isinstance(template, str):
        return template
    names = _PLACEHOLDER.findall(template)
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ConfigurationError(
            f"template placeholder {{{unknown[0]}}} is unknown; known: {', '.join(values)}"
        )
    whole = _PLACEHOLDER.fullmatch(template)
    if whole:
        return values[whole.group(1)]
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] or "", template)


def _clock(hhmm: str) -> str:
    return hhmm if hhmm.count(":") == 2 else f"{hhmm}:00"
