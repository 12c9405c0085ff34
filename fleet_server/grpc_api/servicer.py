"""DeviceService handlers: Enroll and the Sync session.

Requests arrive as raw bytes, so a malformed message gets INVALID_ARGUMENT with a reason (the
stock deserializer path would answer INTERNAL). Every Sync stream is bound to the device named by
the client certificate (its current certificate, or a renewed one not yet promoted). What each
message means, the per-device rate limit, record refusals and acks are the transport-neutral
`device_session.DeviceSession`, shared with the MQTT bridge; here a Refusal ends the stream with
that gRPC status. Text from devices and unauthenticated callers reaches the log only escaped and
bounded (logsafe.py); refused enrollments are logged once per call and rate-limited per peer.

Owns the gRPC session lifecycle (one live stream per device; a new one supersedes the old), the
`SessionRegistry` (who is online over any transport and on any replica, through the presence and
fan-out ports of fleet_server/coordination; desired-state and kick fan-out) and the push of
DesiredState on gRPC. Does not write to the database itself (ingest.py, enrollment.py do).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

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
from fleet_server.ingest import IngestWriter
from fleet_server.logsafe import RateLimitedLog, peer_host
from fleet_server.logsafe import text as safe_text
from fleet_server.models import Device
from fleet_server.observability.logs import bind, unbind
from fleet_server.pki import FleetCA
from fleet_server.settings import Settings
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)

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


class _Session:
    """One gRPC Sync stream: an outbox drained into the stream, and the shared session logic."""

    def __init__(self, device_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.device_id = device_id
        self.context = context
        self.outbox: asyncio.Queue[pb.SyncResponse | None] = asyncio.Queue()
        self.closed_reason = ""

    def reply(self, msg: pb.SyncResponse | None) -> None:
        if msg is not None:
            self.outbox.put_nowait(msg)

    def close(self, code: str, detail: str) -> None:
        """End the stream with gRPC status `code` (a StatusCode name); the first reason wins."""
        if not self.closed_reason:
            detail = safe_text(detail, 300)
            logger.warning(
                "sync session aborted device_id=%s code=%s detail=%s", self.device_id, code, detail
            )
            self.closed_reason = f"abort:{code}:{detail}"
        self.outbox.put_nowait(None)


DesiredPusher = Callable[[str], Awaitable[None]]
Kicker = Callable[[str, str, str], None]


class PresencePort(Protocol):
    """Fleet-wide presence (coordination/presence.py): writes are recorded, reads never block."""

    def connected(self, device_id: str, transport: str) -> None: ...

    def disconnected(self, device_id: str, transport: str) -> None: ...

    def online(self) -> AbstractSet[str]: ...

    def transport(self, device_id: str) -> str | None: ...


class FanoutPort(Protocol):
    """Tells the other replicas (coordination/fanout.py); never raises, never blocks for long."""

    def desired_changed(self, device_id: str) -> None: ...

    def kick(self, device_id: str, code: str, detail: str) -> None: ...


class SessionRegistry:
    """Who is online, over any transport, and the fan-out of desired-state pushes and kicks.

    gRPC sessions register here (`add`/`remove`); other transports (the MQTT bridge) report
    presence with `set_present` and subscribe with `on_desired`/`on_kick`.
    `notify_desired_changed` and `kick` are safe from any thread.

    With several replicas (`presence` and `fanout` given): `online()` is fleet-wide (the presence
    snapshot, merged with this process's own sessions so a device that just connected here is
    online at once) and `local()` is what this replica serves. A desired-state change or a kick made
    here runs every local pusher/kicker and is published to the other replicas, which act on their
    LOCAL gRPC sessions only (`remote_desired`, `remote_kick`): pushers and kickers registered with
    `fleet=True` (MQTT: the broker reaches the device wherever its session is) run on the origin only.
    """

    def __init__(self, *, presence: PresencePort | None = None, fanout: FanoutPort | None = None) -> None:
        self._sessions: dict[str, _Session] = {}
        self._present: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pushers: list[tuple[DesiredPusher, bool]] = []
        self._kickers: list[tuple[Kicker, bool]] = []
        self._presence = presence
        self._fanout = fanout
        self._tasks: set[asyncio.Future[None]] = set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def online(self) -> set[str]:
        """Devices online anywhere in the fleet (this process only, without `presence`)."""
        ids = set(self._sessions) | self._present
        if self._presence is not None:
            ids |= self._presence.online()
        return ids

    def local(self) -> set[str]:
        """Devices this replica serves: its gRPC sessions and the MQTT devices whose status it heard."""
        return set(self._sessions) | self._present

    def streams(self) -> set[str]:
        """Devices with a gRPC Sync stream on this replica."""
        return set(self._sessions)

    def transport(self, device_id: str) -> str | None:
        """How the device is connected ("grpc", "mqtt", None = offline), fleet-wide with presence."""
        if device_id in self._sessions:
            return "grpc"
        found = self._presence.transport(device_id) if self._presence is not None else None
        return found or ("mqtt" if device_id in self._present else None)

    def set_present(self, device_id: str, present: bool) -> None:
        """Presence reported by a transport without a registered session (MQTT status)."""
        if present:
            self._present.add(device_id)
        else:
            self._present.discard(device_id)
        if self._presence is not None:
            (self._presence.connected if present else self._presence.disconnected)(device_id, "mqtt")

    def add(self, session: _Session) -> None:
        old = self._sessions.get(session.device_id)
        if old is not None:
            old.closed_reason = "superseded by a newer session"
            old.outbox.put_nowait(None)
        self._sessions[session.device_id] = session
        if self._presence is not None:
            self._presence.connected(session.device_id, "grpc")

    def remove(self, session: _Session) -> None:
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]
            if self._presence is not None:
                self._presence.disconnected(session.device_id, "grpc")

    def get(self, device_id: str) -> _Session | None:
        return self._sessions.get(device_id)

    def on_desired(self, pusher: DesiredPusher, *, fleet: bool = False) -> None:
        """`fleet=True`: the pusher reaches devices on every replica; it runs on the origin only."""
        self._pushers.append((pusher, fleet))

    def on_kick(self, kicker: Kicker, *, fleet: bool = False) -> None:
        """`fleet=True`: the kicker reaches devices on every replica; it runs on the origin only."""
        self._kickers.append((kicker, fleet))

    async def push_desired(self, device_id: str) -> None:
        """Send the device its current DesiredState on every transport that serves it from here."""
        await self._push(device_id, local_only=False)

    async def _push(self, device_id: str, *, local_only: bool) -> None:
        for pusher, fleet in self._pushers:
            if fleet and local_only:
                continue
            try:
                await pusher(device_id)
            except Exception:
                logger.exception("desired push failed device_id=%s", device_id)

    def notify_desired_changed(self, device_id: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.push_desired(device_id)))
        if self._fanout is not None:
            self._fanout.desired_changed(device_id)

    def remote_desired(self, device_ids: list[str]) -> None:
        """Another replica changed these devices' desired state: push to our local sessions (any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._push_local, device_ids)

    def resync(self) -> None:
        """Bus notifications may have been missed: push current desired state to every local
        session (any thread). Harmless when unchanged: the agent's reconcile is idempotent."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self._push_local(list(self._sessions)))

    def _push_local(self, device_ids: list[str]) -> None:
        for device_id in device_ids:
            if device_id in self._sessions:
                task = asyncio.ensure_future(self._push(device_id, local_only=True))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def kick(self, device_id: str, code: str, detail: str) -> None:
        """Close the device's sessions on every transport and every replica with status `code`."""
        if self._loop is None:
            self._kick_now(device_id, code, detail, local_only=False)
        else:
            self._loop.call_soon_threadsafe(self._kick_now, device_id, code, detail, False)
        if self._fanout is not None:
            self._fanout.kick(device_id, code, detail)

    def remote_kick(self, device_id: str, code: str, detail: str) -> None:
        """Another replica kicked the device: close its session here, if any (any thread)."""
        if self._loop is None:
            self._kick_now(device_id, code, detail, local_only=True)
        else:
            self._loop.call_soon_threadsafe(self._kick_now, device_id, code, detail, True)

    def _kick_now(self, device_id: str, code: str, detail: str, local_only: bool) -> None:
        session = self._sessions.get(device_id)
        if session is not None:
            session.close(code, detail)
        for kicker, fleet in self._kickers:
            if fleet and local_only:
                continue
            try:
                kicker(device_id, code, detail)
            except Exception:
                logger.exception("kick failed device_id=%s", device_id)


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
