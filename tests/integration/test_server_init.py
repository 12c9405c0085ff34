"""`edgeloop-server init` makes every key a replica needs before any replica runs, so an operator
can turn the data directory into Kubernetes Secrets first (deploy/README.md), and the server that
starts on it afterwards is ready at once and generates nothing new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from fleet_server.db import make_engine

KEY_FILES = (
    "pki/ca.pem",
    "pki/ca.key",
    "pki/server.pem",
    "pki/server.key",
    "audit/head_key.pem",
    "ota/access.key",
    "ota/keys/keys.json",
    "ota/keys/root-0.pem",
    "ota/keys/targets-0.pem",
    "ota/keys/snapshot-0.pem",
    "ota/keys/timestamp-0.pem",
    "ota/keys/director-0.pem",
)


def _init(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "EDGELOOP_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "fleet_server.cli", "init", "--json"], env=env, capture_output=True, timeout=90
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out: dict[str, str] = json.loads(done.stdout)
    return out


def test_init_makes_every_key_and_the_signed_repository(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    _init(data)
    for rel in KEY_FILES:
        assert (data / rel).is_file(), rel
    assert (data / "ota" / "repo" / "metadata" / "1.timestamp.json").is_file()
    before = {rel: (data / rel).read_bytes() for rel in KEY_FILES}

    engine = make_engine(f"sqlite:///{data / 'fleet.db'}")
    try:
        with engine.connect() as conn:
            actions = [row[0] for row in conn.execute(text("SELECT action FROM audit_entry ORDER BY seq"))]
    finally:
        engine.dispose()
    assert actions.count("ota.keys.generated") == 1  # recorded in the fleet's audit log, once

    from fastapi.testclient import TestClient

    from fleet_server.main import create_app
    from fleet_server.settings import Settings

    settings = Settings(data_dir=data, enroll_port=0, device_port=0)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
    assert {rel: (data / rel).read_bytes() for rel in KEY_FILES} == before  # nothing regenerated
