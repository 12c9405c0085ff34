"""Fuzz of the MQTT bridge's message handler (fleet_server/mqtt/devices.py).

Whatever topic and payload reach the server (hostile topics, hostile or truncated protobufs,
revoked and unknown devices, the federated topics), `MqttDevices.handle` never raises, settles
every message exactly once (so the bridge acks it), counts what it drops, and publishes only
contract topics with payloads of the contract type. A real SQLite database and a real
IngestWriter; the broker is replaced by a recorder of what would be published (the bridge
against a real Mosquitto is tests/integration/test_mqtt_bridge.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session

from fleet_server.db import make_engine
from fleet_server.federated.grid import FleetGrid
from fleet_server.grpc_api.servicer import SessionRegistry
from fleet_server.ingest import IngestWriter
from fleet_server.migrate import upgrade
from fleet_server.models import Device
from fleet_server.mqtt.devices import MqttDevices
from fleet_server.settings import Settings
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb
from protos.edgeloop.v1 import federated_pb2 as fpb
from tests.helpers.proto_strategies import wire_bytes

GOOD, REVOKED, UNKNOWN = "dev-good", "dev-revoked", "dev-unknown"
PAYLOAD_TYPES: dict[str, type[Message]] = {
    mqtt.DOWN: pb.SyncResponse,
    mqtt.DESIRED: pb.DesiredState,
    mqtt.FL_TASK: fpb.TrainTask,
    mqtt.FL_ACK: fpb.PushResultResponse,
}


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Settings]]:
    data = tmp_path_factory.mktemp("mqtt-fuzz")
    cfg = Settings(data_dir=data, device_max_messages_per_s=1000, device_burst=30, mqtt_status_ttl_s=60)
    engine = make_engine(cfg.resolved_database_url())
    upgrade(engine)
    with Session(engine) as s:
        s.add(Device(id=GOOD, status="active"))
        s.add(Device(id=REVOKED, status="revoked"))
        s.commit()
    yield engine, cfg
    engine.dispose()


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.sent.append((topic, payload, retain))


_kinds = st.sampled_from([*mqtt.DEVICE_PUBLISHES, *mqtt.DEVICE_SUBSCRIBES, "x", "up/extra", ""])
_ids = st.sampled_from([GOOD, REVOKED, UNKNOWN, "Bad/Id", "+", "#", "a"])
_topics = st.one_of(
    st.builds(lambda d, k: f"{mqtt.PREFIX}/{d}/{k}", _ids, _kinds),
    st.text(max_size=80),
    st.just(f"{mqtt.PREFIX}/{GOOD}/{mqtt.UP}"),
)
_payloads = st.one_of(
    wire_bytes(pb.SyncRequest),
    wire_bytes(fpb.TaskStreamRequest),
    wire_bytes(fpb.TaskResult),
    st.sampled_from([mqtt.ONLINE, mqtt.OFFLINE, b""]),
    st.binary(max_size=200),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(_topics, _payloads), min_size=1, max_size=40))
def test_any_message_is_settled_once_counted_and_never_raises(
    parts: tuple[Engine, Settings], batch: list[tuple[str, bytes]]
) -> None:
    engine, cfg = parts
    recorder = Recorder()
    settled: list[int] = []

    async def run() -> MqttDevices:
        writer = IngestWriter(engine)
        await writer.start()
        grid = FleetGrid(loop=asyncio.get_running_loop())
        handler = MqttDevices(
            engine=engine,
            settings=cfg,
            writer=writer,
            registry=SessionRegistry(),
            publisher=recorder,
            grid=grid,
        )
        for i, (topic, payload) in enumerate(batch):
            await handler.handle(topic, payload, lambda i=i: settled.append(i))  # type: ignore[misc]
        await writer.stop()  # flushes: every submitted message is settled after its commit
        for _ in range(200):  # federated results settle in a worker thread
            if len(settled) >= len(batch):
                break
            await asyncio.sleep(0.01)
        await handler.stop()
        return handler

    handler = asyncio.run(run())
    stats = handler.stats

    assert sorted(settled) == list(range(len(batch)))  # each message settled exactly once
    assert stats.messages == len(batch) and stats.errors == 0
    foreign = sum(1 for t, _ in batch if (p := mqtt.parse(t)) is None or p[1] not in mqtt.DEVICE_PUBLISHES)
    assert stats.foreign_topics == foreign
    to_others = [
        (t, p) for t, p in batch if (x := mqtt.parse(t)) and x[1] in mqtt.DEVICE_PUBLISHES and x[0] != GOOD
    ]
    assert stats.denied + stats.rate_limited >= len(to_others)
    for topic, payload, retain in recorder.sent:
        parsed = mqtt.parse(topic)
        assert parsed is not None and parsed[1] in mqtt.DEVICE_SUBSCRIBES
        PAYLOAD_TYPES[parsed[1]].FromString(payload)  # the contract type for that topic
        assert retain == (parsed[1] in mqtt.RETAINED)
        if parsed[0] != GOOD:  # others only ever hear that they are refused
            msg = pb.SyncResponse.FromString(payload)
            assert msg.WhichOneof("msg") == "closed"


def test_malformed_sync_requests_are_counted_per_device(
    parts: tuple[Engine, Settings], tmp_path: Path
) -> None:
    engine, cfg = parts
    recorder = Recorder()

    async def run() -> MqttDevices:
        writer = IngestWriter(engine)
        await writer.start()
        handler = MqttDevices(
            engine=engine, settings=cfg, writer=writer, registry=SessionRegistry(), publisher=recorder
        )
        for junk in (b"\xff\xff", b"\x0a\x05ab", b""):
            await handler.handle(mqtt.topic(GOOD, mqtt.UP), junk, lambda: None)
        await writer.stop()
        return handler

    handler = asyncio.run(run())
    assert handler.stats.malformed_by_device == {GOOD: 3}
    closed = [pb.SyncResponse.FromString(p).closed for _, p, _ in recorder.sent]
    assert closed and all(c.code == "INVALID_ARGUMENT" for c in closed)


def test_a_revocation_on_another_replica_reaches_the_status_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Active devices are preloaded at start and an active status is cached for an hour; a device
    revoked by another replica (only the database changed: no kick here) is refused within one poll
    of the revocation watch."""
    from datetime import UTC, datetime

    import fleet_server.mqtt.devices as devices_mod

    monkeypatch.setattr(devices_mod, "REVOCATION_POLL_S", 0.05)
    cfg = Settings(data_dir=tmp_path, mqtt_status_ttl_s=3600)
    engine = make_engine(cfg.resolved_database_url())
    upgrade(engine)
    with Session(engine) as s:
        s.add(Device(id="dev-a", status="active"))
        s.commit()
    recorder = Recorder()
    report = pb.SyncRequest(report=pb.DeviceReport(device_id="dev-a", sequence=1)).SerializeToString()
    up = mqtt.topic("dev-a", mqtt.UP)

    def closed() -> list[str]:
        return [
            pb.SyncResponse.FromString(p).closed.code
            for t, p, _ in recorder.sent
            if t.endswith("/down") and pb.SyncResponse.FromString(p).WhichOneof("msg") == "closed"
        ]

    async def run() -> tuple[list[str], list[str]]:
        writer = IngestWriter(engine)
        await writer.start()
        handler = MqttDevices(
            engine=engine, settings=cfg, writer=writer, registry=SessionRegistry(), publisher=recorder
        )
        await handler.start()  # dev-a is active: preloaded, no lookup on its first message
        loads: list[str] = []
        load = handler._load
        handler._load = lambda device_id: loads.append(device_id) or load(device_id)  # type: ignore[method-assign]
        await handler.handle(up, report, lambda: None)
        before = closed()
        assert loads == []
        with Session(engine) as s:  # another replica revokes it
            device = s.get(Device, "dev-a")
            assert device is not None
            device.status, device.revoked_at = "revoked", datetime.now(UTC)
            s.add(device)
            s.commit()
        await asyncio.sleep(0.3)
        await handler.handle(up, report, lambda: None)
        after = closed()
        assert loads == ["dev-a"]  # evicted by the watch: looked up again, found revoked
        await handler.stop()
        await writer.stop()
        return before, after

    before, after = asyncio.run(run())
    engine.dispose()
    assert before == []
    assert after == ["PERMISSION_DENIED"]


def test_a_fleet_coming_online_at_once_gets_its_desired_states_in_a_few_queries(tmp_path: Path) -> None:
    """A restarted server hears every device's retained `online` at once: each active device gets
    its DesiredState published retained exactly once, loaded in batches (not one query per device);
    a revoked or unknown device gets none."""
    from sqlalchemy import event

    cfg = Settings(data_dir=tmp_path, mqtt_status_ttl_s=60)
    engine = make_engine(cfg.resolved_database_url())
    upgrade(engine)
    ids = [f"dev-{i:04d}" for i in range(1200)]
    with Session(engine) as s:
        s.add_all(Device(id=i, status="active", desired_generation=7) for i in ids)
        s.add(Device(id=REVOKED, status="revoked"))
        s.commit()
    selects: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda *a: selects.append(a[2]) if "desired" in a[2] else None
    )
    recorder = Recorder()

    async def run() -> None:
        writer = IngestWriter(engine)
        await writer.start()
        handler = MqttDevices(
            engine=engine, settings=cfg, writer=writer, registry=SessionRegistry(), publisher=recorder
        )
        await handler.start()
        for device_id in [*ids, REVOKED, UNKNOWN]:
            await handler.handle(mqtt.topic(device_id, mqtt.STATUS), mqtt.ONLINE, lambda: None)
        await handler.push_desired(ids[0])  # returns once its batch (and the ones before) is out
        await writer.stop()
        await handler.stop()

    asyncio.run(run())
    engine.dispose()
    desired = [(t, p) for t, p, retain in recorder.sent if t.endswith("/" + mqtt.DESIRED) and retain]
    by_device = {mqtt.parse(t)[0]: pb.DesiredState.FromString(p) for t, p in desired}  # type: ignore[index]
    assert set(by_device) == set(ids)
    assert all(d.generation == 7 for d in by_device.values())
    assert len(desired) == len(ids) + 1  # ids[0] pushed twice: once for `online`, once asked again
    assert len(selects) <= 6, len(selects)  # 1,200 devices, 500 per query (+ the one asked again)
