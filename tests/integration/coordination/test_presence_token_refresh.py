"""Who re-sends which device's OTA token with two replicas on one real PostgreSQL
(coordination/fleet_sessions.py): each replica its own gRPC streams; every MQTT device online
anywhere by the `mqtt-token-refresh` lease holder only, and by the other replica once the holder
is gone (a shared subscription gives each replica only part of the MQTT status messages)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from fleet_server.coordination.fleet_sessions import FleetSessions, build_fleet_sessions
from fleet_server.coordination.leases import LeaseStore
from fleet_server.coordination.presence import GRPC, MQTT
from fleet_server.coordination.replica import ReplicaHeartbeat
from fleet_server.db import make_engine
from fleet_server.migrate import upgrade
from tests.conftest import drop_pg_database, make_pg_database

pytestmark = pytest.mark.postgres
SETTINGS = SimpleNamespace(lease_ttl_s=3.0, replica_ttl_s=3.0)


class Streams:
    """The registry as FleetSessions sees it (streams and the bus callbacks)."""

    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)

    def streams(self) -> set[str]:
        return set(self.ids)

    def remote_desired(self, device_ids: list[str]) -> None: ...

    def remote_kick(self, device_id: str, code: str, detail: str) -> None: ...

    def resync(self) -> None: ...


@pytest.fixture
def url(pg_available: bool) -> Iterator[str]:
    if not pg_available:
        pytest.fail("PostgreSQL is not reachable (start it: .ci/run does)")
    name, url = make_pg_database()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        drop_pg_database(name)


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_mqtt_devices_are_refreshed_by_the_lease_holder_only_and_move_with_it(url: str) -> None:
    started: list[tuple[FleetSessions, ReplicaHeartbeat]] = []
    try:
        for name, stream in (("a", "grpc-on-a"), ("b", "grpc-on-b")):
            engine = make_engine(url)
            heartbeat = ReplicaHeartbeat(engine, name, interval_s=0.5, ttl_s=3.0)
            heartbeat.start()
            fleet = build_fleet_sessions(engine, SETTINGS, name, leases=LeaseStore(engine))
            assert fleet is not None
            fleet.attach(Streams(stream))
            fleet.presence.connected(stream, GRPC)
            fleet.start()
            started.append((fleet, heartbeat))
            if name == "a":  # a claims the lease first
                assert wait_for(lambda f=fleet: f.mqtt_refresh.grant is not None, 5)
        (a, _), (b, _) = started
        a.presence.connected("mqtt-1", MQTT)  # heard by a
        b.presence.connected("mqtt-2", MQTT)  # heard by b
        assert wait_for(lambda: a.token_refresh_targets() == {"grpc-on-a", "mqtt-1", "mqtt-2"}, 5)
        assert b.token_refresh_targets() == {"grpc-on-b"}  # never the other replica's streams

        a.stop()  # a graceful stop releases the lease: b takes the MQTT devices over
        assert wait_for(lambda: b.token_refresh_targets() == {"grpc-on-b", "mqtt-1", "mqtt-2"}, 5)
    finally:
        for fleet, heartbeat in started:
            fleet.stop()
            heartbeat.stop()


def test_sqlite_has_no_fleet_half(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/one.db")
    assert build_fleet_sessions(engine, SETTINGS, "solo") is None
