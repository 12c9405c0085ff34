"""Real `edgeloop-server` + enrolled devices running `python -m agent.federated` + the `edgeloop fl`
CLI over HTTP: a labelled cohort trains in rounds, the run and its rounds are in the history."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.digits import load_digits_data
from tests.helpers.procs import BIN, AgentProc, ServerProc, wait_until

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProc]:
    srv = ServerProc(data_dir=tmp_path / "server", database_url=database_url)
    srv.data_dir.mkdir()
    srv.init()
    srv.start()
    yield srv
    assert srv.stop() == 0


def _cli(server: ServerProc, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [BIN / "edgeloop", "--server", server.url, "--token", server.admin_token, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_cli_runs_a_labelled_cohort_through_fleetgrid(server: ServerProc, tmp_path: Path) -> None:
    data = load_digits_data(0)
    x = data.x_train.reshape(len(data.x_train), -1)
    procs = []
    try:
        for i in range(5):
            agent = AgentProc(device_id=f"fl-{i}", data_dir=tmp_path / "agents" / f"fl-{i}", server=server)
            agent.data_dir.mkdir(parents=True)
            site = "other" if i == 4 else "lab"
            assert agent.enroll(server.bootstrap_token(labels={"site": site})).returncode == 0
            rows = np.arange(i, len(x), 5)
            np.savez(tmp_path / f"fl-{i}.npz", x=x[rows], y=data.y_train[rows])
            cmd = [sys.executable, "-m", "agent.federated", "--data-dir", str(agent.data_dir), "--endpoint",
                   f"localhost:{server.device_port}", "--samples", str(tmp_path / f"fl-{i}.npz")]  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        start = _cli(
            server, "fl", "start", "--rounds", "3", "--min-nodes", "4", "--label", "site=lab", "--lr", "0.5"
        )
        assert start.returncode == 0, start.stderr
        run_id = start.stdout.split()[-1]

        def done() -> dict[str, object] | None:
            out = json.loads(_cli(server, "--json", "fl", "status", run_id).stdout)
            return out if out["run"]["status"] != "running" else None

        status = wait_until(done, 90, interval=0.5, what="federated run finished")
        assert status["run"]["status"] == "completed", status["run"]["detail"]
        rounds = status["rounds"]
        assert [r["sampled"] for r in rounds] == [4, 4, 4]  # the site=other device is not in the cohort
        assert all(r["results"] == 4 for r in rounds) and "fl-4" not in rounds[0]["anomaly_scores"]
        history = _cli(server, "fl", "history")
        assert history.returncode == 0 and "1 federated run" in history.stdout
        runs = json.loads(_cli(server, "--json", "fl", "history").stdout)
        assert runs[0]["id"] == run_id and runs[0]["final_digest"] == rounds[-1]["arrays_digest"]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)
