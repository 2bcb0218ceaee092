"""A loopback fake of the Slack Web API methods absync uses, with Slack's JSON shapes.

* ``POST /api/auth.test``; ``GET /api/conversations.info``;
* ``POST /api/chat.postMessage`` (JSON body; stores the message with its ``metadata``),
  ``POST /api/chat.update`` (``message_not_found`` for an unknown ts);
* ``GET /api/conversations.history`` (newest first, ``oldest``, ``limit``/``cursor`` paging; message
  metadata only with ``include_all_metadata``).

Every answer is HTTP 200 ``{"ok": false, "error": ...}`` on failure, as Slack does: a wrong token is
``invalid_auth``, no token ``not_authed``; a private channel the app was not invited to is
``not_in_channel`` (it may not even be listed: ``channel_not_found`` for posting). A method whose
scope the token lacks is ``missing_scope`` with ``needed`` and ``provided`` (``fake.scopes``).
``chat.postMessage`` and ``chat.update`` check their arguments as Slack documents them: no text is
``no_text``, more than 40,000 characters ``msg_too_long``, metadata without ``event_type`` and
``event_payload`` ``invalid_metadata_format``; ``chat.update`` of an unknown ts is
``message_not_found``, of a message the app did not post ``cant_update_message``.
:meth:`FakeSlack.rate_limit` answers 429 ``ratelimited`` with ``Retry-After`` for the next calls of
one method; :meth:`FakeSlack.fail` makes the next calls of one method fail with an error code, at
HTTP 200 (``ok: false``, what Slack does for ``internal_error``, ``fatal_error``...) or at a 5xx.

Messages per channel: ``fake.channels[channel_id]``, a list of dicts (``ts``, ``text``, ``metadata``,
``edited`` after an update), oldest first.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.loopback import LoopbackServer, Request, Response


@dataclass
class Channel:
    id: str
    name: str
    private: bool = False
    member: bool = True
    messages: list[dict[str, Any]] = field(default_factory=list)


class FakeSlack:
    """The Slack Web API on http://127.0.0.1:PORT/api/. Use as a context manager."""

    def __init__(self, token: str = "xoxb-1111-2222-FakeSlackBotToken") -> None:
        self.token = token
        self.channels: dict[str, Channel] = {}
        self.calls: list[tuple[str, int, str | None]] = []
        """(method, HTTP status, Slack error or None), in order."""
        self._limits: dict[str, list[int]] = {}
        self._failures: dict[str, list[tuple[int, str]]] = {}
        self.scopes = set(SCOPES.values()) | {"groups:history", "groups:read"}
        self._ts = itertools.count(1)
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._handle)
        self.url = self._server.url

    def __enter__(self) -> FakeSlack:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    # -- test controls ------------------------------------------------------------------------
    def add_channel(
        self, channel_id: str, name: str, *, private: bool = False, member: bool = True
    ) -> Channel:
        self.channels[channel_id] = Channel(channel_id, name, private, member)
        return self.channels[channel_id]

    def rate_limit(self, method: str = "chat.postMessage", times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer 429 with ``Retry-After``."""
        self._limits.setdefault(method, []).extend([retry_after] * times)

    def fail(self, method: str, error: str, *, status: int = 200, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer HTTP ``status`` ``{"ok": false, "error": error}``."""
        self._failures.setdefault(method, []).extend([(status, error)] * times)

    def add_message(self, channel_id: str, text: str, user: str = "U0HUMAN") -> str:
        """A message someone else wrote (the app may not update it); returns its ts."""
        with self._lock:
            message = {"type": "message", "user": user, "ts": self._next_ts(), "text": text}
            self.channels[channel_id].messages.append(message)
            return str(message["ts"])

    def messages(self, channel_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self.channels[channel_id].messages]

    def count(self, method: str, error: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, _, e in self.calls if m == method and e == error)

    def api_url(self) -> str:
        return f"{self.url}/api/"

    # -- dispatch -----------------------------------------------------------------------------
    def _handle(self, request: Request) -> Response:
        method = request.path.removeprefix("/api/")
        with self._lock:
            response = self._answer(method, request)
            error = response.body.get("error") if isinstance(response.body, dict) else None
            self.calls.append((method, response.status, error))
            return response

    def _answer(self, method: str, request: Request) -> Response:
        if self._limits.get(method):
            retry_after = self._limits[method].pop(0)
            return Response(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)})
        if self._failures.get(method):
            status, code = self._failures[method].pop(0)
            return Response(status, {"ok": False, "error": code})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error("invalid_auth" if "authorization" in request.headers else "not_authed")
        args = _arguments(request)
        needed = _needed_scope(method, self.channels.get(str(args.get("channel", ""))))
        if needed is not None and needed not in self.scopes:
            return Response(
                200,
                {
                    "ok": False,
                    "error": "missing_scope",
                    "needed": needed,
                    "provided": ",".join(sorted(self.scopes)),
                },
            )
        if method == "auth.test":
            return Response(
                200,
                {
                    "ok": True,
                    "url": "https://acme.slack.com/",
                    "team": "Acme",
                    "user": "absync",
                    "bot_id": BOT_ID,
                },
            )
        channel = self.channels.get(str(args.get("channel", "")))
        if channel is None or (channel.private and not channel.member and method != "conversations.info"):
            return _error("channel_not_found")
        if method == "conversations.info":
            return Response(
                200,
                {
                    "ok": True,
                    "channel": {
                        "id": channel.id,
                        "name": channel.name,
                        "is_private": channel.private,
                        "is_member": channel.member,
                    },
                },
            )
        if not channel.member:
            return _error("not_in_channel")
        if method == "chat.postMessage":
            return self._post(channel, args)
        if method == "chat.update":
            return self._update(channel, args)
        if method == "conversations.history":
            return self._history(channel, args)
        return _error("unknown_method")

    def _next_ts(self) -> str:
        return f"{time.time():.0f}.{next(self._ts):06d}"

    def _post(self, channel: Channel, args: dict[str, Any]) -> Response:
        refused = _refused_message(args)
        if refused is not None:
            return _error(refused)
        message = {"type": "message", "bot_id": BOT_ID, "ts": self._next_ts(), "text": args.get("text", "")}
        if args.get("metadata"):
            message["metadata"] = _metadata(args["metadata"])
        channel.messages.append(message)
        return Response(200, {"ok": True, "channel": channel.id, "ts": message["ts"], "message": message})

    def _update(self, channel: Channel, args: dict[str, Any]) -> Response:
        refused = _refused_message(args)
        if refused is not None:
            return _error(refused)
        for message in channel.messages:
            if message["ts"] == args.get("ts"):
                if message.get("bot_id") != BOT_ID:
                    return _error("cant_update_message")
                message["text"] = args.get("text", "")
                message["edited"] = {"user": "absync", "ts": f"{time.time():.6f}"}
                if args.get("metadata"):
                    message["metadata"] = _metadata(args["metadata"])
                return Response(
                    200, {"ok": True, "channel": channel.id, "ts": message["ts"], "text": message["text"]}
                )
        return _error("message_not_found")

    def _history(self, channel: Channel, args: dict[str, Any]) -> Response:
        oldest = float(args.get("oldest") or 0)
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        found = [m for m in reversed(channel.messages) if float(m["ts"]) >= oldest]
        start, limit = int(args.get("cursor") or 0), int(args.get("limit") or 100)
        page = [
            {k: v for k, v in m.items() if with_metadata or k != "metadata"}
            for m in found[start : start + limit]
        ]
        more = start + limit < len(found)
        return Response(
            200,
            {
                "ok": True,
                "messages": page,
                "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""},
            },
        )


BOT_ID = "B01"
MAX_TEXT = 40_000
SCOPES = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "conversations.history": "channels:history",
    "conversations.info": "channels:read",
}


def _needed_scope(method: str, channel: Channel | None) -> str | None:
    """The scope a method needs (``groups:*`` instead of ``channels:*`` for a private channel)."""
    scope = SCOPES.get(method)
    if scope is not None and channel is not None and channel.private:
        scope = scope.replace("channels:", "groups:")
    return scope


def _refused_message(args: dict[str, Any]) -> str | None:
    """The error Slack gives a chat.postMessage / chat.update with bad arguments, or None."""
    text = args.get("text")
    if not text and not args.get("blocks") and not args.get("attachments"):
        return "no_text"
    if isinstance(text, str) and len(text) > MAX_TEXT:
        return "msg_too_long"
    if args.get("metadata"):
        metadata = _metadata(args["metadata"])
        if not isinstance(metadata, dict) or not {"event_type", "event_payload"} <= metadata.keys():
            return "invalid_metadata_format"
    return None


def _error(code: str) -> Response:
    return Response(200, {"ok": False, "error": code})


def _metadata(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _arguments(request: Request) -> dict[str, Any]:
    """Query string, form or JSON body: slack-sdk uses all three."""
    args: dict[str, Any] = dict(request.query)
    content_type = request.headers.get("content-type", "")
    if request.body and "json" in content_type:
        args.update(request.json())
    elif request.body:
        args.update(request.form())
    return args
