"""Who a device-facing gRPC call comes from: the rule shared by Sync and FederatedService.

The client certificate's CN names an enrolled, active device, and the certificate is its current
one or the renewed one not yet promoted (usable at once after renewal, certs/renewal.py). Anything
else aborts the call: UNAUTHENTICATED without a certificate, PERMISSION_DENIED otherwise. Does not
own the TLS handshake (the server's credentials check the chain against the fleet CA).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.models import Device

Authenticate = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[str]]


def device_authenticator(engine: Engine) -> Authenticate:
    """`await authenticate(context)` -> the device id, or the call is aborted."""

    def load(device_id: str) -> Device | None:
        with Session(engine, expire_on_commit=False) as s:
            return s.get(Device, device_id)

    async def authenticate(context: grpc.aio.ServicerContext[Any, Any]) -> str:
        auth = context.auth_context()
        names = list(auth.get("x509_common_name") or [])
        pems = list(auth.get("x509_pem_cert") or [])
        if not names or not pems:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a fleet device certificate is required")
        device_id = names[0].decode()
        device = await asyncio.to_thread(load, device_id)
        if device is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"device {device_id!r} is not enrolled")
        assert device is not None
        fingerprint = x509.load_pem_x509_certificate(pems[0]).fingerprint(hashes.SHA256()).hex()
        pinned = {f for f in (device.cert_fingerprint, device.pending_cert_fingerprint) if f}
        if device.status != "active" or (device.cert_fingerprint and fingerprint not in pinned):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"certificate for {device_id!r} is revoked or superseded"
            )
        return device_id

    return authenticate
