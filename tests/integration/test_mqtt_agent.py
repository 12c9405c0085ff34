"""The agent's MQTT adapter against the machine's Mosquitto (127.0.0.1:1883, plain, shared).

A tiny in-test "server" (a paho client playing the server's side of `protos/edgeloop/mqtt.py`)
acks reports and telemetry on `down` and publishes a retained `DesiredState`. Checked: reports
and telemetry arrive with their seqs and acks drain the outbox; a retained desired state reaches
a reconnecting agent in its first session; a malformed `down` payload is dropped and counted
without ending the session; `SyncResponse.closed` maps to the gRPC path's errors; a refused TCP
connection is a retryable TransportError; the will publishes `offline` when a real agent process
is SIGKILLed, and a clean stop publishes it too. Unique device ids per test; retained messages
and persistent broker sessions are cleaned up.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig, SyncConfig, TelemetryConfig
from agent.errors import RateLimitedError, TransportError
from agent.identity import IdentityStore
from agent.outbox import TelemetryOutbox
from agent.state import Resources
from agent.statefile import StateFile
from agent.sync import Reconciler, SyncLoop
from agent.transport.grpc_fleet import SessionRejectedError
from agent.transport.mqtt_fleet import MqttFleetConnector
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb
from tests.helpers.net import free_port

HOST, PORT = "127.0.0.1", 1883
URL = f"mqtt://{HOST}:{PORT}"
RES = Resources(0.1, 1, 1, 1, 20.0, 1)
BIN = Path(sys.executable).parent


def _broker_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _broker_up(), reason="no Mosquitto on 127.0.0.1:1883")


def wait_until(pred: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


async def await_until(pred: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


class FakeServer:
    """The server's side of the contract for one device, on its own paho client."""

    def __init__(self, device_id: str, *, ack: bool = True) -> None:
        self.device_id = device_id
        self.ack = ack
        self.lock = threading.Lock()
        self.seqs: list[int] = []
        self.reports: list[pb.DeviceReport] = []
        self.status: list[bytes] = []
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"srv-{device_id}", clean_session=True)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *_: c.subscribe(
            [(mqtt.topic(device_id, mqtt.UP), 1), (mqtt.topic(device_id, mqtt.STATUS), 1)]
        )
        self.c.connect(HOST, PORT)
        self.c.loop_start()

    def topic(self, kind: str) -> str:
        return mqtt.topic(self.device_id, kind)

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        kind = mqtt.parse(msg.topic)
        assert kind is not None
        if kind[1] == mqtt.STATUS:
            with self.lock:
                self.status.append(bytes(msg.payload))
            return
        req = pb.SyncRequest.FromString(msg.payload)
        which = req.WhichOneof("msg")
        resp: pb.SyncResponse | None = None
        with self.lock:
            if which == "report":
                self.reports.append(req.report)
                resp = pb.SyncResponse(report_ack=pb.ReportAck(sequence=req.report.sequence))
            elif which == "telemetry":
                got = [r.seq for r in req.telemetry.records]
                self.seqs.extend(got)
                resp = pb.SyncResponse(
                    telemetry_ack=pb.TelemetryAck(batch_id=req.telemetry.batch_id, seqs=got)
                )
        if resp is not None and self.ack:
            self.c.publish(self.topic(mqtt.DOWN), resp.SerializeToString(), qos=1)

    def down(self, payload: bytes) -> None:
        self.c.publish(self.topic(mqtt.DOWN), payload, qos=1).wait_for_publish(5)

    def desired(self, generation: int) -> None:
        msg = pb.DesiredState(generation=generation, settings=pb.AgentSettings(max_messages_per_s=1000))
        self.c.publish(
            self.topic(mqtt.DESIRED), msg.SerializeToString(), qos=1, retain=True
        ).wait_for_publish(5)

    def close(self) -> None:
        for kind in (mqtt.DESIRED, mqtt.STATUS):  # leave no retained message behind on the shared broker
            self.c.publish(self.topic(kind), b"", qos=1, retain=True).wait_for_publish(5)
        self.c.disconnect()
        self.c.loop_stop()
        # drop the device's persistent session at the broker
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=mqtt.client_id(self.device_id), clean_session=True
        )
        c.connect(HOST, PORT)
        c.loop_start()
        wait_until(c.is_connected, 5)
        c.disconnect()
        c.loop_stop()


@pytest.fixture
def device_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def server(device_id: str) -> Iterator[FakeServer]:
    srv = FakeServer(device_id)
    yield srv
    srv.close()


def _sync_loop(
    tmp_path: Path, device_id: str, connector: MqttFleetConnector
) -> tuple[SyncLoop, TelemetryOutbox]:
    cfg = AgentConfig(
        telemetry=TelemetryConfig(batch_max=10, max_in_flight_batches=2),
        sync=SyncConfig(backoff_initial_s=0.05, backoff_max_s=0.2, shutdown_flush_s=3.0),
    )
    outbox = TelemetryOutbox(tmp_path / "outbox.db", max_records=10_000)
    loop = SyncLoop(
        config=cfg,
        device_id=device_id,
        outbox=outbox,
        connector=connector,
        reconciler=Reconciler(StateFile(tmp_path / "state.json")),
        clock=_Clock(),
        resources=lambda: RES,
        status_path=tmp_path / "status.json",
        rng=random.Random(1),
    )
    return loop, outbox


class _Clock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000


def test_reports_and_telemetry_arrive_with_seqs_and_acks_drain_the_outbox(
    tmp_path: Path, device_id: str, server: FakeServer
) -> None:
    server.desired(3)
    connector = MqttFleetConnector(endpoint=URL, device_id=device_id, store=None)
    loop, outbox = _sync_loop(tmp_path, device_id, connector)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        for i in range(45):
            outbox.append(timestamp_ms=i, kind="t", metrics={"i": float(i)})
        loop.telemetry_ready.set()
        drained = await await_until(lambda: outbox.stats().queued == 0 and loop.status.reports_acked >= 1)
        stop.set()
        await asyncio.wait_for(task, 15)
        assert drained, outbox.stats()

    asyncio.run(scenario())
    with server.lock:
        assert sorted(set(server.seqs)) == list(range(1, 46))  # every seq arrived
        assert server.reports and server.reports[0].device_id == device_id
        assert [r.sequence for r in server.reports] == sorted(r.sequence for r in server.reports)
    assert loop.status.telemetry_acked == 45
    assert loop._reconciler.observed.applied_generation == 3  # retained desired applied
    assert wait_until(lambda: server.status[-1:] == [mqtt.OFFLINE], 5)  # clean stop says offline
    assert mqtt.ONLINE in server.status


def test_retained_desired_reaches_a_reconnecting_agent_in_its_first_session(
    tmp_path: Path, device_id: str, server: FakeServer
) -> None:
    connector = MqttFleetConnector(endpoint=URL, device_id=device_id, store=None)
    loop, _ = _sync_loop(tmp_path, device_id, connector)

    async def one_run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        await await_until(lambda: loop.status.reports_acked >= 1)
        stop.set()
        await asyncio.wait_for(task, 15)

    asyncio.run(one_run())
    assert loop._reconciler.observed.applied_generation == 0
    server.desired(9)  # published while the agent is away
    sessions_before = loop.status.sessions_opened

    async def reconnect() -> bool:
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        got = await await_until(lambda: loop._reconciler.observed.applied_generation == 9)
        opened = loop.status.sessions_opened
        stop.set()
        await asyncio.wait_for(task, 15)
        return got and opened == sessions_before + 1

    assert asyncio.run(reconnect())


def test_malformed_down_payload_is_dropped_and_counted_and_the_session_goes_on(
    tmp_path: Path, device_id: str, server: FakeServer
) -> None:
    connector = MqttFleetConnector(endpoint=URL, device_id=device_id, store=None)
    loop, outbox = _sync_loop(tmp_path, device_id, connector)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        assert await await_until(lambda: loop.status.reports_acked >= 1)
        server.down(b"\xff\xff\xff\xff garbage")  # not a SyncResponse
        server.down(b"\x0a\x05")  # truncated
        assert await await_until(lambda: connector.malformed["down"] == 2)
        for i in range(5):
            outbox.append(timestamp_ms=i, kind="t", metrics={})
        loop.telemetry_ready.set()
        assert await await_until(lambda: outbox.stats().queued == 0)  # acks still honoured
        stop.set()
        await asyncio.wait_for(task, 15)

    asyncio.run(scenario())
    assert loop.status.sessions_opened == 1  # the bad payloads never ended the session


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("RESOURCE_EXHAUSTED", RateLimitedError),
        ("PERMISSION_DENIED", SessionRejectedError),
        ("UNAUTHENTICATED", SessionRejectedError),
        ("UNAVAILABLE", TransportError),
    ],
)
def test_session_closed_maps_to_the_same_errors_as_grpc(
    device_id: str, server: FakeServer, code: str, error: type[TransportError]
) -> None:
    connector = MqttFleetConnector(endpoint=URL, device_id=device_id, store=None)

    async def scenario() -> BaseException | None:
        session = await connector.open()
        try:
            server.down(pb.SyncResponse(closed=pb.SessionClosed(code=code, detail="x")).SerializeToString())
            await asyncio.wait_for(session.receive(), 10)
        except TransportError as err:
            return err
        finally:
            await session.close()
        return None

    err = asyncio.run(scenario())
    assert type(err) is error


def test_refused_connection_is_a_retryable_transport_error(device_id: str) -> None:
    connector = MqttFleetConnector(
        endpoint=f"mqtt://127.0.0.1:{free_port()}", device_id=device_id, store=None
    )
    with pytest.raises(TransportError) as info:
        asyncio.run(connector.open())
    assert not isinstance(info.value, SessionRejectedError | RateLimitedError)


def _fake_identity(data_dir: Path, device_id: str) -> None:
    """Identity files a plain-MQTT agent can load (the certificate is not used without TLS)."""
    store = IdentityStore(data_dir)
    key = store.load_or_create_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = cert.public_bytes(Encoding.PEM)
    store.save(device_id=device_id, cert_chain_pem=pem, ca_pem=pem, sync_endpoint="")


def test_will_publishes_offline_when_the_agent_process_is_killed(
    tmp_path: Path, device_id: str, server: FakeServer
) -> None:
    data_dir = tmp_path / "agent"
    _fake_identity(data_dir, device_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(
        EDGELOOP_AGENT_DEVICE_ID=device_id,
        EDGELOOP_AGENT_DEVICE_DATA_DIR=str(data_dir),
        EDGELOOP_AGENT_SERVER_TRANSPORT="mqtt",
        EDGELOOP_AGENT_SERVER_MQTT_ENDPOINT=URL,
        EDGELOOP_AGENT_INFERENCE_ENABLED="false",
        EDGELOOP_AGENT_TELEMETRY_INTERVAL_S="0.2",
    )
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([BIN / "edgeloop-agent", "run"], env=env, stdout=log, stderr=log)
    try:
        online = wait_until(lambda: server.status[-1:] == [mqtt.ONLINE] and len(server.reports) >= 1, 30)
        assert online, (tmp_path / "agent.log").read_text()[-3000:]
        with server.lock:
            server.status.clear()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: server.status[-1:] == [mqtt.OFFLINE], 15)  # the broker sent the will
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
