"""Power loss anywhere during an OTA install: a real `edgeloop-server` and real agent processes
(`edgeloop-agent run`: Sync + inference service + OTA client, the real daemon) on loopback.

A named crash point (``EDGELOOP_OTA_CRASH_AT``) makes the agent SIGKILL itself at that instant; the
harness restarts it with the next crash point of the chain, and after the last one lets it finish.
Every chain must end with the released model serving (its file hashing to the signed target) and
``committed`` as the device's status at the server. Chains take every 5th point of the protocol so
no state sees three restarts (that is the crash-loop rule, tested on its own: three crashes in the
watch window end ``rolled_back`` with the previous model serving).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procs import BIN, AgentProc, ServerProc, wait_until
from tests.integration.test_ota_support import models

STATES = [
    "downloading",
    "verifying",
    "staging",
    "golden_check",
    "shadowing",
    "switching",
    "watching",
    "committing",
]
POINTS = [f"{kind}:{s}" for s in STATES for kind in ("saved", "before", "after")] + ["saved:committed"]
CHAINS = [POINTS[i::5] for i in range(5)]  # 5 chains covering all 25 points, <= 5 crashes each
TERMINAL = {"committed", "failed", "rolled_back"}


@dataclass
class Fleet:
    server: ServerProc
    releases: dict[str, tuple[int, str]] = field(default_factory=dict)  # version -> (seq, sha256)

    def publish(self, path: Path, version: str, golden: Path) -> None:
        with self.server.api() as api:
            blob = api.put("/ota/blobs", content=path.read_bytes()).json()
            gold = api.put("/ota/blobs", content=golden.read_bytes()).json()
            body = {
                "model_name": "digits", "model_version": version, "artifact_sha256": blob["sha256"],
                "golden_sha256": gold["sha256"], "golden_threshold": 0.8,
                "gates": {"watch_s": 0.3, "min_shadow_samples": 8},
            }  # fmt: skip
            resp = api.post("/releases", json=body)
            resp.raise_for_status()
            self.releases[version] = (resp.json()["seq"], blob["sha256"])

    def deploy(self, version: str, device_id: str) -> str:
        with self.server.api() as api:
            resp = api.post(
                f"/releases/{self.releases[version][0]}/deployments", json={"device_ids": [device_id]}
            )
            resp.raise_for_status()
            return str(resp.json()["deployment_id"])

    def status(self, deployment_id: str) -> dict[str, Any] | None:
        with self.server.api() as api:
            rows = api.get(f"/deployments/{deployment_id}").json()
        return rows[0] if rows else None


class OtaAgent(AgentProc):
    def ota_env(self, crash_at: str) -> dict[str, str]:
        env = self.env()
        env.update(
            EDGELOOP_AGENT_OTA_BASE_URL=self.server.url + "/ota",
            EDGELOOP_AGENT_OTA_TRUSTED_ROOT=str(
                self.server.data_dir / "ota" / "repo" / "metadata" / "1.root.json"
            ),
            EDGELOOP_AGENT_OTA_POLL_INTERVAL_S="2",
            EDGELOOP_OTA_CRASH_AT=crash_at,
        )
        return env

    def launch(self, crash_at: str = "") -> None:
        fh = open(self.data_dir.parent / f"{self.device_id}.log", "ab")
        self.proc = subprocess.Popen(
            [BIN / "edgeloop-agent", "run"], env=self.ota_env(crash_at), stdout=fh, stderr=fh
        )

    def serving_sha(self) -> str:
        meta = json.loads((self.data_dir / "models" / "current" / "model.json").read_text())
        artifact = self.data_dir / "models" / "current" / meta["artifact"]
        assert hashlib.sha256(artifact.read_bytes()).hexdigest() == meta["sha256"]
        return str(meta["sha256"])


def _crash_and_finish(fleet: Fleet, agent: OtaAgent, version: str, points: list[str]) -> tuple[int, str]:
    dep = fleet.deploy(version, agent.device_id)
    crashes = 0
    for point in points:
        agent.launch(point)
        assert agent.proc is not None
        code = agent.proc.wait(60)
        assert code == -signal.SIGKILL, f"{agent.device_id} did not crash at {point} (exit {code})"
        crashes += 1
    agent.launch()
    status = wait_until(
        lambda: (s := fleet.status(dep)) and s["state"] in TERMINAL and s, 60, what=f"{dep} done"
    )
    assert agent.stop() == 0
    return crashes, str(status["state"])


def _device(tmp: Path, server: ServerProc, name: str) -> OtaAgent:
    agent = OtaAgent(name, tmp / name / "data", server)
    agent.data_dir.mkdir(parents=True)
    result = agent.enroll(server.bootstrap_token())
    assert result.returncode == 0, result.stderr
    return agent


@pytest.fixture
def fleet(tmp_path: Path) -> Any:
    server = ServerProc(tmp_path / "server")
    server.init()
    server.start()
    fleet = Fleet(server)
    m = models()
    fleet.publish(m.v1, "1", m.golden)
    fleet.publish(m.v2, "2", m.golden)
    yield fleet
    server.stop()


def _run_chains(tmp: Path, fleet: Fleet, devices: int, rounds: int) -> int:
    def one(n: int) -> int:
        agent = _device(tmp, fleet.server, f"dev-{n}")
        total = 0
        for r in range(rounds):
            for i, chain in enumerate(CHAINS):
                version = "1" if (r * len(CHAINS) + i) % 2 == 0 else "2"
                crashes, state = _crash_and_finish(fleet, agent, version, chain)
                assert state == "committed", (agent.device_id, chain, state)
                assert agent.serving_sha() == fleet.releases[version][1]
                total += crashes
        return total

    with ThreadPoolExecutor(devices) as pool:
        return sum(pool.map(one, range(devices)))


@pytest.mark.timeout(600)
def test_power_loss_at_every_point_ends_committed(tmp_path: Path, fleet: Fleet) -> None:
    """Fast tier: all 25 crash points once (5 chains), plus the crash loop in the watch window."""
    assert _run_chains(tmp_path, fleet, devices=1, rounds=1) == len(POINTS)
    agent = _device(tmp_path, fleet.server, "loop")
    assert _crash_and_finish(fleet, agent, "1", [])[1] == "committed"
    crashes, state = _crash_and_finish(fleet, agent, "2", ["before:watching"] * 3)
    assert (crashes, state) == (3, "rolled_back")
    assert agent.serving_sha() == fleet.releases["1"][1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_hundred_power_losses(tmp_path: Path, fleet: Fleet) -> None:
    assert _run_chains(tmp_path, fleet, devices=2, rounds=4) >= 200
