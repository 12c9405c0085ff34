"""ASGI middleware: a size limit on every REST request body under /api/v1 (413 past it).

A declared Content-Length over the limit is refused before a byte is read; a chunked or lying
body is counted as it streams and cut off at the limit. Routes that stream large uploads and
enforce their own bound (the OTA blob store) are listed in `exempt` as (method, path) pairs.
Does not own any route's own, tighter limits (e.g. root metadata's 512 kB).
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.api.errors import error_body

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_EXEMPT = frozenset({("PUT", "/api/v1/ota/blobs")})


class BodyTooLargeError(HTTPException):
    """Raised from `receive` once the streamed body passes the limit: an HTTPException, so the
    app's own error handler answers the 413 in the API's error shape (FastAPI re-raises those
    from body parsing instead of turning them into a 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than {max_bytes} bytes")


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        prefix: str = "/api/v1/",
        exempt: frozenset[tuple[str, str]] = DEFAULT_EXEMPT,
    ) -> None:
        self.app, self.max_bytes, self.prefix, self.exempt = app, max_bytes, prefix, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(self.prefix)
            or (scope["method"], scope["path"].rstrip("/")) in self.exempt
        ):
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLargeError:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(413, f"request body larger than {self.max_bytes} bytes")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
