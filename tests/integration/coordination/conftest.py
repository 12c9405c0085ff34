from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from fleet_server.db import make_engine
from fleet_server.migrate import upgrade
from tests.conftest import PG_ADMIN_URL, _pg_available, drop_pg_database, make_pg_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty PostgreSQL database (not migrated)."""
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name, url = make_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """A migrated PostgreSQL database."""
    engine = make_engine(pg_url)
    upgrade(engine)
    yield engine
    engine.dispose()
