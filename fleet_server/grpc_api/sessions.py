"""Who is online and how to reach them: the gRPC Sync session and the `SessionRegistry`.

Owns `_Session` (one gRPC Sync stream's outbox and how it is closed) and `SessionRegistry`: who
is online over any transport and on any replica, through the presence and fan-out ports
(`PresencePort`, `FanoutPort`; implemented in fleet_server/coordination), and the desired-state
and kick fan-out (`DesiredPusher`, `Kicker`). Does not own the gRPC handlers, authentication or
what a device's messages mean (servicer.py, device_session.py), and never writes to the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

import grpc

from fleet_server.logsafe import text as safe_text
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)


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
