"""Presence in the database (coordination/presence.py), on SQLite and a real PostgreSQL: batched
writes (transactions counted at the engine), the fleet-wide online set from live replicas, rows of
a device that moved to another replica, cleanup of dead replicas' rows and the self-repair of ours."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.dialects import postgresql, sqlite

from fleet_server.coordination.models import DevicePresence, ServerReplica
from fleet_server.coordination.presence import GRPC, MQTT, Presence
from fleet_server.db import make_engine
from fleet_server.migrate import upgrade
from tests.conftest import _pg_available, drop_pg_database, make_pg_database
from tests.unit.coordination.conftest import FakeClock

_P = DevicePresence.__table__  # type: ignore[attr-defined]
_R = ServerReplica.__table__  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'presence.db'}")
        upgrade(eng)
        yield eng
        eng.dispose()
        return
    if not _pg_available():
        pytest.fail("PostgreSQL is not reachable (start it: .ci/run does)")
    name, url = make_pg_database()
    eng = make_engine(url)
    upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()
        drop_pg_database(name)


def beat(engine: Engine, replica_id: str, at: datetime) -> None:
    """What replica.py's heartbeat writes: the replica's row with its heartbeat time."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(_R).values(id=replica_id, started_at=at, heartbeat_at=at)
    with engine.begin() as conn:
        conn.execute(stmt.on_conflict_do_update(index_elements=[_R.c.id], set_={"heartbeat_at": at}))


def rows(engine: Engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        query = select(_P.c.device_id, _P.c.transport, _P.c.replica_id)
        return {d: (t, r) for d, t, r in conn.execute(query)}


def count_commits(engine: Engine) -> list[int]:
    commits = [0]

    @event.listens_for(engine, "commit")
    def _on_commit(_conn: object) -> None:
        commits[0] += 1

    return commits


def test_ten_thousand_connects_are_written_in_one_transaction(engine: Engine, clock: FakeClock) -> None:
    presence = Presence(engine, "a", clock=clock)
    commits = count_commits(engine)
    for i in range(10_000):
        presence.connected(f"dev-{i:05d}", GRPC if i % 2 else MQTT)
    assert presence.flush() == 10_000
    assert commits[0] == 1 and presence.stats.flushes == 1
    stored = rows(engine)
    assert len(stored) == 10_000
    assert stored["dev-00001"] == (GRPC, "a") and stored["dev-00000"] == (MQTT, None)
    for i in range(0, 10_000, 2):
        presence.disconnected(f"dev-{i:05d}", MQTT)
    assert presence.flush() == 5_000
    assert commits[0] == 2 and len(rows(engine)) == 5_000


def test_the_writer_thread_batches_a_reconnect_storm(engine: Engine) -> None:
    presence = Presence(engine, "a", flush_s=0.3, refresh_s=60)
    presence.start()
    commits = count_commits(engine)
    try:
        for i in range(10_000):
            presence.connected(f"dev-{i:05d}", GRPC)
        deadline = time.monotonic() + 30
        while len(rows(engine)) < 10_000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(rows(engine)) == 10_000
        # rows() reads in their own (read) transactions; the writer's are the flushes
        assert presence.stats.flushes <= 3, presence.stats
        assert commits[0] < 100
    finally:
        presence.stop()


def test_online_is_fleet_wide_and_a_dead_replicas_grpc_devices_go_offline(
    engine: Engine, clock: FakeClock
) -> None:
    a = Presence(engine, "a", replica_ttl_s=6, clock=clock)
    b = Presence(engine, "b", replica_ttl_s=6, clock=clock)
    beat(engine, "a", clock.now)
    beat(engine, "b", clock.now)
    b.connected("on-b", GRPC)
    b.connected("by-mqtt", MQTT)
    a.connected("on-a", GRPC)
    a.flush(), b.flush()
    a.refresh()
    assert a.online() == {"on-a", "on-b", "by-mqtt"}
    assert a.transport("on-b") == GRPC and a.transport("by-mqtt") == MQTT and a.transport("nope") is None

    clock.advance(7)  # b stops beating; a's own rows count whatever its heartbeat says
    beat(engine, "a", clock.now)
    a.refresh()
    assert a.online() == {"on-a", "by-mqtt"}
    assert "on-b" in rows(engine)  # still there until someone cleans
    a.clean_and_check()
    assert set(rows(engine)) == {"on-a", "by-mqtt"} and a.stats.cleaned == 1


def test_a_change_recorded_here_is_online_at_once(engine: Engine, clock: FakeClock) -> None:
    a = Presence(engine, "a", clock=clock)
    a.connected("x", GRPC)
    assert a.online() == {"x"}  # not flushed, not refreshed
    a.flush()
    a.refresh()
    assert a.online() == {"x"}
    a.disconnected("x", GRPC)
    assert a.online() == set()  # the snapshot still has it; the overlay wins
    a.flush()
    a.refresh()
    assert a.online() == set() and rows(engine) == {}


def test_a_device_that_moved_keeps_the_new_replicas_row(engine: Engine, clock: FakeClock) -> None:
    a = Presence(engine, "a", clock=clock)
    b = Presence(engine, "b", clock=clock)
    a.connected("x", GRPC)
    a.flush()
    b.connected("x", GRPC)
    b.flush()
    a.disconnected("x", GRPC)  # a's old stream ends after the device reconnected to b
    a.flush()
    assert rows(engine) == {"x": (GRPC, "b")}


def test_both_transports_of_one_device_in_one_flush(engine: Engine, clock: FakeClock) -> None:
    a = Presence(engine, "a", clock=clock)
    a.connected("x", MQTT)
    a.connected("x", GRPC)  # latest wins; PostgreSQL refuses one upsert touching a row twice
    a.connected("y", GRPC)
    a.disconnected("y", MQTT)  # an MQTT offline does not remove the gRPC row
    a.flush()
    assert rows(engine) == {"x": (GRPC, "a"), "y": (GRPC, "a")}


def test_rows_of_ours_deleted_by_another_replica_are_written_again(engine: Engine, clock: FakeClock) -> None:
    a = Presence(engine, "a", clock=clock)
    b = Presence(engine, "b", clock=clock)
    beat(engine, "b", clock.now)  # a has not beaten yet (or hiccuped): b judges it dead
    for i in range(5):
        a.connected(f"d{i}", GRPC)
    a.disconnected("d4", GRPC)
    a.flush()
    b.clean_and_check()
    assert rows(engine) == {}
    a.clean_and_check()
    assert set(rows(engine)) == {"d0", "d1", "d2", "d3"} and a.stats.reasserted == 1
    a.clean_and_check()
    assert a.stats.reasserted == 1  # nothing missing: no rewrite


def test_a_failed_flush_keeps_the_changes(engine: Engine, clock: FakeClock, tmp_path: Path) -> None:
    a = Presence(engine, "a", clock=clock)
    a.connected("x", GRPC)
    broken = Presence(make_engine(f"sqlite:///{tmp_path / 'missing' / 'no.db'}"), "a", clock=clock)
    broken.connected("x", GRPC)
    with pytest.raises(Exception):  # noqa: B017 - the driver's error, whatever it is
        broken.flush()
    assert broken.online() == {"x"}
    assert broken._pending  # still queued for the next flush
    assert a.flush() == 1


def test_stale_snapshot_does_not_hide_a_newer_change(engine: Engine, clock: FakeClock) -> None:
    a = Presence(engine, "a", clock=clock)
    a.connected("x", GRPC)
    a.flush()
    a.disconnected("x", GRPC)  # recorded after the flush, before the refresh: not covered by it
    a.refresh()
    assert a.online() == set()
    assert rows(engine) == {"x": (GRPC, "a")}


def test_heartbeat_cutoff_uses_replica_ttl(engine: Engine, clock: FakeClock) -> None:
    a = Presence(engine, "a", replica_ttl_s=10, clock=clock)
    b = Presence(engine, "b", replica_ttl_s=10, clock=clock)
    beat(engine, "b", clock.now - timedelta(seconds=9))
    b.connected("x", GRPC)
    b.flush()
    a.refresh()
    assert a.online() == {"x"}
    clock.advance(2)
    a.refresh()
    assert a.online() == set()


def test_a_restarted_replica_with_the_same_id_forgets_its_old_sessions(
    engine: Engine, clock: FakeClock
) -> None:
    before = Presence(engine, "pod-0", clock=clock)
    before.connected("gone", GRPC)
    before.connected("by-mqtt", MQTT)
    before.flush()  # then the process is killed: its rows stay
    after = Presence(engine, "pod-0", clock=clock, flush_s=60)
    after.start()
    try:
        assert rows(engine) == {"by-mqtt": (MQTT, None)}
        assert after.online() == {"by-mqtt"}
    finally:
        after.stop()
