"""ASGI middleware: records every state-changing operator REST request.

For POST/PUT/PATCH/DELETE under /api/v1 it appends one entry after the response: who (the operator
token's id, name and role, resolved from the bearer token; "anonymous" when missing or invalid),
what (method, route template, path, status code, query with secret-looking values redacted), where
from (client address, user agent). Request bodies are never read, so tokens and keys sent in them
never reach the log. Does not own the audit log's life: the composition root (main.py) builds it
(`app.state.audit`) before the services that record into it, and signs its head at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.audit.chain import Actor, Source, Target
from fleet_server.audit.port import AuditRecorder
from fleet_server.crud.tokens import authenticate_operator
from fleet_server.errors import AuthError

logger = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/api/v1/"
_SECRET_WORDS = ("token", "secret", "key", "password", "passphrase", "auth", "signature")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _redacted_query(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True)[:20]:
        secret = any(w in key.lower() for w in _SECRET_WORDS)
        out[key[:64]] = "<redacted>" if secret else value[:128]
    return out


def resolve_actor(engine: Engine, authorization: str) -> Actor:
    """The operator behind an Authorization header, without ever storing the secret part."""
    scheme, _, token = authorization.partition(" ")
    if not authorization:
        return Actor("anonymous", name="no credentials")
    if scheme.lower() != "bearer":
        return Actor("anonymous", name=f"{scheme[:16]} credentials")
    token = token.strip()
    claimed = token.split(".", 1)[0][:40] if token.startswith("op_") else ""
    with Session(engine) as session:
        try:
            row = authenticate_operator(session=session, token=token)
        except AuthError as err:
            return Actor("anonymous", id=claimed.removeprefix("op_"), name=str(err))
    return Actor.operator(row.id, row.name, row.role)


def _target(scope: Scope) -> tuple[str, Target]:
    """(route template, target): the path with matched path parameters put back as `{name}`."""
    params: dict[str, Any] = scope.get("path_params") or {}
    by_value = {str(v): k for k, v in params.items()}
    segments = scope["path"].split("/")
    template = "/".join(f"{{{by_value[s]}}}" if s in by_value else s for s in segments)
    parts = [p for p in scope["path"][len(API_PREFIX) :].split("/") if p]
    target_id = str(next(iter(params.values()))) if params else (parts[1] if len(parts) > 1 else "")
    return template[:128], Target(parts[0] if parts else "", target_id)


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITE_METHODS
            or not scope["path"].startswith(API_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        app = scope.get("app")
        recorder: AuditRecorder | None = getattr(getattr(app, "state", None), "audit", None)
        engine: Engine | None = getattr(getattr(app, "state", None), "engine", None)
        if recorder is None or engine is None:
            return
        template, target = _target(scope)
        client = scope.get("client")
        source = Source(str(client[0]) if client else "", _header(scope, b"user-agent"))
        details = {
            "method": scope["method"],
            "path": scope["path"],
            "route": template,
            "status": status,
            "query": _redacted_query(scope.get("query_string", b"")),
        }

        def write() -> None:
            actor = resolve_actor(engine, _header(scope, b"authorization"))
            recorder.record(actor, f"api {scope['method']} {template}", target, details, source)

        try:
            await asyncio.to_thread(write)
        except (SQLAlchemyError, LookupError) as err:
            logger.error("audit entry for %s %s not written: %s", scope["method"], scope["path"], err)
