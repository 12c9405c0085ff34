"""Serving the OTA repository over HTTP from the artifact store: GET/HEAD with single HTTP Ranges.

The ASGI app behind ``/ota`` (inside `access.GuardedRepository`): ``metadata/*`` and ``targets/*``
are objects ``repo/metadata/*`` and ``repo/targets/*`` of the store, streamed block by block
(never a whole target in memory), with ``Accept-Ranges: bytes``; ``Range: bytes=a-b`` (also
``a-`` and ``-n``) answers 206 with ``Content-Range``, an unsatisfiable range 416 with
``Content-Range: bytes */<size>``. Only one range per request (the agent never asks for more);
a multi-range request gets the whole object (200), which RFC 9110 allows. Does not decide who may
read (`access.py`) nor sign anything.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import posixpath
import re
from collections.abc import Iterator

from starlette.types import Receive, Scope, Send

from fleet_server.artifacts.port import ArtifactNotFoundError, ArtifactStore, ArtifactStoreError

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TOPS = ("metadata", "targets")
_END = b"\x00end-of-stream"  # compared by identity: never a block a store yields


class RepositoryFiles:
    """ASGI app: the objects under ``<prefix>/`` of `store` as static files."""

    def __init__(self, store: ArtifactStore, prefix: str = "repo") -> None:
        self._store = store
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"Method Not Allowed", [(b"allow", b"GET, HEAD")])
            return
        key = self._key(scope)
        if key is None:
            await _plain(send, 404, b"Not Found")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            size = (await asyncio.to_thread(self._store.stat, key)).size
            status, start, end = _span(headers.get("range", ""), size)
            if status == 416:
                await _plain(
                    send, 416, b"Range Not Satisfiable", [(b"content-range", f"bytes */{size}".encode())]
                )
                return
            blocks = await asyncio.to_thread(self._store.open_range, key, start, end)
        except ArtifactNotFoundError:
            await _plain(send, 404, b"Not Found")
            return
        except ArtifactStoreError as err:
            logger.warning("OTA store read failed key=%s: %s", key, err)
            await _plain(send, 503, b"Artifact store unavailable", [(b"retry-after", b"2")])
            return
        out = [
            (b"content-type", _content_type(key).encode()),
            (b"content-length", str(end - start).encode()),
            (b"accept-ranges", b"bytes"),
        ]
        if status == 206:
            out.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        if scope["method"] == "HEAD":
            _close(blocks)
            await send({"type": "http.response.body", "body": b""})
            return
        await _stream(send, blocks)

    def _key(self, scope: Scope) -> str | None:
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        rel = posixpath.normpath("/" + path).lstrip("/")
        if rel != path.lstrip("/") or rel.split("/", 1)[0] not in _TOPS or "/" not in rel or "\x00" in rel:
            return None
        return f"{self._prefix}/{rel}"


def _span(header: str, size: int) -> tuple[int, int, int]:
    """(status, start, end exclusive) for a Range header value ('' = whole object)."""
    m = _RANGE.match(header.strip()) if header else None
    if m is None or (not m.group(1) and not m.group(2)):
        return 200, 0, size
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last n bytes
        n = int(last)
        if n == 0:
            return 416, 0, 0
        return 206, max(0, size - n), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or (last and int(last) < start):
        return 416, 0, 0
    return 206, start, end


async def _stream(send: Send, blocks: Iterator[bytes]) -> None:
    try:
        while True:
            block = await asyncio.to_thread(next, blocks, _END)
            if block is _END:
                break
            await send({"type": "http.response.body", "body": block, "more_body": True})
    finally:
        _close(blocks)
    await send({"type": "http.response.body", "body": b""})


def _close(blocks: Iterator[bytes]) -> None:
    close = getattr(blocks, "close", None)
    if close is not None:
        close()


def _content_type(key: str) -> str:
    if key.endswith(".json"):
        return "application/json"
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
