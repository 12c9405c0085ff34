"""Schemathesis against a real fleet server: every operation of the OpenAPI schema, as an admin,
a viewer and with no token, must answer without a 5xx, with a status code the schema declares,
and with a body that matches the schema.

The server is the real app (lifespan, migrations, gRPC ports, ingest writer) served by uvicorn on
a loopback socket, on SQLite (the targeted PostgreSQL regressions live in test_rest_api.py).
Generation is derandomized (fixed seed) and bounded per operation so the file fits CI. No
operation is excluded; the event stream (`GET /api/v1/events`, it never ends) is read, with a token,
up to its first line.

Deeper runs by hand: ``FLEET_FUZZ_EXAMPLES=200`` (examples per operation and role) and
``FLEET_FUZZ_DB=postgres`` (a fresh database on the test PostgreSQL instead of SQLite).
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fleet_server.federated.handoff import write_head_onnx
from fleet_server.main import create_app
from fleet_server.settings import Settings
from tests.conftest import drop_pg_database, make_pg_database
from tests.helpers.inproc import enroll, prepare

# per operation and role, on top of the coverage phase's boundary cases (2^63, -1, "", ...)
MAX_EXAMPLES = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "12"))
BACKEND = os.environ.get("FLEET_FUZZ_DB", "sqlite")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

CASES: Counter[str] = Counter()  # "role" -> cases sent; printed by test_fuzz_reached_the_handlers
ANSWERS: Counter[tuple[str, int]] = Counter()  # ("GET /path", status) of the admin's cases
KNOWN: dict[str, object] = {}  # path parameter -> an id that exists on the fuzzed server (_seed)


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread; the test runner owns signals
        pass


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    pg_name, database_url = make_pg_database() if BACKEND == "postgres" else ("", "")
    settings_, tokens = prepare(tmp_path_factory.mktemp("fuzz") / "srv", database_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Uvicorn(
        uvicorn.Config(create_app(settings_), log_level="warning", lifespan="on", log_config=None)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "fleet server did not start"
        time.sleep(0.05)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    KNOWN.update(_seed(base_url, tokens, server.config.app, settings_, tmp_path_factory.mktemp("seed")))
    yield base_url, tokens
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
    if pg_name:
        drop_pg_database(pg_name)


@dataclass
class _EnrollTarget:  # the two attributes `enroll` reads from a LiveServer
    enroll_target: str
    ca_pem: bytes


def _seed(
    base_url: str, tokens: dict[str, str], app: Any, settings_: Settings, tmp: Path
) -> dict[str, object]:
    """A device, a release deployed to it and a registry version, so that half of the generated
    path ids name something that exists and the handlers run past their 404."""
    api = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=60)
    token = api.post("/api/v1/bootstrap-tokens", json={}).json()["token"]
    target = _EnrollTarget(
        f"localhost:{app.state.grpc_ports['enroll']}", (settings_.pki_dir / "ca.pem").read_bytes()
    )
    enroll(target, "dev-fuzz", token, tmp)  # type: ignore[arg-type]
    blob = api.put("/api/v1/ota/blobs", content=bytes(range(256)) * 64).json()["sha256"]
    body = {"model_name": "fuzz", "model_version": "1", "artifact_sha256": blob, "filename": "m.tflite"}
    seq = api.post("/api/v1/releases", json=body).json()["seq"]
    deployment = api.post(f"/api/v1/releases/{seq}/deployments", json={"device_ids": ["dev-fuzz"]}).json()
    head = write_head_onnx(tmp / "head.onnx", np.zeros((4, 3), np.float32), np.zeros(3, np.float32), {})
    model = api.put("/api/v1/ota/blobs", content=head.read_bytes()).json()["sha256"]
    version = api.post("/api/v1/models", json={"name": "fuzz-head", "artifact_sha256": model})
    assert version.status_code == 201, version.text
    api.close()
    known = {"device_id": "dev-fuzz", "seq": seq, "deployment_id": deployment["deployment_id"]}
    return known | {"name": "fuzz-head", "version": 1}


def _openapi() -> dict[str, Any]:
    """The schema the app publishes, built without serving it (the fuzzed server is a second app
    from the same code; `test_served_schema_is_the_fuzzed_one` checks they agree)."""
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(data_dir=Path(tmp))).openapi()


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


@schema.hook
def flatmap_path_parameters(
    context: Any, path_parameters: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Half the time, replace generated ids by ones that exist (random ids alone stop at a 404)."""
    known = {k: KNOWN[k] for k in path_parameters or () if k in KNOWN}
    return (
        st.sampled_from([path_parameters, {**path_parameters, **known}])
        if known
        else st.just(path_parameters)
    )


def test_served_schema_is_the_fuzzed_one(fuzz_server: tuple[str, dict[str, str]]) -> None:
    base_url, _ = fuzz_server
    served = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    assert served == OPENAPI
    # The operation count is pinned so a route that drops out of the schema (include_in_schema=
    # False, a failed import) is noticed rather than silently left unfuzzed.
    operations = [op for item in served["paths"].values() for op in item if op in _METHODS]
    assert len(operations) >= 29


_METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.mark.parametrize("role", ["admin", "viewer", None], ids=["admin", "viewer", "no-token"])
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_fuzz(
    case: schemathesis.Case[Any], role: str | None, fuzz_server: tuple[str, dict[str, str]]
) -> None:
    base_url, tokens = fuzz_server
    headers = {"Authorization": f"Bearer {tokens[role]}"} if role else {}
    CASES[role or "no-token"] += 1
    if case.path == "/api/v1/events" and role:  # a stream that never ends: its head and first line
        with httpx.stream("GET", f"{base_url}/api/v1/events", headers=headers, timeout=30) as stream:
            assert stream.status_code == 200, stream.read()
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert next(stream.iter_lines()).startswith(("retry:", "event:", ":"))
        ANSWERS[("GET /api/v1/events", 200)] += role == "admin"
        return
    response = case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=60)
    if role == "admin":
        ANSWERS[(f"{case.method.upper()} {case.path}", response.status_code)] += 1


def test_fuzz_reached_the_handlers() -> None:
    """Runs after the fuzz (file order): the seeded ids got generated cases past auth and 404
    into the handlers, so a 500 behind them could not hide."""
    if not CASES:
        pytest.skip("run together with test_api_fuzz")
    for operation in (
        "GET /api/v1/devices/{device_id}",
        "GET /api/v1/devices/{device_id}/telemetry",
        "GET /api/v1/deployments/{deployment_id}",
        "GET /api/v1/releases/{seq}/deployments",
        "GET /api/v1/models/{name}/versions/{version}",
        "PATCH /api/v1/devices/{device_id}/labels",
    ):
        assert ANSWERS[(operation, 200)] > 0, (operation, sorted(ANSWERS.items()))
    print(f"\nschemathesis cases sent per role: {dict(CASES)}")
