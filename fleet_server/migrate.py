"""Schema migrations with Alembic (`edgeloop-server migrate`; also run at every start).

Several replicas may start at once on one PostgreSQL database: the upgrade runs in one transaction
that first takes a transaction-scoped advisory lock (`MIGRATION_LOCK_KEY`), so the second replica
waits, then finds the schema at head and does nothing. SQLite serialises writers by itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the schema upgrade ("edgeloop" in ASCII, fits a signed bigint).
MIGRATION_LOCK_KEY = 0x6564_6765_6C6F_6F70

_SCRIPTS = Path(__file__).resolve().parent / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade the schema to `revision`; returns the revision now in place."""
    cfg = _config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    current = current_revision(engine)
    logger.info("database schema at revision=%s", current)
    return current


def current_revision(engine: Engine) -> str:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() or ""


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head() or ""
