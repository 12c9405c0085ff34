"""Who a device-facing gRPC call comes from: the rule shared by Sync and FederatedService.

The client certificate's CN names an enrolled, active device, and the certificate is its current
one or the renewed one not yet promoted (usable at once after renewal, certs/renewal.py). Anything
else aborts the call: UNAUTHENTICATED without a certificate, PERMISSION_DENIED otherwise. Does not
own the TLS handshake (the server's credentials check the chain against the fleet CA).

Device rows are read through a `DeviceLookup`: concurrent lookups (a reconnect storm opens
thousands of streams within seconds) are served by one `SELECT ... WHERE id IN (...)` per batch in
one worker thread, instead of one query and one thread hop per stream, which filled the default
executor's queue and kept a storm's streams waiting for tens of seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet_server.models import Device

logger = logging.getLogger(__name__)

Authenticate = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[str]]
Verify = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Device]]

MAX_LOOKUP_BATCH = 500
"""Ids per query (well under SQLite's bound-parameter limit)."""


class DeviceLookup:
    """`await lookup.get(device_id)` -> the device row (detached) or None; batched.

    Lookups asked for while a batch is being read wait for the next batch, so under load every
    query serves many streams and at most one worker thread is busy with lookups. Use on one
    event loop.
    """

    def __init__(self, engine: Engine, *, max_batch: int = MAX_LOOKUP_BATCH) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._waiting: dict[str, list[asyncio.Future[Device | None]]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self.queries = 0  # how many SELECTs served the lookups (tests, /healthz-style counters)

    async def get(self, device_id: str) -> Device | None:
        fut: asyncio.Future[Device | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(device_id, []).append(fut)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name="device-lookup")
        return await fut

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(0)  # let the streams accepted in this loop iteration join
                ids = list(self._waiting)[: self._max_batch]
                waiters = {i: self._waiting.pop(i) for i in ids}
                try:
                    rows = await asyncio.to_thread(self._load, ids)
                except Exception as err:
                    logger.exception("device lookup failed for %d devices", len(ids))
                    for futs in waiters.values():
                        for f in futs:
                            if not f.done():
                                f.set_exception(err)
                    continue
                for device_id, futs in waiters.items():
                    for f in futs:
                        if not f.done():  # the stream may have gone meanwhile
                            f.set_result(rows.get(device_id))
        finally:
            self._drainer = None

    def _load(self, ids: list[str]) -> dict[str, Device]:
        self.queries += 1
        with Session(self._engine, expire_on_commit=False) as s:
            return {d.id: d for d in s.exec(select(Device).where(col(Device.id).in_(ids)))}


def device_verifier(engine: Engine, lookup: DeviceLookup | None = None) -> Verify:
    """`await verify(context)` -> the device row of the caller, or the call is aborted."""
    devices = lookup or DeviceLookup(engine)

    async def verify(context: grpc.aio.ServicerContext[Any, Any]) -> Device:
        auth = context.auth_context()
        names = list(auth.get("x509_common_name") or [])
        pems = list(auth.get("x509_pem_cert") or [])
        if not names or not pems:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a fleet device certificate is required")
        device_id = names[0].decode()
        device = await devices.get(device_id)
        if device is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"device {device_id!r} is not enrolled")
        assert device is not None
        fingerprint = x509.load_pem_x509_certificate(pems[0]).fingerprint(hashes.SHA256()).hex()
        pinned = {f for f in (device.cert_fingerprint, device.pending_cert_fingerprint) if f}
        if device.status != "active" or (device.cert_fingerprint and fingerprint not in pinned):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"certificate for {device_id!r} is revoked or superseded"
            )
        return device

    return verify


def device_authenticator(engine: Engine, lookup: DeviceLookup | None = None) -> Authenticate:
    """`await authenticate(context)` -> the device id, or the call is aborted."""
    verify = device_verifier(engine, lookup)

    async def authenticate(context: grpc.aio.ServicerContext[Any, Any]) -> str:
        return (await verify(context)).id

    return authenticate
