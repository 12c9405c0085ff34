"""GET /api/v1/events over a real uvicorn socket: header auth, the first `fleet` event, device /
label / audit events from the shared poller, `: ping` when idle, the subscriber released when the
client disconnects, and the stream ended cleanly when the server shuts down (the cli.py shutdown
hook the integrator adds, reproduced in `_Server`)."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import insert

from fleet_server.main import create_app
from fleet_server.models import Device
from tests.helpers.inproc import prepare
from tests.helpers.net import free_port
from tests.helpers.procs import wait_until
from tests.integration.test_fleetview_api import _device


class _Server(uvicorn.Server):
    async def shutdown(self, sockets: Any = None) -> None:
        hub = getattr(self.config.app.state, "fleet_events", None)
        if hub is not None:
            await hub.close()  # SSE streams end, so uvicorn's wait for open responses does not hang
        await super().shutdown(sockets)


class Live:
    def __init__(self, tmp: Path) -> None:
        settings, self.tokens = prepare(tmp / "srv", "")
        self.app = create_app(settings)
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self.server = _Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 30, what="uvicorn started")
        self.url = f"http://127.0.0.1:{self.port}"

    def auth(self, role: str = "viewer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    srv = Live(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


class Reader:
    """Reads one SSE response on a thread: events as (name, data), comments as ("#", text)."""

    def __init__(self, live: Live, role: str = "viewer") -> None:
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._client = httpx.Client(base_url=live.url, headers=live.auth(role), timeout=30)
        self._cm = self._client.stream("GET", "/api/v1/events")
        self.response = self._cm.__enter__()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        name = ""
        try:
            for line in self.response.iter_lines():
                if line.startswith(":"):
                    self.items.put(("#", line))
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    self.items.put((name, json.loads(line[6:])))
        except BaseException as err:  # reported to the test
            self.error = err
        finally:
            self.ended.set()

    def next(self, name: str, where: Any = lambda d: True, timeout: float = 20) -> Any:
        while True:
            kind, data = self.items.get(timeout=timeout)
            if kind == name and where(data):
                return data

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
        self._client.close()


def test_events_stream_changes_pings_and_releases_on_disconnect(live: Live) -> None:
    assert httpx.get(f"{live.url}/api/v1/events", timeout=10).status_code == 401
    hub = live.app.state.fleet_events
    hub.ping_s = 0.5
    reader = Reader(live)
    assert reader.response.status_code == 200
    assert reader.response.headers["content-type"].startswith("text/event-stream")
    assert reader.next("fleet") == {"total": 0, "online": 0, "offline": 0}
    with live.app.state.engine.begin() as conn:
        conn.execute(insert(Device), [_device("dev-e")])
    assert reader.next("fleet", lambda d: d["total"] == 1) == {"total": 1, "online": 0, "offline": 1}
    assert reader.next("device", lambda d: d["id"] == "dev-e")["online"] is False
    resp = httpx.patch(
        f"{live.url}/api/v1/devices/dev-e/labels", json={"labels": {"site": "x"}},
        headers=live.auth("operator"), timeout=10,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert reader.next("device", lambda d: d["id"] == "dev-e")["last_seen_at"]
    head = reader.next("audit")["head_seq"]
    assert isinstance(head, int) and head > 0
    assert reader.next("#", lambda t: t == ": ping")
    assert hub.stats.subscribers == 1
    second = Reader(live)  # one poller feeds both
    assert second.next("fleet") == {"total": 1, "online": 0, "offline": 1}
    second.close()
    reader.close()
    wait_until(lambda: hub.stats.subscribers == 0, 20, what="subscribers released after disconnect")
    assert hub.stats.dropped_subscribers == 0


def test_server_shutdown_ends_the_stream_cleanly(live: Live) -> None:
    reader = Reader(live)
    reader.next("fleet")
    live.server.should_exit = True
    assert reader.ended.wait(20), "stream still open after shutdown"
    assert reader.error is None, reader.error
    live.thread.join(20)
    assert not live.thread.is_alive(), "server did not stop"
    reader.close()
