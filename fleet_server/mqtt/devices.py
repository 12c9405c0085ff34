"""What the fleet server does with each MQTT message a device publishes (no paho here).

`MqttDevices.handle(topic, payload, done)` takes one message from the bridge and calls `done()`
exactly once, when the message is settled: for a report or telemetry that is after its rows are
committed and the SyncResponse ack is published on the device's `down` topic, so the bridge acks
the broker's QoS 1 delivery only then (a server killed before the commit gets it redelivered).
Sync messages run through the same `device_session.DeviceSession` as gRPC Sync.

Per message, in order: the topic must be a contract topic a device publishes (else dropped and
counted); the device's size limit and token bucket (a flooding device gets
`SessionClosed(RESOURCE_EXHAUSTED)` on its `down` and its messages are dropped, others unaffected);
the device must exist and be active (an active status is cached for `mqtt_status_ttl_s`, evicted within
5 s of a revocation on any replica by a watch on `revoked_at`; unknown or revoked for 5 s; else
`SessionClosed(PERMISSION_DENIED)`); a payload that does not parse is counted per device and dropped.
Nothing a device sends raises out of `handle`.

Also: presence from the retained `status` topic (into SessionRegistry, so the API's `online`
covers both transports; with replicas it is written to the database, coordination/presence.py),
DesiredState published retained on `desired`, the federated topics (handed to federated.py) and
`kick` for revocation. With several replicas a shared subscription gives each replica only part of
the status messages, so desired pushes and kicks run on the replica where the change was made
(registered `fleet=True`), for every device whose fleet-wide presence or last transport is MQTT.
Does not own the broker connection (bridge.py) or batch the desired pushes (desired_push.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from fleet_server.device_session import DeviceSession, Refusal, Renewer, refusal_log
from fleet_server.federated.grid import FleetGrid
from fleet_server.grpc_api.servicer import SessionRegistry
from fleet_server.ingest import IngestWriter
from fleet_server.logsafe import text as safe_text
from fleet_server.models import Device
from fleet_server.mqtt.desired_push import DesiredPushes
from fleet_server.mqtt.federated import MqttFederated
from fleet_server.observability.logs import log_context
from fleet_server.settings import Settings
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb

logger = logging.getLogger(__name__)

Done = Callable[[], None]

MAX_DEVICES = 100_000
"""Per-device state (token bucket, cached status) kept in memory; least recently used evicted."""
MAX_COUNTED_DEVICES = 256
NEGATIVE_TTL_S = 5.0
"""How long an unknown or inactive device status is cached (an active one: `mqtt_status_ttl_s`)."""
REVOCATION_POLL_S = 5.0
REVOCATION_LOOKBACK_S = 120.0
"""Every poll evicts the devices revoked in this window (on any replica; generous for clock skew)."""
CLOSED_INTERVAL_S = 1.0
"""At most one SessionClosed per device per interval: a flood is not answered message by message."""


class Publisher(Protocol):
    """The broker, as the handler sees it (bridge.py). Thread-safe, never blocks for long."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


@dataclass
class MqttStats:
    """Served as `mqtt` in /healthz."""

    messages: int = 0
    foreign_topics: int = 0  # not a topic a device publishes: dropped
    rate_limited: int = 0  # over the device's size or rate limit: dropped
    denied: int = 0  # unknown or revoked device: dropped
    refused: dict[str, int] = field(default_factory=dict)  # by SessionClosed code
    malformed_by_device: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # internal errors (logged); the bridge goes on

    def count_malformed(self, device_id: str) -> None:
        key = device_id
        if key not in self.malformed_by_device and len(self.malformed_by_device) >= MAX_COUNTED_DEVICES:
            key = "(other devices)"
        self.malformed_by_device = {**self.malformed_by_device, key: self.malformed_by_device.get(key, 0) + 1}

    def count_refused(self, code: str) -> None:
        self.refused = {**self.refused, code: self.refused.get(code, 0) + 1}


@dataclass
class _Device:
    session: DeviceSession
    status: str | None = None  # "active", "revoked", None = unknown device
    status_until: float = 0.0
    closed_at: float = -1e9


class _Once:
    def __init__(self, done: Done) -> None:
        self._done: Done | None = done

    def __call__(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()


class MqttDevices:
    """The bridge's message handler; runs on the serving event loop."""

    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        writer: IngestWriter,
        registry: SessionRegistry,
        publisher: Publisher,
        grid: FleetGrid | None = None,
        renew: Renewer | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._writer = writer
        self._registry = registry
        self._publisher = publisher
        self._renew = renew
        self._log = refusal_log()
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._online: set[str] = set()
        self._preloaded: set[str] = set()  # active at start(), not yet in _devices
        self._preloaded_until = 0.0
        self._desired = DesiredPushes(
            engine=engine,
            settings=settings,
            registry=registry,
            publisher=publisher,
            online=self._online,
            tasks=self._tasks,
        )
        self.stats = MqttStats()
        self._federated = (
            MqttFederated(
                grid,
                publish=self._publisher.publish,
                count_malformed=self.stats.count_malformed,
                spawn=self._spawn,
            )
            if grid is not None
            else None
        )
        # The broker reaches the device whichever replica it talks to: push and kick on the origin only.
        registry.on_desired(self.push_desired, fleet=True)
        registry.on_kick(self.kick, fleet=True)

    # ------------------------------------------------------------ messages

    async def handle(self, topic: str, payload: bytes, done: Done) -> None:
        """Handle one message; `done()` runs once when it is settled. Never raises."""
        once = _Once(done)
        self.stats.messages += 1
        parsed = mqtt.parse(topic)
        try:
            with log_context(device_id=parsed[0] if parsed is not None else None):
                await self._handle(topic, payload, once)
        except Exception:
            self.stats.errors += 1
            logger.exception("mqtt message failed topic=%s", safe_text(topic, 200))
            once()

    async def _handle(self, topic: str, payload: bytes, done: Done) -> None:
        parsed = mqtt.parse(topic)
        if parsed is None or parsed[1] not in mqtt.DEVICE_PUBLISHES:
            self.stats.foreign_topics += 1
            done()
            return
        device_id, kind = parsed
        dev = self._device(device_id)
        refusal = dev.session.admit(len(payload))
        if refusal is not None:
            self.stats.rate_limited += 1
            self._refuse(dev, refusal)
            done()
            return
        if await self._status(dev) != "active":
            self.stats.denied += 1
            self._refuse(
                dev, Refusal("PERMISSION_DENIED", f"device {device_id!r} is not enrolled or revoked")
            )
            done()
            return
        if kind == mqtt.UP:
            self._up(dev, payload, done)
        elif kind == mqtt.STATUS:
            self._presence(device_id, payload)
            done()
        elif self._federated is None:  # fl/attach or fl/result on a server without federated learning
            done()
        elif kind == mqtt.FL_ATTACH:
            self._federated.attach(device_id, payload)
            done()
        else:
            self._federated.result(device_id, payload, done)

    def _up(self, dev: _Device, payload: bytes, done: Done) -> None:
        topic = mqtt.topic(dev.session.device_id, mqtt.DOWN)

        def reply(msg: pb.SyncResponse | None) -> None:
            if msg is not None:
                self._publisher.publish(topic, msg.SerializeToString())
            done()

        refusal = dev.session.handle(payload, reply)
        if refusal is not None:
            if refusal.code == "INVALID_ARGUMENT":
                self.stats.count_malformed(dev.session.device_id)
            self._refuse(dev, refusal)
            done()

    def _presence(self, device_id: str, payload: bytes) -> None:
        if payload == mqtt.ONLINE:
            self._set_online(device_id, True)
            self._desired.queue(device_id)  # not awaited: the message is settled now
        elif payload == mqtt.OFFLINE or not payload:  # empty: a retained status being cleared
            self._set_online(device_id, False)
        else:
            self.stats.count_malformed(device_id)

    async def start(self) -> None:
        """Load the ids of all active devices (one query: after a server restart the whole fleet
        reconnects, and a status lookup per first message was most of the bridge's CPU in
        bench/mqtt) and start the revocation watch. Call on the serving loop before the bridge
        delivers."""
        try:
            active = await asyncio.to_thread(self._active_ids)
        except SQLAlchemyError as err:
            logger.warning("mqtt: cannot preload device statuses (looked up per device): %s", err)
            active = []
        self._preloaded = set(active)
        self._preloaded_until = time.monotonic() + self._settings.mqtt_status_ttl_s
        self._spawn(self._watch_revocations())

    def _active_ids(self) -> list[str]:
        with Session(self._engine) as s:
            return list(s.exec(select(Device.id).where(Device.status == "active")).all())

    async def _watch_revocations(self) -> None:
        """Evict the cached status of every device revoked lately, wherever it was revoked: an
        active status is trusted for `mqtt_status_ttl_s`, so a revocation on another replica must
        reach this cache by this watch (one small query per poll), within REVOCATION_POLL_S."""
        while True:
            await asyncio.sleep(REVOCATION_POLL_S)
            try:
                revoked = await asyncio.to_thread(self._revoked_lately)
            except SQLAlchemyError as err:
                logger.warning("mqtt: revocation watch cannot read devices: %s", err)
                continue
            for device_id in revoked:
                self._preloaded.discard(device_id)
                dev = self._devices.get(device_id)
                if dev is not None:
                    dev.status_until = 0.0

    def _revoked_lately(self) -> list[str]:
        since = datetime.now(UTC) - timedelta(seconds=REVOCATION_LOOKBACK_S)
        with Session(self._engine) as s:
            return list(s.exec(select(Device.id).where(col(Device.revoked_at) >= since)).all())

    # ------------------------------------------------------------ desired, kick

    async def push_desired(self, device_id: str) -> None:
        """Publish the device's DesiredState retained, if it is online by MQTT (here or, by presence,
        anywhere in the fleet) or last came by MQTT.
        Returns once published (or found not to apply). Pushes are batched (`desired_push.py`)."""
        if _valid_id(device_id):
            await self._desired.queue(device_id)

    def kick(self, device_id: str, code: str, detail: str) -> None:
        """Close the device's MQTT session (revocation): SessionClosed on `down`, marked offline."""
        self._set_online(device_id, False)
        if self._federated is not None:
            self._federated.detach(device_id)
        self._devices.pop(device_id, None)  # its status is looked up again on the next message
        self._preloaded.discard(device_id)
        if _valid_id(device_id):
            self._publish_closed(device_id, Refusal(code, detail))

    async def stop(self) -> None:
        if self._federated is not None:
            self._federated.stop()
        self._desired.stop()
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------ helpers

    def _device(self, device_id: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = _Device(
                DeviceSession(
                    device_id,
                    transport="mqtt",
                    settings=self._settings,
                    writer=self._writer,
                    close=lambda code, detail: self._close(device_id, Refusal(code, detail)),
                    renew=self._renew,
                    log=self._log,
                )
            )
            self._devices[device_id] = dev
            if len(self._devices) > MAX_DEVICES:
                self._devices.popitem(last=False)
        else:
            self._devices.move_to_end(device_id)
        return dev

    async def _status(self, dev: _Device) -> str | None:
        now = time.monotonic()
        if now >= dev.status_until and dev.session.device_id in self._preloaded:
            self._preloaded.discard(dev.session.device_id)
            if now < self._preloaded_until:
                dev.status, dev.status_until = "active", self._preloaded_until
        if now >= dev.status_until:
            device = await asyncio.to_thread(self._load, dev.session.device_id)
            dev.status = device.status if device is not None else None
            ttl = self._settings.mqtt_status_ttl_s
            dev.status_until = now + (ttl if dev.status == "active" else min(ttl, NEGATIVE_TTL_S))
        return dev.status

    def _close(self, device_id: str, refusal: Refusal) -> None:
        dev = self._devices.get(device_id)
        if dev is not None:
            self._refuse(dev, refusal)

    def _set_online(self, device_id: str, online: bool) -> None:
        if online:
            self._online.add(device_id)
        else:
            self._online.discard(device_id)
        self._registry.set_present(device_id, online)

    def _refuse(self, dev: _Device, refusal: Refusal) -> None:
        """SessionClosed on the device's `down`, at most once per CLOSED_INTERVAL_S."""
        self.stats.count_refused(refusal.code)
        now = time.monotonic()
        if now - dev.closed_at < CLOSED_INTERVAL_S:
            return
        dev.closed_at = now
        self._log.warning(
            f"{dev.session.device_id}|closed",
            "mqtt session closed device_id=%s code=%s detail=%s",
            dev.session.device_id,
            refusal.code,
            safe_text(refusal.detail, 200),
        )
        self._publish_closed(dev.session.device_id, refusal)

    def _publish_closed(self, device_id: str, refusal: Refusal) -> None:
        closed = pb.SyncResponse(
            closed=pb.SessionClosed(code=refusal.code, detail=safe_text(refusal.detail, 300))
        )
        self._publisher.publish(mqtt.topic(device_id, mqtt.DOWN), closed.SerializeToString())

    def _load(self, device_id: str) -> Device | None:
        with Session(self._engine, expire_on_commit=False) as s:
            return s.get(Device, device_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _valid_id(device_id: str) -> bool:
    try:
        mqtt.topic(device_id, mqtt.DOWN)
    except ValueError:
        return False
    return True
