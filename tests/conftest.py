"""Shared fixtures: clean environment, database URLs (SQLite and real PostgreSQL), free ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("EDGELOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EDGELOOP_* setting of the developer's shell leaks into a test (httpx's clean_environ)."""
    for key in list(os.environ):
        if key.startswith("EDGELOOP_"):
            monkeypatch.delenv(key)


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return _pg_available()


def make_pg_database() -> tuple[str, str]:
    import psycopg

    name = f"edgeloop_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """Each test gets an empty database: a SQLite file, or a fresh PostgreSQL database.

    PostgreSQL is a real service here (.ci/run starts it); if it is down the test fails rather
    than silently skipping, so a green run always means both backends were exercised.
    """
    if request.param == "sqlite":
        yield ""  # the server's default: SQLite (WAL) in its data dir
        return
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (start it: .ci/run does)")
    name, url = make_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)
