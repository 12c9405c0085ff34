"""`edgeloop release publish` against a real `edgeloop-server`: a 34 MB model publishes with a short
idle timeout (the timeout follows progress, the answer waits for signing), a re-run returns the
release it made instead of a duplicate, concurrent retries with one key make one release, and the
same key with other content is a 409."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fleet_server.operator_cli import main as cli
from tests.helpers.procs import ServerProc

pytestmark = pytest.mark.timeout(300)
BIG = 34 * 1024 * 1024


def _cli(server: ServerProc, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli(["--server", server.url, "--token", server.admin_token, "--json", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def server(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    srv = ServerProc(tmp_path / "server", database_url=database_url)
    srv.init()
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_34mb_publish_with_a_5s_idle_timeout_is_idempotent(
    server: ServerProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = tmp_path / "big.tflite"
    blob.write_bytes(os.urandom(BIG // 2) + bytes(BIG // 2))  # half noise, half compressible
    args = ("--idle-timeout", "5", "release", "publish", str(blob), "--name", "big", "--version", "1")
    started = time.monotonic()
    code, out, err = _cli(server, capsys, *args)
    elapsed = time.monotonic() - started
    assert code == 0, err
    release = json.loads(out)  # --json: stdout is the API's JSON only (no progress bar)
    assert release["seq"] == 1 and release["length"] == BIG
    assert release["sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()
    with capsys.disabled():
        print(f"\n34 MiB publish (upload + sign) took {elapsed:.1f}s with a 5 s idle timeout")

    code, out, err = _cli(server, capsys, *args)  # the operator runs it again
    assert code == 0, err
    assert json.loads(out)["seq"] == 1
    with server.api() as api:
        assert [r["seq"] for r in api.get("/releases").json()] == [1]

    body = {"model_name": "big", "model_version": "2", "artifact_sha256": release["sha256"]}
    key = {"Idempotency-Key": "concurrent-retry-1"}

    def post(_: int) -> tuple[int, int]:
        with server.api() as api:
            resp = api.post("/releases", json=body, headers=key, timeout=120)
        return resp.status_code, resp.json()["seq"]

    with ThreadPoolExecutor(3) as pool:  # a client retrying while the first request still signs
        answers = sorted(pool.map(post, range(3)))
    assert answers == [(200, 2), (200, 2), (201, 2)]
    with server.api() as api:
        assert len(api.get("/releases").json()) == 2


def test_same_key_other_content_is_a_409_and_keys_are_validated(
    server: ServerProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes" * 100)
    args = ("release", "publish", str(model), "--name", "m", "--version", "0")
    assert [json.loads(_cli(server, capsys, *args)[1])["seq"] for _ in range(2)] == [1, 1]
    code, out, _ = _cli(server, capsys, *args, "--idempotency-key", "rollback-2026-12-06")
    assert code == 0 and json.loads(out)["seq"] == 2  # the same bytes again, on purpose: a new release
    with server.api() as api:
        sha = api.put("/ota/blobs", content=b"model bytes" * 100).json()["sha256"]
        body = {"model_name": "m", "model_version": "1", "artifact_sha256": sha}
        first = api.post("/releases", json=body, headers={"Idempotency-Key": "key-0001"})
        again = api.post("/releases", json=body, headers={"Idempotency-Key": "key-0001"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == first.json()
        other = api.post(
            "/releases", json={**body, "model_version": "2"}, headers={"Idempotency-Key": "key-0001"}
        )
        assert other.status_code == 409 and "another request" in other.json()["detail"]
        for bad in ("short", "has space!", "x" * 129):
            resp = api.post("/releases", json=body, headers={"Idempotency-Key": bad})
            assert resp.status_code == 422, bad
        assert api.post("/releases", json=body).status_code == 201  # no key: always a new release
        assert [r["model_version"] for r in api.get("/releases").json()] == ["1", "1", "0", "0"]


def test_an_idle_server_fails_the_cli_after_the_idle_timeout_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        (tmp_path / "m.bin").write_bytes(b"x" * 1000)
        started = time.monotonic()
        code = cli(["--server", url, "--idle-timeout", "1", "release", "publish", str(tmp_path / "m.bin"),
                    "--name", "m", "--version", "1"])  # fmt: skip
        assert code == 6 and time.monotonic() - started < 20
        assert "no progress" in capsys.readouterr().err
