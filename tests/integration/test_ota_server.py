"""OTA on the server, on SQLite and PostgreSQL: the operator CLI against a real `edgeloop-server`
(publish, list, deploy, roles, Range on targets, offline root rotation), the desired state that
carries the signed assignment, and the telemetry observer that keeps per-device status."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fleet_server.db import make_engine
from fleet_server.desired import desired_for
from fleet_server.ingest import TelemetryRow
from fleet_server.migrate import upgrade
from fleet_server.models import Device
from fleet_server.operator_cli import main as cli
from fleet_server.ota.models import OtaDeviceStatus
from fleet_server.ota.status import ota_status_observer
from fleet_server.settings import Settings
from tests.helpers.procs import AgentProc, ServerProc
from tests.integration.test_ota_support import models

pytestmark = pytest.mark.timeout(180)


def _cli(server: ServerProc, capsys: pytest.CaptureFixture[str], *args: str, token: str = "") -> object:
    capsys.readouterr()  # drop earlier output (model export logs)
    code = cli(["--server", server.url, "--token", token or server.admin_token, "--json", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_cli_publish_deploy_range_and_root_rotation(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    m = models()
    server = ServerProc(tmp_path / "server", database_url=database_url)
    server.init()
    server.start()
    try:
        agent = AgentProc("dev-a", tmp_path / "dev-a", server)
        agent.data_dir.mkdir()
        assert agent.enroll(server.bootstrap_token()).returncode == 0
        release = _cli(
            server, capsys, "release", "publish", str(m.v1), "--name", "digits", "--version", "1.0",
            "--golden", str(m.golden), "--golden-threshold", "0.8", "--gate", "watch_s=0.5",
            "--deploy", "dev-a",
        )  # fmt: skip
        assert isinstance(release, dict) and release["seq"] == 1
        assert release["custom"]["edgeloop"]["golden"]["threshold"] == "0.8"
        listed = _cli(server, capsys, "release", "list")
        assert [r["model_version"] for r in listed] == ["1.0"]  # type: ignore[union-attr]
        with server.api() as api:
            viewer = api.post("/operator-tokens", json={"name": "v", "role": "viewer"})
        token = viewer.json()["token"]
        assert cli(["--server", server.url, "--token", token, "release", "list"]) == 0
        assert cli(["--server", server.url, "--token", token, "release", "deploy", "1", "dev-a"]) == 33  # 403
        desired = desired_for(Device(id="dev-a"), Settings(data_dir=server.data_dir))
        assert [(a.model_version, a.deployment_id) for a in desired.models] == [
            ("1.0", release["deployment"]["deployment_id"])
        ]
        sha = release["sha256"]
        url = f"{server.url}/ota/targets/models/digits/r1/{sha}.model.onnx"
        part = httpx.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == m.v1.read_bytes()[100:200]

        keys = tmp_path / "keys"
        new = [str(keys / f"new-{i}.pem") for i in range(2)]
        for path in new:
            _cli(server, capsys, "keys", "generate", "--out", path)
        old = str(server.data_dir / "ota" / "keys" / "root-0.pem")
        assert cli(["--server", server.url, "--token", server.admin_token, "keys", "rotate-root",
                    "--old-key", new[0], "--new-key", new[1], "--threshold", "1"]) != 0  # fmt: skip
        capsys.readouterr()
        out = _cli(server, capsys, "keys", "rotate-root", "--old-key", old, "--new-key", new[0],
                   "--new-key", new[1], "--threshold", "2")  # fmt: skip
        assert out == {"version": 2}
        assert httpx.get(f"{server.url}/ota/metadata/2.root.json").status_code == 200
    finally:
        server.stop()


def _row(seq: int, transition: int, to: str, deployment: str = "dep_1") -> TelemetryRow:
    payload = {
        "deployment_id": deployment,
        "release_seq": 3,
        "transition": transition,
        "to": to,
        "event": "e",
    }
    return TelemetryRow(
        seq=seq, timestamp_ms=seq, kind="ota", metrics={}, payload=json.dumps(payload).encode()
    )


def test_status_observer_keeps_the_highest_transition(tmp_path: Path, database_url: str) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 's.db'}")
    upgrade(engine)
    batches = [
        [("d1", _row(1, 1, "downloading")), ("d1", _row(2, 2, "verifying"))],
        [("d1", _row(2, 2, "verifying"))],  # redelivered after a lost ack
        [("d1", _row(5, 9, "committed")), ("d1", _row(4, 8, "committing"))],  # out of order in a batch
        [("d1", _row(6, 8, "committing"))],  # a duplicate transition re-sent after a crash
        [("d2", TelemetryRow(seq=1, timestamp_ms=1, kind="ota", metrics={}, payload=b"not json"))],
        [("d2", TelemetryRow(seq=2, timestamp_ms=2, kind="system", metrics={}, payload=b""))],
    ]
    for batch in batches:
        with engine.begin() as conn:
            ota_status_observer(conn, batch)
    with engine.connect() as conn:
        rows = conn.execute(select(OtaDeviceStatus.__table__)).mappings().all()  # type: ignore[attr-defined]
    assert [(r["device_id"], r["state"], r["transition"], r["report_seq"]) for r in rows] == [
        ("d1", "committed", 9, 5)
    ]
    engine.dispose()
