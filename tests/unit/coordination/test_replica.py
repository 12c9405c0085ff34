"""ReplicaHeartbeat on SQLite with a hand-moved clock: liveness, graceful stop, reaping the dead."""

from __future__ import annotations

import os
from types import SimpleNamespace

from sqlalchemy import Engine, insert, select

from fleet_server.coordination.models import DevicePresence, ServerReplica
from fleet_server.coordination.replica import ReplicaHeartbeat, replica_id_for
from tests.unit.coordination.conftest import FakeClock

_P = DevicePresence.__table__  # type: ignore[attr-defined]
_R = ServerReplica.__table__  # type: ignore[attr-defined]


def _presence(engine: Engine, clock: FakeClock, rows: list[tuple[str, str, str | None]]) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(_P),
            [{"device_id": d, "transport": t, "replica_id": r, "since": clock()} for d, t, r in rows],
        )


def _devices(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(_P.c.device_id)).scalars())


def test_replica_id_is_configured_or_generated() -> None:
    assert replica_id_for(SimpleNamespace(replica_id="replica-a")) == "replica-a"
    a, b = replica_id_for(SimpleNamespace(replica_id="")), replica_id_for(object())
    assert a != b and f"-{os.getpid()}-" in a


def test_live_replicas_follow_heartbeats(sqlite_engine: Engine, clock: FakeClock) -> None:
    a = ReplicaHeartbeat(sqlite_engine, "a", interval_s=3600, ttl_s=6, clock=clock)
    b = ReplicaHeartbeat(sqlite_engine, "b", interval_s=3600, ttl_s=6, clock=clock)
    a.beat()
    b.beat()
    assert a.live_replicas() == {"a", "b"}
    clock.advance(4)
    a.beat()
    clock.advance(4)
    assert b.live_replicas() == {"a"}  # b missed its beats for longer than the ttl
    b.beat()
    assert a.live_replicas() == {"a", "b"}


def test_stop_removes_the_row_and_its_grpc_presence_only(sqlite_engine: Engine, clock: FakeClock) -> None:
    a = ReplicaHeartbeat(sqlite_engine, "a", interval_s=3600, clock=clock)
    b = ReplicaHeartbeat(sqlite_engine, "b", interval_s=3600, clock=clock)
    a.start()
    b.start()
    _presence(sqlite_engine, clock, [("d1", "grpc", "a"), ("d2", "grpc", "b"), ("d3", "mqtt", None)])
    a.stop()
    assert b.live_replicas() == {"b"}
    assert _devices(sqlite_engine) == {"d2", "d3"}
    b.stop()


def test_rows_of_long_dead_replicas_are_reaped_with_their_presence(
    sqlite_engine: Engine, clock: FakeClock
) -> None:
    dead = ReplicaHeartbeat(sqlite_engine, "dead", interval_s=3600, ttl_s=6, reap_after_s=60, clock=clock)
    dead.beat()
    _presence(sqlite_engine, clock, [("d1", "grpc", "dead"), ("d2", "mqtt", None)])
    clock.advance(30)
    alive = ReplicaHeartbeat(sqlite_engine, "alive", interval_s=3600, ttl_s=6, reap_after_s=60, clock=clock)
    alive.beat()  # dead for 30 s: not reaped yet
    assert _devices(sqlite_engine) == {"d1", "d2"}
    clock.advance(40)
    alive.beats = 0  # reaping runs every tenth beat
    alive.beat()
    with sqlite_engine.connect() as conn:
        assert set(conn.execute(select(_R.c.id)).scalars()) == {"alive"}
    assert _devices(sqlite_engine) == {"d2"}
