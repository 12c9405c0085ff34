"""Two replicas starting at once on an empty PostgreSQL database both migrate it (advisory lock)."""

from __future__ import annotations

import pytest

from fleet_server.db import make_engine
from fleet_server.migrate import current_revision, head_revision
from tests.integration.coordination.test_leases_pg import run_together

pytestmark = pytest.mark.postgres


def test_two_processes_upgrading_an_empty_database_at_once_both_succeed(pg_url: str) -> None:
    outputs = run_together([["upgrade", pg_url], ["upgrade", pg_url]], timeout=120)
    head = head_revision()
    assert [out.split()[-1] for out in outputs] == [head, head]
    engine = make_engine(pg_url)
    try:
        assert current_revision(engine) == head
    finally:
        engine.dispose()
