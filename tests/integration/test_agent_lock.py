"""One agent per data directory: a second real `edgeloop-agent run` (or `enroll`) on a directory a
running agent holds exits at once with ExitCode.DATA_DIR_LOCKED and the holder's pid, without a
traceback and without touching the running agent's state; the lock dies with its holder (SIGKILL)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from agent.errors import ExitCode
from tests.helpers.procs import BIN, AgentProc, ServerProc, wait_until

pytestmark = pytest.mark.timeout(120)


def _second(agent: AgentProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "edgeloop-agent", *args], env=agent.env(), capture_output=True, text=True, timeout=60
    )


def test_second_agent_on_one_data_dir_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    server = ServerProc(tmp_path / "server")
    server.init()
    server.start()
    agent = AgentProc("dev-lock", tmp_path / "dev-lock", server)
    try:
        agent.data_dir.mkdir()
        assert agent.enroll(server.bootstrap_token()).returncode == 0
        agent.start()
        assert agent.proc is not None
        wait_until(lambda: agent.status().get("reports_acked", 0) >= 2, 30, what="first agent reporting")
        state_before = (agent.data_dir / "state.json").read_bytes()

        for args in (("run",), ("enroll", "--token", "unused")):
            second = _second(agent, *args)
            assert second.returncode == ExitCode.DATA_DIR_LOCKED, second.stderr
            assert f"in use by pid {agent.proc.pid}" in second.stderr
            assert "Traceback" not in second.stderr

        assert agent.proc.poll() is None  # the holder runs on, its state untouched
        acked = agent.status()["reports_acked"]
        wait_until(lambda: agent.status()["reports_acked"] > acked, 30, what="holder still reporting")
        assert (agent.data_dir / "state.json").read_bytes() == state_before

        agent.proc.send_signal(signal.SIGKILL)  # the kernel drops a dead holder's lock
        agent.proc.wait(10)
        agent.start()
        lock = agent.data_dir / "agent.lock"
        wait_until(lambda: lock.read_text().strip() == str(agent.proc.pid), 30, what="restart takes the lock")
        assert f"in use by pid {agent.proc.pid}" in _second(agent, "run").stderr
        assert agent.stop() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
        server.stop()
