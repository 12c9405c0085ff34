"""Network and disk faults during OTA: truncated transfers and 500s are retried and resumed with
HTTP Range (bytes already on disk are not fetched again); a 404 on the artifact is terminal; metadata
that cannot be fetched means no install until it can; a full disk fails before downloading."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from tests.helpers.net import free_port
from tests.integration.test_ota_support import FleetSide, check, fleet_side, models, slot_files, start_device

pytestmark = pytest.mark.timeout(120)


class Flaky:
    """ASGI wrapper over the static repository: follows a per-request script of faults."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.script: list[str] = []  # "500" | "404" | "truncate" | "ok", consumed per matching request
        self.prefix = "/ota/targets/"
        self.log: list[tuple[str, str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        action = (
            self.script.pop(0)
            if scope["type"] == "http" and path.startswith(self.prefix) and self.script
            else "ok"
        )
        rng = dict(scope.get("headers", [])).get(b"range", b"").decode()
        self.log.append((path, action, rng))
        if action in ("500", "404"):
            await send({"type": "http.response.start", "status": int(action), "headers": []})
            await send({"type": "http.response.body", "body": b"fault"})
            return
        if action == "truncate":
            await self.app(scope, receive, _truncating(send))
            return
        await self.app(scope, receive, send)


def _truncating(send: Send) -> Send:
    sent = {"bytes": 0}

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if sent["bytes"] + len(body) > 20000:
                await send({**message, "body": body[: max(0, 20000 - sent["bytes"])], "more_body": True})
                raise ConnectionResetError("injected truncation")
            sent["bytes"] += len(body)
        await send(message)

    return wrapped


class FlakyHttp:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.flaky = Flaky(Starlette(routes=[Mount("/ota", StaticFiles(directory=root))]))
        self._server = uvicorn.Server(
            uvicorn.Config(self.flaky, host="127.0.0.1", port=self.port, log_level="critical")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FlakyHttp:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetSide]:
    yield from fleet_side(tmp_path / "server")


def test_truncation_and_500s_resume_with_range(tmp_path: Path, fleet: FleetSide) -> None:
    m = models()
    with FlakyHttp(fleet.ota.repo.root_dir) as http:
        http.flaky.script = ["truncate", "500", "truncate", "ok"]

        async def scenario() -> None:
            dev = await start_device(tmp_path, fleet, base_url=f"http://127.0.0.1:{http.port}/ota")
            try:
                dep = fleet.deploy(fleet.publish(m.v1, "1"), "dev-1")
                await check(dev)  # 3 attempts (truncated, 500, truncated): retries exhausted
                assert dev.reports.chain(dep) == ["downloading"], dev.reports.items
                partial = next((dev.root / "ota" / "downloads").glob("*.partial"))
                kept = partial.stat().st_size
                assert kept >= 20000  # what the truncated responses delivered stays on disk
                await check(dev)  # the next check resumes from there
                assert dev.reports.chain(dep)[-1] == "committed", dev.reports.items
                model_requests = [x for x in http.flaky.log if x[0].endswith("model.onnx.xz")]
                assert [a for _, a, _ in model_requests[:4]] == ["truncate", "500", "truncate", "ok"]
                ranges = [r for _, _, r in model_requests]
                assert ranges[:2] == ["", "bytes=20000-"] and ranges[3] == f"bytes={kept}-"
                # bytes on the wire: the compressed file once, plus what the truncated responses delivered
                xz = next(fleet.ota.repo.targets_dir.rglob("*.model.onnx.xz")).stat().st_size
                assert dev.work.downloader.bytes_received <= xz + 2 * 20000 + 65536
            finally:
                await dev.service.stop()

        asyncio.run(scenario())


def test_artifact_404_is_terminal_and_metadata_outage_installs_nothing(
    tmp_path: Path, fleet: FleetSide
) -> None:
    m = models()
    with FlakyHttp(fleet.ota.repo.root_dir) as http:

        async def scenario() -> None:
            dev = await start_device(tmp_path, fleet, base_url=f"http://127.0.0.1:{http.port}/ota")
            try:
                http.flaky.script = ["404"]
                dep = fleet.deploy(fleet.publish(m.v1, "1"), "dev-1")
                await check(dev)
                assert dev.reports.chain(dep) == ["downloading", "failed"]
                assert "HTTP 404" in dev.reports.items[-1]["detail"]
                assert slot_files(dev.root) == {}
                http.flaky.prefix, http.flaky.script = "/ota/metadata/", ["500"]
                dep = fleet.deploy(fleet.publish(m.v1, "1b"), "dev-1")
                await check(dev)
                assert dev.reports.chain(dep) == [] and "unreachable" in dev.client.last_error
                await check(dev)  # the repository is back
                assert dev.reports.chain(dep)[-1:] == ["committed"], (
                    dev.client.last_error,
                    http.flaky.log[-5:],
                )
            finally:
                await dev.service.stop()

        asyncio.run(scenario())


def test_full_disk_fails_before_download(tmp_path: Path, fleet: FleetSide) -> None:
    async def scenario() -> None:
        dev = await start_device(tmp_path, fleet, resources=(1 << 20, 1 << 40))
        try:
            dep = fleet.deploy(fleet.publish(models().v1, "1"), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep) == ["downloading", "failed"]
            assert "not enough disk" in dev.reports.items[-1]["detail"]
            assert dev.work.downloader.bytes_received == 0 and slot_files(dev.root) == {}
        finally:
            await dev.service.stop()

    asyncio.run(scenario())


def test_release_for_another_profile_is_refused(tmp_path: Path, fleet: FleetSide) -> None:
    async def scenario() -> None:
        dev = await start_device(tmp_path, fleet)
        try:
            dep = fleet.deploy(fleet.publish(models().v1, "1", profiles=["coral-dev-board"]), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep) == ["downloading", "failed"]
            assert "coral-dev-board" in dev.reports.items[-1]["detail"]
            assert dev.work.downloader.bytes_received == 0 and slot_files(dev.root) == {}
            dep = fleet.deploy(
                fleet.publish(models().v1, "1", profiles=["coral-dev-board", "generic-x86"]), "dev-1"
            )
            await check(dev)
            assert dev.reports.chain(dep)[-1] == "committed"
        finally:
            await dev.service.stop()

    asyncio.run(scenario())
