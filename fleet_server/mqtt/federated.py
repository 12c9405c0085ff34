"""FederatedService over MQTT, for the bridge's message handler (devices.py); no paho here.

`fl/attach` (a `TaskStreamRequest`; empty = detach, also the `.fl` client's will) attaches the
device to the FleetGrid and forwards its TrainTasks to `fl/task`; `fl/result` goes through the
same validation as gRPC PushResult (`grid.accept_result`, in a worker thread) and is answered on
`fl/ack`. A payload that does not parse is counted (per device, and in the grid's rejections)
and dropped. Does not decide whether the device may speak (devices.py checks it first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from google.protobuf.message import DecodeError

from fleet_server.federated.grid import FleetGrid
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import federated_pb2 as fpb

Publish = Callable[[str, bytes], None]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class MqttFederated:
    def __init__(
        self, grid: FleetGrid, *, publish: Publish, count_malformed: Callable[[str], None], spawn: Spawn
    ) -> None:
        self._grid = grid
        self._publish = publish
        self._count_malformed = count_malformed
        self._spawn = spawn
        self._links: dict[str, tuple[asyncio.Queue[fpb.TrainTask | None], asyncio.Task[None]]] = {}

    def attach(self, device_id: str, payload: bytes) -> None:
        self.detach(device_id)
        if not payload:
            return
        try:
            req = fpb.TaskStreamRequest.FromString(payload)
        except DecodeError:
            self._count_malformed(device_id)
            return
        queue = self._grid.attach(device_id, dict(req.state), transport="mqtt")
        task = asyncio.get_running_loop().create_task(self._forward_tasks(device_id, queue))
        self._links[device_id] = (queue, task)

    async def _forward_tasks(self, device_id: str, queue: asyncio.Queue[fpb.TrainTask | None]) -> None:
        topic = mqtt.topic(device_id, mqtt.FL_TASK)
        while (task := await queue.get()) is not None:
            self._publish(topic, task.SerializeToString())

    def detach(self, device_id: str) -> None:
        link = self._links.pop(device_id, None)
        if link is not None:
            queue, task = link
            task.cancel()
            self._grid.detach(device_id, queue)

    def result(self, device_id: str, payload: bytes, done: Callable[[], None]) -> None:
        """`done()` once the result is judged and answered (or dropped as malformed)."""
        try:
            result = fpb.TaskResult.FromString(payload)
        except DecodeError:
            self._grid.rejected["malformed"] += 1
            self._count_malformed(device_id)
            done()
            return
        self._spawn(self._push_result(device_id, result, done))

    async def _push_result(self, device_id: str, result: fpb.TaskResult, done: Callable[[], None]) -> None:
        """The gRPC PushResult path (federated/servicer.py): the grid validates and takes it, or,
        with replicas, relays it to the runner replica (a shared subscription hands the result to
        any replica, not necessarily the one that published the task)."""
        try:
            accepted, reason = await asyncio.to_thread(self._grid.forward_result, device_id, result)
            ack = fpb.PushResultResponse(accepted=accepted, reason=reason)
            self._publish(mqtt.topic(device_id, mqtt.FL_ACK), ack.SerializeToString())
        finally:
            done()

    def stop(self) -> None:
        for device_id in list(self._links):
            self.detach(device_id)
