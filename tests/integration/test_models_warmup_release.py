"""Issue 17: a warm-up sample published with a release (`edgeloop release publish --warmup`) is signed
into the OTA repository beside the model, like the golden set, and named in the release's metadata
the device reads (`custom.edgeloop.warmup`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fleet_server.operator_cli import main as cli
from tests.fixtures.stateful import FRAME, build_stateful_onnx, initial_state
from tests.helpers.procs import ServerProc

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def server(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    srv = ServerProc(tmp_path / "server", database_url=database_url)
    srv.init()
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_release_ships_the_warmup_sample(
    server: ServerProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_stateful_onnx(tmp_path / "vad.onnx", strict_rates=True)
    warmup = tmp_path / "warmup.npz"
    np.savez(warmup, x=np.zeros((1, FRAME), np.float32), state=initial_state(1), sr=np.array(16000, np.int64))
    capsys.readouterr()
    args = ["release", "publish", str(model), "--name", "vad", "--version", "1", "--warmup", str(warmup)]
    code = cli(["--server", server.url, "--token", server.admin_token, "--json", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    release = json.loads(out.out)
    path = release["custom"]["edgeloop"]["warmup"]
    assert path == f"models/vad/r{release['seq']}/warmup.npz"
    digest = hashlib.sha256(warmup.read_bytes()).hexdigest()
    directory, _, name = path.rpartition("/")
    with server.api() as api:  # the repository serves the signed bytes under their hash (consistent snapshot)
        got = api.get(f"{server.url}/ota/targets/{directory}/{digest}.{name}")
    assert got.status_code == 200, got.text
    assert got.content == warmup.read_bytes()
