"""Console sessions: a server-side session row, and the API token encrypted in an HttpOnly cookie.

A browser cannot attach an ``Authorization`` header to an ``EventSource`` or a page load, so the
console signs in once with a token and keeps it in a cookie the page's JavaScript cannot read. The
cookie holds a random session id, the token encrypted with the service's secret key (Fernet: a
forged or altered cookie does not decrypt) and an expiry. Guarantees:

- every request checks the session on the server (table ``console_sessions``, keyed by the SHA-256
  of the session id): sign-out ends it there, so a copy of the cookie is worthless afterwards;
- every request checks the token against the database again: a revoked or expired token ends its
  sessions at once;
- the cookie is ``HttpOnly``, ``SameSite=Strict``, and outside development (``ABSYNC_ENV``) always
  ``Secure`` with the ``__Host-`` prefix (HTTPS only, this host only, path ``/``);
- state-changing console requests (sign-in, sign-out, the API bridge's writes) are refused when the
  browser says they come from another origin (:func:`cross_origin`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import time
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import Request, Response

from absync.web.auth import Principal, hash_token, principal_for
from absync.web.state import AppState, app_state
from projections.db import console_sessions
from streams.secrets import SecretDecryptionError

COOKIE = "__Host-absync_session"
DEV_COOKIE = "absync_session"
"""In development (plain HTTP on loopback) the cookie cannot be ``Secure``, so not ``__Host-``."""
LIFETIME_SECONDS = 12 * 3600
"""One working day: then the operator signs in again."""


def _state(request: Request) -> AppState:
    return app_state(request)


def _development(request: Request) -> bool:
    return _state(request).settings.env == "development"


def cookie_name(request: Request) -> str:
    return DEV_COOKIE if _development(request) else COOKIE


def _session_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def cross_origin(request: Request) -> bool:
    """True when the browser says this request comes from another site or origin.

    ``Origin`` (sent by browsers on every POST) must name this host (``Host``, port included);
    ``Origin: null`` (sandboxed frames, some redirects) is refused. Without ``Origin``,
    ``Sec-Fetch-Site`` must be ``same-origin`` or ``none`` (typed by the user). A request with
    neither header is not from a browser, and a CSRF needs a browser.
    """
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        host = request.headers.get("host", "")
        return (
            origin == "null" or parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower()
        )
    fetch_site = request.headers.get("sec-fetch-site")
    return fetch_site is not None and fetch_site not in ("same-origin", "none")


def open_session(request: Request, response: Response, token: str) -> Principal | None:
    """Opens a session and sets its cookie if ``token`` is an active API token; its principal, else
    None."""
    token = token.strip()
    principal = principal_for(request.app.state.engine, token)
    if principal is None:
        return None
    session_id = secrets.token_urlsafe(32)
    now = dt.datetime.now(dt.UTC)
    with request.app.state.engine.begin() as conn:
        conn.execute(
            console_sessions.insert().values(
                id=_session_key(session_id),
                token_hash=hash_token(token),
                created_at=now,
                expires_at=now + dt.timedelta(seconds=LIFETIME_SECONDS),
            )
        )
        # Sessions long past their expiry are of no use to anyone: keep the table small.
        conn.execute(
            console_sessions.delete().where(console_sessions.c.expires_at < now - dt.timedelta(days=1))
        )
    payload = json.dumps({"sid": session_id, "token": token, "expires": int(time.time()) + LIFETIME_SECONDS})
    development = _development(request)
    response.set_cookie(
        cookie_name(request),
        _state(request).box.encrypt(payload).decode(),
        max_age=LIFETIME_SECONDS,
        httponly=True,
        samesite="strict",
        secure=not development or request.url.scheme == "https",
        path="/",
    )
    return principal


def _payload(request: Request) -> dict[str, object] | None:
    cookie = request.cookies.get(cookie_name(request))
    if not cookie or len(cookie) > 4096:
        return None
    try:
        payload = json.loads(_state(request).box.decrypt(cookie.encode()).get_secret_value())
    except (SecretDecryptionError, ValueError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("sid"), str):
        return None
    expires = payload.get("expires")
    if not isinstance(expires, int) or expires < time.time():
        return None
    return payload


def close_session(request: Request, response: Response) -> None:
    """Ends the session on the server (its cookie is then refused everywhere) and clears the cookie."""
    payload = _payload(request)
    if payload is not None:
        with request.app.state.engine.begin() as conn:
            conn.execute(
                console_sessions.update()
                .where(console_sessions.c.id == _session_key(str(payload["sid"])))
                .values(ended_at=dt.datetime.now(dt.UTC))
            )
    response.delete_cookie(
        cookie_name(request),
        path="/",
        httponly=True,
        samesite="strict",
        secure=not _development(request) or request.url.scheme == "https",
    )


def session_token(request: Request) -> str | None:
    """The API token of this request's session, or None (no cookie, altered, expired, ended)."""
    found = session_credentials(request)
    return found[0] if found else None


def session_credentials(request: Request) -> tuple[str, str] | None:
    """(API token, session key) of this request's live session, or None. The key names the
    session's row: the bridge hands it to the API so that a live stream ends at sign-out too."""
    payload = _payload(request)
    token = payload.get("token") if payload else None
    if payload is None or not isinstance(token, str):
        return None
    now = dt.datetime.now(dt.UTC)
    with request.app.state.engine.connect() as conn:
        live = conn.execute(
            sa.select(console_sessions.c.id).where(
                console_sessions.c.id == _session_key(str(payload["sid"])),
                console_sessions.c.token_hash == hash_token(token),
                console_sessions.c.ended_at.is_(None),
                console_sessions.c.expires_at > now,
            )
        ).first()
    return (token, _session_key(str(payload["sid"]))) if live is not None else None


def session_principal(request: Request) -> Principal | None:
    """Who is signed in: the session's token if the session and the token are still active."""
    token = session_token(request)
    return principal_for(request.app.state.engine, token) if token else None
