"""Two real `edgeloop-server` replicas on one PostgreSQL: every lease-held singleton sits on one of
them; SIGKILL that one and each singleton moves to the other within the lease TTL + poll (prints
the takeover time per lease); the dead replica drops out of the live set; a graceful stop releases
at once and removes the replica's row."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from fleet_server.coordination.leases import LeaseStore
from fleet_server.coordination.models import CoordinationLease
from fleet_server.coordination.replica import ReplicaHeartbeat
from fleet_server.db import make_engine
from tests.helpers.procs import ServerProc, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

_L = CoordinationLease.__table__  # type: ignore[attr-defined]
TAKEOVER_GOAL_S = 10.0  # issue 16: lease ttl 6 s + poll 1 s, with room for a loaded box


def _held_by(engine: Engine, holder: str) -> set[str]:
    leases = LeaseStore(engine)
    with engine.connect() as conn:
        names = conn.execute(select(_L.c.name)).scalars().all()
    return {n for n in names if (g := leases.current(n)) is not None and g.holder == holder}


def test_singletons_move_to_the_surviving_replica_after_sigkill(tmp_path: Path, pg_url: str) -> None:
    a = ServerProc(tmp_path / "server", database_url=pg_url, env_extra={"EDGELOOP_REPLICA_ID": "replica-a"})
    a.data_dir.mkdir()
    a.init()
    b = ServerProc(a.data_dir, database_url=pg_url, env_extra={"EDGELOOP_REPLICA_ID": "replica-b"})
    engine = make_engine(pg_url)
    watcher = ReplicaHeartbeat(engine, "watcher")  # never started: only reads the live set
    try:
        a.start(a.data_dir / "a.log")
        wait_until(
            lambda: "audit-head-signer" in _held_by(engine, "replica-a"), 30, what="replica-a's leases"
        )
        b.start(a.data_dir / "b.log")
        assert watcher.live_replicas() == {"replica-a", "replica-b"}
        on_a = _held_by(engine, "replica-a")
        assert _held_by(engine, "replica-b") == set()  # nothing is held twice
        a.kill()
        killed = time.monotonic()
        moved: dict[str, float] = {}
        while set(moved) != on_a and time.monotonic() - killed < TAKEOVER_GOAL_S + 20:
            for name in _held_by(engine, "replica-b") - set(moved):
                moved[name] = time.monotonic() - killed
            time.sleep(0.05)
        report = ", ".join(f"{n} {s:.2f} s" for n, s in sorted(moved.items()))
        print(f"\nsingleton takeover after SIGKILL of the holder replica: {report}")
        assert set(moved) == on_a, f"not taken over: {on_a - set(moved)}"
        assert max(moved.values()) <= TAKEOVER_GOAL_S
        wait_until(lambda: watcher.live_replicas() == {"replica-b"}, 15, what="replica-a out of the live set")
        assert b.stop() == 0
        assert _held_by(engine, "replica-b") == set()  # released at once, not left to expire
        assert watcher.live_replicas() == set()
    finally:
        for server in (a, b):
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(10)
        engine.dispose()
