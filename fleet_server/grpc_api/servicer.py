"""DeviceService handlers: Enroll and the Sync session.

Requests arrive as raw bytes, so a malformed message gets INVALID_ARGUMENT with a reason (the
stock deserializer path would answer INTERNAL). Every Sync stream is bound to the device named by
the client certificate (its current certificate, or a renewed one not yet promoted). What each
message means, the per-device rate limit, record refusals and acks are the transport-neutral
`device_session.DeviceSession`, shared with the MQTT bridge; here a Refusal ends the stream with
that gRPC status. Text from devices and unauthenticated callers reaches the log only escaped and
bounded (logsafe.py); refused enrollments are logged once per call and rate-limited per peer.

Owns the gRPC session lifecycle (one live stream per device; a new one supersedes the old) and the
push of DesiredState on gRPC. Does not own the `SessionRegistry` (who is online over any transport
and on any replica; desired-state and kick fan-out) or the `_Session` outbox: both live in
sessions.py and are re-exported here. Does not write to the database itself (ingest.py,
enrollment.py do).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy import Engine

from fleet_server.desired import desired_for
from fleet_server.device_session import DeviceSession, Renewer, certificate_renewer, refusal_log
from fleet_server.enrollment import enroll_device
from fleet_server.errors import (
    AuthError,
    ConflictError,
    FleetError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from fleet_server.grpc_api.auth import DeviceLookup, device_verifier
from fleet_server.grpc_api.codec import desired_to_proto
from fleet_server.grpc_api.sessions import (
    DesiredPusher,
    FanoutPort,
    Kicker,
    PresencePort,
    SessionRegistry,
    _Session,
)
from fleet_server.ingest import IngestWriter
from fleet_server.logsafe import RateLimitedLog, peer_host
from fleet_server.logsafe import text as safe_text
from fleet_server.models import Device
from fleet_server.observability.logs import bind, unbind
from fleet_server.pki import FleetCA
from fleet_server.settings import Settings
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)

__all__ = [
    "SERVICE",
    "DesiredPusher",
    "DeviceServicer",
    "FanoutPort",
    "Kicker",
    "PresencePort",
    "SessionRegistry",
    "status_for",
    # moved to sessions.py; the tests still import it from here
    "_Session",
]

SERVICE = "edgeloop.v1.DeviceService"

_STATUS: dict[type[FleetError], grpc.StatusCode] = {
    AuthError: grpc.StatusCode.UNAUTHENTICATED,
    ForbiddenError: grpc.StatusCode.PERMISSION_DENIED,
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    ConflictError: grpc.StatusCode.ALREADY_EXISTS,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
}


def status_for(err: FleetError) -> grpc.StatusCode:
    for cls, code in _STATUS.items():
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


class DeviceServicer:
    def __init__(
        self,
        *,
        engine: Engine,
        ca: FleetCA,
        settings: Settings,
        writer: IngestWriter,
        registry: SessionRegistry,
        renew: Renewer | None = None,
    ) -> None:
        self._engine = engine
        self._devices = DeviceLookup(engine)  # batched reads: auth and desired-state pushes
        self._verify = device_verifier(engine, self._devices)
        self._ca = ca
        self._settings = settings
        self._writer = writer
        self._registry = registry
        self._renew = renew or certificate_renewer(engine, ca, days=settings.device_cert_days)
        self._enroll_log = RateLimitedLog(logger)
        self._refusal_log = refusal_log()
        registry.on_desired(self.push_desired)

    # ------------------------------------------------------------ Enroll

    async def enroll(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            req = pb.EnrollRequest.FromString(raw)
        except DecodeError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed EnrollRequest: {err}")
        try:
            result = await asyncio.to_thread(
                enroll_device,
                engine=self._engine,
                ca=self._ca,
                settings=self._settings,
                bootstrap_token=req.bootstrap_token,
                csr_pem=req.csr_pem,
                device_id=req.device_id,
                profile=req.profile,
                agent_version=req.agent_version,
            )
        except FleetError as err:
            code = status_for(err)
            host = peer_host(context.peer() or "")
            self._enroll_log.warning(
                f"{host}|{code.name}",
                "enrollment refused peer=%s device_id=%s code=%s reason=%s",
                safe_text(host),
                safe_text(req.device_id, 64),
                code.name,
                safe_text(err, 200),
            )
            await context.abort(code, safe_text(err, 300))
        host = self._settings.public_hostnames[0] if self._settings.public_hostnames else "localhost"
        return pb.EnrollResponse(
            device_id=result.device_id,
            certificate_chain_pem=result.certificate_chain_pem,
            ca_certificate_pem=result.ca_certificate_pem,
            desired=desired_to_proto(result.desired),
            sync_endpoint=f"{host}:{self._settings.device_port}",
        ).SerializeToString()

    # ------------------------------------------------------------ Sync

    def device_session(self, session: _Session, peer_cert_pem: bytes | None = None) -> DeviceSession:
        """The shared session logic (device_session.py) wired to this stream."""
        return DeviceSession(
            session.device_id,
            transport="grpc",
            settings=self._settings,
            writer=self._writer,
            close=session.close,
            renew=self._renew,
            log=self._refusal_log,
            peer_cert_pem=peer_cert_pem,
        )

    async def sync(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        device = await self._verify(context)
        device_id = device.id
        ids = bind(device_id=device_id)  # this RPC's task, and the reader task made from it, log it
        session = _Session(device_id, context)
        self._registry.add(session)
        peer_pems = list(context.auth_context().get("x509_pem_cert") or [])
        logic = self.device_session(session, peer_pems[0] if peer_pems else None)
        reader = asyncio.create_task(self._read(session, logic, requests))
        logger.info("sync session opened device_id=%s peer=%s", device_id, context.peer())
        try:
            self._push(session, device)  # the row auth just read: no second lookup per stream
            while True:
                msg = await session.outbox.get()
                if msg is None:
                    break
                await context.write(msg)
        finally:
            reader.cancel()
            self._registry.remove(session)
            logger.info(
                "sync session closed device_id=%s reason=%s", device_id, session.closed_reason or "eof"
            )
            unbind(ids)
        if session.closed_reason.startswith("abort:"):
            _, code, detail = session.closed_reason.split(":", 2)
            await context.abort(grpc.StatusCode[code], detail)
        if session.closed_reason.startswith("superseded"):
            await context.abort(grpc.StatusCode.ABORTED, session.closed_reason)

    async def push_desired(self, device_id: str) -> None:
        if self._registry.get(device_id) is None:
            return
        device = await self._devices.get(device_id)
        session = self._registry.get(device_id)  # it may have closed (or been replaced) meanwhile
        if device is None or session is None:
            return
        self._push(session, device)

    def _push(self, session: _Session, device: Device) -> None:
        desired = desired_to_proto(desired_for(device, self._settings))
        session.outbox.put_nowait(pb.SyncResponse(desired=desired))

    async def _read(self, session: _Session, logic: DeviceSession, requests: AsyncIterator[bytes]) -> None:
        try:
            async for raw in requests:
                refusal = logic.admit(0) or logic.handle(raw, session.reply)
                if refusal is not None:
                    session.close(*refusal)
                    return
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            return
        except Exception:
            logger.exception("sync reader failed device_id=%s", session.device_id)
            session.close("INTERNAL", "internal error")
            return
        session.outbox.put_nowait(None)  # client half-closed: finish the call
