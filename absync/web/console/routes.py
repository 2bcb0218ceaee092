"""Console pages, the session routes, static files and the bridge to ``/api/v1``.

Pages are rendered by the server (Jinja2) with what the signed-in principal may do: navigation and
buttons the right does not allow are not rendered, and the page routes refuse them (403) anyway.
The data comes from the API itself: ``console.js`` calls ``/console/api/...``, which hands the
request to ``/api/v1/...`` inside the same application with the session's token as a Bearer
header. The API therefore checks every right and tenant for the console exactly as for any other
client, server-sent events included (the hand-over is at the ASGI level, so a stream stays a
stream).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Form, Request, status
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from absync.web.auth import SESSION_HEADER, Principal, Right
from absync.web.console.forms import DEFAULT_KIND, form_fields, kind_labels
from absync.web.console.session import (
    close_session,
    cross_origin,
    open_session,
    session_credentials,
    session_principal,
)
from projections import queries
from schemas.delivery import Status

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
COMMAND_HEADER = "x-absync-console"
"""Required on the bridge's writes: a cross-site form cannot set it (CSRF defence beside SameSite)."""
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ASGI_KEYS = {"type", "asgi", "http_version", "method", "scheme", "server", "client", "query_string", "state"}
"""The request's own ASGI keys: what the routing of the outer request added is not carried over."""
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
RIGHTS_TEXT = {
    Right.VIEW: "See deliveries and their attempts; Retry and Mark as processed.",
    Right.CONFIGURE: "Everything a viewer can do, and configure destinations.",
}

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def _page(
    request: Request, name: str, principal: Principal | None, code: int = 200, **context: Any
) -> Response:
    response = templates.TemplateResponse(
        request,
        name,
        {
            "principal": principal,
            "can_configure": principal is not None and principal.right.includes(Right.CONFIGURE),
            "rights_text": RIGHTS_TEXT,
            "statuses": [s.value for s in Status],
            **context,
        },
        status_code=code,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def _sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"/console/sign-in?next={quote(target, safe='/')}", status.HTTP_303_SEE_OTHER)
    response.headers.update(SECURITY_HEADERS)
    return response


def _guarded(request: Request, name: str, right: Right, **context: Any) -> Response:
    """The page if the session's principal has ``right``; sign-in if none; 403 page otherwise."""
    principal = session_principal(request)
    if principal is None:
        return _sign_in_redirect(request)
    if not principal.right.includes(right):
        return _page(request, "forbidden.html", principal, status.HTTP_403_FORBIDDEN, needed=right.value)
    return _page(request, name, principal, **context)


def _safe_next(target: str | None) -> str:
    """Only a path of this console: never an open redirect to another site."""
    if target and target.startswith("/console/"):
        return target
    return "/console/deliveries"


# -- session -----------------------------------------------------------------------------------------


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/console/deliveries", status.HTTP_303_SEE_OTHER)


@router.get("/console/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> Response:
    return _page(request, "sign_in.html", session_principal(request), next=_safe_next(next))


@router.post("/console/session")
def sign_in(
    request: Request,
    token: Annotated[str, Form(max_length=200)],
    next: Annotated[str, Form()] = "",
) -> Response:
    target = _safe_next(next)
    if cross_origin(request):  # login CSRF: another site signing this browser in as someone else
        log.info("console sign-in refused: cross-origin", origin=request.headers.get("origin"))
        return _cross_origin_refusal()
    response: Response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
    principal = open_session(request, response, token)
    if principal is None:
        log.info("console sign-in refused")
        return _page(
            request,
            "sign_in.html",
            None,
            status.HTTP_401_UNAUTHORIZED,
            next=target,
            error="This token is not valid (unknown or revoked).",
        )
    log.info("console sign-in", name=principal.name, right=principal.right.value)
    response.headers.update(SECURITY_HEADERS)
    return response


@router.post("/console/sign-out")
def sign_out(request: Request) -> Response:
    """Ends the session on the server, then clears the cookie."""
    if cross_origin(request):
        return _cross_origin_refusal()
    response = RedirectResponse("/console/sign-in", status.HTTP_303_SEE_OTHER)
    close_session(request, response)
    response.headers.update(SECURITY_HEADERS)
    return response


def _cross_origin_refusal() -> Response:
    response = JSONResponse({"detail": "cross-origin request refused"}, status.HTTP_403_FORBIDDEN)
    response.headers.update(SECURITY_HEADERS)
    return response


# -- pages -------------------------------------------------------------------------------------------


@router.get("/console/deliveries")
def follow_up_page(request: Request) -> Response:
    return _guarded(request, "deliveries.html", Right.VIEW, kinds=kind_labels(), triggers=queries.TRIGGERS)


@router.get("/console/deliveries/{delivery_id}")
def delivery_page(request: Request, delivery_id: str) -> Response:
    return _guarded(request, "delivery.html", Right.VIEW, delivery_id=delivery_id)


@router.get("/console/destinations")
def destinations_page(request: Request) -> Response:
    return _guarded(request, "destinations.html", Right.CONFIGURE, kinds=kind_labels())


@router.get("/console/alerts")
def alerts_page(request: Request) -> Response:
    """Alert settings: the configure right for every tenant (the API refuses a tenant's token too)."""
    principal = session_principal(request)
    if principal is not None and principal.tenant is not None:
        return _page(
            request, "forbidden.html", principal, status.HTTP_403_FORBIDDEN, needed="configure (every tenant)"
        )
    days = request.app.state.absync.settings.auto_disable_after / 86400
    return _guarded(request, "alerts.html", Right.CONFIGURE, auto_disable_after=f"{days:g} days")


@router.get("/console/audit")
def audit_page(request: Request) -> Response:
    return _guarded(request, "audit.html", Right.CONFIGURE)


@router.get("/console/destinations/new")
def new_destination_page(request: Request, kind: str = "http") -> Response:
    return _destination_form(request, kind, None)


@router.get("/console/destinations/{destination_id}")
def edit_destination_page(request: Request, destination_id: str, kind: str = "http") -> Response:
    return _destination_form(request, kind, destination_id)


def _destination_form(request: Request, kind: str, destination_id: str | None) -> Response:
    """The same form creates and edits; when editing, the script loads the destination and, if its
    kind differs from ``kind``, reloads the page with the right one. An unknown kind shows the
    default kind's form."""
    kinds = kind_labels()
    kind = kind if kind in kinds else DEFAULT_KIND
    settings_fields, secret_fields = form_fields(kind)
    return _guarded(
        request,
        "destination.html",
        Right.CONFIGURE,
        kind=kind,
        kinds=kinds,
        settings_fields=settings_fields,
        secret_fields=secret_fields,
        destination_id=destination_id,
    )


@router.get("/console/static/{name}")
def static_file(name: str) -> Response:
    """The console's own assets (no CDN): a fixed folder, no sub-paths."""
    path = STATIC / name
    if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
        return Response(status_code=status.HTTP_404_NOT_FOUND)
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


# -- bridge to the API -------------------------------------------------------------------------------


class _Bridge(Response):
    """Replays the request as ``/api/v1/<rest>`` with the session's Bearer token, inside the app."""

    def __init__(self, token: str, rest: str, session_key: str) -> None:
        super().__init__()
        self.token = token
        self.rest = rest
        self.session_key = session_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("app_root_path", scope.get("root_path", ""))
        path = f"{root}/api/v1/{self.rest}"
        dropped = (b"authorization", b"cookie", SESSION_HEADER.encode())
        headers = [(k, v) for k, v in scope["headers"] if k not in dropped]
        headers.append((b"authorization", f"Bearer {self.token}".encode()))
        headers.append((SESSION_HEADER.encode(), self.session_key.encode()))
        inner = {k: v for k, v in scope.items() if k in ASGI_KEYS}
        inner.update(path=path, raw_path=path.encode(), root_path=root, headers=headers)
        await scope["app"](inner, receive, send)


@router.api_route("/console/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
def api_bridge(request: Request, rest: str) -> Response:
    credentials = session_credentials(request)
    if credentials is None:
        return JSONResponse({"detail": "not signed in"}, status.HTTP_401_UNAUTHORIZED)
    if request.method not in SAFE_METHODS and request.headers.get(COMMAND_HEADER) != "1":
        return JSONResponse({"detail": f"missing {COMMAND_HEADER} header"}, status.HTTP_403_FORBIDDEN)
    if request.method not in SAFE_METHODS and cross_origin(request):
        return _cross_origin_refusal()
    token, session_key = credentials
    return _Bridge(token, rest, session_key)
