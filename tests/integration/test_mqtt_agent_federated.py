"""The federated link over MQTT against the machine's Mosquitto: attach, a task in, a result out
and its ack back, a push with no ack times out as gRPC's deadline does, close detaches."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import TransportError
from agent.federated.mqtt_link import MqttFederatedLink
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import federated_pb2 as fpb
from tests.integration.test_mqtt_agent import HOST, PORT, URL, _broker_up, wait_until

pytestmark = pytest.mark.skipif(not _broker_up(), reason="no Mosquitto on 127.0.0.1:1883")


class FlServer:
    """Plays the server: a task on each attach, an ack for each result unless `silent`."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.lock = threading.Lock()
        self.attaches: list[bytes] = []
        self.results: list[fpb.TaskResult] = []
        self.silent = False
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fls-{device_id}", clean_session=True)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *_: c.subscribe(
            [(mqtt.topic(device_id, mqtt.FL_ATTACH), 1), (mqtt.topic(device_id, mqtt.FL_RESULT), 1)]
        )
        self.c.connect(HOST, PORT)
        self.c.loop_start()
        assert wait_until(self.c.is_connected, 5)

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        parsed = mqtt.parse(msg.topic)
        assert parsed is not None
        if parsed[1] == mqtt.FL_ATTACH:
            with self.lock:
                self.attaches.append(bytes(msg.payload))
            if msg.payload:
                task = fpb.TrainTask(task_id="t1", round_id="r:1", server_round=1, kind="train")
                self.c.publish(mqtt.topic(self.device_id, mqtt.FL_TASK), task.SerializeToString(), qos=1)
        elif parsed[1] == mqtt.FL_RESULT:
            result = fpb.TaskResult.FromString(msg.payload)
            with self.lock:
                self.results.append(result)
            if not self.silent:
                ack = fpb.PushResultResponse(accepted=True)
                self.c.publish(mqtt.topic(self.device_id, mqtt.FL_ACK), ack.SerializeToString(), qos=1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def fl_server() -> Iterator[FlServer]:
    srv = FlServer(f"t-{uuid.uuid4().hex[:12]}")
    yield srv
    srv.close()


def test_attach_task_result_ack_timeout_and_detach(fl_server: FlServer) -> None:
    link = MqttFederatedLink(endpoint=URL, device_id=fl_server.device_id, store=None, max_task_bytes=2**20)

    async def scenario() -> tuple[fpb.TrainTask, fpb.PushResultResponse, Exception | None]:
        tasks = link.tasks({"idle": 1.0}, ["train"])
        task = await asyncio.wait_for(anext(tasks), 10)
        ack = await link.push(fpb.TaskResult(task_id=task.task_id, round_id=task.round_id, num_examples=3))
        fl_server.silent = True
        err: Exception | None = None
        try:
            await link.push(fpb.TaskResult(task_id="t2", round_id="r:1"), timeout_s=0.5)
        except TransportError as e:
            err = e
        await link.close()
        return task, ack, err

    task, ack, err = asyncio.run(scenario())
    assert (task.task_id, task.round_id) == ("t1", "r:1")
    assert ack.accepted
    assert isinstance(err, TransportError) and "timed out" in str(err)
    assert wait_until(lambda: len(fl_server.attaches) >= 2, 5)
    request = fpb.TaskStreamRequest.FromString(fl_server.attaches[0])
    assert list(request.capabilities) == ["train"] and request.state["idle"] == 1.0
    assert fl_server.attaches[-1] == b""  # detached on close
    assert [r.task_id for r in fl_server.results] == ["t1", "t2"]
    assert fl_server.results[0].num_examples == 3
