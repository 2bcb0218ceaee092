"""The follow-up list as CSV: streamed, bounded, and safe to open in a spreadsheet.

Guarantees of :func:`csv_lines`: the header line first, then one line per row as the list shows it
(newest change first), at most ``max_rows`` rows; if more matched, a last line says the export was
cut at ``max_rows``. Every cell a spreadsheet would read as a formula (first character ``=``, ``+``,
``-``, ``@``, tab or carriage return: OWASP's CSV-injection list) is prefixed with ``'``; the CSV
quoting itself is the standard library's (RFC 4180), so a comma, quote or newline in a cell never
shifts a column.

How many at once (:class:`ExportSlots`): at most ``per_token`` exports stream for one token and
``total`` in the process (each holds a database connection while it streams); one more is a 429
with ``Retry-After``. A slot is given back when its stream ends, whether read to its end or not.
A client that takes no chunk for ``send_timeout`` seconds (30 by default, as the live stream's) has
its stream cut: a reader that never reads holds neither a slot nor a database connection for long
(:class:`ExportResponse`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import threading
from collections.abc import Iterable, Iterator, Mapping

import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from absync.web.limits import SEND_TIMEOUT_SECONDS, bounded_send
from projections.queries import DeliverySummary

log = structlog.get_logger(__name__)

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
EXPORTS_PER_TOKEN = 2
EXPORTS_IN_PROCESS = 8


class ExportSlots:
    """Exports streaming now, per token and in all (see the module docstring). Thread-safe: a
    stream's end runs in the server's thread pool."""

    def __init__(
        self,
        per_token: int = EXPORTS_PER_TOKEN,
        total: int = EXPORTS_IN_PROCESS,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
    ) -> None:
        self.per_token = per_token
        self.total = total
        self.send_timeout = send_timeout
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, token_hash: str) -> str | None:
        """Takes a slot for ``token_hash``; None if taken, else why not."""
        with self._lock:
            if sum(self._held.values()) >= self.total:
                return f"{self.total} exports are streaming on this process: try again shortly"
            if self._held.get(token_hash, 0) >= self.per_token:
                return f"{self.per_token} exports are streaming with this token: wait for one to end"
            self._held[token_hash] = self._held.get(token_hash, 0) + 1
            return None

    def held(self, token_hash: str) -> int:
        """Exports streaming now for ``token_hash``."""
        with self._lock:
            return self._held.get(token_hash, 0)

    def release(self, token_hash: str) -> None:
        with self._lock:
            left = self._held.get(token_hash, 0) - 1
            if left > 0:
                self._held[token_hash] = left
            else:
                self._held.pop(token_hash, None)

    def streaming(self, lines: Iterator[str], token_hash: str) -> Iterator[str]:
        """``lines``, giving the slot back when the stream ends (read to its end, or closed)."""
        try:
            yield from lines
        finally:
            self.release(token_hash)


class ExportResponse(StreamingResponse):
    """A streamed export whose every write must be taken by the client within ``send_timeout``
    seconds, else the stream is cut (logged) and ``lines`` closed at once: its ``finally`` gives the
    slot and the database connection back. A client that goes away closes it the same way."""

    def __init__(
        self, lines: Iterator[str], send_timeout: float, headers: Mapping[str, str], media_type: str
    ) -> None:
        super().__init__(lines, headers=headers, media_type=media_type)
        self.lines = lines
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, bounded_send(send, self.send_timeout))
        except TimeoutError:
            log.warning("export cut: the client took no data", seconds=self.send_timeout)
        finally:
            close = getattr(self.lines, "close", None)
            if close is not None:
                # ValueError: still running in the thread pool; it ends when that step ends.
                with contextlib.suppress(ValueError):
                    close()


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
