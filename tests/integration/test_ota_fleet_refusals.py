"""Refusals and failures the operator sees, with a real `edgeloop-server`, a real agent process
(`edgeloop-agent run`) and real models, the device reading the repository through a mirror we
control (tests/integration/test_ota_faults.py's fault-injecting static server):

- a status report a device sends for a deployment aimed at another device is refused, not stored;
- a mirror that fails every target: the update ends `failed` with its reason through the REST API,
  the CLI and the device's health, within the bounded retries; a newer deployment then installs;
- a rogue-key timestamp on the mirror: the API shows the deployment `refused` with the reason and
  the device's health is not ok; nothing is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api.metadata import Metadata  # type: ignore[attr-defined]
from tuf.api.serialization.json import JSONSerializer

from agent.outbox import TelemetryOutbox
from fleet_server.operator_cli import main as cli
from tests.helpers.procs import AgentProc, ServerProc, wait_until
from tests.integration.test_ota_faults import FlakyHttp
from tests.integration.test_ota_support import models

pytestmark = pytest.mark.timeout(300)


def _publish(server: ServerProc, path: Path, version: str) -> int:
    with server.api() as api:
        blob = api.put("/ota/blobs", content=path.read_bytes())
        blob.raise_for_status()
        body = {"model_name": "digits", "model_version": version, "artifact_sha256": blob.json()["sha256"],
                "gates": {"watch_s": 0.3, "shadow_window_s": 1.0}}  # fmt: skip
        resp = api.post("/releases", json=body)
        resp.raise_for_status()
        return int(resp.json()["seq"])


def _deploy(server: ServerProc, seq: int, device_id: str) -> str:
    with server.api() as api:
        resp = api.post(f"/releases/{seq}/deployments", json={"device_ids": [device_id]})
        resp.raise_for_status()
        return str(resp.json()["deployment_id"])


def _rows(server: ServerProc, deployment_id: str) -> list[dict[str, Any]]:
    with server.api() as api:
        resp = api.get(f"/deployments/{deployment_id}")
        resp.raise_for_status()
        return list(resp.json())


def _ended(server: ServerProc, deployment_id: str, state: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        rows = _rows(server, deployment_id)
        return (
            rows[0]
            if rows and rows[0]["state"] in ("committed", "failed", "refused", "rolled_back")
            else None
        )

    row: dict[str, Any] = wait_until(done, 120, interval=0.3, what=f"{deployment_id} to end")
    assert row["state"] == state, row
    return row


def _device(server: ServerProc, device_id: str) -> dict[str, Any]:
    with server.api() as api:
        resp = api.get(f"/devices/{device_id}")
        resp.raise_for_status()
        return dict(resp.json())


def _rogue_timestamp(repo: Path) -> bytes:
    md = Metadata.from_bytes((repo / "metadata" / "timestamp.json").read_bytes())
    md.signed.version += 1
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())
    return bytes(md.to_bytes(JSONSerializer()))


def test_failures_and_refusals_reach_the_operator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = models()
    server = ServerProc(tmp_path / "server")
    server.init()
    server.start()
    repo = server.data_dir / "ota" / "repo"
    agents: list[AgentProc] = []
    try:
        with FlakyHttp(repo) as mirror:
            ota_env = {
                "EDGELOOP_AGENT_OTA_BASE_URL": f"http://127.0.0.1:{mirror.port}/ota",
                "EDGELOOP_AGENT_OTA_TRUSTED_ROOT": str(repo / "metadata" / "1.root.json"),
                "EDGELOOP_AGENT_OTA_POLL_INTERVAL_S": "2",
                "EDGELOOP_AGENT_OTA_DOWNLOAD_ATTEMPTS": "2",
                "EDGELOOP_AGENT_OTA_UPDATE_ATTEMPTS": "3",
                "EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_S": "0.1",
                "EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_MAX_S": "0.5",
            }
            for name in ("dev-a", "dev-b"):
                agent = AgentProc(name, tmp_path / name / "data", server, env_extra=ota_env)
                agent.data_dir.mkdir(parents=True)
                assert agent.enroll(server.bootstrap_token()).returncode == 0
                agents.append(agent)
            dev_a = agents[0]
            v1, v1b, v2 = (
                _publish(server, m.v1, "1"),
                _publish(server, m.v1, "1b"),
                _publish(server, m.v2, "2"),
            )

            # 1. dev-a reports into a deployment that targets only dev-b: refused, never stored
            dep_b = _deploy(server, v1, "dev-b")
            forged = {"deployment_id": dep_b, "release_seq": v1, "transition": 10**6, "from": "committing",
                      "to": "committed", "event": "commit_done", "detail": "forged by dev-a"}  # fmt: skip
            outbox = TelemetryOutbox(dev_a.data_dir / "outbox.db", max_records=1000)
            outbox.append(timestamp_ms=1, kind="ota", metrics={}, payload=json.dumps(forged).encode())
            outbox.close()
            dev_a.start()
            log = server.data_dir / "server.log"
            wait_until(
                lambda: "ota report refused device_id='dev-a'" in log.read_text(errors="replace"),
                60,
                what="the server to refuse dev-a's forged report",
            )
            assert [(r["device_id"], r["state"]) for r in _rows(server, dep_b)] == [("dev-b", "assigned")]

            # 2. a mirror that fails every target: failed with the reason, within the bounded retries
            mirror.flaky.fail_all = True
            dep1 = _deploy(server, v1, "dev-a")
            row = _ended(server, dep1, "failed")
            assert row["event"] == "download_failed", row
            assert row["detail"].startswith("gave up after 3 attempts: HTTP 500 for "), row
            target_requests = [p for p, _, _ in mirror.flaky.log if p.startswith("/ota/targets/")]
            assert len(target_requests) == 3 * 2  # update attempts x transfer attempts, not one more
            health = _device(server, "dev-a")["observed"]
            assert (
                health["health"] == "degraded"
                and f"ota failed in deployment {dep1}" in health["health_detail"]
            )
            capsys.readouterr()
            assert (
                cli(["--server", server.url, "--token", server.admin_token, "release", "status", dep1]) == 0
            )
            shown = capsys.readouterr().out
            assert "failed" in shown and "gave up after 3" in shown and "HTTP 500" in shown, shown
            assert (
                cli(
                    [
                        "--server",
                        server.url,
                        "--token",
                        server.admin_token,
                        "--json",
                        "release",
                        "status",
                        dep1,
                    ]
                )
                == 0
            )
            assert json.loads(capsys.readouterr().out)[0]["state"] == "failed"

            # a newer deployment is not blocked by the failed one
            mirror.flaky.fail_all = False
            dep2 = _deploy(server, v1b, "dev-a")
            _ended(server, dep2, "committed")
            wait_until(
                lambda: _device(server, "dev-a")["observed"].get("health") == "ok", 30, what="health ok"
            )

            # 3. rogue-key metadata: refused, with the reason, against the deployment; health not ok
            mirror.flaky.overrides["/ota/metadata/timestamp.json"] = _rogue_timestamp(repo)
            dep3 = _deploy(server, v2, "dev-a")
            row = _ended(server, dep3, "refused")
            assert row["event"] == "metadata_refused" and "OTA metadata refused" in row["detail"], row
            assert "signed by 0/1" in row["detail"] or "Unsigned" in row["detail"], row
            with server.api() as api:
                listed = api.get(f"/releases/{v2}/deployments").json()
            assert [(r["deployment_id"], r["state"]) for r in listed] == [(dep3, "refused")]
            observed = _device(server, "dev-a")["observed"]
            assert observed["health"] != "ok" and "ota refused" in observed["health_detail"], observed
            slots = json.loads((dev_a.data_dir / "models" / "current" / "model.json").read_text())
            assert slots["version"] == "1b"  # nothing installed, the last good model serves
    finally:
        for agent in agents:
            if agent.proc is not None:
                agent.stop()
        server.stop()
