"""The composition root runs the coordination parts: a replica row while serving (gone after a
graceful stop), the audit-head-signer lease held by this replica and released at stop, the bus."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from fleet_server.coordination.leases import LeaseStore
from fleet_server.coordination.models import ServerReplica
from fleet_server.coordination.wiring import Coordination
from fleet_server.db import make_engine
from fleet_server.main import create_app
from tests.helpers.inproc import prepare
from tests.helpers.procs import wait_until

_R = ServerReplica.__table__  # type: ignore[attr-defined]


def test_a_replica_registers_holds_its_singletons_and_leaves_cleanly(
    tmp_path: Path, database_url: str
) -> None:
    settings, _ = prepare(tmp_path / "srv", database_url, replica_id="replica-a")
    engine = make_engine(settings.resolved_database_url())
    leases = LeaseStore(engine)
    try:
        with TestClient(create_app(settings)) as client:
            coordination: Coordination = client.app.state.coordination  # type: ignore[attr-defined]
            assert coordination.replica_id == client.app.state.replica_id == "replica-a"  # type: ignore[attr-defined]
            assert coordination.heartbeat.live_replicas() == {"replica-a"}
            held = wait_until(lambda: leases.current("audit-head-signer"), 10, what="audit lease")
            assert held.holder == "replica-a"
        with engine.connect() as conn:
            assert conn.execute(select(_R.c.id)).scalars().all() == []
        assert leases.current("audit-head-signer") is None  # released: the next replica takes it at once
    finally:
        engine.dispose()
