"""The follow-up list as CSV: streamed, bounded, and safe to open in a spreadsheet.

Guarantees of :func:`csv_lines`: the header line first, then one line per row as the list shows it
(newest change first), at most ``max_rows`` rows; if more matched, a last line says the export was
cut at ``max_rows``. Every cell a spreadsheet would read as a formula (first character ``=``, ``+``,
``-``, ``@``, tab or carriage return: OWASP's CSV-injection list) is prefixed with ``'``; the CSV
quoting itself is the standard library's (RFC 4180), so a comma, quote or newline in a cell never
shifts a column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

from projections.queries import DeliverySummary

MAX_EXPORT_ROWS = 100_000
"""Rows of one export at most (the list can hold millions; an export is for a filtered part)."""
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
COLUMNS = (
    "delivery_id",
    "status",
    "manual",
    "trigger",
    "tenant",
    "destination_id",
    "employee_id",
    "employee_name",
    "employee_email",
    "legal_entity_id",
    "department_id",
    "absence_id",
    "version",
    "change",
    "operation",
    "start_date",
    "end_date",
    "attempt_count",
    "next_retry_at",
    "last_error",
    "created_at",
    "updated_at",
)
_FLUSH_EVERY = 200


def safe_cell(value: object) -> str:
    """The cell's text, with ``'`` in front when a spreadsheet would take it for a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_lines(rows: Iterable[DeliverySummary], max_rows: int) -> Iterator[str]:
    """CSV text of ``rows`` in chunks (see the module's guarantees); ``rows`` may hold one row more
    than ``max_rows``, which only tells that the export is cut."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for written, row in enumerate(rows):
        if written == max_rows:
            writer.writerow([f"# cut: more than {max_rows} deliveries match; narrow the filters"])
            break
        writer.writerow([safe_cell(getattr(row, name)) for name in COLUMNS])
        if (written + 1) % _FLUSH_EVERY == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
