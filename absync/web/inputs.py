"""Control characters in a request's URL are refused before any route sees them.

:class:`NoControlCharacters` is pure ASGI middleware: a request whose path or query string holds a
C0 control character or DEL once percent-decoded (``%00``, ``%0A``, ``%1B``...) is answered ``422``
at once, naming the part (``loc``: ``["path"]`` or ``["query", name]``), in the shape of FastAPI's
own 422. No id, filter or cursor of the API contains one, and PostgreSQL refuses a NUL in a text
parameter (a 500 otherwise, or a reset connection in the middle of a streamed export).

Guarantees: no route, dependency or query ever sees a control character from the URL; the answer
quotes nothing of the request.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from absync.web.limits import send_error

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MESSAGE = "must not contain control characters (NUL, line breaks, escapes)"


def _bad_parts(scope: Scope) -> list[list[str]]:
    """The ``loc`` of every part of the URL that holds a control character."""
    bad: list[list[str]] = []
    raw_path = scope.get("raw_path") or b""
    if CONTROL.search(scope.get("path", "")) or CONTROL.search(unquote(raw_path.decode("latin-1"))):
        bad.append(["path"])
    query = scope.get("query_string", b"").decode("latin-1")
    if CONTROL.search(unquote(query)):
        names = [
            CONTROL.sub("?", name)[:100]
            for name, value in parse_qsl(query, keep_blank_values=True, errors="replace")
            if CONTROL.search(name) or CONTROL.search(value)
        ]
        bad.extend([["query", name] for name in dict.fromkeys(names)] or [["query"]])
    return bad


class NoControlCharacters:
    """ASGI middleware: 422 for a URL holding a control character (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bad = _bad_parts(scope) if scope["type"] == "http" else []
        if not bad:
            await self.app(scope, receive, send)
            return
        await send_error(send, 422, [{"type": "value_error", "loc": loc, "msg": MESSAGE} for loc in bad])
