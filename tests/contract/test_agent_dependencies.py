"""The agent stays light: its extra pulls no torch/fastapi/sqlmodel/flwr, and it imports none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"torch", "fastapi", "sqlmodel", "flwr", "sqlalchemy", "uvicorn", "tensorflow"}


def test_agent_modules_import_nothing_heavy() -> None:
    code = (
        "import sys, agent.cli, agent.daemon, agent.sync, agent.transport.grpc_fleet, agent.outbox;"
        "import json; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout))
    assert not loaded & (FORBIDDEN | {"fleet_server", "compiler", "onnxruntime"}), loaded & FORBIDDEN


@pytest.mark.timeout(600)
def test_pip_install_agent_extra_resolves_without_heavy_packages(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            f"{ROOT}[agent]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"grpcio", "onnxruntime", "paho-mqtt", "tuf", "numpy"} <= names
    assert not names & FORBIDDEN, names & FORBIDDEN
