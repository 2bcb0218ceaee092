"""Console sessions: the API token, encrypted in an HttpOnly, SameSite=Strict cookie.

A browser cannot attach an ``Authorization`` header to an ``EventSource`` or a page load, so the
console signs in once with a token and keeps it in a cookie the page's JavaScript cannot read. The
cookie holds the token encrypted with the service's secret key (Fernet: a forged or altered cookie
does not decrypt) and an expiry; every request checks the token against the database again, so a
revoked token ends its sessions at once.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from fastapi import Request, Response

from absync.web.auth import Principal, principal_for
from streams.secrets import SecretDecryptionError

if TYPE_CHECKING:
    from absync.web.app import AppState

COOKIE = "absync_session"
LIFETIME_SECONDS = 12 * 3600
"""One working day: then the operator signs in again."""


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.absync
    return state


def open_session(request: Request, response: Response, token: str) -> Principal | None:
    """Sets the session cookie if ``token`` is an active API token; its principal, else None."""
    principal = principal_for(request.app.state.engine, token.strip())
    if principal is None:
        return None
    payload = json.dumps({"token": token.strip(), "expires": int(time.time()) + LIFETIME_SECONDS})
    response.set_cookie(
        COOKIE,
        _state(request).box.encrypt(payload).decode(),
        max_age=LIFETIME_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return principal


def close_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def session_token(request: Request) -> str | None:
    """The API token of this request's session, or None (no cookie, altered, expired)."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    try:
        payload = json.loads(_state(request).box.decrypt(cookie.encode()).get_secret_value())
    except (SecretDecryptionError, ValueError):
        return None
    if not isinstance(payload, dict) or int(payload.get("expires", 0)) < time.time():
        return None
    token = payload.get("token")
    return token if isinstance(token, str) else None


def session_principal(request: Request) -> Principal | None:
    """Who is signed in: the session's token if it is still active (not revoked), else None."""
    token = session_token(request)
    return principal_for(request.app.state.engine, token) if token else None
