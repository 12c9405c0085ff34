"""Schema migrations with Alembic (`edgeloop-server migrate`; also run at every start)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

logger = logging.getLogger(__name__)

_SCRIPTS = Path(__file__).resolve().parent / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Upgrade the schema to `revision`; returns the revision now in place."""
    cfg = _config()
    with engine.begin() as conn:
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
