"""OTA on the server, on SQLite and PostgreSQL: the operator CLI against a real `edgeloop-server`
(publish, list, deploy, roles, Range on targets, offline root rotation), the desired state that
carries the signed assignment, and the telemetry observer that keeps per-device status."""

from __future__ import annotations

import hashlib
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
from tests.helpers.inproc import LiveServer
from tests.helpers.procs import AgentProc, ServerProc
from tests.integration.test_ota_support import drift_references, models

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
            "--drift-reference", str(drift_references()[0]), "--deploy", "dev-a",
        )  # fmt: skip
        assert isinstance(release, dict) and release["seq"] == 1
        assert release["custom"]["edgeloop"]["golden"]["threshold"] == "0.8"
        reference = drift_references()[0].read_bytes()
        ref_sha = hashlib.sha256(reference).hexdigest()
        assert release["drift_reference_sha256"] == ref_sha
        assert release["custom"]["edgeloop"]["drift_reference"] == "models/digits/r1/drift_reference.json"
        signed_url = f"{server.url}/ota/targets/models/digits/r1/{ref_sha}.drift_reference.json"
        assert httpx.get(signed_url).status_code == 401  # targets are not public (operator or device token)
        signed = httpx.get(signed_url, headers={"Authorization": f"Bearer {server.admin_token}"})
        assert signed.status_code == 200 and signed.content == reference
        listed = _cli(server, capsys, "release", "list")
        assert [r["model_version"] for r in listed] == ["1.0"]  # type: ignore[union-attr]
        assert [r["drift_reference_sha256"] for r in listed] == [ref_sha]  # type: ignore[union-attr]
        with server.api() as api:
            viewer = api.post("/operator-tokens", json={"name": "v", "role": "viewer"})
        token = viewer.json()["token"]
        assert cli(["--server", server.url, "--token", token, "release", "list"]) == 0
        assert cli(["--server", server.url, "--token", token, "release", "deploy", "1", "dev-a"]) == 3  # 403
        desired = desired_for(Device(id="dev-a"), Settings(data_dir=server.data_dir))
        assert [(a.model_version, a.deployment_id) for a in desired.models] == [
            ("1.0", release["deployment"]["deployment_id"])
        ]
        sha = release["sha256"]
        url = f"{server.url}/ota/targets/models/digits/r1/{sha}.model.onnx"
        part = httpx.get(
            url, headers={"Range": "bytes=100-199", "Authorization": f"Bearer {server.admin_token}"}
        )
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
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        entries = httpx.get(f"{server.url}/api/v1/audit?limit=1000", headers=admin).json()["entries"]
        [rotated] = [e for e in entries if e["action"] == "ota.root.rotated"]  # the refused one is not
        assert rotated["target"] == {"kind": "ota_root", "id": "2"} and rotated["actor"]["role"] == "admin"
        assert rotated["details"]["threshold"] == 2 and len(rotated["details"]["keyids"]) == 2
        assert [e["action"] for e in entries].count("release.published") == 1
    finally:
        server.stop()


def test_publish_refuses_bad_drift_references_with_422(server: LiveServer) -> None:
    """Not JSON, the wrong shape or too big: 422 naming the problem, no release row, nothing signed."""
    ota = server.client.app.state.ota  # type: ignore[attr-defined]
    headers = server.auth("operator")

    def blob(data: bytes) -> str:
        put = server.client.put("/api/v1/ota/blobs", content=data, headers=headers)
        assert put.status_code == 200, put.text
        return str(put.json()["sha256"])

    def publish(reference_sha: str) -> httpx.Response:
        body = {"model_name": "digits", "model_version": "1", "artifact_sha256": artifact,
                "drift_reference_sha256": reference_sha}  # fmt: skip
        return server.client.post("/api/v1/releases", json=body, headers=headers)

    artifact = blob(models().v1.read_bytes())
    good = json.loads(drift_references()[0].read_bytes())
    bad = {
        "not JSON": b"\x89PNG\r\n\x1a\n not a reference",
        "nested too deeply": b"[" * 200_000,
        "must be a JSON object, not an array": b"[1, 2, 3]",
        "format_version must be one of [1, 2], got 7": json.dumps({**good, "format_version": 7}).encode(),
        "missing key 'calibration'": json.dumps(
            {k: v for k, v in good.items() if k != "calibration"}
        ).encode(),
        "key 'inputs' must be an object, not a string": json.dumps({**good, "inputs": "x"}).encode(),
        "the limit is 8388608 bytes": json.dumps(good).encode() + b" " * (8 << 20),
    }
    for message, data in bad.items():
        answer = publish(blob(data))
        assert answer.status_code == 422, (message, answer.text)
        assert message in answer.json()["detail"], answer.json()
    assert publish("0" * 64).status_code == 404  # never uploaded
    assert server.client.get("/api/v1/releases", headers=headers).json() == []
    assert ota.repo.release_targets() == {}

    reference = drift_references()[0].read_bytes()
    answer = publish(blob(reference))
    assert answer.status_code == 201, answer.text
    release = answer.json()
    assert release["drift_reference_sha256"] == hashlib.sha256(reference).hexdigest()
    path = release["custom"]["edgeloop"]["drift_reference"]
    target = ota.repo.release_targets()[path]
    assert target.hashes["sha256"] == release["drift_reference_sha256"] and target.length == len(reference)
    assert ota.repo.target_file_path(target).read_bytes() == reference


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
    with engine.begin() as conn:  # what deploying dep_1 to d1 and d2 created
        for device in ("d1", "d2"):
            conn.execute(
                OtaDeviceStatus.__table__.insert().values(  # type: ignore[attr-defined]
                    device_id=device, deployment_id="dep_1", release_seq=3, state="assigned"
                )
            )
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
    assert sorted((r["device_id"], r["state"], r["transition"], r["report_seq"]) for r in rows) == [
        ("d1", "committed", 9, 5),
        ("d2", "assigned", 0, 0),
    ]
    engine.dispose()
