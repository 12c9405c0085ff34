"""Pure ASGI middleware: request ids, REST latency by route template, and lifespan state.

For every HTTP request: takes the caller's `X-Request-Id` (when it is a short token of safe
characters) or makes one, binds it to the log context for the whole request, echoes it on the
response, and observes the request's duration labelled by method, the matched route template
(`/api/v1/devices/{device_id}`, never the raw path, so device ids cannot explode the label set)
and status class. An exception that escapes the app becomes a JSON 500 carrying the request id
(then re-raised for the server to log). For the ASGI lifespan: records startup complete and
shutdown begun in `Serving` (readiness) and calls `on_startup` once the app's lifespan has built
its parts. Does not authenticate, rate-limit or audit (other middleware does).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.observability.logs import bind, unbind
from fleet_server.observability.metrics import FleetMetrics
from fleet_server.observability.ready import Serving

logger = logging.getLogger(__name__)

HEADER = "X-Request-Id"
UNMATCHED = "(unmatched)"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = bytes(value).decode("latin-1")
            if _SAFE_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's template; for a mounted app, its mount path; else UNMATCHED.

    FastAPI (0.13x) matches routes of included routers lazily: `scope["route"]` is the route as
    declared (`/devices/{device_id}`), and the template with the include prefixes
    (`/api/v1/devices/{device_id}`) is only on its effective route context in `scope["fastapi"]`.
    Read duck-typed; tests/integration/test_observability.py pins the prefixed label.
    """
    fastapi_scope = scope.get("fastapi")
    effective = fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    for path in (getattr(effective, "path", None), getattr(scope.get("route"), "path", None)):
        if isinstance(path, str) and path:
            return path
    mount = str(scope.get("root_path", ""))[len(str(scope.get("app_root_path", ""))) :]
    if mount and scope.get("endpoint") is not None:
        return f"{mount}/{{path}}"
    return UNMATCHED


@dataclass
class _Exchange:
    status: int = 500
    started: bool = False
    recorded: bool = False


class ObservabilityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: FleetMetrics,
        serving: Serving,
        on_startup: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._serving = serving
        self._on_startup = on_startup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self._serving.stopping = True
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._on_startup()
                self._serving.started, self._serving.stopping = True, False
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_from(scope)
        tokens = bind(request_id=request_id)
        started = time.perf_counter()
        state = _Exchange()

        def record() -> None:
            if not state.recorded:
                state.recorded = True
                seconds = time.perf_counter() - started
                self._metrics.observe_request(scope["method"], route_template(scope), state.status, seconds)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.status, state.started = message["status"], True
                headers = MutableHeaders(scope=message)
                headers[HEADER] = request_id
                if headers.get("content-type", "").startswith("text/event-stream"):
                    record()  # a stream: its latency is the time to its first byte
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if not state.started:
                logger.exception("unhandled error in %s %s", scope["method"], route_template(scope))
                await _internal_error(send_wrapper)
            raise
        finally:
            record()  # also a client that went away mid-response
            unbind(tokens)


async def _internal_error(send: Send) -> None:
    body = json.dumps({"detail": "internal server error"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
