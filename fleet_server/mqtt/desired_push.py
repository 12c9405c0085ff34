"""DesiredState pushed over MQTT: published retained on each device's `desired` topic, in batches.

Owns the push queue: a device id queued (its retained `online` was heard, or its desired state
changed on this replica) is loaded with up to DESIRED_BATCH others in one database query and
published retained, if the device is online by MQTT here or by the fleet-wide presence or last came
by MQTT. Does not decide when a push is due (`devices.py` and the session registry), check who may
receive one, or own the broker connection (`bridge.py`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from fleet_server.desired import desired_for
from fleet_server.grpc_api.codec import desired_to_proto
from fleet_server.grpc_api.servicer import SessionRegistry
from fleet_server.models import Device
from fleet_server.settings import Settings
from protos.edgeloop import mqtt

if TYPE_CHECKING:
    from fleet_server.mqtt.devices import Publisher

logger = logging.getLogger(__name__)

DESIRED_BATCH = 500
"""Desired-state pushes loaded per database query."""


class DesiredPushes:
    """The push queue of one `MqttDevices`; runs on the serving event loop. `online` (the devices
    whose MQTT status is online here) and `tasks` (cancelled on stop) are the handler's own."""

    def __init__(
        self,
        *,
        engine: Engine,
        settings: Settings,
        registry: SessionRegistry,
        publisher: Publisher,
        online: set[str],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._registry = registry
        self._publisher = publisher
        self._online = online
        self._tasks = tasks
        self._desired_waiting: dict[str, asyncio.Future[None]] = {}  # insertion-ordered queue
        self._desired_task: asyncio.Task[None] | None = None

    def queue(self, device_id: str) -> asyncio.Future[None]:
        """Queue a push; the future is done when the batch holding it is published. An id queued
        again while its batch is loading goes into the next batch (the change may be newer)."""
        loop = asyncio.get_running_loop()
        waiter = self._desired_waiting.get(device_id)
        if waiter is None:
            waiter = self._desired_waiting[device_id] = loop.create_future()
        if self._desired_task is None or self._desired_task.done():
            self._desired_task = loop.create_task(self._push_batches())
            self._tasks.add(self._desired_task)
            self._desired_task.add_done_callback(self._tasks.discard)
        return waiter

    async def _push_batches(self) -> None:
        """Up to DESIRED_BATCH devices per database query (a restarted server hears every
        device's retained `online` at once: one query per device was a 10,000-query burst,
        bench/fleet_sim/mqtt_scale.py); the protobufs are built in the same worker thread."""
        while self._desired_waiting:
            ids = list(itertools.islice(self._desired_waiting, DESIRED_BATCH))
            waiters = [self._desired_waiting.pop(i) for i in ids]
            online = {i for i in ids if i in self._online or self._registry.transport(i) == "mqtt"}
            try:
                messages = await asyncio.to_thread(self._desired_messages, ids, online)
                for device_id, payload in messages:
                    self._publisher.publish(mqtt.topic(device_id, mqtt.DESIRED), payload, retain=True)
            except SQLAlchemyError as err:
                logger.warning("mqtt: cannot load desired states devices=%d: %s", len(ids), err)
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    def _desired_messages(self, ids: list[str], online: set[str]) -> list[tuple[str, bytes]]:
        with Session(self._engine) as s:
            devices = s.exec(select(Device).where(col(Device.id).in_(ids))).all()
            return [
                (d.id, desired_to_proto(desired_for(d, self._settings)).SerializeToString())
                for d in devices
                if d.status == "active" and (d.id in online or d.transport == "mqtt")
            ]

    def stop(self) -> None:
        for waiter in self._desired_waiting.values():
            if not waiter.done():
                waiter.set_result(None)  # nobody waits on a push the stopping server will not make
