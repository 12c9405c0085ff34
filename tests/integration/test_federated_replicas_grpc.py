"""Two in-process server stacks (`create_app`, each with its own gRPC device port and replica id) on
one real PostgreSQL database, with real agent processes (`python -m agent.federated`, mutual TLS)
attached to *different* replicas: a SecAgg+ run started over REST on the replica that does not
hold the runner lease completes, every round with the devices of both replicas. The tasks for B's
devices and their results cross the relay (fl_relay rows + LISTEN/NOTIFY wake-ups)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.identity import IdentityStore
from fleet_server.coordination.leases import LeaseStore
from fleet_server.coordination.replica import ReplicaHeartbeat
from fleet_server.db import make_engine
from fleet_server.federated import scheduler
from tests.fixtures.digits import load_digits_data
from tests.helpers.fl_fleet import dirichlet_split
from tests.helpers.inproc import LiveServer, enroll, live, prepare
from tests.helpers.procs import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]
RUNS = "/api/v1/federated/runs"


def runtime(server: LiveServer):  # type: ignore[no-untyped-def]
    return server.client.app.state.federated  # type: ignore[attr-defined]


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Replica "ra" (started first: it takes the runner lease) and replica "rb", one data dir."""
    settings, tokens = prepare(tmp_path / "srv", database_url, replica_id="ra")
    engine = make_engine(settings.resolved_database_url())
    beats = [ReplicaHeartbeat(engine, rid, interval_s=0.5) for rid in ("ra", "rb")]  # main.py's job
    for b in beats:
        b.start()
    gen_a = live(settings, tokens)
    a = next(gen_a)
    wait_until(lambda: _holder(engine) == "ra", 20, what="ra to hold the runner lease")
    gen_b = live(settings.model_copy(update={"replica_id": "rb"}), tokens)
    b = next(gen_b)
    try:
        yield a, b
    finally:
        for gen in (gen_b, gen_a):
            with pytest.raises(StopIteration):
                next(gen)
        for hb in beats:
            hb.stop()
        engine.dispose()


def _holder(engine: object) -> str | None:
    grant = LeaseStore(engine).current(scheduler.LEASE)  # type: ignore[arg-type]
    return grant.holder if grant is not None else None


def spawn_devices(
    server: LiveServer, tmp: Path, prefix: str, n: int, seed: int
) -> list[subprocess.Popen[bytes]]:
    data = load_digits_data(0)
    x = data.x_train.reshape(len(data.x_train), -1)
    procs = []
    for i, part in enumerate(dirichlet_split(data.y_train, n, 0.3, seed=seed)):
        device_id = f"{prefix}-{i:02d}"
        creds = enroll(server, device_id, server.bootstrap_token(), tmp)
        IdentityStore(tmp / device_id).save(
            device_id=device_id, cert_chain_pem=creds.chain_pem, ca_pem=creds.ca_pem, sync_endpoint=""
        )
        rows = part if len(part) else np.arange(5)
        np.savez(tmp / f"{device_id}.npz", x=x[rows], y=data.y_train[rows])
        log = open(tmp / f"{device_id}.log", "ab")  # the child holds it
        cmd = [sys.executable, "-m", "agent.federated", "--data-dir", str(tmp / device_id),
               "--endpoint", server.device_target, "--samples", str(tmp / f"{device_id}.npz")]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))
    return procs


def test_secagg_run_with_agents_on_two_replicas_completes(
    pair: tuple[LiveServer, LiveServer], tmp_path: Path
) -> None:
    a, b = pair
    procs = spawn_devices(a, tmp_path / "devs", "ra-dev", 3, seed=1)
    procs += spawn_devices(b, tmp_path / "devs", "rb-dev", 3, seed=2)
    try:
        wait_until(lambda: len(runtime(a).grid.online_devices()) == 6, 90, what="6 devices seen by ra")
        assert len(runtime(a).grid._devices) == 3 and len(runtime(b).grid._devices) == 3
        body = {"min_nodes": 6, "rounds": 2, "secure_aggregation": True, "features": 64, "classes": 10,
                "round_timeout_s": 60, "lr": 0.5}  # fmt: skip
        r = b.client.post(RUNS, json=body, headers=b.auth("operator"))
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]

        def shown() -> dict[str, object]:
            return b.client.get(f"{RUNS}/{run_id}", headers=b.auth("viewer")).json()  # type: ignore[no-any-return]

        wait_until(lambda: shown()["run"]["status"] != "running", 180, what="the run to end")  # type: ignore[index]
        out = shown()
        run, rounds = out["run"], out["rounds"]
        assert run["status"] == "completed", run["detail"]  # type: ignore[index]
        assert run["runner"] == "ra"  # type: ignore[index]
        assert [r["metrics"]["secagg-survivors"] for r in rounds] == [6, 6]  # type: ignore[index, union-attr]
        relayed_a, relayed_b = runtime(a).link.relayed, runtime(b).link.relayed
        assert relayed_a["task"] > 0 and relayed_b["result"] > 0 and relayed_b["task"] == 0
        print(f"relay counts: ra {relayed_a}, rb {relayed_b}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
