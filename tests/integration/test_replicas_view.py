"""`GET /api/v1/replicas` and `edgeloop replicas`: which replicas are alive and who holds each
singleton lease, from a real `edgeloop-server` process. A replica row whose heartbeat stopped is
shown dead (judged by the database's clock), and a lease past its expiry is not held."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from fleet_server.coordination.models import ServerReplica
from fleet_server.db import make_engine
from fleet_server.settings import Settings
from tests.helpers.procs import BIN, ServerProc, wait_until

SINGLETONS = {"audit-head-signer", "tuf-signer", "registry-compile", "federated-runner", "drift-trigger"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = ServerProc(data_dir=tmp_path_factory.mktemp("replicas") / "server")
    srv.data_dir.mkdir()
    srv.init()
    srv.start()
    yield srv
    assert srv.stop() == 0


def _view(server: ServerProc) -> dict[str, object]:
    resp = httpx.get(
        f"{server.url}/api/v1/replicas", headers={"Authorization": f"Bearer {server.admin_token}"}
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def test_one_replica_holds_every_singleton_and_a_silent_one_shows_dead(
    server: ServerProc, tmp_path: Path
) -> None:
    def all_held() -> bool:
        view = _view(server)
        held = {lease["name"] for lease in view["leases"] if lease["held"]}  # type: ignore[attr-defined]
        return held >= SINGLETONS

    wait_until(all_held, timeout=30, what="every singleton lease held")
    view = _view(server)
    me = view["this_replica"]
    assert [r["id"] for r in view["replicas"] if r["alive"]] == [me]  # type: ignore[attr-defined]
    assert all(lease["holder"] == me for lease in view["leases"] if lease["name"] in SINGLETONS)  # type: ignore[attr-defined]

    engine = make_engine(Settings(data_dir=server.data_dir).resolved_database_url())
    with Session(engine) as s:  # a replica that stopped beating a minute ago
        old = datetime.now(UTC) - timedelta(minutes=1)
        s.add(ServerReplica(id="gone-1", hostname="h", pid=1, version="0", started_at=old, heartbeat_at=old))
        s.commit()
    engine.dispose()
    dead = {r["id"]: r["alive"] for r in _view(server)["replicas"]}  # type: ignore[attr-defined]
    assert dead["gone-1"] is False and dead[me] is True

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(
        HOME=str(tmp_path), COLUMNS="250", EDGELOOP_SERVER=server.url, EDGELOOP_TOKEN=server.admin_token
    )
    out = subprocess.run(
        [str(BIN / "edgeloop"), "replicas", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["this_replica"] == me
    human = subprocess.run(
        [str(BIN / "edgeloop"), "replicas"], env=env, capture_output=True, text=True, timeout=60
    )
    assert human.returncode == 0, human.stderr
    assert "1 replica(s) alive" in human.stdout and "DEAD" in human.stdout and "tuf-signer" in human.stdout
