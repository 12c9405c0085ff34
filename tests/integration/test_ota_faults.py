"""Network and disk faults during OTA: truncated transfers and 500s are retried and resumed with
HTTP Range (bytes already on disk are not fetched again); a mirror serving truncated delta patches
makes the agent fall back to the full artifact; a mirror that fails everything ends the update in
`failed` with the reason after bounded retries, and a newer deployment then installs; a 404 on the
artifact is terminal; metadata that cannot be fetched means no install until it can; a full disk
fails before downloading."""

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
        self.script: list[
            str
        ] = []  # "500" | "404" | "truncate" | "short" | "ok", consumed per matching request
        self.fail_all = False  # every matching request answers 500
        self.overrides: dict[str, bytes] = {}  # path -> body served instead of the file (an attacker's)
        self.prefix = "/ota/targets/"
        self.log: list[tuple[str, str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        matching = scope["type"] == "http" and path.startswith(self.prefix)
        action = self.script.pop(0) if matching and self.script else "ok"
        if matching and self.fail_all:
            action = "500"
        rng = dict(scope.get("headers", [])).get(b"range", b"").decode()
        self.log.append((path, action, rng))
        if scope["type"] == "http" and path in self.overrides:
            body = self.overrides[path]
            headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if action in ("500", "404"):
            await send({"type": "http.response.start", "status": int(action), "headers": []})
            await send({"type": "http.response.body", "body": b"fault"})
            return
        if action in ("truncate", "short"):  # short: a body cut after 8 bytes (Content-Length says more)
            await self.app(scope, receive, _truncating(send, 20000 if action == "truncate" else 8))
            return
        await self.app(scope, receive, send)


def _truncating(send: Send, limit: int) -> Send:
    sent = {"bytes": 0}

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if sent["bytes"] + len(body) > limit:
                await send({**message, "body": body[: max(0, limit - sent["bytes"])], "more_body": True})
                raise ConnectionResetError("injected truncation")
            sent["bytes"] += len(body)
        await send(message)

    return wrapped


class FlakyHttp:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.flaky = Flaky(Starlette(routes=[Mount("/ota", StaticFiles(directory=root))]))
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.flaky, host="127.0.0.1", port=self.port, log_level="critical", log_config=None
            )
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
                # 3 transfer attempts (truncated, 500, truncated) exhaust the first try of the step;
                # the update retries after a backoff and resumes where the bytes on disk end
                await check(dev)
                chain = dev.reports.chain(dep)
                assert chain[:3] == ["downloading", "downloading", "verifying"] and chain[-1] == "committed"
                retry = dev.reports.items[1]
                assert retry["event"] == "retry" and retry["detail"].startswith("attempt 1/5 failed: "), retry
                assert "stream broke at 40000 bytes" in retry["detail"]
                model_requests = [x for x in http.flaky.log if x[0].endswith("model.onnx.xz")]
                assert [a for _, a, _ in model_requests[:4]] == ["truncate", "500", "truncate", "ok"]
                ranges = [r for _, _, r in model_requests]
                # what the truncated responses delivered stays on disk and is not fetched again
                assert ranges[:4] == ["", "bytes=20000-", "bytes=20000-", "bytes=40000-"]
                xz = next(fleet.ota.repo.targets_dir.rglob("*.model.onnx.xz")).stat().st_size
                assert dev.work.downloader.bytes_received <= xz + 2 * 20000 + 65536
            finally:
                await dev.service.stop()

        asyncio.run(scenario())


def test_truncated_delta_patches_fall_back_to_the_full_artifact(tmp_path: Path, fleet: FleetSide) -> None:
    """The issue's mirror: every patch comes back short (a transport error, not an integrity one)
    while the full artifact is intact; the update must not sit in `downloading`."""
    m = models()
    with FlakyHttp(fleet.ota.repo.root_dir) as http:

        async def scenario() -> None:
            dev = await start_device(tmp_path, fleet, base_url=f"http://127.0.0.1:{http.port}/ota")
            try:
                dep1 = fleet.deploy(fleet.publish(m.v1, "1"), "dev-1")
                await check(dev)
                assert dev.reports.chain(dep1)[-1] == "committed"
                http.flaky.prefix, http.flaky.script = "/ota/targets/patches/", ["short"] * 100
                dep2 = fleet.deploy(fleet.publish(m.v2, "2"), "dev-1")
                await check(dev)
                chain = dev.reports.chain(dep2)
                assert chain[-1] == "committed" and chain.count("downloading") == 1, dev.reports.items
                downloaded = next(
                    r for r in dev.reports.items if r["deployment_id"] == dep2 and r["to"] == "verifying"
                )
                assert "delta discarded (TransportError" in downloaded["detail"], downloaded
                assert "full xz download" in downloaded["detail"]
                shorts = [
                    x for x in http.flaky.log if x[0].startswith("/ota/targets/patches/") and x[1] == "short"
                ]
                assert shorts and all(r.startswith("bytes=0-") for _, _, r in shorts)
                assert dev.service.serving().version == "2"  # type: ignore[union-attr]
            finally:
                await dev.service.stop()

        asyncio.run(scenario())


def test_a_mirror_that_fails_everything_ends_failed_and_a_newer_deployment_installs(
    tmp_path: Path, fleet: FleetSide
) -> None:
    m = models()
    with FlakyHttp(fleet.ota.repo.root_dir) as http:

        async def scenario() -> None:
            dev = await start_device(tmp_path, fleet, base_url=f"http://127.0.0.1:{http.port}/ota")
            try:
                http.flaky.fail_all = True  # targets only: metadata still verifies
                dep1 = fleet.deploy(fleet.publish(m.v1, "1"), "dev-1")
                await check(dev)
                chain = dev.reports.chain(dep1)
                assert chain == ["downloading"] * 5 + ["failed"], dev.reports.items
                last = dev.reports.items[-1]
                assert last["event"] == "download_failed"
                assert last["detail"].startswith("gave up after 5 attempts: HTTP 500 for "), last
                # 5 update attempts x 3 transfer attempts, and not one more
                assert len([x for x in http.flaky.log if x[0].startswith("/ota/targets/")]) == 15
                assert dev.client.record.state.value == "failed" and slot_files(dev.root) == {}
                await check(dev)  # the failed deployment is not retried
                assert dev.reports.chain(dep1) == chain
                http.flaky.fail_all = False
                dep2 = fleet.deploy(fleet.publish(m.v1, "1b"), "dev-1")
                await check(dev)
                assert dev.reports.chain(dep2)[-1] == "committed", dev.reports.items
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
