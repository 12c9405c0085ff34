"""The simulator's MqttLink against real Mosquitto brokers.

- the machine's broker (127.0.0.1:1883, plain, no ACL): send is acked, `down` and the retained
  `desired` arrive, `online`/`offline` retained on `status`, and the persistent session keeps a
  QoS 1 `down` message sent while the device was away;
- a broker configured like `edgeloop-server mqtt-config` writes it (mutual TLS, certificate =
  username, the per-device ACL): the device publishes on its own `up`, cannot read another
  device's topics, receives its retained desired state, and its will fires when the connection
  is cut.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.fleet_sim.link import LinkError, LinkRejected, SimIdentity
from bench.fleet_sim.mqtt_link import MqttLink
from fleet_server.pki import FleetCA
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb
from tests.helpers.broker import MOSQUITTO, Broker, Recorder, device_cert, running_broker

pytestmark = pytest.mark.skipif(not MOSQUITTO.exists(), reason="needs mosquitto")

REPORT = pb.SyncRequest(report=pb.DeviceReport(device_id="x", sequence=1))


def _machine_broker_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def plain() -> Iterator[tuple[paho.Client, Recorder]]:
    """A paho client on the machine's broker playing the server (no ACL there)."""
    if not _machine_broker_up():
        pytest.skip("the machine's Mosquitto is not on 127.0.0.1:1883")
    rec = Recorder()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-test-{uuid.uuid4().hex[:8]}")
    c.on_connect = lambda _c, _u, _f, rc, _p: rec.add("connect", str(rc))
    c.on_subscribe = lambda _c, _u, _m, rcs, _p: rec.add("suback")
    c.on_message = lambda _c, _u, m: rec.add("msg", m.topic, bytes(m.payload))
    c.on_publish = lambda _c, _u, mid, rc, _p: rec.add("puback", mid)
    c.connect("127.0.0.1", 1883, 30)
    c.loop_start()
    rec.wait_for("connect")
    yield c, rec
    c.disconnect()
    c.loop_stop()


def test_plain_link_round_trip_on_the_machine_broker(plain: tuple[paho.Client, Recorder]) -> None:
    srv, rec = plain
    dev = f"sim-{uuid.uuid4().hex[:10]}"
    ident = SimIdentity(dev, b"", b"", b"")
    srv.subscribe([(mqtt.topic(dev, mqtt.UP), 1), (mqtt.topic(dev, mqtt.STATUS), 1)])
    rec.wait_for("suback")
    desired = pb.DesiredState(generation=7)
    srv.publish(mqtt.topic(dev, mqtt.DESIRED), desired.SerializeToString(), 1, retain=True)
    rec.wait_for("puback")

    async def run() -> None:
        link = MqttLink(ident, "127.0.0.1", 1883, tls=False, keepalive_s=10)
        await link.open(10)
        assert await asyncio.wait_for(link.recv(), 10) == desired  # retained, at subscribe
        await link.send(REPORT)
        ack = pb.SyncResponse(report_ack=pb.ReportAck(sequence=1))
        srv.publish(mqtt.topic(dev, mqtt.DOWN), ack.SerializeToString(), 1)
        assert await asyncio.wait_for(link.recv(), 10) == ack
        await link.close()
        # Persistent session: a `down` message sent while the device is away waits for it.
        later = pb.SyncResponse(report_ack=pb.ReportAck(sequence=2))
        srv.publish(mqtt.topic(dev, mqtt.DOWN), later.SerializeToString(), 1)
        await asyncio.sleep(0.5)
        again = MqttLink(ident, "127.0.0.1", 1883, tls=False, keepalive_s=10)
        await again.open(10)
        assert again.session_present
        got = [(await asyncio.wait_for(again.recv(), 10)).SerializeToString() for _ in range(2)]
        assert sorted(got) == sorted([later.SerializeToString(), desired.SerializeToString()])
        await again.close()

    try:
        asyncio.run(run())
        msgs = rec.wait_for("msg", 5)
        assert ("msg", mqtt.topic(dev, mqtt.UP), REPORT.SerializeToString()) in msgs
        statuses = [m[2] for m in msgs if m[1] == mqtt.topic(dev, mqtt.STATUS)]
        assert statuses == [mqtt.ONLINE, mqtt.OFFLINE, mqtt.ONLINE, mqtt.OFFLINE]
    finally:  # leave nothing retained or queued on the shared broker
        for kind in (mqtt.DESIRED, mqtt.STATUS):
            srv.publish(mqtt.topic(dev, kind), b"", 1, retain=True)
        _drop_session(mqtt.client_id(dev))


def _drop_session(client_id: str) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect("127.0.0.1", 1883, 10)
    c.loop_start()
    c.disconnect()
    c.loop_stop()


# ------------------------------------------------------------------ TLS + ACL


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.create(tmp_path / "pki")


@pytest.fixture
def broker(ca: FleetCA, tmp_path: Path) -> Iterator[Broker]:
    with running_broker(ca, tmp_path / "broker") as b:
        yield b


def _identity(
    ca: FleetCA, broker: Broker, device_id: str, out: Path, *, cn: str | None = None
) -> SimIdentity:
    cert = device_cert(ca, cn or device_id, out)
    return SimIdentity(device_id, cert.key.read_bytes(), cert.cert.read_bytes(), broker.files.ca.read_bytes())


def _link(identity: SimIdentity, broker: Broker) -> MqttLink:
    return MqttLink(identity, "127.0.0.1", broker.port, tls=True, keepalive_s=10, server_hostname="localhost")


def test_tls_device_publishes_on_its_own_up_and_gets_its_retained_desired(
    broker: Broker, ca: FleetCA, tmp_path: Path
) -> None:
    srv, rec = broker.client("srv-1", broker.server)
    rec.wait_for("connect")
    srv.subscribe([(mqtt.shared(mqtt.server_filters()[0]), 1), (f"{mqtt.PREFIX}/+/{mqtt.STATUS}", 1)])
    rec.wait_for("suback")
    desired = pb.DesiredState(generation=3)
    srv.publish(mqtt.topic("dev-a", mqtt.DESIRED), desired.SerializeToString(), 1, retain=True)
    rec.wait_for("puback")
    ident = _identity(ca, broker, "dev-a", tmp_path / "c")

    async def run() -> None:
        link = _link(ident, broker)
        await link.open(10)
        assert await asyncio.wait_for(link.recv(), 10) == desired
        await link.send(REPORT)
        await link.close()

    asyncio.run(run())
    msgs = rec.wait_for("msg", 3)
    assert ("msg", mqtt.topic("dev-a", mqtt.UP), REPORT.SerializeToString()) in msgs
    statuses = [m[2] for m in msgs if m[1] == mqtt.topic("dev-a", mqtt.STATUS)]
    assert statuses == [mqtt.ONLINE, mqtt.OFFLINE]


def test_tls_device_cannot_use_another_devices_topics(broker: Broker, ca: FleetCA, tmp_path: Path) -> None:
    """A certificate for dev-a presenting itself as dev-b. Mosquitto 2.0.11 grants the SUBSCRIBE and
    applies the read ACL per message (see test_broker_security.py); a broker that refuses it in the
    SUBACK makes open() raise LinkRejected. Either way nothing of dev-b's reaches it or comes from it."""
    srv, rec = broker.client("srv-1", broker.server)
    rec.wait_for("connect")
    srv.subscribe([(mqtt.shared(mqtt.server_filters()[0]), 1), (f"{mqtt.PREFIX}/+/{mqtt.STATUS}", 1)])
    rec.wait_for("suback")
    impostor = _identity(ca, broker, "dev-b", tmp_path / "c", cn="dev-a")
    secret = pb.SyncResponse(report_ack=pb.ReportAck(sequence=99))

    async def run() -> list[object]:
        link = _link(impostor, broker)
        try:
            await link.open(10)
        except LinkRejected:
            return ["rejected"]
        srv.publish(mqtt.topic("dev-b", mqtt.DOWN), secret.SerializeToString(), 1)
        await link.send(REPORT)  # v3.1.1: PUBACKed, then dropped by the ACL
        got: list[object] = []
        with pytest.raises(TimeoutError):
            got.append(await asyncio.wait_for(link.recv(), 2.0))
        await link.close()
        return got

    assert asyncio.run(run()) in (["rejected"], [])
    rec.wait_for("puback")
    assert not [m for m in rec.of("msg") if "dev-b" in m[1]]
    assert "Denied PUBLISH from dev-b" in broker.log()  # by client id; its username is dev-a


def test_tls_will_fires_when_the_connection_is_cut(broker: Broker, ca: FleetCA, tmp_path: Path) -> None:
    srv, rec = broker.client("srv-1", broker.server)
    rec.wait_for("connect")
    srv.subscribe(f"{mqtt.PREFIX}/+/{mqtt.STATUS}", 1)
    rec.wait_for("suback")
    ident = _identity(ca, broker, "dev-w", tmp_path / "c")

    async def run() -> None:
        link = _link(ident, broker)
        await link.open(10)
        link.abort()
        with pytest.raises(LinkError):
            await link.recv()

    asyncio.run(run())
    msgs = rec.wait_for("msg", 2)
    assert [m[2] for m in msgs] == [mqtt.ONLINE, mqtt.OFFLINE]
