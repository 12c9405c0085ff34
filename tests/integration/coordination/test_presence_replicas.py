"""Two in-process replicas on one real PostgreSQL: each its own engine, event loop thread,
SessionRegistry, DeviceServicer (the real desired-state push), MQTT handler (publishing to a
recorder instead of a broker), presence writer, replica heartbeat and PgBus (LISTEN/NOTIFY). Only
the gRPC stream is a stand-in (`_Session` without a call: its outbox is what the stream would write).

Shown: a label change made through A reaches the device's stream on B within a second (and the
measured delays are printed); a kick on A closes B's stream; a replica whose heartbeat stops has
its gRPC devices offline everywhere within the replica TTL while MQTT devices stay online; a bus
reconnect re-pushes to local streams; an MQTT device present through B gets its DesiredState
published once, by A where the change was made."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session

from fleet_server.coordination.bus import PgBus
from fleet_server.coordination.fanout import BusFanout
from fleet_server.coordination.presence import Presence
from fleet_server.coordination.replica import ReplicaHeartbeat
from fleet_server.crud.devices import update_labels
from fleet_server.db import make_engine
from fleet_server.grpc_api.servicer import DeviceServicer, SessionRegistry, _Session
from fleet_server.ingest import IngestWriter
from fleet_server.migrate import upgrade
from fleet_server.models import Device, utcnow
from fleet_server.mqtt.devices import MqttDevices
from fleet_server.pki import FleetCA
from fleet_server.settings import Settings
from protos.edgeloop import mqtt
from protos.edgeloop.v1 import device_pb2 as pb
from tests.conftest import drop_pg_database, make_pg_database

pytestmark = pytest.mark.postgres
TTL_S = 3.0


class StoppableClock:
    """Real UTC time until `freeze()`: then the heartbeat keeps writing the same instant, as a
    replica that died would leave it."""

    def __init__(self) -> None:
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen or utcnow()

    def freeze(self) -> None:
        self.frozen = utcnow()


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((topic, payload, retain))


class Replica:
    def __init__(self, name: str, url: str, settings: Settings, ca: FleetCA) -> None:
        self.name = name
        self.engine = make_engine(url)
        self.clock = StoppableClock()
        self.heartbeat = ReplicaHeartbeat(self.engine, name, interval_s=0.5, ttl_s=TTL_S, clock=self.clock)
        self.presence = Presence(self.engine, name, replica_ttl_s=TTL_S, flush_s=0.2, refresh_s=0.3)
        self.bus = PgBus(self.engine, poll_s=0.2)
        self.fanout = BusFanout(self.bus, name)
        self.registry = SessionRegistry(presence=self.presence, fanout=self.fanout)
        self.fanout.attach(
            desired=self.registry.remote_desired, kick=self.registry.remote_kick, resync=self.registry.resync
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"loop-{name}", daemon=True)
        self.thread.start()
        self.registry.bind_loop(self.loop)
        self.recorder = Recorder()

        async def build() -> None:
            writer = IngestWriter(self.engine)  # not started: nothing is ingested here
            self.servicer = DeviceServicer(
                engine=self.engine, ca=ca, settings=settings, writer=writer, registry=self.registry
            )
            self.mqtt = MqttDevices(
                engine=self.engine, settings=settings, writer=writer, registry=self.registry,
                publisher=self.recorder,
            )  # fmt: skip

        self.call(build())
        self.heartbeat.start()
        self.presence.start()
        self.bus.start()
        self.fanout.start()
        assert self.bus.connected.wait(10), "bus did not connect"

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return self.call(run())

    def open_stream(self, device_id: str) -> _Session:
        session = _Session(device_id, None)  # type: ignore[arg-type]
        self.on_loop(lambda: self.registry.add(session))
        return session

    def mqtt_present(self, device_id: str) -> None:
        self.on_loop(lambda: self.registry.set_present(device_id, True))

    def stop(self) -> None:
        self.fanout.stop()
        self.bus.stop()
        self.presence.stop()
        self.heartbeat.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.engine.dispose()


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    if not pg_available:
        pytest.fail("PostgreSQL is not reachable (start it: .ci/run does)")
    name, url = make_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    settings = Settings(data_dir=tmp_path / "shared", database_url=pg_url)  # shared keys, as Secrets
    settings.data_dir.mkdir(parents=True)
    ca = FleetCA.create(settings.pki_dir)
    engine = make_engine(pg_url)
    upgrade(engine)
    with Session(engine) as s:
        for device_id in ("dev-a", "dev-b", "dev-m", "dev-m2"):
            s.add(Device(id=device_id, labels={}))
        s.commit()
    engine.dispose()
    a, b = Replica("replica-a", pg_url, settings, ca), Replica("replica-b", pg_url, settings, ca)
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def next_desired(session: _Session, timeout: float) -> pb.DesiredState | None:
    """The next DesiredState the stream would write, or None if none within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = session.outbox.get_nowait()
        except asyncio.QueueEmpty:
            time.sleep(0.005)
            continue
        if msg is not None and msg.HasField("desired"):
            return msg.desired
    return None


def wait_until(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `predicate()` held, or None if it never did within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def change_label(replica: Replica, device_id: str, value: str) -> None:
    """What PATCH /devices/{id}/labels does on the replica that serves the request."""
    with Session(replica.engine) as s:
        update_labels(session=s, device_id=device_id, changes={"site": value})
    replica.registry.notify_desired_changed(device_id)


def test_a_label_change_through_a_reaches_the_stream_on_b_within_a_second(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    stream = b.open_stream("dev-b")
    delays = []
    for i in range(10):
        start = time.monotonic()
        change_label(a, "dev-b", f"site-{i}")
        desired = next_desired(stream, timeout=1.0)
        assert desired is not None, f"change {i} did not reach replica B within 1 s"
        assert desired.labels["site"] == f"site-{i}"
        delays.append(time.monotonic() - start)
    print(
        f"\nlabel change A -> stream on B: median {statistics.median(delays) * 1000:.0f} ms,"
        f" max {max(delays) * 1000:.0f} ms over {len(delays)}"
    )
    assert a.fanout.stats.ids_published >= 10 and b.fanout.stats.received >= 10


def test_a_kick_on_a_closes_the_stream_on_b(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    stream = b.open_stream("dev-b")
    a.registry.kick("dev-b", "PERMISSION_DENIED", "certificate revoked")
    assert wait_until(lambda: stream.closed_reason != "", 1.0) is not None
    assert stream.closed_reason.startswith("abort:PERMISSION_DENIED:certificate revoked")


def test_a_dead_replicas_grpc_devices_go_offline_and_mqtt_ones_stay(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    a.open_stream("dev-a")
    b.open_stream("dev-b")
    a.mqtt_present("dev-m")
    b.mqtt_present("dev-m2")
    everyone = {"dev-a", "dev-b", "dev-m", "dev-m2"}
    assert wait_until(lambda: a.registry.online() == everyone == b.registry.online(), 5.0) is not None

    b.clock.freeze()  # B's heartbeat stops advancing: B is dead to everyone else
    b.presence.stop()  # and it writes nothing more
    took = wait_until(lambda: a.registry.online() == {"dev-a", "dev-m", "dev-m2"}, TTL_S + 3.0)
    assert took is not None, f"online at A: {a.registry.online()}"
    print(f"\nB's gRPC device offline at A {took:.2f} s after B's last heartbeat (ttl {TTL_S} s)")
    assert took <= TTL_S + 1.5  # ttl + heartbeat interval + refresh period


def test_a_bus_reconnect_re_pushes_to_local_streams(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    stream = b.open_stream("dev-b")
    pid = b.bus.backend_pid()
    assert pid is not None
    with a.engine.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    desired = next_desired(stream, timeout=10.0)
    assert desired is not None, "no resync push after the bus reconnected"
    assert b.fanout.stats.resyncs >= 1


def test_an_mqtt_device_present_through_b_is_pushed_once_by_a(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    b.mqtt_present("dev-m")  # its status message reached B (shared subscription)
    assert wait_until(lambda: a.registry.transport("dev-m") == "mqtt", 5.0) is not None
    change_label(a, "dev-m", "north")
    topic = mqtt.topic("dev-m", mqtt.DESIRED)
    assert wait_until(lambda: any(t == topic for t, _, _ in a.recorder.published), 2.0) is not None
    ((_, payload, retain),) = [p for p in a.recorder.published if p[0] == topic]
    assert retain and pb.DesiredState.FromString(payload).labels["site"] == "north"
    time.sleep(0.5)  # B heard about the change on the bus: it must not publish again
    assert [p for p in b.recorder.published if p[0] == topic] == []
