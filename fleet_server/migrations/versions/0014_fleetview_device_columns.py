"""devices: the running model ("name@version") and the health the device reported, denormalised
from `observed` so the fleet view filters, sorts and counts by them in SQL (fleetview/columns.py
keeps them current); existing rows are filled from their stored observed state

Revision ID: 0014
Revises: 0013
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_BATCH = 1000


def _model(observed: dict[str, Any]) -> str:
    # A frozen copy of fleetview.columns.running_model (a migration never imports app code).
    slots = observed.get("slots")
    if not isinstance(slots, list):
        return ""
    valid = [s for s in slots if isinstance(s, dict) and s.get("model_name")]
    if not valid:
        return ""
    rank = {"default": 0, "current": 1}
    best = min(valid, key=lambda s: rank.get(str(s.get("slot", "")), 2))
    return f"{best['model_name']}@{best.get('model_version', '')}"[:200]


def _health(observed: dict[str, Any]) -> str:
    value = observed.get("health")
    return value if value in ("ok", "degraded", "failing", "unknown") else "unknown"


def upgrade() -> None:
    op.add_column("device", sa.Column("model", sa.String(200), nullable=False, server_default=""))
    op.add_column("device", sa.Column("reported_health", sa.String(16), nullable=False, server_default=""))
    op.create_index("ix_device_model", "device", ["model"])
    conn = op.get_bind()
    device = sa.table(
        "device", sa.column("id", sa.String), sa.column("observed", sa.Text),
        sa.column("model", sa.String), sa.column("reported_health", sa.String),
    )  # fmt: skip
    update = (
        sa.update(device)
        .where(device.c.id == sa.bindparam("b_id"))
        .values(model=sa.bindparam("b_model"), reported_health=sa.bindparam("b_health"))
    )
    rows = conn.execute(sa.select(device.c.id, sa.cast(device.c.observed, sa.Text))).all()
    params = []
    for device_id, raw in rows:
        observed = json.loads(raw) if raw else {}
        observed = observed if isinstance(observed, dict) else {}
        if observed:
            params.append({"b_id": device_id, "b_model": _model(observed), "b_health": _health(observed)})
    for start in range(0, len(params), _BATCH):
        conn.execute(update, params[start : start + _BATCH])


def downgrade() -> None:
    op.drop_index("ix_device_model", "device")
    with op.batch_alter_table("device") as t:
        for name in ("reported_health", "model"):
            t.drop_column(name)
