"""Readiness checks (observability/ready.py) that the integration test cannot provoke cheaply:
gRPC servers not started, stopping, or not accepting; a check that hangs or breaks."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from fleet_server.observability.ready import Check, Serving, artifacts, grpc_servers, run_checks


def test_grpc_check_follows_lifespan_and_ports() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    try:
        assert grpc_servers(Serving(), "127.0.0.1", {"device": port}) == Check(False, "not started")
        assert grpc_servers(Serving(started=True), "0.0.0.0", {"device": port}).ok
        assert not grpc_servers(Serving(started=True, stopping=True), "127.0.0.1", {"device": port}).ok
        down = grpc_servers(Serving(started=True), "127.0.0.1", {"device": port, "enroll": dead_port})
        assert not down.ok and f"enroll port {dead_port}" in down.detail and "device" not in down.detail
    finally:
        listener.close()


def test_a_hanging_or_breaking_check_fails_alone() -> None:
    release = threading.Event()

    def hang() -> Check:
        release.wait(10)
        return Check(True, "late")

    def broken() -> Check:
        raise KeyError("x")

    threading.Timer(1.0, release.set).start()  # lets asyncio.run's executor shutdown finish
    results = asyncio.run(
        run_checks({"fine": lambda: Check(True, "ok"), "broken": broken, "hang": hang}, deadline_s=0.5)
    )
    assert results["fine"].ok
    assert not results["broken"].ok and "KeyError" in results["broken"].detail
    assert results["hang"] == Check(False, "no answer within 0.5 s")


def test_artifacts_check_names_an_unreachable_s3_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A replica cut off from its bucket is not ready, and says which store and why."""
    from fleet_server.artifacts.fs import FilesystemStore
    from fleet_server.artifacts.s3 import S3Store

    for name, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    store = S3Store.connect("fleet", "ota", endpoint_url=f"http://127.0.0.1:{dead_port}")
    check = artifacts(store, "metadata/timestamp.json")
    assert not check.ok
    assert check.detail.startswith("s3://fleet/ota/: ")

    local = FilesystemStore(tmp_path)
    assert artifacts(local, "metadata/timestamp.json") == Check(
        False, f"{local.describe()}: no metadata/timestamp.json (repository not initialized)"
    )
    local.put("metadata/timestamp.json", b"{}")
    assert artifacts(local, "metadata/timestamp.json") == Check(True, local.describe())
