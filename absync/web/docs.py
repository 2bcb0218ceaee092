"""``/docs``: Swagger UI served from this process, never from a CDN.

The files come from the pinned ``swagger-ui-bundle-v2`` package (Swagger UI 5.31.0); the page is ours,
with no inline script, so it runs under a Content-Security-Policy of ``'self'`` only. The page
itself needs no token: it shows the OpenAPI description (``/openapi.json``), and every call made
from it needs an API token like any other client. ReDoc (which FastAPI loads from a CDN) is off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, status
from fastapi.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
"""Swagger UI sets inline styles on its elements, hence ``'unsafe-inline'`` for styles only."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>absync operator API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/init.js"></script>
</body>
</html>
"""
INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def docs_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)


@router.get("/docs/static/{name}")
def docs_file(name: str) -> Response:
    """One of :data:`FILES` (a fixed list: no path from the request reaches the file system)."""
    if name == "init.js":
        return Response(INIT, media_type="text/javascript", headers=HEADERS)
    media_type = FILES.get(name)
    if media_type is None:
        return Response(status_code=status.HTTP_404_NOT_FOUND)
    return FileResponse(
        Path(swagger_ui_path) / name, media_type=media_type, headers={"Cache-Control": "max-age=86400"}
    )
