"""The OTA repository is not public: a real `edgeloop-server` refuses anonymous reads of targets
and of metadata that names devices, a real agent process installs an update with the short-lived
token it receives in DesiredState over mTLS Sync, a device token opens its own role and assignment
but not another device's, and `EDGELOOP_OTA_PUBLIC=true` restores anonymous reads."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from fleet_server.ota.access import SECRET_FILE, TOKEN_HEADER, TOKEN_QUERY, access_for
from tests.helpers.procs import AgentProc, ServerProc, wait_until
from tests.integration.test_ota_support import models

pytestmark = pytest.mark.timeout(240)


def _publish(server: ServerProc, path: Path, golden: Path) -> dict[str, object]:
    with server.api() as api:
        blob = api.put("/ota/blobs", content=path.read_bytes()).json()
        gold = api.put("/ota/blobs", content=golden.read_bytes()).json()
        body = {
            "model_name": "digits", "model_version": "1", "artifact_sha256": blob["sha256"],
            "golden_sha256": gold["sha256"], "golden_threshold": 0.8, "gates": {"watch_s": 0.3},
        }  # fmt: skip
        resp = api.post("/releases", json=body)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())


def _launch(agent: AgentProc) -> None:
    agent.start_ota()


def test_targets_and_device_metadata_need_a_token_real_agent_installs_with_its_own(tmp_path: Path) -> None:
    m = models()
    server = ServerProc(tmp_path / "server")
    server.init()
    server.start()
    agent = AgentProc("dev-a", tmp_path / "dev-a", server)
    try:
        agent.data_dir.mkdir()
        assert agent.enroll(server.bootstrap_token()).returncode == 0
        release = _publish(server, m.v1, m.golden)
        secret = server.data_dir / "ota" / SECRET_FILE
        assert secret.stat().st_mode & 0o777 == 0o600
        _launch(agent)
        with server.api() as api:
            dep = api.post(f"/releases/{release['seq']}/deployments", json={"device_ids": ["dev-a"]}).json()
            status = wait_until(
                lambda: (
                    (rows := api.get(f"/deployments/{dep['deployment_id']}").json())
                    and rows[0]["state"] in ("committed", "failed", "rolled_back")
                    and rows[0]
                ),
                90,
                what="update through the guarded repository",
            )
        assert status["state"] == "committed", status  # every fetch carried the pushed token
        assert agent.stop() == 0

        base = f"{server.url}/ota"
        model = f"targets/models/digits/r1/{release['sha256']}.model.onnx"
        meta = server.data_dir / "ota" / "repo" / "metadata"
        versioned = {p.name.split(".", 1)[1]: p.name for p in sorted(meta.glob("[0-9]*.json"))}
        device_role = f"metadata/{versioned['device-dev-a.json']}"
        assignment = next((server.data_dir / "ota/repo/targets/devices/dev-a").iterdir()).name
        closed = [model, device_role, f"metadata/{versioned['snapshot.json']}",
                  f"metadata/{versioned['director.json']}", f"metadata/{versioned['targets.json']}",
                  f"targets/devices/dev-a/{assignment}"]  # fmt: skip
        for path in closed:
            anon = httpx.get(f"{base}/{path}")
            assert anon.status_code == 401, (path, anon.status_code)
            assert "device token" in anon.json()["detail"]
        for path in ("metadata/root.json", "metadata/1.root.json", "metadata/timestamp.json"):
            assert httpx.get(f"{base}/{path}").status_code == 200, path

        access = access_for(server.data_dir / "ota", 3600)  # the server's own secret file
        token = access.mint("dev-a", now_s=time.time()).token
        for path in closed:
            assert httpx.get(f"{base}/{path}", headers={TOKEN_HEADER: token}).status_code == 200, path
        part = httpx.get(f"{base}/{model}", params={TOKEN_QUERY: token}, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == m.v1.read_bytes()[10:20]  # CDN-style URL

        other = access.mint("dev-b", now_s=time.time()).token
        for path in (device_role, f"targets/devices/dev-a/{assignment}"):
            refused = httpx.get(f"{base}/{path}", headers={TOKEN_HEADER: other})
            assert refused.status_code == 403 and "dev-b" in refused.json()["detail"], path
        assert httpx.get(f"{base}/{model}", headers={TOKEN_HEADER: other}).status_code == 200

        expired = access.mint("dev-a", now_s=time.time() - 7200).token
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        v, scope, _, exp, mac = token.split(".")
        swapped = ".".join([v, scope, other.split(".")[2], exp, mac])  # dev-b's id under dev-a's MAC
        for bad, reason in ((expired, "expired"), (forged, "signature"), (swapped, "signature"),
                            ("v1.x", "malformed"), ("x" * 5000, "malformed")):  # fmt: skip
            resp = httpx.get(f"{base}/{model}", headers={TOKEN_HEADER: bad})
            assert resp.status_code == 401 and reason in resp.json()["detail"], (bad[:20], resp.text)

        assert httpx.get(f"{base}/{model}", headers=server_auth(server)).status_code == 200
        assert httpx.get(f"{base}/{model}", headers={"Authorization": "Bearer op_x.y"}).status_code == 401

        server.stop()
        server.env_extra["EDGELOOP_OTA_PUBLIC"] = "true"
        server.start()
        for path in closed:
            assert httpx.get(f"{base}/{path}").status_code == 200, path
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
        server.stop()


def server_auth(server: ServerProc) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token}"}


def test_desired_state_carries_a_fresh_token(tmp_path: Path) -> None:
    from fleet_server.desired import desired_for
    from fleet_server.models import Device
    from fleet_server.settings import Settings

    settings = Settings(data_dir=tmp_path, ota_token_ttl_s=120)
    before = time.time()
    desired = desired_for(Device(id="dev-z"), settings)
    access = access_for(tmp_path / "ota", 120)
    assert access.verify(desired.ota_token, now_s=time.time()) == "dev-z"
    assert before + 119 <= desired.ota_token_expires_at_ms / 1000 <= time.time() + 120
    assert re.fullmatch(r"[A-Za-z0-9._-]+", desired.ota_token)  # fits a header and a URL as is
