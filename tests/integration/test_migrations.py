"""Alembic migrations produce exactly the schema the SQLModel tables describe (both backends)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import fleet_server.models  # noqa: F401  (registers tables)
from fleet_server.db import make_engine
from fleet_server.migrate import current_revision, head_revision, upgrade


def test_migrations_match_models_and_are_idempotent(tmp_path: Path, database_url: str) -> None:
    import fleet_server.main  # noqa: F401  (imports every module that defines tables)

    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'm.db'}")
    assert upgrade(engine) == head_revision()
    assert upgrade(engine) == head_revision()  # second run is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    # Type-affinity noise aside, no table/column/index may differ.
    kinds = {"add_table", "remove_table", "add_column", "remove_column", "add_index", "remove_index"}
    structural = [d for d in diff if isinstance(d, tuple) and d[0] in kinds]
    assert structural == [], structural
    assert current_revision(engine) == head_revision()
    engine.dispose()
