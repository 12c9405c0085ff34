"""Two real `edgeloop-server` replicas on one PostgreSQL behind a TCP balancer (tests/helpers/
replicas.py): the federated runner and the drift trigger are lease singletons.

- The auto-retrain policy PUT on one replica is what GET on the other shows, with the replica
  that runs it.
- A run started through the balancer is executed by the `federated-runner` holder; that replica
  is SIGKILLed mid-round: the other replica takes the lease within ttl + poll (~7 s; goal 10 s)
  and the run ends `failed` with "runner replica <id> lost during round 1", once; the next run
  starts and is executed by the survivor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import wait_until
from tests.helpers.replicas import Replicas

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]
RUNS = "/federated/runs"


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[Replicas]:
    with Replicas(tmp_path / "cluster", database_url, n=2) as replicas:
        yield replicas


def _run(cluster: Replicas, run_id: str, via: int | None = None) -> dict[str, object]:
    return cluster.api("GET", f"{RUNS}/{run_id}", via=via)["run"]  # type: ignore[no-any-return]


def test_runner_replica_killed_mid_round_the_other_fails_the_run_and_runs_the_next(
    cluster: Replicas,
) -> None:
    put = cluster.api("PUT", "/federated/auto-retrain", via=0, params={"interval_s": 5}, json={})
    assert put["enabled"] and put["interval_s"] == 5.0
    wait_until(
        lambda: cluster.api("GET", "/federated/auto-retrain", via=1).get("holder") in cluster.replica_ids,
        30,
        what="the auto-retrain policy seen on replica 1 with its holder",
    )
    seen = cluster.api("GET", "/federated/auto-retrain", via=1)
    assert seen["enabled"] and seen["interval_s"] == 5.0
    assert cluster.api("DELETE", "/federated/auto-retrain", via=1) == {"enabled": False}
    assert cluster.api("GET", "/federated/auto-retrain", via=0) == {"enabled": False}

    body = {"min_nodes": 50, "round_timeout_s": 86400}  # waits a day for 50 devices: round 1 in flight
    run_id = cluster.api("POST", RUNS, json=body)["run_id"]
    wait_until(lambda: _run(cluster, run_id)["current_round"] == 1, 30, what="round 1 on the runner")
    runner = str(_run(cluster, run_id)["runner"])
    i = cluster.index_of(runner)
    assert i is not None and cluster.leases()["federated-runner"].holder == runner
    survivor = 1 - i

    killed_at = cluster.kill(i)
    wait_until(
        lambda: _run(cluster, run_id, via=survivor)["status"] != "running", 30, interval=0.1,
        what="the survivor to fail the run",
    )  # fmt: skip
    ended = time.time() - killed_at
    run = _run(cluster, run_id, via=survivor)
    assert (run["status"], run["detail"]) == ("failed", f"runner replica {runner} lost during round 1")
    lease = cluster.leases()["federated-runner"]
    assert lease.holder == cluster.replica_ids[survivor]
    assert ended < 15, f"run failed {ended:.1f}s after the kill (lease ttl 6 s + poll 1 s)"
    print(f"runner SIGKILL -> run failed by the other replica after {ended:.1f}s (token {lease.token})")

    nxt = cluster.api("POST", RUNS, via=survivor, json=body)["run_id"]
    wait_until(
        lambda: _run(cluster, nxt, via=survivor)["current_round"] == 1, 30, what="next run on survivor"
    )
    assert _run(cluster, nxt, via=survivor)["runner"] == cluster.replica_ids[survivor]
    cancel = cluster.api("POST", f"{RUNS}/{nxt}/cancel", via=survivor, json={"reason": "test over"})
    assert cancel["status"] == "cancelled"
