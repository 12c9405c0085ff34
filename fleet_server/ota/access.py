"""Who may read the OTA repository over plain HTTP(S): short-lived device tokens and a rule per path.

TUF protects integrity, not confidentiality: models are the customer's IP and the per-device roles
name the fleet's devices. So:

- ``metadata/root.json`` (and ``<n>.root.json``) and ``metadata/timestamp.json`` stay public:
  root is public keys a device needs to bootstrap trust, timestamp only carries a snapshot version.
- every other metadata file needs a credential: ``snapshot``, ``targets`` and ``director`` name
  every device role and release, ``device-<id>`` roles name a device and its assignment. A device
  may read the shared ones and its own ``device-<its id>`` role only.
- ``targets/devices/<id>/...`` (the signed assignment) is readable by device ``<id>`` only; every
  other target (model binaries, chunk manifests, golden sets, drift references, patches) by any
  enrolled device. Not "only the releases assigned to it": the rule would need the assignment at
  request time (a CDN edge does not have it) and would race re-assignments, rollbacks to a previous
  release and delta patches against chunks of older releases. The threat closed here is the
  anonymous reader; every device already holds at least one model of the fleet.
- an operator token (any role: reading is what a viewer does) may read everything.

A device token is ``v1.<scope>.<device id, base64url>.<expiry, unix s>.<HMAC-SHA256, base64url>``
over those fields with a server secret kept in ``<data_dir>/ota/access.key`` (mode 0600). It is
verified without any lookup, so a CDN that holds the secret (or a signed-URL scheme fed by it) can
honour it. It reaches the device in DesiredState over the device's mTLS Sync stream and is sent
back in the ``X-Edgeloop-Ota-Token`` header (or the ``ota_token`` query parameter).

Does not know the database: operator tokens are checked by a callable the caller passes in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import os
import posixpath
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from fleet_server.ota.repository import device_role

logger = logging.getLogger(__name__)

TOKEN_HEADER = "x-edgeloop-ota-token"  # noqa: S105 (a header name)
TOKEN_QUERY = "ota_token"  # noqa: S105 (a query parameter name)
SECRET_FILE = "access.key"  # noqa: S105 (a file name)
DEVICE_SCOPE = "device"
_SECRET_BYTES = 32
_MAX_TOKEN_CHARS = 1024
_VERSIONED = re.compile(r"^(?:[0-9]+\.)?(?P<role>[^/]+)\.json$")


class AccessDeniedError(Exception):
    """The request may not read this path; `status` is 401 (no valid credential) or 403."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class OtaToken:
    token: str
    expires_at_s: int  # Unix epoch seconds


class Reader(Enum):
    """Who a path is open to (see the module docstring)."""

    ANYONE = "anyone"
    ANY_DEVICE = "any device"
    ONE_DEVICE = "one device"


def classify(rel_path: str) -> tuple[Reader, str]:
    """(reader, device id for ONE_DEVICE) of a path below the ``/ota`` mount.

    Raises:
        AccessDeniedError: 404-like paths that climb out of the repository (403).
    """
    path = posixpath.normpath("/" + rel_path).lstrip("/")
    if path.startswith("..") or "\x00" in path:
        raise AccessDeniedError(403, "path outside the OTA repository")
    top, _, rest = path.partition("/")
    if top == "metadata":
        m = _VERSIONED.match(rest)
        role = m.group("role") if m else rest
        if role in ("root", "timestamp"):
            return Reader.ANYONE, ""
        if role.startswith("device-"):
            return Reader.ONE_DEVICE, role
        return Reader.ANY_DEVICE, ""
    if top == "targets" and rest.startswith("devices/"):
        return Reader.ONE_DEVICE, device_role(rest.split("/")[1])
    return Reader.ANY_DEVICE, ""


class OtaAccess:
    """Mints and verifies device tokens (HMAC-SHA256, constant-time compare)."""

    def __init__(self, secret: bytes, *, ttl_s: int) -> None:
        if len(secret) < _SECRET_BYTES:
            raise ValueError(f"OTA access secret must be at least {_SECRET_BYTES} bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def load_or_create(cls, path: Path, *, ttl_s: int) -> OtaAccess:
        """The secret in `path`, created (0600, exclusive create) on first use.

        Raises:
            ValueError: the file exists but is not a secret of ours (wrong size).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes(), ttl_s=ttl_s)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(_SECRET_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        logger.info("OTA access secret created path=%s", path)
        return cls(path.read_bytes(), ttl_s=ttl_s)

    def mint(self, device_id: str, *, now_s: float) -> OtaToken:
        expires = int(now_s) + self.ttl_s
        fields = [DEVICE_SCOPE, _b64(device_id.encode()), str(expires)]
        return OtaToken(token=".".join(["v1", *fields, _b64(self._mac(fields))]), expires_at_s=expires)

    def verify(self, token: str, *, now_s: float) -> str:
        """The device id a valid, unexpired device token was minted for.

        Raises:
            AccessDeniedError: 401 with the reason (malformed, forged, expired).
        """
        parts = token.split(".")
        if len(token) > _MAX_TOKEN_CHARS or len(parts) != 5 or parts[0] != "v1":
            raise AccessDeniedError(401, "malformed OTA token")
        fields, mac = parts[1:4], parts[4]
        try:
            given = _unb64(mac)
            device_id = _unb64(fields[1]).decode()
            expires = int(fields[2])
        except (ValueError, UnicodeDecodeError):
            raise AccessDeniedError(401, "malformed OTA token") from None
        if not hmac.compare_digest(given, self._mac(fields)):
            raise AccessDeniedError(
                401, "OTA token signature is not valid (forged, or minted with another secret)"
            )
        if fields[0] != DEVICE_SCOPE:
            raise AccessDeniedError(403, f"OTA token scope {fields[0]!r} is not a device scope")
        if expires <= now_s:
            raise AccessDeniedError(
                401, f"OTA token expired {int(now_s) - expires}s ago; the server sends a new one over Sync"
            )
        return device_id

    def authorize(self, rel_path: str, token: str, *, now_s: float) -> str:
        """Check a device token against the path rule; returns the device id.

        Raises:
            AccessDeniedError: 401 (token) or 403 (another device's role or assignment).
        """
        reader, role = classify(rel_path)
        if reader is Reader.ANYONE:
            return ""
        device_id = self.verify(token, now_s=now_s)
        if reader is Reader.ONE_DEVICE and role != device_role(device_id):
            raise AccessDeniedError(
                403, f"device {device_id!r} may read only its own per-device metadata and assignment"
            )
        return device_id

    def _mac(self, fields: list[str]) -> bytes:
        return hmac.new(
            self._secret, "\n".join(["edgeloop-ota/v1", *fields]).encode(), hashlib.sha256
        ).digest()


@functools.lru_cache(maxsize=16)
def access_for(ota_dir: Path, ttl_s: int) -> OtaAccess:
    """The process-wide `OtaAccess` of an OTA directory (one secret file read, then cached)."""
    return OtaAccess.load_or_create(ota_dir / SECRET_FILE, ttl_s=ttl_s)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as err:
        raise ValueError(str(err)) from err


class GuardedRepository:
    """ASGI wrapper around the static ``/ota`` mount: lets a request through only when `access`
    allows its path (device token) or `is_operator` accepts its ``Authorization: Bearer`` token.

    `access=None` is public mode (``EDGELOOP_OTA_PUBLIC=true``): everything is served anonymously.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        access: OtaAccess | None,
        is_operator: Callable[[str], Awaitable[bool]],
        now_s: Callable[[], float],
    ) -> None:
        self._app = app
        self._access = access
        self._is_operator = is_operator
        self._now = now_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._access is None:
            await self._app(scope, receive, send)
            return
        rel = _relative(scope)
        try:
            await self._check(scope, rel)
        except AccessDeniedError as err:
            logger.info("OTA read refused path=%s status=%d reason=%s", rel[:200], err.status, err.reason)
            await _deny(send, err)
            return
        await self._app(scope, receive, send)

    async def _check(self, scope: Scope, rel: str) -> None:
        assert self._access is not None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = headers.get(TOKEN_HEADER, "")
        if not token:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            token = (query.get(TOKEN_QUERY) or [""])[0]
        auth = headers.get("authorization", "")
        if not token and auth[:7].lower() == "bearer ":
            if await self._is_operator(auth[7:].strip()):
                classify(rel)  # still refuses paths outside the repository
                return
            raise AccessDeniedError(401, "unknown or revoked operator token")
        if not token and classify(rel)[0] is not Reader.ANYONE:
            raise AccessDeniedError(
                401,
                f"the OTA repository needs a device token ({TOKEN_HEADER} header or {TOKEN_QUERY} "
                "query parameter) or an operator token (Authorization: Bearer)",
            )
        self._access.authorize(rel, token, now_s=self._now())


def _relative(scope: Scope) -> str:
    """The request path below the mount (Starlette keeps the full path and extends root_path)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.lstrip("/")


async def _deny(send: Send, err: AccessDeniedError) -> None:
    body = json.dumps({"detail": err.reason, "error": "OtaAccessDenied"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if err.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="edgeloop-ota"'))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def refresh_tokens(
    *, online: Callable[[], set[str]], push: Callable[[str], Awaitable[None]], ttl_s: int
) -> None:
    """Re-send DesiredState, and with it a fresh token, to every connected device every `ttl_s`/2,
    so a connected device's token never has less than half its lifetime left. Runs until cancelled."""
    while True:
        await asyncio.sleep(ttl_s / 2)
        devices = sorted(online())
        for device_id in devices:
            try:
                await push(device_id)
            except Exception:  # one device's push must not stop the others' refresh
                logger.exception("OTA token refresh failed device_id=%s", device_id)
        logger.info("OTA tokens refreshed devices=%d", len(devices))
