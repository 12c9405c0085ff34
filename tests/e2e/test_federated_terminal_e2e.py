"""Real `edgeloop-server` process and the real `edgeloop` CLI over HTTP: a run waiting a day for
devices is cancelled with `edgeloop fl cancel`, the next run starts, and a run interrupted by a
SIGKILL of the server ends `failed` ("runner replica <id> lost during round 1") once the restarted
server holds the runner lease (within the lease TTL of the killed one)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procs import BIN, ServerProc

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProc]:
    srv = ServerProc(data_dir=tmp_path / "server", database_url=database_url)
    srv.data_dir.mkdir()
    srv.init()
    srv.start()
    yield srv
    srv.stop()


def _cli(server: ServerProc, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [BIN / "edgeloop", "--server", server.url, "--token", server.admin_token, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _status(server: ServerProc, run_id: str) -> dict[str, Any]:
    out = _cli(server, "--json", "fl", "status", run_id)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["run"]  # type: ignore[no-any-return]


def _start(server: ServerProc) -> str:
    out = _cli(server, "--json", "fl", "start", "--min-nodes", "50", "--timeout", "86400")
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["run_id"])


def test_cli_cancels_a_stuck_run_and_a_killed_server_fails_its_run(server: ServerProc) -> None:
    first = _start(server)
    refused = _cli(server, "fl", "start", "--min-nodes", "1")
    assert refused.returncode != 0 and "409" in refused.stderr and first in refused.stderr

    cancelled = _cli(server, "fl", "cancel", first, "--reason", "wrong cohort")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled by admin" in " ".join(cancelled.stdout.split())
    run = _status(server, first)
    assert run["status"] == "cancelled" and run["detail"].endswith(": wrong cohort")
    again = _cli(server, "fl", "cancel", first)
    assert again.returncode != 0 and "409" in again.stderr and "already ended: cancelled" in again.stderr
    unknown = _cli(server, "fl", "cancel", "0" * 32)
    assert unknown.returncode != 0 and "404" in unknown.stderr

    second = _start(server)  # the slot is free again
    assert _status(server, second)["status"] == "running"
    server.kill()
    server.start()
    deadline = time.monotonic() + 30  # the killed process's runner lease expires first (TTL 6 s)
    while (run := _status(server, second))["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run["status"] == "failed" and run["finished_at"], run
    assert run["detail"].startswith("runner replica ") and run["detail"].endswith(" lost during round 1")
    third = _start(server)  # and nothing blocks the next run
    assert _cli(server, "fl", "cancel", third).returncode == 0
