"""Two `edgeloop-server` replicas on one real PostgreSQL (and one shared data directory: same fleet
CA, TUF keys and repository), behind a TCP load balancer, with real agent processes that know only
the balancer. A rollout is created on one replica; once its first batch is out, the replica that
advanced it last is SIGKILLed. The survivor finishes it: every device gets the release exactly
once, transition numbers are never issued twice, the audit chain verifies, and the agents, cut
off from the dead replica, reconnect through the balancer and commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import drop_pg_database, make_pg_database
from tests.helpers.net import free_port
from tests.helpers.procs import AgentProc, ServerProc, wait_until
from tests.helpers.replicas import Balancer
from tests.integration.test_ota_support import models

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

AGENTS = 6


@pytest.fixture
def pg_url() -> Iterator[str]:
    name, url = make_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


def _api(server: ServerProc, token: str, method: str, path: str, **kw: Any) -> Any:
    with server.api(token) as api:
        resp = api.request(method, path, **kw)
        assert resp.status_code < 400, (method, path, resp.status_code, resp.text)
        return resp.json()


def test_a_replica_killed_mid_rollout_leaves_the_other_to_finish_it(tmp_path: Path, pg_url: str) -> None:
    m = models()
    env = {"EDGELOOP_ROLLOUT_TICK_S": "0.5", "EDGELOOP_ROLLOUT_LEASE_S": "3"}
    a = ServerProc(tmp_path / "server", database_url=pg_url, env_extra=env)
    a.data_dir.mkdir()
    token = a.init()
    b = ServerProc(a.data_dir, database_url=pg_url, env_extra=env)  # same CA, keys, repository
    lb = ServerProc(a.data_dir, http_port=free_port(), enroll_port=free_port(), device_port=free_port())
    routes = {
        lb.http_port: [a.http_port, b.http_port],
        lb.enroll_port: [a.enroll_port, b.enroll_port],
        lb.device_port: [a.device_port, b.device_port],
    }
    agents: list[AgentProc] = []
    with Balancer(routes):
        a.start(a.data_dir / "a.log")
        b.start(a.data_dir / "b.log")
        lb.admin_token = token
        try:
            for i in range(AGENTS):
                agent = AgentProc(f"dev-{i}", tmp_path / "agents" / f"dev-{i}", lb, 0.5)
                agent.env_extra["EDGELOOP_AGENT_SERVER_SYNC_ENDPOINT"] = f"localhost:{lb.device_port}"
                agent.data_dir.mkdir(parents=True)
                result = agent.enroll(lb.bootstrap_token(labels={"site": "replicas"}))
                assert result.returncode == 0, result.stderr.decode()
                agent.start_ota()
                agents.append(agent)
            with lb.api() as api:
                blob = api.put("/ota/blobs", content=m.v1.read_bytes()).json()
                rel = api.post(
                    "/releases",
                    json={"model_name": "digits", "model_version": "1", "artifact_sha256": blob["sha256"],
                          "gates": {"watch_s": 0.3, "shadow_window_s": 1.0}},
                )  # fmt: skip
                assert rel.status_code == 201, rel.text

            def online() -> int:  # sessions live in each replica's memory (issue 16: from the database)
                return len(
                    {d["id"] for s in (a, b) for d in _api(s, token, "GET", "/devices") if d["online"]}
                )

            wait_until(lambda: online() == AGENTS, 120, what="every agent online through the balancer")
            spec = {
                "releases": [rel.json()["seq"]],
                "selector": {"labels": {"site": "replicas"}},
                "batches": {"counts": [2, 2, 2]},
                "gates": {"metrics": [], "silent_timeout_s": 120},
                "on_breach": "pause",
            }
            rid = _api(a, token, "POST", "/rollouts", json=spec)["id"]

            def advanced_by() -> str:  # the replica that wrote the newest transition
                entries = _api(a, token, "GET", "/audit", params={"limit": 1000})["entries"]
                mine = [e for e in entries if e["target"]["id"] == rid and "replica" in e["details"]]
                return str(mine[-1]["details"]["replica"]) if mine else ""

            wait_until(lambda: _api(a, token, "GET", f"/rollouts/{rid}")["batch"] >= 1, 180, what="batch 1")
            holder_pid = int(advanced_by().rsplit("-", 2)[1])  # "<host>-<pid>-<random>"
            assert a.proc is not None and b.proc is not None
            assert holder_pid in (a.proc.pid, b.proc.pid), holder_pid
            victim, survivor = (a, b) if holder_pid == a.proc.pid else (b, a)
            victim.kill()
            final = wait_until(
                lambda: (
                    (r := _api(survivor, token, "GET", f"/rollouts/{rid}"))["state"]
                    in ("completed", "paused", "aborted", "rolled_back")
                    and r
                ),
                300,
                interval=1,
                what="the survivor to finish the rollout",
            )
            assert final["state"] == "completed", final
            devices = _api(survivor, token, "GET", f"/rollouts/{rid}/devices")
            assert len(devices) == AGENTS and {d["status"] for d in devices} == {"committed"}, devices
            deployments = {d["deployment_id"] for d in devices}
            assert len(deployments) == 3  # one deployment per batch, none repeated
            for dep in deployments:  # each device holds exactly one assignment row of the release
                rows = _api(survivor, token, "GET", f"/deployments/{dep}")
                assert len(rows) == 2 and {r["state"] for r in rows} == {"committed"}, rows
            entries = _api(survivor, token, "GET", "/audit", params={"limit": 1000})["entries"]
            ours = [e for e in entries if e["target"]["id"] == rid and "transition" in e["details"]]
            transitions = [int(e["details"]["transition"]) for e in ours]
            assert len(transitions) == len(set(transitions)), transitions  # no step taken twice
            replicas = {e["details"]["replica"] for e in ours}
            assert len(replicas) == 2, replicas  # both replicas advanced it: the survivor took over
            verify = _api(survivor, token, "GET", "/audit/verify")
            assert verify["ok"], verify
        finally:
            for agent in agents:
                if agent.proc is not None and agent.proc.poll() is None:
                    agent.proc.kill()
            for server in (a, b):
                if server.proc is not None and server.proc.poll() is None:
                    server.stop()
