"""Two real `edgeloop-server` processes on one real PostgreSQL (shared data dir, as
tests/helpers/replicas.py starts them) and one real agent whose Sync stream is on replica B:

- replica A reports the device online (presence from the database, not A's memory); /healthz
  says B serves it and both count it online;
- a label change made through A's REST API is applied by the agent on B (desired state fanned out
  over LISTEN/NOTIFY); the time from the PATCH to the agent's log line saying it applied it is
  printed (goal: 1 s);
- replica B is SIGKILLed: A reports the device offline within the replica TTL (B's heartbeat
  stops; its presence rows no longer count), and the time it took is printed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import drop_pg_database, make_pg_database
from tests.helpers.procs import AgentProc, wait_until
from tests.helpers.replicas import Replicas

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]
REPLICA_TTL_S = 6.0  # what Replicas gives every replica (EDGELOOP_REPLICA_TTL_S)


@pytest.fixture
def cluster(tmp_path: Path, pg_available: bool) -> Iterator[Replicas]:
    if not pg_available:
        pytest.fail("PostgreSQL is not reachable (start it: .ci/run does)")
    name, url = make_pg_database()
    replicas = Replicas(tmp_path / "replicas", url, n=2)
    try:
        yield replicas.start()
    finally:
        replicas.stop()
        drop_pg_database(name)


def reconciled_at(agent: AgentProc, generation: int) -> datetime:
    """When the agent logged applying `generation` (its log's local-time timestamp)."""
    log = (agent.data_dir.parent / f"{agent.device_id}.log").read_text()
    found = re.search(rf"^(\S+ \S+) INFO agent\.reconciler reconciled generation={generation} ", log, re.M)
    assert found, f"no 'reconciled generation={generation}' in the agent's log"
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")


def online_on(cluster: Replicas, replica: int, device_id: str) -> bool:
    return bool(cluster.api("GET", f"/devices/{device_id}", via=replica)["online"])


def test_label_change_through_a_reaches_the_agent_on_b_and_b_dying_takes_it_offline(
    cluster: Replicas, tmp_path: Path
) -> None:
    b = cluster.servers[1]
    agent = AgentProc("dev-push", tmp_path / "agents" / "dev-push", b, 0.5)  # enrolls and syncs on B
    agent.data_dir.mkdir(parents=True)
    result = agent.enroll(b.bootstrap_token())
    assert result.returncode == 0, result.stderr.decode()
    agent.start()
    try:
        wait_until(lambda: cluster.holder_of(agent.device_id) == 1, 60, what="the agent's stream on B")
        wait_until(lambda: online_on(cluster, 0, agent.device_id), 10, what="A reporting the device online")

        health = [httpx.get(s.url + "/healthz", timeout=10).json() for s in cluster.servers]
        assert [h["devices_served"] for h in health] == [0, 1]  # the stream is on B
        assert [h["devices_online"] for h in health] == [1, 1]  # fleet-wide on both
        assert health[1]["presence"]["upserts"] >= 1 and health[1]["presence"]["errors"] == 0

        before = agent.status()["applied_generation"]
        patched_at = datetime.now()  # the agent logs local time
        cluster.api("PATCH", f"/devices/{agent.device_id}/labels", via=0, json={"labels": {"tier": "canary"}})
        wait_until(
            lambda: agent.status()["applied_generation"] > before, 10, interval=0.05,
            what="the agent on B applying a label change made on A",
        )  # fmt: skip
        applied_s = (reconciled_at(agent, before + 1) - patched_at).total_seconds()

        killed_at = time.monotonic()
        cluster.kill(1)
        wait_until(
            lambda: not online_on(cluster, 0, agent.device_id), REPLICA_TTL_S + 10, interval=0.2,
            what="A reporting the device offline after B died",
        )  # fmt: skip
        offline_s = time.monotonic() - killed_at
        print(
            f"\nlabel change on A applied by the agent on B: {applied_s:.3f} s (PATCH sent -> agent log);"
            f" device offline on A {offline_s:.2f} s after B's SIGKILL (replica ttl {REPLICA_TTL_S} s)"
        )
        assert offline_s <= REPLICA_TTL_S + 5  # ttl + heartbeat interval + snapshot refresh + a loaded box
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()
