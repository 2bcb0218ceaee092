"""A loopback fake of the Slack Web API methods absync uses, with Slack's JSON shapes.

* ``POST /api/auth.test``; ``GET /api/conversations.info``;
* ``POST /api/chat.postMessage`` (JSON body; stores the message with its ``metadata``),
  ``POST /api/chat.update`` (``message_not_found`` for an unknown ts);
* ``GET /api/conversations.history`` (newest first, ``oldest``, ``limit``/``cursor`` paging; message
  metadata only with ``include_all_metadata``).

Every answer is HTTP 200 ``{"ok": false, "error": ...}`` on failure, as Slack does: a wrong token is
``invalid_auth``; a private channel the app was not invited to is ``not_in_channel`` (it may not
even be listed: ``channel_not_found`` for posting). :meth:`FakeSlack.rate_limit` answers 429
``ratelimited`` with ``Retry-After`` for the next calls of one method.

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
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error("invalid_auth" if "authorization" in request.headers else "not_authed")
        args = _arguments(request)
        if method == "auth.test":
            return Response(
                200,
                {
                    "ok": True,
                    "url": "https://acme.slack.com/",
                    "team": "Acme",
                    "user": "absync",
                    "bot_id": "B01",
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

    def _post(self, channel: Channel, args: dict[str, Any]) -> Response:
        message = {
            "type": "message",
            "ts": f"{time.time():.0f}.{next(self._ts):06d}",
            "text": args.get("text", ""),
        }
        if args.get("metadata"):
            message["metadata"] = _metadata(args["metadata"])
        channel.messages.append(message)
        return Response(200, {"ok": True, "channel": channel.id, "ts": message["ts"], "message": message})

    def _update(self, channel: Channel, args: dict[str, Any]) -> Response:
        for message in channel.messages:
            if message["ts"] == args.get("ts"):
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
