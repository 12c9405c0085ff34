"""Serve the console's fixed set of static files with strict security headers.

Only the files named in `_ASSETS` are served (the page, its seven scripts, its stylesheet, and the
vendored uPlot with its licence; no directory listing, no path handling), each with a
Content-Security-Policy that forbids inline script and style, so data rendered into the page can
never run. The page itself needs no auth; every data call it makes carries the operator's token.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import Response

STATIC_DIR = Path(__file__).parent / "static"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",  # the login form never submits: a token must not end up in a URL
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
# path under static/ -> media type; the page is `index.html`, the rest live under /console/static/.
# A fixed list: nothing else under static/ (or anywhere) is ever served.
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "widgets.js": "text/javascript; charset=utf-8",
    "views-fleet.js": "text/javascript; charset=utf-8",
    "views-delivery.js": "text/javascript; charset=utf-8",
    "views-learning.js": "text/javascript; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
    "vendor/LICENSE": "text/plain; charset=utf-8",
}

router = APIRouter(tags=["console"], include_in_schema=False)


def _asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "no such console asset")
    body = (STATIC_DIR / name).read_bytes()
    return Response(content=body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/console")
def console_page() -> Response:
    return _asset("index.html")


@router.get("/console/static/{name}")
def console_asset(name: str) -> Response:
    if name == "index.html":
        raise HTTPException(404, "no such console asset")
    return _asset(name)


@router.get("/console/static/vendor/{name}")
def console_vendor_asset(name: str) -> Response:
    return _asset(f"vendor/{name}")


def mount_console(app: FastAPI) -> FastAPI:
    """Add ``GET /console`` and ``GET /console/static/{name}`` to `app` (outside the OpenAPI schema).

    Returns `app`, so the composition root can end with ``return mount_console(app)``.
    """
    app.include_router(router)
    return app
