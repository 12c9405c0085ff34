"""Schemathesis against a real fleet server: every operation of the OpenAPI schema, as an admin,
a viewer and with no token, must answer without a 5xx, with a status code the schema declares,
and with a body that matches the schema.

The server is the real app (lifespan, migrations, gRPC ports, ingest writer) served by uvicorn on
a loopback socket, on SQLite (the targeted PostgreSQL regressions live in test_rest_api.py).
Generation is derandomized (fixed seed) and bounded per operation so the file fits CI. No
operation is excluded.

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
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fleet_server.main import create_app
from fleet_server.settings import Settings
from tests.conftest import drop_pg_database, make_pg_database
from tests.helpers.inproc import prepare

# per operation and role, on top of the coverage phase's boundary cases (2^63, -1, "", ...)
MAX_EXAMPLES = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "12"))
BACKEND = os.environ.get("FLEET_FUZZ_DB", "sqlite")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

CASES: Counter[str] = Counter()  # "role" -> cases sent; printed at the end of the module


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread; the test runner owns signals
        pass


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    pg_name, database_url = make_pg_database() if BACKEND == "postgres" else ("", "")
    settings_, tokens = prepare(tmp_path_factory.mktemp("fuzz") / "srv", database_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Uvicorn(uvicorn.Config(create_app(settings_), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "fleet server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", tokens
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
    if pg_name:
        drop_pg_database(pg_name)
    print(f"\nschemathesis cases sent per role: {dict(CASES)}")


def _openapi() -> dict[str, Any]:
    """The schema the app publishes, built without serving it (the fuzzed server is a second app
    from the same code; `test_served_schema_is_the_fuzzed_one` checks they agree)."""
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(data_dir=Path(tmp))).openapi()


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


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
    case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=60)
