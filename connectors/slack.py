"""Slack (kind ``slack``): the daily absence post, through slack-sdk's ``WebClient``.

A Slack destination does not get one message per absence change: it gets one post per working day
(see :mod:`processors.slack_scheduler`, which decides when, and :mod:`processors.slack_message`,
which writes it). So it is a :class:`connectors.base.DigestConnector` (its declaration says
``digest=True``): the fan-out routes it no change, and its calls are :meth:`SlackConnector.publish`
and :meth:`SlackConnector.test_connection`.

Idempotency: every post carries Slack message metadata ``absync_daily_post`` naming the destination
and the day. When the caller knows no message yet (first post of the day, or a record lost in a crash
between the post and its commit), :meth:`publish` first looks for that metadata in the channel's
history of the day (``conversations.history``) and updates the message found instead of posting a
second one. A known message is updated in place with ``chat.update``.

Settings: ``channel`` (the channel id, required), ``channel_name`` (for messages, e.g. ``#hr-private``),
``base_url`` (default https://slack.com/api/); the post's own settings are read by the scheduler.
Secret: ``bot_token`` (``xoxb-...``; scopes ``chat:write`` and ``channels:history`` /
``groups:history`` for private channels).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.error
from collections.abc import Mapping
from typing import Annotated, Any

import structlog
from pydantic import AfterValidator, SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.slack_response import SlackResponse

from connectors.base import CallRecorder, ConnectorOptions, DeliveryOutcome, DigestConnector, Published
from connectors.declaration import FormField, HttpUrlSetting, KindDeclaration, KindSettings, secret, setting
from connectors.egress import EgressPolicy
from connectors.egress_clients import urllib_opener
from connectors.exceptions import ConfigurationError, ConnectorError, PermanentError, RetryableError
from connectors.registry import register
from connectors.wire import Shown, record, status_error
from schemas.destination import Destination
from streams.logging import MASK

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://slack.com/api/"
METADATA_TYPE = "absync_daily_post"
HISTORY_PAGES = 5
"""Pages of 200 messages searched for the day's post (a channel busier than that gets a new post)."""
LANGUAGES = ("en", "fr")
"""The post's languages (those processors.slack_message writes; the first is the default)."""
NOT_INVITED = ("not_in_channel", "channel_not_found", "is_archived")
BAD_TOKEN = (
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "missing_scope",
)
TRANSPORT_ERRORS = (SlackRequestError, urllib.error.URLError, TimeoutError, OSError)
TEMPORARY = ("internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited")


class GuardedWebClient(WebClient):  # type: ignore[misc]
    """slack-sdk's ``WebClient`` whose HTTP goes through the egress policy (no proxy, bodies capped).

    slack-sdk offers no argument for its urllib opener: the one method that opens URLs is replaced.
    """

    def __init__(self, *, egress: EgressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._opener = urllib_opener(egress, self.ssl)

    def _perform_urllib_http_request_internal(self, url: str, req: Any) -> dict[str, Any]:
        if not url.lower().startswith(("https://", "http://")):
            raise SlackRequestError(f"Invalid URL detected: {url}")
        resp = self._opener.open(req, timeout=self.timeout)
        charset = resp.headers.get_content_charset() or "utf-8"
        body = resp.read().decode(charset, errors="replace")
        return {"status": resp.code, "headers": resp.headers, "body": body}


MAX_PUBLIC_HOLIDAYS = 400
"""The most dates ``public_holidays`` may list (the same bound as the post's, processors/slack_message.py)."""


def check_public_holidays(value: Any) -> Any:
    """``value`` when it is a list of at most MAX_PUBLIC_HOLIDAYS dates ``YYYY-MM-DD`` (or YAML dates),
    checked when the destination is written; the post checks it again when it reads it."""
    if value is None:
        return value
    if not isinstance(value, list | tuple):
        raise ValueError("must be a list of dates YYYY-MM-DD")
    if len(value) > MAX_PUBLIC_HOLIDAYS:
        raise ValueError(f"lists {len(value)} dates, more than the {MAX_PUBLIC_HOLIDAYS} allowed")
    for index, item in enumerate(value):
        if isinstance(item, dt.date) and not isinstance(item, dt.datetime):
            continue
        try:  # fromisoformat also takes ISO week dates (2026-W10-2) and non-ASCII digits
            if not isinstance(item, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", item):
                raise ValueError
            dt.date.fromisoformat(item)
        except ValueError:
            raise ValueError(f"item {index} must be a date YYYY-MM-DD, got {str(item)[:40]!r}") from None
    return value


PublicHolidays = Annotated[Any, AfterValidator(check_public_holidays)]


class SlackSettings(KindSettings):
    channel: Any = setting("The channel id, e.g. C0123ABCD (required).")
    channel_name: Any = setting("The channel's name for messages, e.g. #hr-private.")
    base_url: HttpUrlSetting = setting(f"Slack's Web API (default {DEFAULT_BASE_URL}).")
    post_time: Any = setting("Local time of the daily post, HH:MM (default 09:00).")
    time_zone: Any = setting("The post's time zone (default Europe/Paris).")
    working_days: Any = setting("ISO weekdays with a post, 1 = Monday (default 1 to 5).")
    public_holidays: PublicHolidays = setting(
        f"Dates with no post, never a 'back on' day: a list of at most {MAX_PUBLIC_HOLIDAYS} YYYY-MM-DD."
    )
    group_by: Any = setting("Group the post's lines by this (e.g. department).")
    group_names: Any = setting("Group id -> name shown in the post.")
    show_tomorrow: Any = setting("Also list tomorrow's absences.")
    show_leave_type: Any = setting("Show the leave type of each absence.")
    language: Any = setting("The post's language (default en).")


DECLARATION = KindDeclaration(
    kind="slack",
    label="Slack",
    settings=SlackSettings,
    secrets=(secret("bot_token", "Bot token", "xoxb-...; scopes chat:write and channels:history."),),
    form=(
        FormField("channel", "Channel id", required=True, help="e.g. C0123ABCD; invite the app to it."),
        FormField("channel_name", "Channel name", help="For messages, e.g. #hr-absences."),
        FormField("post_time", "Post time", help="Local time, HH:MM (default 09:00)."),
        FormField("time_zone", "Time zone", help="e.g. Europe/Paris."),
        FormField("language", "Language", "select", options=LANGUAGES, help="The post's language."),
        FormField("show_tomorrow", "Also list tomorrow's absences", "checkbox"),
        FormField("show_leave_type", "Show the leave type", "checkbox"),
    ),
    endpoint_settings=("base_url",),
    digest=True,
)


@register
class SlackConnector(DigestConnector):
    """Posts and updates the daily absence message of one destination in one channel."""

    declaration = DECLARATION

    def __init__(
        self,
        destination: Destination,
        secrets: Mapping[str, SecretStr],
        options: ConnectorOptions | None = None,
    ) -> None:
        super().__init__(destination, secrets, options)
        self.channel: str = self.setting("channel", required=True)
        self.channel_name = str(self.setting("channel_name") or self.channel)
        self.base_url = str(self.setting("base_url", DEFAULT_BASE_URL)).rstrip("/") + "/"
        self._client: WebClient | None = None

    async def test_connection(self, recorder: CallRecorder) -> DeliveryOutcome:
        return await self.run_blocking(self.check_channel, recorder)

    def check_channel(self, recorder: CallRecorder) -> DeliveryOutcome:
        """``auth.test`` then ``conversations.info``: the token works and the app is in the channel."""
        bot = self._api(recorder, "auth.test", "POST", {})
        info = self._api(recorder, "conversations.info", "GET", {"channel": self.channel})["channel"]
        if info.get("is_private") and not info.get("is_member"):
            raise PermanentError(self._not_invited("not_in_channel"))
        return DeliveryOutcome(
            summary=f"{bot.get('user', 'the app')} can post in #{info.get('name', self.channel)}"
        )

    def publish(
        self, day: str, text: str, ts: str | None, day_starts_at: float, recorder: CallRecorder
    ) -> Published:
        """Makes the channel hold ``text`` as the post of ``day`` (ISO date): updates it, or posts it once.

        ``ts`` is the post's timestamp when the caller knows it; ``day_starts_at`` (epoch seconds,
        the local midnight) bounds the history searched for a post the caller does not know.
        """
        metadata = {
            "event_type": METADATA_TYPE,
            "event_payload": {"destination": self.destination.id, "day": day},
        }
        ts = ts or self._find(day, day_starts_at, recorder)
        if ts is not None:
            try:
                self._api(
                    recorder,
                    "chat.update",
                    "POST",
                    {"channel": self.channel, "ts": ts, "text": text, "metadata": metadata},
                )
                return Published(ts, "updated")
            except PermanentError as exc:
                if "message_not_found" not in exc.message:
                    raise
                log.info(
                    "daily post deleted in Slack, posting it again", destination=self.destination.id, day=day
                )
        answer = self._api(
            recorder,
            "chat.postMessage",
            "POST",
            {"channel": self.channel, "text": text, "metadata": metadata, "unfurl_links": False},
        )
        return Published(str(answer["ts"]), "posted")

    def _find(self, day: str, oldest: float, recorder: CallRecorder) -> str | None:
        """The ts of this destination's post of ``day`` in the channel's history, if there is one."""
        cursor: str | None = None
        for _ in range(HISTORY_PAGES):
            params: dict[str, Any] = {
                "channel": self.channel,
                "oldest": f"{oldest:.6f}",
                "include_all_metadata": True,
                "limit": 200,
            }
            if cursor:
                params["cursor"] = cursor
            page = self._api(recorder, "conversations.history", "GET", params)
            for message in page.get("messages") or []:
                meta = message.get("metadata") or {}
                payload = meta.get("event_payload") or {}
                if (
                    meta.get("event_type") == METADATA_TYPE
                    and payload.get("destination") == self.destination.id
                    and payload.get("day") == day
                ):
                    return str(message["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not page.get("has_more") or not cursor:
                return None
        return None

    # -- Web API ------------------------------------------------------------------------------
    def _web(self) -> WebClient:
        if self._client is None:
            self._client = GuardedWebClient(
                egress=self.options.egress,
                token=self.secret("bot_token"),
                base_url=self.base_url,
                timeout=max(1, int(self.options.timeout)),
                user_agent_prefix=self.options.user_agent,
            )
        return self._client

    def _api(self, recorder: CallRecorder, method: str, verb: str, params: dict[str, Any]) -> SlackResponse:
        """One Web API call, recorded (token masked); raises a connector error unless ``ok``."""
        client = self._web()

        def send() -> tuple[SlackResponse, bool]:
            try:
                if verb == "GET":
                    return client.api_call(method, http_verb="GET", params=params), True
                return client.api_call(method, json=params), True
            except SlackApiError as exc:
                return exc.response, False  # an answer all the same: recorded as one

        def shown(result: tuple[SlackResponse, bool]) -> Shown:
            answer = result[0]
            return answer.status_code, _headers(answer), json.dumps(answer.data, default=str)

        try:
            response, ok = record(
                recorder,
                verb,
                f"{self.base_url}{method}",
                {"Authorization": f"Bearer {MASK}"},
                json.dumps(params),
                send,
                shown,
                errors=TRANSPORT_ERRORS,
            )
        except TRANSPORT_ERRORS as exc:
            raise RetryableError(f"Slack {method}: {type(exc).__name__}: {exc}") from exc
        if not ok:
            raise self._error(method, response) from None
        return response

    def _error(self, method: str, answer: SlackResponse) -> ConnectorError:
        data = answer.data if isinstance(answer.data, dict) else {}
        code = str(data.get("error", f"HTTP {answer.status_code}"))
        detail = f"Slack {method} answered {answer.status_code} {code}"
        if answer.status_code == 429 or code == "ratelimited":
            return status_error(429, detail, retry_after=_headers(answer).get("retry-after"), throttled=True)
        if answer.status_code >= 500 or code in TEMPORARY:
            return RetryableError(detail, status_code=answer.status_code)
        if code in NOT_INVITED:
            return PermanentError(self._not_invited(code), status_code=answer.status_code)
        if code in BAD_TOKEN:
            needed = f" (needed: {data['needed']})" if data.get("needed") else ""
            return ConfigurationError(f"{detail}{needed}: check the bot token and the app's scopes")
        return PermanentError(detail, status_code=answer.status_code)

    def _not_invited(self, code: str) -> str:
        return (
            f"invite the absync app to {self.channel_name} (Slack answered {code} for channel {self.channel})"
        )


def _headers(response: SlackResponse) -> dict[str, str]:
    return {
        str(k).lower(): str(v[0] if isinstance(v, list) else v) for k, v in (response.headers or {}).items()
    }
