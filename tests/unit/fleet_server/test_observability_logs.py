"""JSON log lines and the id context (observability/logs.py), and the request-id middleware
binding it for a whole request (observability/middleware.py) on a real ASGI app."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleet_server.observability.logs import (
    configure_logging,
    current,
    log_context,
)
from fleet_server.observability.metrics import FleetMetrics
from fleet_server.observability.middleware import ObservabilityMiddleware
from fleet_server.observability.ready import Serving


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_line_carries_bound_ids_and_keeps_newlines_inside(json_lines: io.StringIO) -> None:
    log = logging.getLogger("fleet_server.test")
    with log_context(device_id="dev-1", rollout_id="r-9"):
        log.warning("refused\nforged line: %s", "x")
    log.info("after")
    first, second = records(json_lines)
    assert first["level"] == "WARNING" and first["logger"] == "fleet_server.test"
    assert first["msg"] == "refused\nforged line: x"
    assert first["device_id"] == "dev-1" and first["rollout_id"] == "r-9"
    assert str(first["ts"]).endswith("Z")
    assert "device_id" not in second


def test_exception_is_one_line_with_its_traceback(json_lines: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("t").exception("failed")
    (rec,) = records(json_lines)
    assert "RuntimeError: boom" in str(rec["exc"])


def test_context_nests_and_tasks_inherit_it() -> None:
    async def child() -> dict[str, str]:
        await asyncio.sleep(0)
        return current()

    async def main() -> tuple[dict[str, str], dict[str, str]]:
        with log_context(deployment_id="dep-1"):
            with log_context(device_id="d"):
                inner = await asyncio.create_task(child())
            outer = await asyncio.to_thread(current)
        return inner, outer

    inner, outer = asyncio.run(main())
    assert inner == {"deployment_id": "dep-1", "device_id": "d"}
    assert outer == {"deployment_id": "dep-1"}
    assert current() == {}


def test_bad_field_and_bad_format_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown log context field"), log_context(devce_id="x"):
        pass
    with pytest.raises(ValueError, match="log format"):
        configure_logging(fmt="xml")
    with pytest.raises(ValueError, match="log level"):
        configure_logging(level="LOUD")


def test_request_id_is_bound_for_the_whole_request(json_lines: io.StringIO) -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, str]:  # a sync route: runs in the threadpool
        logging.getLogger("fleet_server.items").info("read item")
        return {"id": item_id}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    app.add_middleware(ObservabilityMiddleware, metrics=FleetMetrics(lambda: None), serving=Serving())
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/items/7", headers={"X-Request-Id": "req-abc"})
        assert resp.headers["x-request-id"] == "req-abc"
        crash = client.get("/boom")
    assert crash.status_code == 500
    assert crash.json() == {"detail": "internal server error"}  # never a stack trace
    crash_id = crash.headers["x-request-id"]
    recs = records(json_lines)
    assert {"msg": "read item", "request_id": "req-abc"}.items() <= recs[0].items()
    crashed = [r for r in recs if r.get("request_id") == crash_id]
    assert crashed and "RuntimeError: bug" in str(crashed[0]["exc"])
