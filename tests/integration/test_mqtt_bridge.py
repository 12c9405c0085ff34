"""The fleet server's MQTT bridge against a real Mosquitto and a real database.

A paho "device" (the contract in protos/edgeloop/mqtt.py) publishes to a live in-process server
with the bridge on. Each test gets its own Mosquitto on a free port (/usr/sbin/mosquitto), so
the server's status subscription and its PERMISSION_DENIED answers never reach devices of other
test runs on the machine broker; nothing retained is left behind.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import cast

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import update
from sqlmodel import SQLModel, select

from fleet_server.certs import renewal
from fleet_server.db import make_engine
from fleet_server.models import Device, TelemetryRecord
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb
from protos.edgeloop.v1 import federated_pb2 as fpb
from tests.helpers.inproc import LiveServer, enroll, live, prepare, report, telemetry
from tests.helpers.net import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not shutil.which(MOSQUITTO), reason="needs /usr/sbin/mosquitto")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = paho.Client(CallbackAPIVersion.VERSION2)
        try:
            probe.connect("127.0.0.1", port)
            probe.disconnect()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def _settings(tmp_path: Path, database_url: str, port: int, client_id: str) -> tuple[object, dict[str, str]]:
    return prepare(
        tmp_path / "srv",
        database_url,
        device_max_messages_per_s=20,
        device_burst=40,
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        mqtt_client_id=client_id,
        mqtt_status_ttl_s=0.2,
    )


@pytest.fixture
def server(tmp_path: Path, database_url: str, broker: int) -> Iterator[LiveServer]:
    settings, tokens = _settings(tmp_path, database_url, broker, f"srv-{uuid.uuid4().hex[:8]}")
    yield from live(settings, tokens)  # type: ignore[arg-type]


class Device_:
    """A device on MQTT: publishes SyncRequests on `up`, collects what arrives on its topics."""

    def __init__(self, port: int, device_id: str) -> None:
        self.device_id = device_id
        self.inbox: dict[str, queue.Queue[bytes]] = {k: queue.Queue() for k in mqtt.DEVICE_SUBSCRIBES}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=mqtt.client_id(device_id))
        self.client.will_set(mqtt.topic(device_id, mqtt.STATUS), mqtt.OFFLINE, qos=1, retain=True)
        self.client.on_message = lambda c, u, m: self.inbox[mqtt.parse(m.topic)[1]].put(bytes(m.payload))  # type: ignore[index]
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(mqtt.topic(device_id, k), 1) for k in mqtt.DEVICE_SUBSCRIBES])
        self.client.loop_start()

    def send(self, msg: pb.SyncRequest | bytes, kind: str = mqtt.UP, *, retain: bool = False) -> None:
        payload = msg if isinstance(msg, bytes) else msg.SerializeToString()
        self.client.publish(mqtt.topic(self.device_id, kind), payload, qos=1, retain=retain).wait_for_publish(
            10
        )

    def down(self, kind: str, timeout_s: float = 15.0) -> pb.SyncResponse:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = pb.SyncResponse.FromString(self.inbox[mqtt.DOWN].get(timeout=left))
            except queue.Empty:
                break
            if msg.WhichOneof("msg") == kind:
                return msg
        raise AssertionError(f"no {kind} on down for {self.device_id}")

    def close(self) -> None:
        # Clear what this test left retained.
        for kind in (mqtt.STATUS, mqtt.DESIRED):
            self.client.publish(mqtt.topic(self.device_id, kind), b"", qos=1, retain=True).wait_for_publish(
                10
            )
        self.client.loop_stop()
        self.client.disconnect()


def _new_device(server: LiveServer, port: int, tmp_path: Path) -> Device_:
    device_id = f"mq-{uuid.uuid4().hex[:10]}"
    enroll(server, device_id, server.bootstrap_token(), tmp_path)
    return Device_(port, device_id)


def _rows(server: LiveServer, device_id: str) -> list[int]:
    engine = make_engine(server.settings.resolved_database_url())
    table = SQLModel.metadata.tables[TelemetryRecord.__tablename__]
    with engine.connect() as conn:
        seqs = [s for (s,) in conn.execute(select(table.c.seq).where(table.c.device_id == device_id))]
    engine.dispose()
    return sorted(seqs)


def _api_device(server: LiveServer, device_id: str) -> dict[str, object]:
    resp = server.client.get(f"/api/v1/devices/{device_id}", headers=server.auth())
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _eventually(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_reports_and_telemetry_land_once_acks_and_desired_come_back(
    server: LiveServer, broker: int, tmp_path: Path
) -> None:
    dev = _new_device(server, broker, tmp_path)
    try:
        dev.send(mqtt.ONLINE, mqtt.STATUS, retain=True)
        desired = pb.DesiredState.FromString(dev.inbox[mqtt.DESIRED].get(timeout=15))
        assert desired.generation >= 1 and desired.ota_access.token
        _eventually(lambda: _api_device(server, dev.device_id)["online"] is True)

        dev.send(report(dev.device_id, seq=7))
        assert dev.down("report_ack").report_ack.sequence == 7
        dev.send(telemetry(1, [1, 2, 3]))
        ack = dev.down("telemetry_ack").telemetry_ack
        assert (ack.batch_id, list(ack.seqs)) == (1, [1, 2, 3])
        dev.send(telemetry(2, [2, 3, 4]))  # a resend after a lost ack, plus one new record
        assert list(dev.down("telemetry_ack").telemetry_ack.seqs) == [2, 3, 4]
        assert _rows(server, dev.device_id) == [1, 2, 3, 4]
        body = _api_device(server, dev.device_id)
        assert body["transport"] == "mqtt" and body["agent_version"] == "test"

        # Desired state changes reach the device as a new retained DesiredState.
        resp = server.client.patch(
            f"/api/v1/devices/{dev.device_id}/labels", json={"labels": {"site": "x"}}, headers=server.auth()
        )
        assert resp.status_code == 200, resp.text
        changed = pb.DesiredState.FromString(dev.inbox[mqtt.DESIRED].get(timeout=15))
        assert changed.labels.get("site") == "x"

        dev.send(mqtt.OFFLINE, mqtt.STATUS, retain=True)
        _eventually(lambda: _api_device(server, dev.device_id)["online"] is False)
    finally:
        dev.close()


def test_messages_sent_while_the_server_is_down_are_delivered_once(
    tmp_path: Path, database_url: str, broker: int
) -> None:
    """The bridge's persistent session holds QoS 1 uplink while no server runs; nothing is lost
    and a device's resend after the restart does not duplicate rows."""
    settings, tokens = _settings(tmp_path, database_url, broker, f"srv-{uuid.uuid4().hex[:8]}")
    gen = cast(Generator[LiveServer], live(settings, tokens))  # type: ignore[arg-type]
    server = next(gen)
    dev = _new_device(server, broker, tmp_path)
    try:
        dev.send(telemetry(1, [1]))
        assert list(dev.down("telemetry_ack").telemetry_ack.seqs) == [1]
        gen.close()  # server stopped: its session (and subscriptions) stay with the broker
        dev.send(telemetry(2, [2, 3]))
        dev.send(telemetry(3, [3, 4]))
        gen = cast(Generator[LiveServer], live(settings, tokens))  # type: ignore[arg-type]
        server = next(gen)
        acks = [dev.down("telemetry_ack").telemetry_ack for _ in range(2)]
        assert sorted(a.batch_id for a in acks) == [2, 3]
        dev.send(telemetry(2, [2, 3]))  # the device did not see an ack in time and resends
        dev.down("telemetry_ack")
        assert _rows(server, dev.device_id) == [1, 2, 3, 4]
    finally:
        dev.close()
        gen.close()


def test_flooding_and_malformed_devices_do_not_disturb_another(
    server: LiveServer, broker: int, tmp_path: Path
) -> None:
    flood, garbage, calm = (_new_device(server, broker, tmp_path) for _ in range(3))
    try:
        for i in range(120):  # burst 40: most are over the limit
            flood.client.publish(
                mqtt.topic(flood.device_id, mqtt.UP), telemetry(i, [i + 1]).SerializeToString(), 1
            )
        assert flood.down("closed").closed.code == "RESOURCE_EXHAUSTED"
        for junk in (b"\xff\xff\xff", b"\x0a\x05abc", b"", b"\x08" * 100):
            garbage.send(junk)
        assert garbage.down("closed").closed.code == "INVALID_ARGUMENT"
        garbage.send(b"\x00\x01", kind=mqtt.FL_RESULT)
        calm.send(telemetry(1, [1, 2]))
        assert list(calm.down("telemetry_ack").telemetry_ack.seqs) == [1, 2]
        assert _rows(server, calm.device_id) == [1, 2]
        stats = server.client.get("/healthz").json()["mqtt"]
        assert stats["rate_limited"] >= 1 and stats["refused"]["RESOURCE_EXHAUSTED"] >= 1
        assert stats["malformed_by_device"][garbage.device_id] >= 4
        assert calm.device_id not in stats["malformed_by_device"]
    finally:
        for d in (flood, garbage, calm):
            d.close()


def test_revoked_and_unknown_devices_are_refused_and_kicked(
    server: LiveServer, broker: int, tmp_path: Path
) -> None:
    dev = _new_device(server, broker, tmp_path)
    stranger = Device_(broker, f"mq-{uuid.uuid4().hex[:10]}")  # never enrolled
    try:
        dev.send(report(dev.device_id, seq=1))
        dev.down("report_ack")
        dev.send(mqtt.ONLINE, mqtt.STATUS, retain=True)
        _eventually(lambda: _api_device(server, dev.device_id)["online"] is True)
        engine = make_engine(server.settings.resolved_database_url())
        with engine.begin() as conn:
            conn.execute(update(Device).where(Device.id == dev.device_id).values(status="revoked"))  # type: ignore[arg-type]
        engine.dispose()
        server.client.app.state.registry.kick(dev.device_id, "PERMISSION_DENIED", "certificate revoked")  # type: ignore[attr-defined]
        closed = dev.down("closed").closed
        assert (closed.code, closed.detail) == ("PERMISSION_DENIED", "certificate revoked")
        _eventually(lambda: _api_device(server, dev.device_id)["online"] is False)
        time.sleep(1.1)  # one SessionClosed per second per device
        dev.send(telemetry(1, [1]))
        assert dev.down("closed").closed.code == "PERMISSION_DENIED"
        assert _rows(server, dev.device_id) == []
        stranger.send(telemetry(1, [1]))
        assert stranger.down("closed").closed.code == "PERMISSION_DENIED"
    finally:
        dev.close()
        stranger.close()


def test_certificate_renewal_over_mqtt(
    server: LiveServer, broker: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SyncRequest.renew reaches certs.renewal.renew_certificate (replaced here by a recorder: the
    issuing itself is tested with certs/) and its RenewResponse comes back on `down`."""
    calls: list[tuple[str, bytes]] = []

    def renew_certificate(
        engine: object, ca: object, device_id: str, csr_pem: bytes, **kwargs: object
    ) -> pb.RenewResponse:
        calls.append((device_id, csr_pem))
        return pb.RenewResponse(certificate_chain_pem=b"chain", not_after_ms=42)

    monkeypatch.setattr(renewal, "renew_certificate", renew_certificate)
    dev = _new_device(server, broker, tmp_path)
    try:
        dev.send(pb.SyncRequest(renew=pb.RenewRequest(csr_pem=b"CSR")))
        renewed = dev.down("renewed").renewed
        assert (renewed.certificate_chain_pem, renewed.not_after_ms) == (b"chain", 42)
        assert calls == [(dev.device_id, b"CSR")]
    finally:
        dev.close()


def test_federated_link_over_mqtt(server: LiveServer, broker: int, tmp_path: Path) -> None:
    """fl/attach puts the device in the grid with its state, its tasks come out on fl/task, a
    result gets its verdict on fl/ack (the grid's own, as on gRPC), and an empty attach detaches."""
    dev = _new_device(server, broker, tmp_path)
    grid = server.client.app.state.federated.grid  # type: ignore[attr-defined]
    try:
        dev.send(fpb.TaskStreamRequest(state={"idle": 1.0}).SerializeToString(), mqtt.FL_ATTACH)
        _eventually(lambda: dev.device_id in grid.online_devices())
        assert grid.state_of(dev.device_id) == {"idle": 1.0}
        queue = grid._devices[dev.device_id].queue
        grid._loop.call_soon_threadsafe(queue.put_nowait, fpb.TrainTask(task_id="t-1", round_id="r-1"))
        task = fpb.TrainTask.FromString(dev.inbox[mqtt.FL_TASK].get(timeout=15))
        assert (task.task_id, task.round_id) == ("t-1", "r-1")
        dev.send(fpb.TaskResult(task_id="nope", round_id="r-1").SerializeToString(), mqtt.FL_RESULT)
        ack = fpb.PushResultResponse.FromString(dev.inbox[mqtt.FL_ACK].get(timeout=15))
        assert not ack.accepted and ack.reason
        dev.send(b"", mqtt.FL_ATTACH)
        _eventually(lambda: dev.device_id not in grid.online_devices())
    finally:
        dev.close()
