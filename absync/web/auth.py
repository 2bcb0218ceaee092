"""API tokens and the two rights.

A token is ``absync_<43 url-safe characters>`` (32 random bytes). Only its SHA-256 is stored (table
``api_tokens``), so a database leak gives no usable token and the clear token is shown once, at
creation. SHA-256 without salt is enough here: the token carries 256 bits of entropy, there is
nothing to brute-force.

Rights: ``view`` (deliveries: read, Retry, Mark as processed) and ``configure`` (``view`` plus
everything under destinations). A token may be limited to one tenant: the routes then filter by it
and answer 404 for another tenant's objects, exactly as if they did not exist.

A token may expire (``expires_at``): from then on it is refused exactly like a revoked one.
``/metrics`` (every tenant's figures) takes ``ABSYNC_METRICS_TOKEN`` or a token not limited to a
tenant (:func:`metrics_access`).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine

from projections.db import api_tokens, console_sessions

TOKEN_PREFIX = "absync_"
SESSION_HEADER = "x-absync-session"
"""Set by the console's bridge (never taken from the browser): the key of the console session."""


class Right(enum.StrEnum):
    VIEW = "view"
    CONFIGURE = "configure"

    def includes(self, other: Right) -> bool:
        """``configure`` includes ``view``; ``view`` includes only itself."""
        return self is Right.CONFIGURE or self is other


@dataclass(frozen=True, slots=True)
class Principal:
    """Who calls: the token's name (recorded as the actor of commands and changes), right, tenant."""

    name: str
    right: Right
    tenant: str | None

    def sees(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token without its secret (for ``absync tokens list``)."""

    id: str
    name: str
    right: Right
    tenant: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def request_token_hash(request: Request) -> str:
    """The hash of the bearer token a request carries (what per-token bounds count by)."""
    _, _, token = request.headers.get("authorization", "").partition(" ")
    return hash_token(token.strip())


def create_token(
    engine: Engine,
    name: str,
    right: Right | str,
    tenant: str | None = None,
    *,
    expires_at: dt.datetime | None = None,
) -> str:
    """Stores a new token (hashed) and returns the clear token: the only time it exists.
    ``expires_at`` (aware): refused from then on; None: until revoked."""
    if not name.strip():
        raise ValueError("a token needs a name")
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            api_tokens.insert().values(
                id=f"tok_{uuid.uuid4().hex[:16]}",
                name=name,
                right=Right(right).value,
                tenant=tenant or None,
                token_hash=hash_token(token),
                created_at=dt.datetime.now(dt.UTC),
                expires_at=expires_at,
            )
        )
    return token


def list_tokens(engine: Engine) -> list[TokenInfo]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(api_tokens).order_by(api_tokens.c.created_at)).mappings().all()
    return [
        TokenInfo(
            id=row["id"],
            name=row["name"],
            right=Right(row["right"]),
            tenant=row["tenant"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            expires_at=row["expires_at"],
        )
        for row in rows
    ]


def revoke_token(engine: Engine, token_id: str) -> bool:
    """Revokes a token at once (the next request with it gets 401). False if no such active token."""
    with engine.begin() as conn:
        result = conn.execute(
            api_tokens.update()
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=dt.datetime.now(dt.UTC))
        )
    return result.rowcount == 1


def principal_for(engine: Engine, token: str) -> Principal | None:
    """The active token's principal, or None (unknown, revoked or expired)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    now = dt.datetime.now(dt.UTC)
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(api_tokens.c.name, api_tokens.c.right, api_tokens.c.tenant).where(
                    api_tokens.c.token_hash == hash_token(token),
                    api_tokens.c.revoked_at.is_(None),
                    sa.or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now),
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        return None
    return Principal(name=row["name"], right=Right(row["right"]), tenant=row["tenant"])


bearer = HTTPBearer(auto_error=False, description="An API token from `absync tokens create`.")


def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """401 without an active token (the same answer for missing, unknown and revoked)."""
    principal = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        principal = principal_for(request.app.state.engine, credentials.credentials)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API token is required (Authorization: Bearer absync_...)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def still_authenticated(request: Request) -> bool:
    """Whether the request's token is still active (not revoked or expired since it was checked)
    and, for a request of the console (``SESSION_HEADER``, set by its bridge), its session too (not
    signed out): long-lived responses (the live stream) ask this again as they go."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    engine = request.app.state.engine
    if scheme.lower() != "bearer" or principal_for(engine, token.strip()) is None:
        return False
    session = request.headers.get(SESSION_HEADER)
    if session is None:
        return True
    return session_live(engine, session)


def session_live(engine: Engine, key: str) -> bool:
    """Whether the console session with this key is neither ended (sign-out) nor expired."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(console_sessions.c.id).where(
                console_sessions.c.id == key,
                console_sessions.c.ended_at.is_(None),
                console_sessions.c.expires_at > dt.datetime.now(dt.UTC),
            )
        ).first()
    return row is not None


def active_credentials(
    engine: Engine, token_hashes: Collection[str], session_keys: Collection[str]
) -> tuple[set[str], set[str]]:
    """Of ``token_hashes`` and console ``session_keys``, those still active (tokens: not revoked nor
    expired; sessions: not ended nor expired): :func:`still_authenticated` for many open streams at
    once, one query each."""
    now = dt.datetime.now(dt.UTC)
    tokens: set[str] = set()
    sessions: set[str] = set()
    with engine.connect() as conn:
        hashes, keys = sorted(token_hashes), sorted(session_keys)
        for start in range(0, len(hashes), 500):
            tokens.update(
                conn.execute(
                    sa.select(api_tokens.c.token_hash).where(
                        api_tokens.c.token_hash.in_(hashes[start : start + 500]),
                        api_tokens.c.revoked_at.is_(None),
                        sa.or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > now),
                    )
                ).scalars()
            )
        for start in range(0, len(keys), 500):
            sessions.update(
                conn.execute(
                    sa.select(console_sessions.c.id).where(
                        console_sessions.c.id.in_(keys[start : start + 500]),
                        console_sessions.c.ended_at.is_(None),
                        console_sessions.c.expires_at > now,
                    )
                ).scalars()
            )
    return tokens, sessions


def metrics_access(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """``/metrics`` labels every tenant: ``ABSYNC_METRICS_TOKEN``, or an API token not limited to a
    tenant (either right). 401 otherwise, the same answer for missing, wrong and tenant tokens."""
    if credentials is not None and credentials.scheme.lower() == "bearer":
        offered = credentials.credentials
        expected = request.app.state.absync.settings.metrics_token
        if (
            expected is not None
            and expected.get_secret_value()
            and hmac.compare_digest(offered.encode(), expected.get_secret_value().encode())
        ):
            return
        principal = principal_for(request.app.state.engine, offered)
        if principal is not None and principal.tenant is None:
            return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "the metrics token (ABSYNC_METRICS_TOKEN) or an API token for all tenants is required",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require(right: Right) -> Callable[[Principal], Principal]:
    """Dependency factory: the caller's principal if its token has ``right``, else 403."""

    def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.right.includes(right):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this token lacks the {right.value!r} right")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require(Right.VIEW))]
Configurer = Annotated[Principal, Depends(require(Right.CONFIGURE))]
